"""The plug-in contract: users' tasks, models, losses and any optax optimizer in a grid."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from user_plugins import FlatNet, penalized_cross_entropy, weighted_sum

import grokjax
from grokjax.program import split_mask

USER = dict(task=dict(name="user_plugins:weighted_sum", p=7, k=3, data_fraction=0.5),
            model=dict(name="user_plugins:flat_net", width=32),
            optimizer=dict(name="adamw", lr=1e-2, weight_decay=0.5),
            train=dict(steps=30, eval_every=10, loss="user_plugins:penalized_cross_entropy"))


def hand_loop(model, task, loss, tx, seed, data_fraction, steps, eval_every):
    """A plain single-run training loop of the same functions: the reference a grid must match.
    It uses grokjax's split (a function of seed and fraction) and its initialization key."""
    inputs, labels = jnp.asarray(task.inputs), jnp.asarray(task.labels)
    mask = split_mask(seed, data_fraction, task.size)
    weights = mask.astype(jnp.float32)
    params = model.init(jax.random.fold_in(jax.random.PRNGKey(seed), 1), inputs[:1])["params"]
    state = tx.init(params)

    def train_loss(p):
        return jnp.sum(loss(model.apply({"params": p}, inputs), labels) * weights) / weights.sum()

    @jax.jit
    def step(params, state):
        grads = jax.grad(train_loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    curve = []
    for s in range(1, steps + 1):
        params, state = step(params, state)
        if s % eval_every == 0:
            curve.append(float(train_loss(params)))
    return np.array(curve)


def test_user_task_model_and_loss_in_a_grid_equal_a_hand_written_loop():
    config = grokjax.sweep_from_dict(dict(USER, train=dict(USER["train"], runs_per_batch=4),
                                          grid=dict(seed=[0, 1], lr=[1e-2, 3e-3])))
    results = grokjax.run_sweep(config, progress=False)
    assert len(results.meta["groups"]) == 1 and results.runs["task"].eq("user_plugins:weighted_sum").all()
    assert {"k", "width"} <= set(results.runs.columns)  # the plug-ins' settings are columns
    task = weighted_sum(7, 3)
    for row in results.runs.itertuples():
        tx = optax.adamw(row.lr, b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.5)
        ref = hand_loop(FlatNet(7, 7, 32), task, penalized_cross_entropy, tx, row.seed, 0.5, 30, 10)
        got = results.curves.query(f"run_id == {row.run_id}").train_loss.to_numpy()
        np.testing.assert_allclose(got, ref, rtol=3e-3, atol=1e-4)
        assert got[-1] < got[0]  # and it learns


def test_lion_grid_is_one_program_and_each_run_equals_optax_lion_alone(sweep, no_persistent_cache):
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, _, **kw: compiles.append(event) if event == "/jax/core/compile/backend_compile_duration"
        else None)

    def count(config):
        before = len(compiles)
        results = grokjax.run_sweep(config, progress=False, tune_cache=None)
        return results, len(compiles) - before

    base = dict(optimizer=dict(name="lion", weight_decay=0.1), train=dict(steps=30, eval_every=10, runs_per_batch=4))
    count(sweep(**base, grid=dict(seed=[4, 5, 6, 7])))  # compiles the small host-side helpers once
    grid, n_grid = count(sweep(**base, grid=dict(b1=[0.8, 0.95], lr=[1e-3, 3e-4])))
    _, n_seeds = count(sweep(**base, grid=dict(seed=[0, 1, 2, 3])))
    # four (b1, lr) values compile exactly what four seeds do: the init and the training period
    assert len(grid.meta["groups"]) == 1 and n_grid == n_seeds == 2, (n_grid, n_seeds)
    task = grokjax.make_task("add", 23)
    model = grokjax.sweep_from_dict(dict(model=dict(embed_dim=32, width=64))).model
    from grokjax.models import mlp

    for row in grid.runs.itertuples():
        tx = optax.lion(row.lr, b1=row.b1, b2=0.99, weight_decay=0.1)
        ref = hand_loop(mlp(23, 23, model.embed_dim, model.width), task, grokjax.losses.cross_entropy, tx, 0, 0.5,
                        30, 10)
        got = grid.curves.query(f"run_id == {row.run_id}").train_loss.to_numpy()
        np.testing.assert_allclose(got, ref, rtol=3e-3, atol=1e-4)


