"""Optimizers whose float hyperparameters are per-run arrays, and the learning-rate schedule.

An optimizer is any factory ``fn(learning_rate, **settings) -> optax.GradientTransformation``:
every optax optimizer (``adam``, ``lion``, ``sgd``, ...), the presets below, or a user's own.
``make_optimizer`` calls the factory *inside* the vmapped per-run function, with the run's float
settings as traced scalars. That is what ``optax.inject_hyperparams`` achieves by keeping
hyperparameters in the state: the transformation is rebuilt from per-run values at every
``init`` and ``update`` (a free, trace-time rebuild), its state has the same structure for every
value, so one compiled program serves every learning rate, beta and weight decay of a grid.

Presets (grokjax's defaults since its first sweep files):
- ``adamw``: ``optax.adamw`` with grokjax's setting names and defaults (``beta1 = 0.9``,
  ``beta2 = 0.98``, ``weight_decay = 1``). Weight decay is decoupled, optax's convention:
  ``w <- w - lr * (u + weight_decay * w)`` with ``u`` the Adam update, so the decay per step is
  ``lr * weight_decay`` (torch.optim.AdamW's convention too).
- ``sgd``: SGD with momentum whose decay enters the momentum buffer, as in torch.optim.SGD.
For optax's own ``adamw`` (``b1``, ``b2``, default decay 1e-4) name it ``optax:adamw``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "cosine", "linear")


def _check(key: str, value, ok: Callable[[float], bool], allowed: str) -> None:
    """Bounds of a preset's setting, checked where the value is a Python number (the sweep's
    validation); inside the program the values are traced and already checked."""
    if isinstance(value, (int, float)) and not ok(value):
        raise ValueError(f"{key} must be {allowed}, got {value!r}")


def adamw(learning_rate, beta1: float = 0.9, beta2: float = 0.98, eps: float = 1e-8,
          weight_decay: float = 1.0) -> optax.GradientTransformation:
    """AdamW, decoupled decay ``lr * weight_decay * w`` per step (optax's convention)."""
    for key, beta in (("beta1", beta1), ("beta2", beta2)):
        _check(key, beta, lambda v: 0 <= v < 1, ">= 0 and < 1")
    _check("eps", eps, lambda v: v > 0, "> 0")
    _check("weight_decay", weight_decay, lambda v: v >= 0, ">= 0")
    return optax.adamw(learning_rate, b1=beta1, b2=beta2, eps=eps, weight_decay=weight_decay)


def sgd(learning_rate, momentum: float = 0.9, weight_decay: float = 1.0) -> optax.GradientTransformation:
    """SGD with momentum; the decay ``weight_decay * w`` joins the gradient before the momentum
    buffer, as in torch.optim.SGD."""
    _check("momentum", momentum, lambda v: 0 <= v < 1, ">= 0 and < 1")
    _check("weight_decay", weight_decay, lambda v: v >= 0, ">= 0")
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.trace(decay=momentum),
                       optax.scale_by_learning_rate(learning_rate))


BUILTIN_OPTIMIZERS = {"adamw": adamw, "sgd": sgd}


def lr_schedule(lr: jax.Array, warmup_steps: jax.Array, decay_steps: jax.Array, kind: str,
                total_steps: int) -> optax.Schedule:
    """Linear warm-up over ``warmup_steps`` (0: none), then ``kind``: constant, or a cosine or
    linear decay to 0 over ``decay_steps`` (0: the rest of the budget, ``total_steps``); zero
    after the decay. Every argument but ``kind`` and ``total_steps`` may be per run."""
    if kind not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {kind!r}")

    def schedule(count):
        warm = jnp.minimum(1.0, (count + 1) / jnp.maximum(warmup_steps, 1))
        if kind == "constant":
            return lr * warm
        length = jnp.where(decay_steps > 0, decay_steps, jnp.maximum(total_steps - warmup_steps, 1))
        done = jnp.clip((count - warmup_steps) / length, 0.0, 1.0)
        decay = 0.5 * (1.0 + jnp.cos(jnp.pi * done)) if kind == "cosine" else 1.0 - done
        return lr * warm * decay

    return schedule


def make_optimizer(factory: Callable[..., optax.GradientTransformation], static: Mapping,
                   per_run: Mapping[str, jax.Array], schedule: optax.Schedule) -> optax.GradientTransformation:
    """The optimizer of one run: ``factory(learning_rate=schedule, **static, **per_run)``;
    ``static`` holds the settings that are not floats (one program per value), ``per_run`` the
    run's float settings (traced scalars under the grid's vmap)."""
    return factory(learning_rate=schedule, **static, **per_run)
