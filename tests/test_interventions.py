"""Interventions: each equals a hand-written reference, and every coefficient is a grid axis."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest

import grokjax
from grokjax.interventions import fixed_norm, grokfast_ema, grokfast_ma, orthograd, wrap
from grokjax.losses import stablemax
from grokjax.models import mlp
from grokjax.program import noisy_labels, split_mask

RNG = np.random.default_rng(0)
PARAMS = {"a": jnp.asarray(RNG.normal(size=(3, 4)), jnp.float32), "b": jnp.asarray(RNG.normal(size=5), jnp.float32)}
GRADS = [jax.tree.map(lambda p: jnp.asarray(RNG.normal(size=p.shape), jnp.float32), PARAMS) for _ in range(7)]


def run(tx, grads=GRADS, params=PARAMS):
    state, outs = tx.init(params), []
    for g in grads:
        u, state = tx.update(g, state, params)
        outs.append(u)
    return outs


def test_grokfast_ema_equals_the_official_filter():
    # official gradfilter_ema: mu starts at the first gradient, then mu = a mu + (1 - a) g; g += lamb mu
    alpha, lamb = 0.9, 2.5
    mu, want = None, []
    for g in GRADS:
        mu = {k: np.asarray(v) for k, v in g.items()} if mu is None else mu
        mu = {k: alpha * mu[k] + (1 - alpha) * np.asarray(g[k]) for k in g}
        want.append({k: np.asarray(g[k]) + lamb * mu[k] for k in g})
    for got, ref in zip(run(grokfast_ema(alpha, lamb)), want):
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-6, atol=1e-6)


def test_grokfast_ma_equals_the_official_filter():
    # official gradfilter_ma (warmup=True): the mean of a deque of the last `window` gradients,
    # applied only once the deque is full
    window, lamb = 3, 5.0
    queue, want = collections.deque(maxlen=window), []
    for g in GRADS:
        queue.append({k: np.asarray(v) for k, v in g.items()})
        full = len(queue) == window
        want.append({k: np.asarray(g[k]) + (lamb * np.mean([q[k] for q in queue], 0) if full else 0) for k in g})
    for got, ref in zip(run(grokfast_ma(window, lamb)), want):
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="grokfast_window"):
        grokfast_ma(0)


def test_orthograd_removes_the_radial_component_and_keeps_the_norm():
    (got,) = run(orthograd(), GRADS[:1])
    for k, w in PARAMS.items():
        w, g = np.asarray(w, np.float64).ravel(), np.asarray(GRADS[0][k], np.float64).ravel()
        perp = g - w @ g / (w @ w + 1e-30) * w
        ref = perp * np.linalg.norm(g) / (np.linalg.norm(perp) + 1e-30)
        np.testing.assert_allclose(np.ravel(got[k]), ref, rtol=1e-5, atol=1e-6)
        assert abs(np.ravel(got[k]) @ w) < 1e-4


def test_fixed_norm_lands_on_the_sphere_and_zero_is_off():
    norm0 = float(optax.tree.norm(PARAMS))
    for factor in (0.5, 1.0, 2.0):
        tx = optax.chain(optax.sgd(0.3), fixed_norm(factor))
        state, params = tx.init(PARAMS), PARAMS
        for g in GRADS:
            u, state = tx.update(g, state, params)
            params = optax.apply_updates(params, u)
            np.testing.assert_allclose(float(optax.tree.norm(params)), factor * norm0, rtol=1e-5)
    (off,) = run(optax.chain(optax.sgd(0.3), fixed_norm(0.0)), GRADS[:1])
    (plain,) = run(optax.sgd(0.3), GRADS[:1])
    for k in PARAMS:
        np.testing.assert_array_equal(off[k], plain[k])


def test_stablemax_equals_its_formula_and_ranks_like_softmax():
    x = RNG.normal(size=(6, 5)).astype(np.float32) * 4
    y = RNG.integers(0, 5, 6)
    s = np.where(x >= 0, x + 1, 1 / (1 - x))
    want = -np.log(s[np.arange(6), y] / s.sum(1))
    np.testing.assert_allclose(stablemax(jnp.asarray(x), jnp.asarray(y)), want, rtol=1e-5)
    # huge logits: softmax rounds to one-hot (its loss is exactly 0), StableMax stays positive
    big = jnp.array([[200.0, 0.0, -3.0]])
    assert float(grokjax.losses.cross_entropy(big, jnp.array([0]))[0]) == 0.0
    assert float(stablemax(big, jnp.array([0]))[0]) > 0.0


def test_label_noise_corrupts_exactly_that_share_of_training_labels():
    labels = jnp.asarray(RNG.integers(0, 11, 400), jnp.int32)
    mask = split_mask(3, 0.5, 400)
    noisy = noisy_labels(3, 0.25, mask, labels, 11)
    wrong = np.asarray(noisy != labels)
    assert not wrong[~np.asarray(mask)].any()  # test labels stay clean
    assert wrong.sum() == round(0.25 * int(mask.sum()))  # the share, of training rows, every one wrong
    assert (np.asarray(noisy) < 11).all()
    np.testing.assert_array_equal(noisy_labels(3, 0.0, mask, labels, 11), labels)
    np.testing.assert_array_equal(noisy_labels(3, 0.25, mask, labels, 11), noisy)  # a function of the seed


def reference_run(seed, data_fraction, label_noise, lr, alpha, lamb, factor, steps):
    """One run in plain jnp: the Grokfast EMA, ⊥Grad and the norm constraint written out around
    ``optax.adamw``; the reference the grid must match."""
    task = grokjax.make_task("add", 23)
    model = mlp(23, 23, 32, 64)
    inputs = jnp.asarray(task.inputs)
    mask = split_mask(seed, data_fraction, task.size)
    labels = noisy_labels(seed, label_noise, mask, jnp.asarray(task.labels), 23)
    weights = mask.astype(jnp.float32)
    params = model.init(jax.random.fold_in(jax.random.PRNGKey(seed), 1), inputs[:1])["params"]
    norm0 = jnp.sqrt(sum(jnp.sum(w**2) for w in jax.tree.leaves(params)))
    tx = optax.adamw(lr, b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.5)
    state = tx.init(params)

    def loss(p):
        out = optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, inputs), labels)
        return jnp.sum(out * weights) / jnp.sum(weights)

    def perp(x, w):
        p = x - jnp.vdot(w, x) / (jnp.vdot(w, w) + 1e-30) * w
        return p * jnp.linalg.norm(x) / (jnp.linalg.norm(p) + 1e-30)

    @jax.jit
    def step(params, state, mu):
        g = jax.grad(loss)(params)
        mu = jax.tree.map(lambda m, x: alpha * m + (1 - alpha) * x, mu, g)
        g = jax.tree.map(perp, jax.tree.map(lambda x, m: x + lamb * m, g, mu), params)
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
        if factor > 0:
            norm = jnp.sqrt(sum(jnp.sum(w**2) for w in jax.tree.leaves(params)))
            params = jax.tree.map(lambda w: w * factor * norm0 / norm, params)
        return params, state, mu

    mu = jax.grad(loss)(params)  # the filter starts at the first gradient
    for _ in range(steps):
        params, state, mu = step(params, state, mu)
    return float(loss(params))


def test_every_coefficient_is_an_axis_of_one_program_and_each_run_equals_the_reference(sweep, no_persistent_cache):
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, _, **kw: compiles.append(event) if event == "/jax/core/compile/backend_compile_duration"
        else None)
    base = dict(optimizer=dict(lr=1e-2, weight_decay=0.5, grokfast="ema", orthograd=True, fixed_norm=1.0),
                task=dict(label_noise=0.1), train=dict(steps=20, eval_every=20, runs_per_batch=8,
                                                       progress_measures=False))

    def count(**grid):
        before = len(compiles)
        results = grokjax.run_sweep(sweep(**base, grid=grid), progress=False, tune_cache=None)
        return results, len(compiles) - before

    count(seed=list(range(16)))  # compiles the small host-side helpers once
    results, n_grid = count(grokfast_alpha=[0.8, 0.98], grokfast_lamb=[1.0, 3.0], fixed_norm=[0.0, 1.5],
                            label_noise=[0.0, 0.3])
    # 16 combinations of the four coefficients compile what 16 seeds do: the init and the period
    assert len(results.meta["groups"]) == 1 and n_grid == 2, n_grid
    for row in results.runs.iloc[[0, 15]].itertuples():  # every coefficient differs between the two
        want = reference_run(0, 0.5, row.label_noise, 1e-2, row.grokfast_alpha, row.grokfast_lamb,
                             row.fixed_norm, 20)
        np.testing.assert_allclose(row.final_train_loss, want, rtol=2e-3, atol=1e-4)


def test_wrap_adds_only_what_is_on():
    base = optax.sgd(0.1)
    assert wrap(base) is base
    with pytest.raises(ValueError, match="none, ema, ma"):
        wrap(base, grokfast="fast")
    state = wrap(base, "ma", grokfast_window=4, use_fixed_norm=False).init(PARAMS)
    assert state[0].window["a"].shape == (4, 3, 4)  # the MA filter holds `window` gradients per run


def test_interventions_wrap_an_optax_optimizer_of_the_grid(sweep):
    base = dict(optimizer=dict(name="lion", lr=1e-3, orthograd=True, grokfast_window=3),
                train=dict(steps=20, eval_every=10, runs_per_batch=2, progress_measures=False))
    results = grokjax.run_sweep(sweep(**base, grid=dict(grokfast=["none", "ma"])), progress=False, tune_cache=None)
    curves = results.curves
    assert np.isfinite(curves["train_loss"]).all() and len(results.meta["groups"]) == 2
    plain, filtered = (curves.query(f"run_id == {i}")["train_loss"].to_numpy() for i in (0, 1))
    assert not np.allclose(plain, filtered) and filtered[-1] < filtered[0]


@pytest.mark.slow
def test_the_smallest_stablemax_check_groks_without_weight_decay_only_with_both(sweep):
    """sweeps/stablemax_cpu.toml at p = 31: StableMax + ⊥AdamW groks with weight decay 0 within
    300 steps; plain cross-entropy with AdamW fits the training set and stays at chance."""
    base = dict(task=dict(p=31, data_fraction=0.6), model=dict(name="mlp", embed_dim=32, width=128, depth=2),
                optimizer=dict(lr=1e-2, weight_decay=0.0), train=dict(steps=300, eval_every=50, runs_per_batch=1))
    plain = grokjax.run_sweep(sweep(**base), progress=False, tune_cache=None).runs.iloc[0]
    both = grokjax.run_sweep(sweep(**{**base, "optimizer": dict(base["optimizer"], orthograd=True),
                                      "train": dict(base["train"], loss="stablemax")}),
                             progress=False, tune_cache=None).runs.iloc[0]
    assert plain.memorize_step <= 100 and pd.isna(plain.grok_step) and plain.final_test_acc < 0.05
    assert both.grok_step <= 300 and both.final_test_acc > 0.99