@pytest.mark.parametrize("plugins", [
    dict(),
    dict(model="transformer", model_settings=dict(d_model=16, n_heads=2, d_mlp=32)),
    dict(task="sparse_parity", task_settings=dict(n=8, k=3, examples=0), model_settings=dict(width=32)),
    dict(task="user_plugins:weighted_sum", model="user_plugins:flat_net",
         loss="user_plugins:penalized_cross_entropy", optimizer="lion"),
    dict(task=weighted_sum, model=FlatNet, loss=penalized_cross_entropy, optimizer=optax.adam),
    dict(loss="mse", optimizer="sgd", model_settings=dict(width=32, embed_dim=8)),
], ids=["builtins", "transformer", "sparse_parity", "user_by_path", "user_callables", "mse_sgd"])
def test_contract_check_passes_for_builtins_and_users_plugins(plugins):
    plugins = dict(plugins)
    if plugins.get("task", "add") == "add":
        plugins["task_settings"] = dict(p=11)
    metrics = grokjax.check_plugins(**plugins)
    assert np.isfinite(metrics["train_loss"])


def test_contract_check_names_a_loss_that_is_not_finite():
    def nan_loss(outputs, labels):
        return jnp.full(labels.shape, jnp.nan)

    with pytest.raises(AssertionError, match="one training step from the initial parameters was not finite"):
        grokjax.check_plugins(loss=nan_loss, task_settings=dict(p=11), model_settings=dict(width=32, embed_dim=8))


def test_digits_with_mse_and_a_large_init_scale_passes_the_contract():
    pytest.importorskip("sklearn")
    grokjax.check_plugins(task="digits", loss="mse", model_settings=dict(width=32))
    config = grokjax.sweep_from_dict(dict(task=dict(name="digits"), model=dict(init_scale=8.0, width=32),
                                          train=dict(loss="mse", steps=20, eval_every=10)))
    assert grokjax.run_sweep(config, progress=False).runs.task.item() == "digits"


def test_register_a_plugin_from_python():
    grokjax.register_task("my_weighted_sum", weighted_sum)
    config = grokjax.sweep_from_dict(dict(task=dict(name="my_weighted_sum", p=5, k=2), train=dict(steps=10)))
    assert config.task.name == "my_weighted_sum" and config.task.k == 2
    with pytest.raises(grokjax.SweepError, match="is a built-in task"):
        grokjax.register_task("add", weighted_sum)


BAD_PLUGINS = [
    (dict(task=dict(name="user_plugins:string_task")), "task.name = 'user_plugins:string_task'",
     "integer tokens or float features"),
    (dict(task=dict(name="user_plugins:not_a_task")), "returned dict", "expected a grokjax.Task"),
    (dict(task=dict(name="user_plugins:raising_task")), "user_plugins:raising_task", "RuntimeError: disk on fire"),
    (dict(task=dict(name="user_plugins:weighted_sum", q=3)), "unknown key 'q' in [task]", "takes: p, k"),
    (dict(model=dict(name="user_plugins:wide_net")), "maps inputs (2, 2) to outputs (2, 12)",
     "expected [B, n_classes]"),
    (dict(model=dict(name="user_plugins:Boom")), "model.name = 'user_plugins:Boom'", "ValueError: boom"),
    (dict(train=dict(loss="user_plugins:scalar_loss")), "train.loss = 'user_plugins:scalar_loss' returned shape ()",
     "per-example losses [B]"),
    (dict(optimizer=dict(name="user_plugins:branching_sgd", decay=0.95)),
     "optimizer.name = 'user_plugins:branching_sgd'", "make the setting an integer or a boolean"),
    (dict(optimizer=dict(name="user_plugins:FlatNet")), "optimizer.name = 'user_plugins:FlatNet' takes no "
     "learning_rate", "fn(learning_rate, **settings)"),
    (dict(optimizer=dict(name="user_plugins:flat_net")), "optimizer.name = 'user_plugins:flat_net' takes no", ""),
    (dict(model=dict(name="user_plugins:not_a_task")), "model.name = 'user_plugins:not_a_task' takes 0 "
     "positional arguments, not 2", "expected fn(n_symbols, n_classes"),
    (dict(model=dict(name="user_plugins:penalized_cross_entropy")),
     "model.name = 'user_plugins:penalized_cross_entropy' raised TypeError", "dtype"),
    (dict(model=dict(name="user_plugins:dict_model")), "model.name = 'user_plugins:dict_model' returned dict",
     "expected fn(n_symbols, n_classes, **settings) -> flax.linen.Module"),
    (dict(task=dict(name="user_plugins:jax_task")), "returned ArrayImpl", "expected a grokjax.Task"),
]


