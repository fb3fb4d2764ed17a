import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import grokjax
from grokjax.engine import Program, draw_batch, evals_per_call, split_mask, train_group, tune_runs_per_batch


def curves_of(results, run_id):
    return results.curves[results.curves.run_id == run_id].drop(columns="run_id").reset_index(drop=True)


# --- splits --------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 0.77, 0.95])
def test_split_has_the_asked_fraction(fraction):
    n = 2209
    mask = np.asarray(split_mask(3, fraction, n))
    assert abs(mask.sum() - fraction * n) <= 0.5 + 1e-3
    assert mask.dtype == bool and mask.shape == (n,)


def test_split_is_a_function_of_seed_and_fraction_only():
    a = np.asarray(split_mask(5, 0.4, 529))
    b = np.asarray(jax.jit(split_mask, static_argnums=2)(jnp.int32(5), jnp.float32(0.4), 529))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, np.asarray(split_mask(6, 0.4, 529)))
    # vmapped over runs (as in the grid) it is the same split
    masks = jax.vmap(split_mask, in_axes=(0, 0, None))(jnp.array([6, 5]), jnp.array([0.3, 0.4]), 529)
    np.testing.assert_array_equal(np.asarray(masks[1]), a)


def test_splits_of_one_seed_are_nested_and_train_test_disjoint():
    small, large = (np.asarray(split_mask(1, f, 961)) for f in (0.3, 0.6))
    assert np.all(large[small])  # the 30 % train set lies inside the 60 % one
    test = ~small
    assert not np.any(small & test) and np.all(small | test)


def test_draw_batch_stays_in_the_train_split():
    mask = np.asarray(split_mask(0, 0.3, 529))
    idx, w = draw_batch(jax.random.PRNGKey(0), jnp.asarray(mask), 64)
    idx = np.asarray(idx)
    assert len(set(idx.tolist())) == 64 and mask[idx].all() and np.all(np.asarray(w))
    idx2, _ = draw_batch(jax.random.PRNGKey(1), jnp.asarray(mask), 64)
    assert set(idx.tolist()) != set(np.asarray(idx2).tolist())
    # a batch larger than the split: every train example once, the filler weighted 0
    idx, w = draw_batch(jax.random.PRNGKey(0), jnp.asarray(mask), 200)
    assert np.asarray(w).sum() == mask.sum()


# --- a run does not depend on its neighbours -------------------------------------------------


@pytest.mark.parametrize("runs_per_batch", [8, 3, 1])
def test_run_in_a_grid_follows_the_same_curve_as_alone(sweep, runs_per_batch):
    def curve(seeds, weight_decays):
        config = sweep(train=dict(runs_per_batch=runs_per_batch), grid=dict(seed=seeds, weight_decay=weight_decays))
        results = grokjax.run_sweep(config, progress=False)
        assert len(results.runs) == len(seeds) * len(weight_decays)
        return curves_of(results, results.runs.query("seed == 2 and weight_decay == 1.0").run_id.item())

    in_grid = curve([0, 1, 2, 3], [0.1, 1.0])
    # other neighbours (other seeds, a weight decay that keeps them from fitting), same vmap width:
    # the same numbers
    pd.testing.assert_frame_equal(in_grid, curve([2, 5, 6, 7], [1.0, 30.0]), rtol=1e-6, atol=1e-7)
    # alone, the run is computed one at a time without a vmap, by other kernels: the same curve
    # up to float rounding, which training amplifies a little (about 1e-3 of the loss by step 60)
    alone = grokjax.run_sweep(sweep(task=dict(data_fraction=0.5), optimizer=dict(weight_decay=1.0),
                                    train=dict(seed=2)), progress=False)
    assert len(in_grid) == 6
    alone, accuracies = curves_of(alone, 0), ["train_acc", "test_acc"]
    pd.testing.assert_frame_equal(in_grid.drop(columns=accuracies), alone.drop(columns=accuracies),
                                  rtol=3e-3, atol=1e-4)  # measured: <= 1e-3
    # accuracies: at most one of the ~264 examples on either side of its decision boundary
    np.testing.assert_allclose(in_grid[accuracies], alone[accuracies], rtol=0, atol=1.01 / 264)


