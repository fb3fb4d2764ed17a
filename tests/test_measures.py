"""Measures as plug-ins: the contract, the built-ins on it, a user's measure in both tables."""

import jax.numpy as jnp
import numpy as np
import pytest

import grokjax
from grokjax.errors import SweepError
from grokjax.measures import DEFAULT_MEASURES, Batch, effective_rank, logits, measure_names

USER = "user_plugins:"


def test_progress_measures_true_means_the_default_builtins_then_the_listed_ones():
    assert measure_names(True, ()) == DEFAULT_MEASURES
    assert measure_names(False, ()) == ()
    assert measure_names(True, ("logits", "norms")) == (*DEFAULT_MEASURES, "logits")
    assert measure_names(False, ("logits",)) == ("logits",)


def test_a_users_measure_trains_in_a_grid_and_appears_in_both_tables(sweep):
    config = sweep(task=dict(p=11), train=dict(steps=20, measures=[USER + "mean_abs_weight"], runs_per_batch=2),
                   grid=dict(weight_decay=[0.0, 1.0], seed=[0, 1]))
    results = grokjax.run_sweep(config, progress=False)
    curves, runs = results.curves, results.runs
    assert {"mean_abs_weight", "loss_again"} <= set(curves) and "norm_mlp" not in curves
    np.testing.assert_allclose(curves["loss_again"], curves["train_loss"], rtol=1e-5)
    last = curves.groupby("run_id").tail(1).set_index("run_id")
    np.testing.assert_array_equal(runs.set_index("run_id")["final_mean_abs_weight"], last["mean_abs_weight"])


@pytest.mark.parametrize("name, message", [
    ("vector_measure", "'per_class' of shape (11,); expected a scalar"),
    ("list_measure", "returned list; expected a dict"),
    ("clashing_measure", "column 'test_acc', which the evaluation writes"),
])
def test_a_measure_breaking_the_contract_is_refused_before_training(sweep, name, message):
    with pytest.raises(SweepError, match="train.measures") as e:
        grokjax.run_sweep(sweep(task=dict(p=11), train=dict(measures=[USER + name])), progress=False)
    assert message in str(e.value)


def test_a_measure_of_the_wrong_signature_or_name_is_refused_when_the_sweep_loads(sweep):
    with pytest.raises(SweepError, match="takes 2 positional arguments, not 4"):
        sweep(train=dict(measures=[USER + "two_argument_measure"]))
    with pytest.raises(SweepError, match="did you mean 'logits'"):
        sweep(train=dict(measures=["logit"]))
    with pytest.raises(SweepError, match="train.measures must be a list"):
        sweep(train=dict(measures="logits"))


def test_effective_rank_is_the_exponential_of_the_singular_value_entropy():
    w = np.diag([3.0, 1.0, 0.0]).astype(np.float32)
    share = np.array([0.75, 0.25])
    got = effective_rank({"mlp": {"kernel": jnp.asarray(w)}, "bias": jnp.ones(3)}, None, None, None)
    np.testing.assert_allclose(float(got["effective_rank_mlp"]), np.exp(-(share * np.log(share)).sum()), rtol=1e-5)
    assert set(got) == {"effective_rank_mlp"}  # vectors have no rank


def test_logit_norm_and_margin_over_the_training_rows():
    task = grokjax.make_task("add", 5)
    outputs = jnp.array([[2.0, 0.0, 1.0], [0.0, 3.0, 4.0], [9.0, 9.0, 9.0]])
    labels = jnp.array([0, 1, 2])
    batch = Batch(jnp.zeros((3, 2), jnp.int32), outputs, labels, labels, jnp.array([True, True, False]), None)
    got = logits(None, None, task, batch)
    np.testing.assert_allclose(float(got["logit_norm"]), (np.sqrt(5) + 5) / 2, rtol=1e-6)
    np.testing.assert_allclose(float(got["logit_margin"]), (1.0 - 1.0) / 2, atol=1e-6)