@pytest.mark.parametrize("raw, where, what", BAD_PLUGINS, ids=[b[1][:40] for b in BAD_PLUGINS])
def test_broken_plugins_are_refused_before_training_by_name(raw, where, what, tmp_path):
    raw = {"task": dict(name="add", p=11), **raw, "train": dict(steps=10, **raw.get("train", {}))}
    with pytest.raises(grokjax.SweepError) as e:
        grokjax.run_sweep(grokjax.sweep_from_dict(raw), out=tmp_path / "out", progress=False)
    assert where in str(e.value) and what in str(e.value), str(e.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_broken_plugin_beside_the_sweep_file_exits_2_without_a_traceback(tmp_path):
    import subprocess
    import sys

    (tmp_path / "mine.py").write_text("import flax.linen as nn\n\nclass Net(nn.Module):\n    n_symbols: int\n"
                                      "    n_classes: int\n\n    @nn.compact\n    def __call__(self, x):\n"
                                      "        return nn.Dense(3)(x.astype(float))\n")
    (tmp_path / "s.toml").write_text('[task]\np = 11\n[model]\nname = "mine:Net"\n[train]\nsteps = 10\n')
    proc = subprocess.run([sys.executable, "-m", "grokjax", "run", "s.toml", "--out", "r"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "model.name = 'mine:Net' maps inputs (2, 2) to outputs (2, 3)" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_the_examples_sweep_loads_its_own_package_and_trains():
    from pathlib import Path

    config = grokjax.load_sweep(Path(__file__).parent.parent / "examples" / "lion_grid.toml")
    assert config.task.name == "my_grokking:modular_sum" and config.optimizer.name == "lion"
    short = config.replace(steps=20, eval_every=10, p=11, runs_per_batch=9)  # all 9 at once: no width to measure
    results = grokjax.run_sweep(short, progress=False)
    assert len(results.runs) == 9 and len(results.meta["groups"]) == 1
    assert results.runs.final_train_loss.notna().all()


def test_a_sweep_files_folder_is_on_the_python_path_only_while_it_loads(tmp_path):
    """Plug-ins beside a sweep file import by name while it loads; the path is not kept, and a
    later look-up finds the modules imported then."""
    import sys

    from grokjax.experiment import build_program
    from grokjax.plugins import resolve

    (tmp_path / "beside_the_sweep_file.py").write_text(
        "from grokjax.tasks import BUILTIN_TASKS\n\n\ndef task(p: int = 7):\n    return BUILTIN_TASKS['add'](p=p)\n")
    (tmp_path / "s.toml").write_text('[task]\nname = "beside_the_sweep_file:task"\np = 11\n[train]\nsteps = 10\n')
    before = list(sys.path)
    config = grokjax.load_sweep(tmp_path / "s.toml")
    assert sys.path == before and str(tmp_path) not in sys.path
    resolve.cache_clear()  # as register() does: the next look-up imports by name again
    assert build_program(config, check=False).task.size == 11 * 11
