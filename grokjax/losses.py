"""Per-example losses: ``fn(outputs, labels) -> [B]``.

The contract for a loss of your own (``train.loss = "package.module:attribute"``): ``outputs``
``[B, n_classes]`` from the model, ``labels`` ``[B]`` integer classes or ``[B, o]`` float targets,
as the task gives them; return one loss per example. The engine averages it over the training
rows for the gradient and records it on the train and test rows at every evaluation. Built-ins
are registered through the same door (``plugins.register_loss``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _at_least_f32(x: jax.Array) -> jax.Array:
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def cross_entropy(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy with integer labels, computed in float32 at least."""
    return optax.softmax_cross_entropy_with_integer_labels(_at_least_f32(outputs), labels)


def mse(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean squared error over the outputs, against one-hot targets for integer labels (Omnigrok,
    Gromov 2023) or the float targets of a regression task."""
    outputs = _at_least_f32(outputs)
    targets = jax.nn.one_hot(labels, outputs.shape[-1], dtype=outputs.dtype) if labels.ndim == 1 else labels
    return jnp.mean(jnp.square(outputs - targets), axis=-1)


def stablemax(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """StableMax cross-entropy (Prieto et al. 2025): ``-log p_y`` with ``p_i = s(x_i) / sum_j s(x_j)``,
    ``s(x) = x + 1`` for ``x >= 0`` and ``1 / (1 - x)`` below; grows linearly, not exponentially, so
    the probabilities cannot round to exactly one-hot (softmax collapse)."""
    outputs = _at_least_f32(outputs)
    s = jnp.where(outputs >= 0, outputs + 1, 1 / (1 - jnp.minimum(outputs, 0)))
    s_y = jnp.take_along_axis(s, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    return jnp.log(jnp.sum(s, axis=-1)) - jnp.log(s_y)


BUILTIN_LOSSES = {"cross_entropy": cross_entropy, "mse": mse, "stablemax": stablemax}
