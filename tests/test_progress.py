"""Progress measures: each against its definition written out in numpy, and in a sweep's tables."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest

import grokjax
from grokjax.losses import cross_entropy
from grokjax.progress import (
    Measures,
    concentration,
    group_norms,
    key_frequencies,
    measure,
    measures_for,
    restricted_excluded,
    spectrum,
)

P = 11
RNG = np.random.default_rng(1)


def test_which_measures_apply_to_which_task():
    assert measures_for(grokjax.make_task("add", P)) == Measures(True, True, P, True)
    assert measures_for(grokjax.make_task("sub", P)).restricted
    assert not measures_for(grokjax.make_task("mul", P)).restricted  # labels not uniform (0 is frequent)
    assert measures_for(grokjax.make_task("div", P)) == Measures(True, True, P, False)  # not the full grid
    assert measures_for(grokjax.tasks.sparse_parity(n=8, k=3, examples=0)).modulus == 0
    assert not measures_for(grokjax.make_task("add", P), enabled=False).enabled


def test_group_norms_split_the_parameter_norm():
    model = grokjax.models.transformer(P, P, d_model=16, n_heads=2, d_mlp=32)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32))["params"]
    norms = group_norms(params)
    assert set(norms) == {"norm_embeddings", "norm_attention", "norm_mlp", "norm_readout"}
    total = np.sqrt(sum(float(v) ** 2 for v in norms.values()))
    np.testing.assert_allclose(total, float(optax.tree.norm(params)), rtol=1e-5)
    np.testing.assert_allclose(float(norms["norm_readout"]), float(jnp.linalg.norm(params["unembed"])), rtol=1e-5)


def test_fourier_spectrum_finds_the_frequencies_an_embedding_is_made_of():
    p = 31
    a = np.arange(p)[:, None]
    embed = 3 * np.cos(2 * np.pi * 2 * a / p + RNG.normal(size=(1, 8))) + 2 * np.sin(2 * np.pi * 4 * a / p) \
        + 0.01 * RNG.normal(size=(p, 8))
    power = np.asarray(spectrum(jnp.asarray(embed, jnp.float32), p))
    want = (np.abs(np.fft.fft(embed, axis=0)[1:(p - 1) // 2 + 1]) ** 2).sum(1)  # |DFT_k|^2 over the columns
    np.testing.assert_allclose(power, want, rtol=1e-4)
    assert np.flatnonzero(np.asarray(key_frequencies(jnp.asarray(power)))).tolist() == [1, 3]  # k = 2 and 4
    c = concentration(jnp.asarray(power))
    flat = concentration(jnp.ones(5))
    assert 0.6 < float(c["fourier_gini"]) < 1 and float(flat["fourier_gini"]) < 1e-6
    np.testing.assert_allclose(float(flat["fourier_ipr"]), 1 / 5, rtol=1e-6)


def reference_projection(logits, a, b, keys):
    """Least squares onto the mean and cos/sin(w_k (a + b)) over the whole p x p grid."""
    w = 2 * np.pi / P
    columns = [np.ones(len(a))] + [f(w * k * (a + b)) for k in keys for f in (np.cos, np.sin)]
    basis = np.stack(columns, 1)
    coef, *_ = np.linalg.lstsq(basis, logits, rcond=None)
    mean_part = basis[:, :1] @ coef[:1]
    return basis @ coef, basis @ coef - mean_part


def test_restricted_and_excluded_losses_equal_their_definition():
    task = grokjax.make_task("add", P)
    a, b = task.inputs[:, 0], task.inputs[:, 1]
    keys = np.zeros((P - 1) // 2, bool)
    keys[[0, 3]] = True  # k = 1 and 4
    # logits with a key-frequency part, a non-key part and noise
    c = np.arange(P)[None, :]
    logits = (4 * np.cos(2 * np.pi * 1 * ((a + b)[:, None] - c) / P) + np.cos(2 * np.pi * 2 * (a[:, None] - c) / P)
              + 0.3 * RNG.normal(size=(P * P, P))).astype(np.float32)
    mask = np.arange(P * P) % 3 != 0
    got = restricted_excluded(jnp.asarray(logits), jnp.asarray(task.labels), jnp.asarray(task.labels),
                              jnp.asarray(mask), jnp.asarray(keys), P, cross_entropy)
    kept, key_part = reference_projection(logits.astype(np.float64), a, b, [1, 4])
    ce = lambda x, y: np.asarray(cross_entropy(jnp.asarray(x, jnp.float32), jnp.asarray(y)))  # noqa: E731
    np.testing.assert_allclose(float(got["restricted_loss"]), ce(kept, task.labels).mean(), rtol=1e-4)
    excluded = ce(logits - key_part, task.labels)[mask].mean()
    np.testing.assert_allclose(float(got["excluded_loss"]), excluded, rtol=1e-4)
    assert float(got["restricted_loss"]) < ce(logits, task.labels).mean() < excluded  # the key part is the signal


def test_softmax_collapse_counts_exactly_one_hot_training_rows():
    outputs = jnp.array([[200.0, 0.0], [2.0, 0.0], [300.0, -5.0], [1.0, 1.0]])
    params = {"embed": jnp.ones((2, 2))}
    m = measure(Measures(True, True, 0, False), params, outputs, jnp.zeros(4, jnp.int32), jnp.zeros(4, jnp.int32),
                jnp.array([True, True, False, True]), cross_entropy)
    np.testing.assert_allclose(float(m["softmax_collapse"]), 1 / 3)  # row 0 of the three training rows


@pytest.mark.slow
def test_the_smallest_progress_check_records_the_measures_and_they_move_before_grokking(sweep):
    """A CPU-second version of sweeps/nanda2023_cpu.toml's check with the quickstart's MLP: the
    columns are recorded, key frequencies appear before the grok step, the restricted loss falls
    from memorization to grokking while the training set comes to need the key frequencies."""
    from grokjax.analysis import progress_steps

    train = dict(steps=300, eval_every=20, runs_per_batch=2, progress_measures=True)  # make_sweep turns them off
    base = dict(task=dict(p=47, data_fraction=0.6), model=dict(name="mlp", embed_dim=64, width=256),
                optimizer=dict(lr=1e-2, weight_decay=3.0))
    results = grokjax.run_sweep(sweep(**base, train=train, grid=dict(seed=[0, 1])), progress=False)
    curves, runs = results.curves, results.runs
    for column in ("softmax_collapse", "fourier_gini", "fourier_ipr", "key_frequencies", "restricted_loss",
                   "excluded_loss", "norm_embeddings", "norm_mlp", "norm_readout"):
        assert column in curves, column
    assert "key_frequencies" in runs and "final_restricted_loss" in runs
    steps = progress_steps(curves).set_index("run_id")
    for run in runs.itertuples():
        c = curves[curves.run_id == run.run_id].set_index("step")
        assert pd.notna(run.grok_step) and steps.loc[run.run_id, "keys_first_step"] < run.grok_step
        assert c.loc[run.grok_step, "restricted_loss"] < 0.7 * c.loc[run.memorize_step, "restricted_loss"]
        assert c.loc[run.grok_step, "excluded_loss"] > 3 * c.loc[run.grok_step, "train_loss"]
    off = grokjax.run_sweep(sweep(**base, train=dict(train, steps=40, progress_measures=False)), progress=False)
    assert "fourier_gini" not in off.curves
    np.testing.assert_allclose(off.curves["test_loss"], curves.query("run_id == 0")["test_loss"][:2], rtol=1e-6)
