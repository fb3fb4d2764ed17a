"""The local learning coefficient: the sampler against a posterior known in closed form, diverged
chains flagged, and per run inside the program (the same alone and in a grid)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import grokjax
from grokjax.errors import SweepError
from grokjax.llc import LLCConfig, default_nbeta, estimate, llc_key, sgld_chain


def _quadratic(params, key):
    return 0.5 * jnp.sum(jnp.square(params["w"]))  # a regular minimum: lambda = d / 2


def test_a_regular_minimum_has_half_its_dimension():
    """exp(-n beta |w|^2 / 2) is Gaussian: n beta E[L] = d / 2 exactly without localization (SGLD's
    discretization adds eps n beta / 4 = 2.5 % here)."""
    d, cfg = 10, LLCConfig(every=1, chains=8, draws=3000, burnin=200)
    out = estimate(cfg, llc_key(0, 0), {"w": jnp.zeros(d)}, _quadratic, 0.0, 1e-3, 0.0, 100.0)
    np.testing.assert_allclose(float(out["llc"]), d / 2 * 1.026, rtol=0.05)
    assert float(out["llc_std"]) < 0.5 and float(out["llc_diverged"]) == 0
    localized = estimate(cfg, llc_key(0, 0), {"w": jnp.zeros(d)}, _quadratic, 0.0, 1e-3, 100.0, 100.0)
    np.testing.assert_allclose(float(localized["llc"]), d / 2 * 100 / (100 + 100) * 1.0, rtol=0.08)  # gamma = n beta


def test_a_chain_whose_step_size_blows_it_up_is_flagged_not_averaged():
    cfg = LLCConfig(every=1, chains=3, draws=50)
    out = estimate(cfg, llc_key(0, 0), {"w": jnp.zeros(4)}, _quadratic, 0.0, 1.0, 0.0, 100.0)  # eps n beta = 100
    assert float(out["llc_diverged"]) == 3 and np.isnan(float(out["llc"])) and np.isnan(float(out["llc_std"]))


def test_a_draw_is_the_batch_loss_before_its_step_as_devinterps():
    """The first draw is the loss at w* itself (devinterp records each draw before its step), and
    the noise of a step has variance eps (devinterp's sqrt(lr) N(0, 1)): from a zero gradient and
    gamma = 0, one step moves w by sqrt(eps) z alone."""
    w0 = {"w": jnp.arange(3.0)}
    losses = sgld_chain(llc_key(0, 0), w0, _quadratic, 1e-2, 0.0, 5.0, 3)
    assert float(losses[0]) == pytest.approx(float(_quadratic(w0, None)))
    moved = estimate(LLCConfig(every=1, chains=1, draws=2), llc_key(0, 0), {"w": jnp.zeros(200)},
                     lambda p, k: 0.5 * jnp.mean(jnp.square(p["w"])), 0.0, 4e-2, 0.0, 1.0)
    # after one step w ~ N(0, eps): the mean of the two draws (0 and |w|^2 / 2d) is about eps / 4
    assert float(moved["llc"]) == pytest.approx(4e-2 / 4, rel=0.25)


def test_default_nbeta_is_devinterps():
    assert default_nbeta(64) == pytest.approx(64 / np.log(64)) and default_nbeta(1) == 1.0


def _llc_sweep(sweep, **grid):
    return sweep(task=dict(p=11), train=dict(steps=40, eval_every=10, llc_every=2, llc_chains=2, llc_draws=20,
                                             llc_batch_size=16, runs_per_batch=2), grid=grid)


def test_the_llc_per_run_in_a_grid_is_the_same_alone(sweep):
    grid = grokjax.run_sweep(_llc_sweep(sweep, llc_epsilon=[1e-4, 3e-4], seed=[0, 1]), progress=False)
    curves, runs = grid.curves, grid.runs
    for _, c in curves.groupby("run_id"):  # every 2nd evaluation, the last one included
        assert c["llc"].isna().tolist() == [True, False, True, False]
    last = curves.dropna(subset=["llc"]).groupby("run_id").tail(1).set_index("run_id")
    np.testing.assert_array_equal(runs.set_index("run_id")["final_llc"], last["llc"])
    assert (runs["final_llc_step"] == 40).all() and (runs["final_llc_diverged"] == 0).all()
    assert runs["llc_epsilon"].tolist() == pytest.approx([1e-4, 1e-4, 3e-4, 3e-4])
    assert runs["llc_nbeta"].tolist() == pytest.approx([16 / np.log(16)] * 4)
    alone = grokjax.run_sweep(_llc_sweep(sweep).replace(llc_epsilon=3e-4, seed=1, runs_per_batch=1), progress=False)
    np.testing.assert_allclose(alone.curves["llc"], curves.query("run_id == 3")["llc"], rtol=1e-4)


def test_llc_off_leaves_it_out_of_the_program(sweep):
    config = sweep(task=dict(p=11), train=dict(steps=20))
    program = grokjax.experiment.build_program(config)
    settings = grokjax.experiment.one_run(grokjax.experiment.run_settings([config]))
    state = jax.eval_shape(program.init_run, settings)
    text = str(jax.make_jaxpr(lambda s, h: program.train_period(s, h, 2))(state, settings))
    assert "cond" not in text and "llc" not in grokjax.run_sweep(config, progress=False).curves


def test_llc_settings_that_do_not_fit_are_refused(sweep):
    with pytest.raises(SweepError, match="train.llc_every \\(4\\) must divide the 6 evaluations"):
        sweep(task=dict(p=11), train=dict(llc_every=4))
    with pytest.raises(SweepError, match="train.llc_batch_size \\(200\\) exceeds the 121 examples"):
        sweep(task=dict(p=11), train=dict(llc_every=1, llc_batch_size=200))
    with pytest.raises(SweepError, match="train.llc_epsilon must be > 0.0"):
        sweep(train=dict(llc_epsilon=0.0))
