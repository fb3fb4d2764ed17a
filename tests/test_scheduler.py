import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from conftest import devices_env

import grokjax
from grokjax.experiment import build_program, run_settings
from grokjax.scheduler import Layout, evals_per_call, train_group


def test_resumed_group_keeps_its_vmap_width(sweep):
    import dataclasses

    config = sweep(train=dict(steps=20), grid=dict(seed=[0, 1, 2, 3]))
    runs = config.runs()
    program, settings = build_program(runs[0], runs), run_settings(runs)
    rounds = []
    stats = train_group(program, settings, list(range(4)),  # the states are donated to the next round: copy
                        lambda r, gs: rounds.append(dataclasses.replace(gs, states=jax.tree.map(jnp.copy, gs.states))),
                        Layout(runs_per_batch=4))  # the width it started with (measured or set) is not the point here
    resumed = train_group(program, settings, list(range(4)), lambda r, gs: None,
                          resume=dataclasses.replace(rounds[0], runs_per_batch=3))
    assert stats.runs_per_batch in (1, 4) and resumed.runs_per_batch == 3
    assert resumed.runs_per_batch_choice == dict(source="checkpoint")


@pytest.mark.parametrize("n, expected", [(20, 1), (100, 4), (7, 1), (60, 3)])
def test_evals_per_call_divides(n, expected):
    assert evals_per_call(n) == expected and n % expected == 0


# --- chunking, repacking, sharding -------------------------------------------------------------


def test_chunked_and_repacked_grid_equals_one_chunk(sweep):
    config = sweep(task=dict(p=23), train=dict(steps=300, eval_every=10, runs_per_batch=2),
                   events=dict(patience=2), grid=dict(data_fraction=[0.9, 0.3], seed=[0, 1, 2, 3]))
    whole = grokjax.run_sweep(config, progress=False)
    chunked = grokjax.run_sweep(config, progress=False, max_runs_per_chunk=3, repack="always")
    # the cap of 3 is rounded up to a multiple of runs_per_batch, so every run sees one vmap width
    assert whole.meta["groups"][0]["widths"][0] == 8 and chunked.meta["groups"][0]["widths"][0] == 4
    pd.testing.assert_frame_equal(whole.runs, chunked.runs, check_exact=True)
    pd.testing.assert_frame_equal(whole.curves, chunked.curves, check_exact=True)


def test_repacking_saves_compute_when_most_runs_finish_early(sweep):
    # 6 runs grok within ~700 steps at 80-90 % data; the two at 30 % train for the whole budget
    config = sweep(task=dict(p=23), train=dict(steps=1500, eval_every=10, runs_per_batch=1), events=dict(patience=2),
                   grid=dict(data_fraction=[0.9, 0.85, 0.8, 0.3], seed=[0, 1]))
    results = grokjax.run_sweep(config, progress=False, repack="always")
    group = results.meta["groups"][0]
    assert group["widths"][0] == 8 and group["widths"][-1] < 8
    assert group["slot_steps"] <= 0.8 * 8 * 1500  # without repacking every slot runs to the end
    slow = results.runs.query("data_fraction == 0.3")
    assert (slow.final_step == 1500).all() and results.runs.query("data_fraction > 0.5").done.all()


def test_buckets_shrink_in_vmap_widths_then_narrow_them():
    from grokjax.scheduler import bucket_sizes

    assert bucket_sizes(8, 2) == [8, 4, 2, 1]
    assert bucket_sizes(32, 32) == [32, 16, 8, 4, 2, 1]  # an accelerator's: the vmap width is the working set
    assert bucket_sizes(48, 8) == [48, 24, 16, 8, 4, 2, 1]
    assert bucket_sizes(16, 16, 8) == [16, 8]  # 8 devices keep a share each


def test_repacking_at_the_accelerators_vmap_width_narrows_it(sweep):
    # runs_per_batch = the working set, as on an accelerator: half the runs diverge at once
    config = sweep(train=dict(steps=20, eval_every=10, runs_per_batch=8), grid=dict(lr=[1e-2, 1e20], seed=[0, 1, 2, 3]))
    packed = grokjax.run_sweep(config, progress=False, repack="always")
    wide = grokjax.run_sweep(config, progress=False, repack=False)
    group = packed.meta["groups"][0]
    assert group["widths"] == [8, 4] and group["vmap_widths"] == [8, 4]
    assert group["slot_steps"] < wide.meta["groups"][0]["slot_steps"]
    pd.testing.assert_frame_equal(packed.runs, wide.runs, check_exact=False, rtol=1e-6)
    pd.testing.assert_frame_equal(packed.curves, wide.curves, check_exact=False, rtol=1e-6)