# --- the phenomenon ---------------------------------------------------------------------------


def test_grokking_happens_and_no_weight_decay_with_little_data_does_not():
    """p=47 MLP: at 70 % data and weight decay 1 train accuracy reaches 0.99 within a few dozen
    steps and test accuracy only hundreds of steps later; at 30 % without decay it never does."""
    config = grokjax.sweep_from_dict(dict(
        task=dict(name="add", p=47), model=dict(name="mlp", embed_dim=64, width=256),
        optimizer=dict(lr=1e-2), train=dict(steps=500, eval_every=10),
        grid=dict(data_fraction=[0.7, 0.3], weight_decay=[1.0, 0.0])))
    runs = grokjax.run_sweep(config, progress=False).runs.set_index(["data_fraction", "weight_decay"])
    grokker = runs.loc[(0.7, 1.0)]
    assert grokker.memorize_step <= 50
    assert grokker.grok_step >= grokker.memorize_step + 100
    assert grokker.phase == "grokking" and grokker.final_test_acc >= 0.99
    control = runs.loc[(0.3, 0.0)]
    assert control.memorize_step <= 100 and pd.isna(control.grok_step)
    assert control.phase == "memorization" and control.final_test_acc < 0.5


def test_absurd_learning_rate_diverges_alone(sweep):
    grid = sweep(train=dict(steps=40, runs_per_batch=4), grid=dict(lr=[1e-2, 1e20], seed=[0, 1]))
    results = grokjax.run_sweep(grid, progress=False)
    runs = results.runs
    bad = runs[runs.lr == 1e20]
    assert bad.diverged.all() and (bad.phase == "diverged").all()
    assert (bad.diverged_step <= 3).all()
    assert np.isfinite(bad.final_train_loss).all()  # frozen at its last finite state
    good = runs[runs.lr == 1e-2]
    assert not good.diverged.any()
    for seed in (0, 1):
        alone = grokjax.run_sweep(sweep(train=dict(steps=40, seed=seed)), progress=False)
        pd.testing.assert_frame_equal(curves_of(results, good[good.seed == seed].run_id.item()),
                                      curves_of(alone, 0), rtol=1e-4, atol=1e-5)


def test_sweep_stops_once_every_run_is_done(sweep):
    config = sweep(task=dict(p=23, data_fraction=0.9), train=dict(steps=1000, eval_every=10),
                   events=dict(patience=2), grid=dict(seed=[0, 1]))
    results = grokjax.run_sweep(config, progress=False)
    assert results.runs.done.all() and (results.runs.phase == "grokking").all()
    assert results.meta["run_steps"] < 2 * 1000
    last = results.curves.groupby("run_id").step.max()
    np.testing.assert_array_equal(last.values, results.runs.final_step.values)
    np.testing.assert_array_equal(last.values, results.runs.grok_step.values + 10)  # patience 2


def test_minibatch_sgd_transformer_trains(sweep):
    config = sweep(task=dict(p=11, data_fraction=0.8),
                   model=dict(name="transformer", d_model=32, n_heads=2, d_mlp=64, layer_norm=True),
                   optimizer=dict(name="sgd", lr=0.05, momentum=0.9, weight_decay=0.0, warmup_steps=5),
                   train=dict(steps=200, eval_every=50, batch_size=32))
    results = grokjax.run_sweep(config, progress=False)
    losses = results.curves.train_loss.to_numpy()
    assert losses[-1] < 0.5 * np.log(11)


