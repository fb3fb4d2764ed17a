import grokjax
from grokjax.experiment import build_program, run_settings
from grokjax.width import tune_runs_per_batch


def test_vmap_width_is_measured_recorded_and_remembered(tmp_path, sweep, monkeypatch):
    import grokjax.width as width

    config = sweep(train=dict(runs_per_batch=0), grid=dict(seed=list(range(12))))  # measured
    program, settings = build_program(config.runs()[0], config.runs()), run_settings(config.runs())
    cache = tmp_path / "widths.json"
    k, choice = tune_runs_per_batch(program, settings, 12, 0, cache)
    assert choice["source"] == "measured" and set(choice["run_steps_per_s"]) == {"1", "8", "12"}
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