DIVERGING = dict(train=dict(steps=40, eval_every=10, runs_per_batch=8), grid=dict(lr=[1e-2, 1e20], seed=[0, 1, 2, 3]))


def test_repacking_waits_until_the_compute_saved_pays_for_the_compilation(sweep):
    # half the runs diverge at once: 4 slots x 40 steps of a tiny MLP are milliseconds, far less
    # than compiling a program of 4 slots costs, so the working set keeps its width
    results = grokjax.run_sweep(sweep(**DIVERGING), progress=False, compile_ahead=False)
    assert results.meta["groups"][0]["widths"] == [8]


@pytest.mark.parametrize("ahead", [False, True])
def test_a_working_set_that_pays_shrinks_to_its_survivors(sweep, monkeypatch, ahead):
    from grokjax import compiling

    monkeypatch.setattr(compiling.Compiler, "estimate_s", lambda self, width: 0.0)  # compiling costs nothing
    if ahead:  # the background compilation done at once, so the shrink's round is known
        monkeypatch.setattr(compiling.Compiler, "prefetch", compiling.Compiler.get)
    config = sweep(**DIVERGING)
    packed = grokjax.run_sweep(config, progress=False, compile_ahead=ahead)
    wide = grokjax.run_sweep(config, progress=False, repack=False)
    group = packed.meta["groups"][0]
    assert group["widths"] == [8, 4] and group["vmap_widths"] == [8, 4]  # the 4 survivors, not a ladder's bucket
    assert group["slot_steps"] < wide.meta["groups"][0]["slot_steps"]
    pd.testing.assert_frame_equal(packed.runs, wide.runs, check_exact=False, rtol=1e-6)
    pd.testing.assert_frame_equal(packed.curves, wide.curves, check_exact=False, rtol=1e-6)



def test_compile_ahead_by_default_on_a_cpu_only_at_vmap_width_1(sweep, monkeypatch):
    """"auto", the default: on a CPU in the background at vmap width 1 (its small kernels leave
    the cores room), when the round needs it at wider vmaps, whose kernels keep every core busy
    (benchmarks/repack.py)."""
    from grokjax import compiling
    from grokjax.errors import SweepError
    from grokjax.scheduler import Layout, compiles_ahead

    monkeypatch.setattr(compiling.Compiler, "estimate_s", lambda self, width: 0.0)
    monkeypatch.setattr(compiling.Compiler, "prefetch", compiling.Compiler.get)  # done at once: a known round
    group = grokjax.run_sweep(sweep(**DIVERGING), progress=False).meta["groups"][0]
    assert group["widths"] == [8, 4]
    assert compiles_ahead(Layout(), 1) and not compiles_ahead(Layout(), 8)
    assert compiles_ahead(Layout(compile_ahead=True), 8) and not compiles_ahead(Layout(compile_ahead=False), 1)
    with pytest.raises(SweepError, match="compile_ahead must be true, false or 'auto', got 'yes'"):
        grokjax.run_sweep(sweep(), progress=False, compile_ahead="yes")

def test_survivors_fill_working_sets_in_multiples_of_the_vmap_width(sweep):
    from grokjax.scheduler import GroupQueue, GroupState, GroupTrainer

    runs = sweep(grid=dict(seed=list(range(4)))).runs()
    trainer = GroupTrainer(build_program(runs[0], runs), run_settings(runs), None, 4, 1)
    queue = GroupQueue(trainer, list(range(4)), GroupState(None, np.arange(16), 4), True, None)
    assert [queue.survivor_size(n) for n in (16, 13, 12, 9, 5, 4, 3, 1)] == [16, 16, 12, 12, 8, 4, 3, 1]