def test_vmap_width_is_measured_recorded_and_remembered(tmp_path, sweep, monkeypatch):
    import grokjax.engine as engine

    config = sweep(grid=dict(seed=list(range(12))))
    program = Program.build(config.runs()[0], config.runs())
    cache = tmp_path / "widths.json"
    k, choice = tune_runs_per_batch(program, config.runs(), 12, cache)
    assert choice["source"] == "measured" and set(choice["run_steps_per_s"]) == {"1", "8", "12"}
    assert str(k) in choice["run_steps_per_s"] and all(r > 0 for r in choice["run_steps_per_s"].values())
    # 12 runs: width 8 pads the working set to 16 slots, so its rate counts 12 / 16
    useful = {int(w): r * (12 / (-(-12 // int(w)) * int(w))) for w, r in choice["run_steps_per_s"].items()}
    assert useful[k] >= 0.97 * max(useful.values())
    monkeypatch.setattr(engine, "_MEASURED", {})  # a new process: the rates come from the file
    again, choice_again = tune_runs_per_batch(program, config.runs(), 12, cache)
    assert (again, choice_again["source"], choice_again["run_steps_per_s"]) == (k, "measured earlier",
                                                                                 choice["run_steps_per_s"])
    # another budget (steps) costs the same per step: nothing to measure; an explicit width wins
    assert tune_runs_per_batch(Program.build(sweep(train=dict(steps=90)), config.runs()), config.runs(), 12,
                               cache)[1]["source"] == "measured earlier"
    pinned = sweep(train=dict(runs_per_batch=4))
    assert tune_runs_per_batch(Program.build(pinned), pinned.runs(), 12) == (4, dict(source="config"))
    meta = grokjax.run_sweep(config, progress=False).meta["groups"][0]
    assert meta["runs_per_batch"] == k and meta["runs_per_batch_choice"]["source"] == "measured earlier"


def test_resumed_group_keeps_its_vmap_width(sweep):
    import dataclasses

    config = sweep(train=dict(steps=20), grid=dict(seed=[0, 1, 2, 3]))
    runs = config.runs()
    program = Program.build(runs[0], runs)
    rounds = []
    stats = train_group(program, runs, list(range(4)),  # the states are donated to the next round: copy
                        lambda r, gs: rounds.append(dataclasses.replace(gs, states=jax.tree.map(jnp.copy, gs.states))))
    resumed = train_group(program, runs, list(range(4)), lambda r, gs: None,
                          resume=dataclasses.replace(rounds[0], runs_per_batch=3))
    assert stats.runs_per_batch in (1, 4) and resumed.runs_per_batch == 3
    assert resumed.runs_per_batch_choice == dict(source="checkpoint")


@pytest.mark.parametrize("n, expected", [(20, 1), (100, 4), (7, 1), (60, 3)])
def test_evals_per_call_divides(n, expected):
    assert evals_per_call(n) == expected and n % expected == 0


def test_program_uses_the_task_table(sweep):
    program = Program.build(sweep(task=dict(name="div", p=13)))
    assert program.task.size == 13 * 12


# --- chunking, repacking, sharding -------------------------------------------------------------


def test_chunked_and_repacked_grid_equals_one_chunk(sweep):
    config = sweep(task=dict(p=23), train=dict(steps=300, eval_every=10, runs_per_batch=2),
                   events=dict(patience=2), grid=dict(data_fraction=[0.9, 0.3], seed=[0, 1, 2, 3]))
    whole = grokjax.run_sweep(config, progress=False)
    chunked = grokjax.run_sweep(config, progress=False, max_runs_per_chunk=3)
    # the cap of 3 is rounded up to a multiple of runs_per_batch, so every run sees one vmap width
    assert whole.meta["groups"][0]["widths"][0] == 8 and chunked.meta["groups"][0]["widths"][0] == 4
    pd.testing.assert_frame_equal(whole.runs, chunked.runs, check_exact=True)
    pd.testing.assert_frame_equal(whole.curves, chunked.curves, check_exact=True)


def test_repacking_saves_compute_when_most_runs_finish_early(sweep):
    # 6 runs grok within ~700 steps at 80-90 % data; the two at 30 % train for the whole budget
    config = sweep(task=dict(p=23), train=dict(steps=1500, eval_every=10, runs_per_batch=1), events=dict(patience=2),
                   grid=dict(data_fraction=[0.9, 0.85, 0.8, 0.3], seed=[0, 1]))
    results = grokjax.run_sweep(config, progress=False)
    group = results.meta["groups"][0]
    assert group["widths"][0] == 8 and group["widths"][-1] < 8
    assert group["slot_steps"] <= 0.8 * 8 * 1500  # without repacking every slot runs to the end
    slow = results.runs.query("data_fraction == 0.3")
    assert (slow.final_step == 1500).all() and results.runs.query("data_fraction > 0.5").done.all()


SHARDED = """
import sys, grokjax
sys.path.insert(0, {tests!r})
from conftest import make_sweep
config = make_sweep(train=dict(steps=40, eval_every=10, runs_per_batch=1),
                    grid=dict(lr=[1e-2, 1e20], seed=[0, 1, 2, 3, 4]))
import jax
assert len(jax.devices()) == 8, jax.devices()
r = grokjax.run_sweep(config, progress=False, devices={devices}, max_runs_per_chunk={chunk})
r.runs.to_parquet({out!r} + "/runs.parquet"); r.curves.to_parquet({out!r} + "/curves.parquet")
print(r.meta["groups"][0]["widths"], r.meta["groups"][0]["devices"])
"""


@pytest.mark.parametrize("devices, chunk", [(8, "None"), (4, 4)])
def test_sharded_grid_equals_one_device(tmp_path, sweep, devices, chunk):
    import os
    import subprocess
    import sys
    from pathlib import Path

    # one width everywhere (a measured one could differ between the processes): the same kernels
    config = sweep(train=dict(steps=40, eval_every=10, runs_per_batch=1),
                   grid=dict(lr=[1e-2, 1e20], seed=[0, 1, 2, 3, 4]))
    single = grokjax.run_sweep(config, progress=False)
    script = SHARDED.format(tests=str(Path(__file__).parent), out=str(tmp_path), devices=devices, chunk=chunk)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    widths, used = proc.stdout.split("] ")
    assert int(used) == devices and all(int(w) % devices == 0 for w in widths.strip("[").split(","))
    sharded_runs = pd.read_parquet(tmp_path / "runs.parquet")
    assert len(sharded_runs) == 10  # padding never shows
    pd.testing.assert_frame_equal(sharded_runs, single.runs, rtol=1e-4, atol=1e-5)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "curves.parquet"), single.curves, rtol=1e-4, atol=1e-5)
    assert sharded_runs[sharded_runs.lr == 1e20].diverged.all() and not sharded_runs[sharded_runs.lr == 1e-2].diverged.any()


FLOAT64 = """
import sys, grokjax
sys.path.insert(0, {tests!r})
from conftest import make_sweep
import jax
r = grokjax.run_sweep(make_sweep(train=dict(steps=20, eval_every=10, precision="float64")), progress=False)
from grokjax.engine import Program
p = Program.build(make_sweep(train=dict(precision="float64")))
state = p.init_run({{k: v[0] for k, v in __import__("grokjax.engine").engine.hp_arrays([p.config]).items()}})
print(sorted({{str(w.dtype) for w in jax.tree.leaves(state.params)}}), r.runs.final_train_loss.iloc[0])
"""


def test_precision_options(tmp_path, sweep):
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run([sys.executable, "-c", FLOAT64.format(tests=str(Path(__file__).parent))],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    dtypes, loss64 = proc.stdout.rsplit(" ", 1)
    assert dtypes == "['float64']"
    f32 = grokjax.run_sweep(sweep(train=dict(steps=20, eval_every=10)), progress=False)
    bf16 = grokjax.run_sweep(sweep(train=dict(steps=20, eval_every=10, precision="bfloat16")), progress=False)
    # float64 draws its initial weights at 64 bits (other numbers than float32's): it must train
    assert float(loss64) < 0.75 * np.log(23)
    assert abs(bf16.runs.final_train_loss.iloc[0] - f32.runs.final_train_loss.iloc[0]) < 0.2
    assert bf16.runs.final_train_loss.iloc[0] != f32.runs.final_train_loss.iloc[0]
