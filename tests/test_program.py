import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import grokjax
from grokjax.experiment import build_program
from grokjax.program import draw_batch, split_mask


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


@pytest.fixture(scope="module")
def seed_2_alone():
    """The run (seed 2, weight decay 1) trained alone: it does not depend on a grid's width."""
    from conftest import make_sweep

    return grokjax.run_sweep(make_sweep(task=dict(data_fraction=0.5), optimizer=dict(weight_decay=1.0),
                                        train=dict(seed=2)), progress=False)


@pytest.mark.parametrize("runs_per_batch", [8, 3, 1])
def test_run_in_a_grid_follows_the_same_curve_as_alone(sweep, seed_2_alone, runs_per_batch):
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
    assert len(in_grid) == 6
    alone, accuracies = curves_of(seed_2_alone, 0), ["train_acc", "test_acc"]
    pd.testing.assert_frame_equal(in_grid.drop(columns=accuracies), alone.drop(columns=accuracies),
                                  rtol=3e-3, atol=1e-4)  # measured: <= 1e-3
    # accuracies: at most one of the ~264 examples on either side of its decision boundary
    np.testing.assert_allclose(in_grid[accuracies], alone[accuracies], rtol=0, atol=1.01 / 264)


# --- the phenomenon ---------------------------------------------------------------------------


@pytest.mark.slow
def test_grokking_happens_and_no_weight_decay_with_little_data_does_not(user_compiler):
    """p=47 MLP: at 70 % data and weight decay 1 train accuracy reaches 0.99 within a few dozen
    steps and test accuracy only hundreds of steps later; at 30 % without decay it never does."""
    config = grokjax.sweep_from_dict(dict(
        task=dict(name="add", p=47), model=dict(name="mlp", embed_dim=64, width=256),
        optimizer=dict(lr=1e-2), train=dict(steps=500, eval_every=10, runs_per_batch=1),  # the width a 2-core
        grid=dict(data_fraction=[0.7, 0.3], weight_decay=[1.0, 0.0])))  # CPU measures for it: none to measure
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
    # the good runs trained without the absurd ones, each by itself (runs_per_batch = 1: one run at
    # a time, unbatched, as a sweep of one run computes it), in one sweep
    alone = grokjax.run_sweep(sweep(train=dict(steps=40, runs_per_batch=1), grid=dict(seed=[0, 1])), progress=False)
    for seed in (0, 1):
        pd.testing.assert_frame_equal(curves_of(results, good[good.seed == seed].run_id.item()),
                                      curves_of(alone, alone.runs.query(f"seed == {seed}").run_id.item()),
                                      rtol=1e-4, atol=1e-5)


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


def test_program_uses_the_task_table(sweep):
    program = build_program(sweep(task=dict(name="div", p=13)))
    assert program.task.size == 13 * 12


FLOAT64 = """
import sys, grokjax
sys.path.insert(0, {tests!r})
from conftest import make_sweep
import jax
r = grokjax.run_sweep(make_sweep(train=dict(steps=20, eval_every=10, precision="float64")), progress=False)
from grokjax.experiment import build_program, one_run, run_settings
config = make_sweep(train=dict(precision="float64"))
state = build_program(config).init_run(one_run(run_settings([config])))
try:  # 64-bit mode is on for the process now: a float32 program would compute other numbers
    build_program(make_sweep())
except grokjax.SweepError as e:
    assert "64-bit mode is on in this process" in str(e), e
else:
    raise AssertionError("a float32 program was built in 64-bit mode")
print(sorted({{str(w.dtype) for w in jax.tree.leaves(state.params)}}), r.runs.final_train_loss.iloc[0])
"""


@pytest.mark.slow
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


@pytest.mark.parametrize("precision, marker", [("float32", "HIGHEST"), ("tensorfloat32", "HIGH")])
@pytest.mark.parametrize("model", [dict(name="mlp", embed_dim=16, width=32),
                                   dict(name="transformer", d_model=16, n_heads=2, d_mlp=32)])
def test_the_compiled_program_carries_the_requested_matmul_precision(sweep, precision, marker, model):
    """No test here runs on a GPU, where float32 matmuls would otherwise run as TF32: the lowered
    program (forward, backward, evaluation, measures) must ask for the precision itself."""
    from grokjax.experiment import run_settings
    from grokjax.program import make_grid_init, make_grid_period

    config = sweep(model=model, train=dict(steps=10, eval_every=10, precision=precision))
    program, settings = build_program(config), run_settings([config])
    states = jax.eval_shape(make_grid_init(program, 1, 1), settings)
    text = make_grid_period(program, 1, 1, 1).lower(states, settings).as_text()
    dots = [line for line in text.splitlines() if "stablehlo.dot_general" in line or "stablehlo.dot " in line]
    assert len(dots) > 5 and all(f"precision = [{marker}, {marker}]" in line for line in dots), dots[:3]