def test_runs_added_while_training_grow_a_shrunk_group_back(sweep):
    # an adaptive search's queue: three of four runs diverge at once (the group shrinks to 1 slot);
    # when the last finishes, four new runs arrive and the group grows back to take them all
    train = dict(steps=20, eval_every=10, runs_per_batch=4, progress_measures=False)
    config = sweep(train=train, grid=dict(lr=[1e-2, 1e20, 2e20, 3e20]))
    later = sweep(train=train, grid=dict(seed=[1, 2, 3, 4]))
    runs, extra = config.runs(), later.runs()
    program = build_program(runs[0], runs + extra)
    rounds, added = [], []

    def extend(round_, finished):
        if finished.all() and not added and 0 in round_.run_ids:
            added.append(True)
            return [4, 5, 6, 7], run_settings(extra)
        return None

    stats = train_group(program, run_settings(runs), list(range(4)), lambda r, gs: rounds.append(r),
                        Layout(repack="always"), extend=extend)
    assert stats.widths == [4, 1, 4] and len(added) == 1
    alone = grokjax.run_sweep(later, progress=False).curves
    columns = ["step", "train_loss", "train_acc", "test_loss", "test_acc", "param_norm"]
    grown = pd.concat([pd.DataFrame({"run_id": rid - 4, **{k: r.metrics[k][i] for k in columns}})
                       for r in rounds for i, rid in enumerate(r.run_ids)
                       if rid >= 4 and r.metrics["recorded"][i].all()])
    grown = grown.sort_values(["run_id", "step"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(grown, alone[["run_id", *columns]], check_exact=False, rtol=1e-6, check_dtype=False)


SHARDED_GRID = dict(train=dict(steps=40, eval_every=10, runs_per_batch=1),
                    grid=dict(lr=[1e-2, 1e20], seed=[0, 1, 2, 3, 4]))
SHARDED_CASES = [(8, None), (4, 4)]  # (devices, max_runs_per_chunk)
SHARDED = """
import json, os, sys, grokjax
sys.path.insert(0, {tests!r})
from conftest import make_sweep
config = make_sweep(**{grid!r})
import jax
assert len(jax.devices()) == 8, jax.devices()
for devices, chunk in {cases!r}:
    r = grokjax.run_sweep(config, progress=False, devices=devices, max_runs_per_chunk=chunk)
    out = os.path.join({out!r}, f"{{devices}}-{{chunk}}")
    os.makedirs(out)
    r.runs.to_parquet(out + "/runs.parquet"); r.curves.to_parquet(out + "/curves.parquet")
    group = r.meta["groups"][0]
    json.dump(dict(widths=group["widths"], devices=group["devices"]), open(out + "/group.json", "w"))
"""


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """The grid trained in one process that sees 8 CPU devices, once per case (one JAX start-up
    for both), and here on one device: the reference every case must equal."""
    import subprocess
    import sys
    from pathlib import Path

    from conftest import make_sweep

    out = tmp_path_factory.mktemp("sharded")
    script = SHARDED.format(tests=str(Path(__file__).parent), grid=SHARDED_GRID, cases=SHARDED_CASES, out=str(out))
    env = devices_env(8)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    # one width everywhere (a measured one could differ between the processes): the same kernels
    return out, grokjax.run_sweep(make_sweep(**SHARDED_GRID), progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("devices, chunk", SHARDED_CASES)
def test_sharded_grid_equals_one_device(sharded, devices, chunk):
    import json

    out, single = sharded
    out = out / f"{devices}-{chunk}"
    group = json.loads((out / "group.json").read_text())
    assert group["devices"] == devices and all(w % devices == 0 for w in group["widths"])
    sharded_runs = pd.read_parquet(out / "runs.parquet")
    assert len(sharded_runs) == 10  # padding never shows
    pd.testing.assert_frame_equal(sharded_runs, single.runs, rtol=1e-4, atol=1e-5)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "curves.parquet"), single.curves, rtol=1e-4, atol=1e-5)
    assert sharded_runs[sharded_runs.lr == 1e20].diverged.all()
    assert not sharded_runs[sharded_runs.lr == 1e-2].diverged.any()


def test_a_vmap_width_that_would_not_fit_is_halved_or_refused_by_name(sweep, monkeypatch):
    import grokjax.memory as memory
    from grokjax.errors import SweepError

    config = sweep(grid=dict(seed=list(range(8))))
    runs = config.runs()
    program, settings = build_program(runs[0], runs), run_settings(runs)
    state, step = memory.bytes_per_run(program, settings, 1)
    monkeypatch.setattr(memory, "device_memory_bytes", lambda device=None: int(2 * 2.5 * (state + step)))
    assert memory.fit_vmap_width(program, settings, 8) == 2  # 2.5 runs fit half the device
    with pytest.raises(SweepError, match="train.runs_per_batch = 8 runs vmapped together need about"):
        memory.chunk_width(program, settings, 8)
    assert memory.chunk_width(program, settings, 2) == 8  # states are small: all 8 held, 2 computed at once
