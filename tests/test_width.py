import time
import types

import pytest

import grokjax
from grokjax.experiment import build_program, run_settings
from grokjax.width import tune_runs_per_batch


def test_vmap_width_is_measured_recorded_and_remembered(tmp_path, sweep, monkeypatch):
    import grokjax.width as width

    config = sweep(train=dict(runs_per_batch=0), grid=dict(seed=list(range(12))))  # measured
    program, settings = build_program(config.runs()[0], config.runs()), run_settings(config.runs())
    cache = tmp_path / "widths.json"
    k, choice = tune_runs_per_batch(program, settings, 12, 0, cache)
    assert choice["source"] == "measured"
    measured, left = choice["run_steps_per_s"], choice.get("not_measured", {})
    assert set(measured) | set(left) == {"1", "8", "12"} and not set(measured) & set(left)
    assert left == ({} if measured["8"] >= measured["1"] else {"12": "width 8 ran slower than 1"})
    assert str(k) in choice["run_steps_per_s"] and all(r > 0 for r in choice["run_steps_per_s"].values())
    # 12 runs: width 8 pads the working set to 16 slots, so its rate counts 12 / 16
    useful = {int(w): r * (12 / (-(-12 // int(w)) * int(w))) for w, r in choice["run_steps_per_s"].items()}
    assert useful[k] >= 0.97 * max(useful.values())
    monkeypatch.setattr(width, "_MEASURED", {})  # a new process: the rates come from the file
    again, choice_again = tune_runs_per_batch(program, settings, 12, 0, cache)
    assert (again, choice_again["source"], choice_again["run_steps_per_s"]) == (k, "measured earlier",
                                                                                 choice["run_steps_per_s"])
    # another budget (steps) costs the same per step: nothing to measure; an explicit width wins
    longer = build_program(sweep(train=dict(steps=90, runs_per_batch=0)), config.runs())
    assert tune_runs_per_batch(longer, settings, 12, 0, cache)[1]["source"] == "measured earlier"
    assert tune_runs_per_batch(program, settings, 12, 4) == (4, dict(source="config"))
    meta = grokjax.run_sweep(config, progress=False).meta["groups"][0]
    assert meta["runs_per_batch"] == k and meta["runs_per_batch_choice"]["source"] == "measured earlier"


@pytest.fixture
def timed(monkeypatch, sweep):
    """``_measure`` in a new process, of a program whose widths run at the given rates (each
    timing takes 10 ms): the layouts' measuring policy without compiling anything."""
    import grokjax.width as width

    config = sweep(grid=dict(seed=list(range(4))))
    program, settings = build_program(config), run_settings(config.runs())
    timings = []

    def measure(rates, layouts, run_steps=None, cache_file=None):
        def fake(program, settings, state, k, budget_s, mesh=None):
            timings.append((1 if mesh is None else mesh.size, k))
            time.sleep(0.01)
            return rates[(1 if mesh is None else mesh.size, k)]

        monkeypatch.setattr(width, "_run_steps_per_s", fake)
        monkeypatch.setattr(width, "_MEASURED", {})
        timings.clear()
        return width._measure(program, settings, 46, layouts, cache_file, 0.15, run_steps), list(timings)

    return measure


TWO = types.SimpleNamespace(size=2)  # a two-device mesh, as far as measuring needs one


def test_measuring_widens_a_layout_only_while_wider_runs_faster(timed):
    rates = {(2, 1): 800.0, (2, 8): 400.0, (2, 23): 900.0, (1, 1): 300.0, (1, 8): 450.0, (1, 45): 240.0}
    found, timings = timed(rates, [(TWO, [1, 8, 23]), (None, [1, 8, 45])])
    assert timings == [(2, 1), (2, 8), (1, 1), (1, 8), (1, 45)]  # every CPU device first, narrow to wide
    assert found.rates == {"2 devices": {"1": 800.0, "8": 400.0}, "1 device": {"1": 300.0, "8": 450.0, "45": 240.0}}
    assert found.skipped == {"2 devices": {"23": "width 8 ran slower than 1"}} and found.fresh
    # useful rates count the padding slots: 46 runs at width 8 on 2 devices fill 48 slots
    assert found.useful[(2, 8)] == pytest.approx(400.0 * 46 / 48) and found.useful[(2, 1)] == 800.0


def test_measuring_stops_where_it_would_not_pay_and_keeps_what_was_measured_earlier(timed, tmp_path):
    rates = {(2, 1): 100.0, (2, 8): 200.0, (2, 23): 150.0, (1, 1): 50.0, (1, 8): 60.0, (1, 45): 70.0}
    layouts = [(TWO, [1, 8, 23]), (None, [1, 8, 45])]
    cache = tmp_path / "widths.json"
    # 5 run-steps at 100 per second: a tenth of that is 5 ms, less than one more timing costs
    found, timings = timed(rates, layouts, run_steps=5, cache_file=cache)
    assert timings == [(2, 1)] and found.rates == {"2 devices": {"1": 100.0}}
    assert found.skipped == {"2 devices": {"8": "would not pay", "23": "would not pay"},
                             "1 device": {w: "would not pay" for w in ("1", "8", "45")}}
    # a later launch knows what timing a width cost: it does not time one more each time
    assert timed(rates, layouts, run_steps=5, cache_file=cache)[1] == []
    found, timings = timed(rates, layouts, run_steps=10**9, cache_file=cache)  # a long sweep: the rest
    assert timings == [(2, 8), (2, 23), (1, 1), (1, 8), (1, 45)] and not found.skipped
    # and the widths measured earlier count, at no cost, for any sweep
    found, timings = timed(rates, layouts, run_steps=5, cache_file=cache)
    assert timings == [] and not found.fresh and max(found.useful, key=found.useful.get) == (2, 8)

CORES = """
import os, sys
import jax
from grokjax.width import cores_as_devices, use_cores_as_devices
if sys.argv[1] == "started":
    jax.devices()  # the backends start: the device count is fixed from here on
made = use_cores_as_devices()
print(made, cores_as_devices(), len(jax.devices()), use_cores_as_devices())
"""


def test_cores_as_devices_only_before_jax_starts_and_only_once():
    """One CPU device per core through JAX's public config, before its backends start; after
    they started, or when the user chose a device count, grokjax leaves the devices alone."""
    import os
    import subprocess
    import sys

    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f)
    env = {**{k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}, "XLA_FLAGS": flags,
           "JAX_PLATFORMS": "cpu"}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    def run(when, **extra):
        proc = subprocess.run([sys.executable, "-c", CORES, when], capture_output=True, text=True, timeout=120,
                              env={**env, **extra})
        assert proc.returncode == 0, proc.stderr
        return [int(v) for v in proc.stdout.split()]

    if cores >= 2:
        assert run("fresh") == [cores, cores, cores, 0]  # made once; a second call makes nothing
    assert run("started") == [0, 0, 1, 0]
    assert run("fresh", JAX_NUM_CPU_DEVICES="3") == [0, 0, 3, 0]  # the user's count stands
