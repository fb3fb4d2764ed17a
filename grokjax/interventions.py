"""The field's interventions on the optimizer, as optax transforms that wrap any optimizer.

Gradient filters run before the base optimizer, the norm constraint after it::

    grokfast (ema | ma) -> orthograd -> base optimizer (adamw, sgd, lion, a user's) -> fixed_norm

Every coefficient may be a traced per-run scalar (``alpha``, ``lamb``, ``factor``): the state's
structure never depends on its value, so one compiled program serves a grid over them. What
changes shapes (the MA window) or the chain (which filter, ⊥Grad on or off) is static.

Formulas as in the official code:
- Grokfast EMA (Lee et al. 2024): ``mu <- alpha * mu + (1 - alpha) * g``, ``g_hat = g + lamb * mu``,
  ``mu`` starts at the first gradient.
- Grokfast MA: ``g_hat = g + lamb * mean(last window gradients)`` once ``window`` gradients have
  been seen (the current one included); before that ``g_hat = g``. Its state holds ``window``
  copies of the gradient: ``window`` times the parameters' memory per run.
- ⊥Grad (Prieto et al. 2025), per tensor: ``g_perp = g - (w.g) / (w.w + 1e-30) * w``, rescaled to
  ``|g|`` (``g_perp * |g| / (|g_perp| + 1e-30)``).
- Fixed norm (Omnigrok, Liu et al. 2022): after each step, all parameters rescaled to
  ``factor * |theta_0|`` (the initial norm); ``factor = 0`` leaves the step alone.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

GROKFAST = ("none", "ema", "ma")
GROKFAST_LAMB = {"none": 0.0, "ema": 2.0, "ma": 5.0}  # the official defaults per filter


class EmaState(NamedTuple):
    count: jax.Array
    mu: Any


def grokfast_ema(alpha=0.98, lamb=2.0) -> optax.GradientTransformation:
    """Grokfast's EMA filter: amplify the slow component of the gradients by ``lamb``."""

    def init(params):
        return EmaState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        del params
        first = state.count == 0
        mu = jax.tree.map(lambda m, g: alpha * jnp.where(first, g, m) + (1 - alpha) * g, state.mu, updates)
        out = jax.tree.map(lambda g, m: g + lamb * m, updates, mu)
        return out, EmaState(optax.safe_increment(state.count), mu)

    return optax.GradientTransformation(init, update)


class MaState(NamedTuple):
    count: jax.Array
    window: Any  # per leaf [window, *shape]: a ring buffer of the last gradients


def grokfast_ma(window: int = 100, lamb=5.0) -> optax.GradientTransformation:
    """Grokfast's moving-average filter over the last ``window`` gradients."""
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"grokfast_window must be an integer >= 1, got {window!r}")

    def init(params):
        return MaState(jnp.zeros([], jnp.int32), jax.tree.map(lambda p: jnp.zeros((window, *p.shape), p.dtype), params))

    def update(updates, state, params=None):
        del params
        slot = state.count % window
        buffers = jax.tree.map(lambda b, g: b.at[slot].set(g), state.window, updates)
        full = state.count + 1 >= window
        out = jax.tree.map(lambda g, b: jnp.where(full, g + lamb * jnp.mean(b, axis=0), g), updates, buffers)
        return out, MaState(optax.safe_increment(state.count), buffers)

    return optax.GradientTransformation(init, update)


def orthograd() -> optax.GradientTransformation:
    """⊥Grad: each tensor's gradient without its component along the weights, at its own norm."""

    def update(updates, state, params):
        if params is None:
            raise ValueError("orthograd needs the parameters")

        def project(g, w):
            g32, w32 = g.astype(jnp.float32).ravel(), w.astype(jnp.float32).ravel()
            perp = g32 - jnp.dot(w32, g32) / (jnp.dot(w32, w32) + 1e-30) * w32
            scaled = perp * (jnp.linalg.norm(g32) / (jnp.linalg.norm(perp) + 1e-30))
            return scaled.reshape(g.shape).astype(g.dtype)

        return jax.tree.map(project, updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


class FixedNormState(NamedTuple):
    norm0: jax.Array  # the parameters' norm at initialization


def fixed_norm(factor) -> optax.GradientTransformation:
    """After the step, rescale every parameter so that their total norm is ``factor * |theta_0|``;
    ``factor = 0``: off. Returned as updates, so ``optax.apply_updates`` lands on the sphere."""

    def init(params):
        return FixedNormState(optax.tree.norm(params))

    def update(updates, state, params):
        if params is None:
            raise ValueError("fixed_norm needs the parameters")
        stepped = optax.apply_updates(params, updates)
        scale = factor * state.norm0 / jnp.maximum(optax.tree.norm(stepped), 1e-30)
        constrained = jax.tree.map(lambda s, p: (s * scale).astype(s.dtype) - p, stepped, params)
        on = factor > 0
        return jax.tree.map(lambda c, u: jnp.where(on, c, u), constrained, updates), state

    return optax.GradientTransformation(init, update)


def wrap(base: optax.GradientTransformation, grokfast: str = "none", grokfast_alpha=0.98, grokfast_lamb=2.0,
         grokfast_window: int = 100, orthograd_on: bool = False, fixed_norm_factor=0.0,
         use_fixed_norm: bool = False) -> optax.GradientTransformation:
    """``base`` with the interventions chained around it (see the module's docstring). Filters
    that are off add nothing to the state; ``use_fixed_norm`` False leaves out the constraint's
    state when no run of the group uses it."""
    if grokfast not in GROKFAST:
        raise ValueError(f"grokfast must be one of {', '.join(GROKFAST)}, got {grokfast!r}")
    chain = []
    if grokfast == "ema":
        chain.append(grokfast_ema(grokfast_alpha, grokfast_lamb))
    elif grokfast == "ma":
        chain.append(grokfast_ma(grokfast_window, grokfast_lamb))
    if orthograd_on:
        chain.append(orthograd())
    chain.append(base)
    if use_fixed_norm:
        chain.append(fixed_norm(fixed_norm_factor))
    return base if len(chain) == 1 else optax.chain(*chain)
