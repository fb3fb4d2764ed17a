"""Per-run evaluation metrics, events (memorize / grok steps) and phases.

``evaluate`` and ``update_events`` are pure functions of one run, used inside the jitted grid;
``classify_phases`` runs on the host over the tidy results table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

PHASES = ("comprehension", "grokking", "memorization", "confusion", "diverged")
CURVE_METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "param_norm")
NEVER = -1  # step value of an event that has not happened


@struct.dataclass
class Events:
    memorize_step: jax.Array  # int32, NEVER until train accuracy >= memorize_threshold
    grok_step: jax.Array  # int32, NEVER until test accuracy >= grok_threshold
    streak: jax.Array  # consecutive evaluations with test accuracy >= grok_threshold
    done: jax.Array  # bool: the streak reached patience
    diverged: jax.Array  # bool: a step produced a non-finite loss or update
    diverged_step: jax.Array  # int32
    collapse_step: jax.Array  # int32, NEVER until test accuracy falls back below grok_threshold after grok_step
    # for patience evaluations (the first of them; only without stop_early)
    fall_streak: jax.Array  # consecutive evaluations below grok_threshold after grok_step
    fall_step: jax.Array  # int32: the first evaluation of that streak

    @classmethod
    def initial(cls) -> Events:
        never, zero = jnp.array(NEVER, jnp.int32), jnp.array(0, jnp.int32)
        return cls(never, never, zero, jnp.array(False), jnp.array(False), never, never, zero, never)


@dataclasses.dataclass(frozen=True)
class EventRule:
    """When events happen and when a run is done (the ``[events]`` settings)."""

    memorize_threshold: float = 0.99
    grok_threshold: float = 0.99
    patience: int = 3
    stop_early: bool = True


def weighted_mean(x: jax.Array, weights: jax.Array) -> jax.Array:
    """Mean of ``x`` over the rows ``weights`` selects (0 where none is)."""
    return jnp.sum(x * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def evaluate(outputs: jax.Array, labels: jax.Array, train_mask: jax.Array, params, loss_fn: Callable,
             regression: bool = False, tolerance: float = 0.5) -> dict[str, jax.Array]:
    """Train/test loss (the training loss ``loss_fn``) and accuracy over the full table, split by
    the run's mask. Accuracy: the argmax is the label; for regression, every output within
    ``tolerance`` of its target."""
    loss = loss_fn(outputs, labels).astype(jnp.float32)
    if regression:
        correct = jnp.all(jnp.abs(outputs - labels) < tolerance, axis=-1)
    else:
        correct = jnp.argmax(outputs, -1) == labels
    correct = correct.astype(jnp.float32)
    train = train_mask.astype(jnp.float32)
    test = 1.0 - train
    return dict(
        train_loss=weighted_mean(loss, train),
        train_acc=weighted_mean(correct, train),
        test_loss=weighted_mean(loss, test),
        test_acc=weighted_mean(correct, test),
        param_norm=optax.tree.norm(params),
    )


def update_events(events: Events, metrics: dict, step, active, rule: EventRule) -> Events:
    """Record first crossings at evaluated ``step``; a run that is not active changes nothing."""
    memorized = active & (events.memorize_step == NEVER) & (metrics["train_acc"] >= rule.memorize_threshold)
    generalizes = metrics["test_acc"] >= rule.grok_threshold
    grokked = active & (events.grok_step == NEVER) & generalizes
    streak = jnp.where(active, jnp.where(generalizes, events.streak + 1, 0), events.streak)
    if not rule.stop_early:  # with early stopping a run is done once it holds the threshold
        events = _collapse(events, generalizes, step, active, rule.patience)
    return events.replace(
        memorize_step=jnp.where(memorized, step, events.memorize_step).astype(jnp.int32),
        grok_step=jnp.where(grokked, step, events.grok_step).astype(jnp.int32),
        streak=streak.astype(jnp.int32),
        done=events.done | (streak >= rule.patience),
    )


def _collapse(events: Events, generalizes, step, active, patience: int) -> Events:
    """``collapse_step``: test accuracy below the grok threshold for ``patience`` evaluations in a
    row after the run grokked ("ungrokking")."""
    falling = active & (events.grok_step != NEVER) & ~generalizes
    fall_streak = jnp.where(active, jnp.where(falling, events.fall_streak + 1, 0), events.fall_streak)
    fall_step = jnp.where(falling & (events.fall_streak == 0), step, events.fall_step)
    collapsed = (events.collapse_step == NEVER) & (fall_streak >= patience)
    return events.replace(fall_streak=fall_streak.astype(jnp.int32), fall_step=fall_step.astype(jnp.int32),
                          collapse_step=jnp.where(collapsed, fall_step, events.collapse_step).astype(jnp.int32))


def classify_phases(memorize_step, grok_step, diverged, gap) -> np.ndarray:
    """Phases (Liu et al. 2022) from per-run event steps (NaN or NEVER where never reached).

    comprehension: both reached, grok_step - memorize_step <= gap, or test accuracy reached without
    train accuracy (a run that generalizes while refusing noisy training labels); grokking:
    delay > gap; memorization: only train accuracy reached; confusion: neither reached;
    diverged: the run's loss became non-finite (whatever it reached before).
    ``gap`` is a number or one per run.
    """
    mem = np.asarray(memorize_step, dtype=float)
    grok = np.asarray(grok_step, dtype=float)
    mem = np.where(mem == NEVER, np.nan, mem)
    grok = np.where(grok == NEVER, np.nan, grok)
    delay = grok - mem
    phase = np.where(
        np.isnan(grok), np.where(np.isnan(mem), "confusion", "memorization"),
        np.where(~np.isnan(mem) & (delay > gap), "grokking", "comprehension"))
    return np.where(np.asarray(diverged, bool), "diverged", phase).astype(object)
