"""Events: the collapse after a grok ("ungrokking")."""

import jax.numpy as jnp

from grokjax.metrics import NEVER, EventRule, Events, update_events


def _replay(test_accs, stop_early=False, patience=2):
    rule, events = EventRule(grok_threshold=0.9, patience=patience, stop_early=stop_early), Events.initial()
    for i, acc in enumerate(test_accs):
        metrics = dict(train_acc=jnp.array(1.0), test_acc=jnp.array(acc))
        events = update_events(events, metrics, jnp.array(10 * (i + 1)), jnp.array(True), rule)
    return events


def test_collapse_step_is_the_first_of_patience_evaluations_back_below_the_threshold_after_the_grok():
    events = _replay([0.2, 0.95, 0.97, 0.5, 0.95, 0.4, 0.3, 0.2])
    assert int(events.grok_step) == 20 and int(events.collapse_step) == 60  # the dip at 40 lasted one evaluation


def test_no_collapse_without_a_grok_nor_with_early_stopping():
    assert int(_replay([0.2, 0.3, 0.1, 0.1]).collapse_step) == NEVER
    assert int(_replay([0.95, 0.1, 0.1, 0.1], stop_early=True).collapse_step) == NEVER
