"""Optimizers whose numeric hyperparameters are per-run arrays.

``make_optimizer`` is called inside the vmapped per-run function, so ``hp`` holds traced scalars
of one run: the optimizer state has the same structure for every run and one compiled program
serves every learning rate, weight decay and beta of a grid.

Weight decay follows optax's decoupled convention: ``w <- w - lr * (u + weight_decay * w)``
where ``u`` is the Adam (or momentum) update, so the decay per step is ``lr * weight_decay``
(torch.optim.AdamW uses the same convention).
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import optax

OPTIMIZER_NAMES = ("adamw", "sgd")

# Per-run hyperparameters each optimizer reads from ``hp``.
OPTIMIZER_HPARAMS: dict[str, tuple[str, ...]] = {
    "adamw": ("lr", "weight_decay", "beta1", "beta2", "eps", "warmup_steps"),
    "sgd": ("lr", "weight_decay", "momentum", "warmup_steps"),
}


def warmup_schedule(lr: jax.Array, warmup_steps: jax.Array) -> optax.Schedule:
    """Linear warm-up over ``warmup_steps`` (0: none), then constant ``lr``."""

    def schedule(count):
        return lr * jnp.minimum(1.0, (count + 1) / jnp.maximum(warmup_steps, 1))

    return schedule


def make_optimizer(name: str, hp: Mapping[str, jax.Array]) -> optax.GradientTransformation:
    lr = warmup_schedule(hp["lr"], hp["warmup_steps"])
    if name == "adamw":
        return optax.adamw(lr, b1=hp["beta1"], b2=hp["beta2"], eps=hp["eps"], weight_decay=hp["weight_decay"])
    if name == "sgd":
        # Decay enters the momentum buffer, as in torch.optim.SGD.
        return optax.chain(
            optax.add_decayed_weights(hp["weight_decay"]),
            optax.trace(decay=hp["momentum"]),
            optax.scale_by_learning_rate(lr),
        )
    raise ValueError(f"unknown optimizer '{name}'; known optimizers: {', '.join(OPTIMIZER_NAMES)}")
