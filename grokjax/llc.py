"""The local learning coefficient (LLC) of one run, estimated inside the program by SGLD.

Singular learning theory's local learning coefficient ``lambda(w*)`` (Lau et al. 2023) measures
how degenerate the loss landscape is around the parameters ``w*``: near ``d / 2`` for a regular
minimum of a ``d``-parameter model, lower the more directions are flat. It is estimated from
SGLD chains started at ``w*`` and localized there, which sample
``exp(-n beta L_n(w) - gamma / 2 ||w - w*||^2)``:

    ``w <- w + eps / 2 (-n beta grad L_batch(w) - gamma (w - w*)) + N(0, eps)``

and ``lambda_hat = n beta (mean over draws of L_batch(w) - L_n(w*))``, per chain. ``L_batch`` is
the sweep's loss on ``batch_size`` training examples drawn afresh at every step (from the run's
own split and labels), ``L_n(w*)`` the loss on the run's whole training split (the evaluation's
``train_loss``), ``n beta`` the inverse temperature (default ``B / log B`` of the SGLD batch, as
devinterp's ``default_nbeta``). The estimate (``llc``) is the mean over the chains that did not
diverge, ``llc_std`` their standard deviation (ddof 0), ``llc_diverged`` how many diverged: a
chain whose estimate is not finite or exceeds ``d``, which no sampler of the localized posterior
can give (``lambda <= d / 2``), so a step size that blows the chain up is flagged, not averaged in.

Everything is per run: the chains draw their noise and batches from the run's seed and step (so a
run's LLC is the same alone and in a grid), and ``eps``, ``gamma`` and ``n beta`` are per-run
arrays (``RunSettings.llc_epsilon``, ``llc_gamma``, ``llc_nbeta``): a calibration sweep over them
is one program. The chains of a run are vmapped together.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

COLUMNS = ("llc", "llc_std", "llc_diverged")  # curve columns; NaN at evaluations without an estimate
_LLC = 4  # the run's random stream for its chains (see program._SPLIT ...)


@dataclasses.dataclass(frozen=True)
class LLCConfig:
    """The static part of LLC estimation (one compiled program per value).

    Attributes:
      every: estimate at every ``every``-th evaluation (0: never; the program has no sampler).
      chains, draws, burnin: SGLD chains per run, steps recorded per chain, steps dropped first.
      batch_size: training examples per SGLD step.
    """

    every: int = 0
    chains: int = 4
    draws: int = 100
    burnin: int = 0
    batch_size: int = 64


def default_nbeta(batch_size: int) -> float:
    """``B / log B`` (devinterp's default inverse temperature), 1 for ``B <= 1``."""
    return batch_size / math.log(batch_size) if batch_size > 1 else 1.0


def llc_key(seed, step) -> jax.Array:
    """The chains' key of the run seeded ``seed`` at ``step``: its own stream, nobody else's."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), _LLC), step)


def sgld_chain(key, params_star, batch_loss: Callable, epsilon, gamma, nbeta, n_steps: int) -> jax.Array:
    """One localized SGLD chain from ``params_star``: the batch loss before each of ``n_steps`` steps.

    Args:
      key: the chain's key (batches and noise).
      params_star: where the chain starts and is localized.
      batch_loss: ``fn(params, key) -> scalar``: the loss on a batch drawn with ``key``.
      epsilon, gamma, nbeta: step size, localization strength, inverse temperature (scalars, traced).
      n_steps: burn-in and draws.

    Returns:
      [n_steps] batch losses.
    """
    leaves, treedef = jax.tree.flatten(params_star)

    def step(w, k):
        k_batch, k_noise = jax.random.split(k)
        loss, grad = jax.value_and_grad(batch_loss)(w, k_batch)
        noise_keys = jax.random.split(k_noise, len(leaves))
        noise = jax.tree.unflatten(treedef, [jax.random.normal(nk, x.shape, jnp.float32).astype(x.dtype)
                                              for nk, x in zip(noise_keys, leaves)])
        w = jax.tree.map(lambda x, g, x0, z: x + 0.5 * epsilon * (-nbeta * g - gamma * (x - x0))
                         + jnp.sqrt(epsilon) * z, w, grad, params_star, noise)
        return w, loss

    return jax.lax.scan(step, params_star, jax.random.split(key, n_steps))[1]


def estimate(cfg: LLCConfig, key, params_star, batch_loss: Callable, init_loss, epsilon, gamma,
             nbeta) -> dict[str, jax.Array]:
    """The LLC at ``params_star`` from ``cfg.chains`` chains (vmapped).

    Args:
      cfg: chains, draws, burn-in.
      key: the run's key for this estimate (``llc_key``).
      params_star: the run's parameters.
      batch_loss: ``fn(params, key) -> scalar`` batch loss.
      init_loss: ``L_n(w*)``, the loss on the run's training split.
      epsilon, gamma, nbeta: the run's SGLD settings.

    Returns:
      ``llc`` (mean over the chains that did not diverge), ``llc_std``, ``llc_diverged`` (float32).
    """
    n_params = sum(x.size for x in jax.tree.leaves(params_star))
    losses = jax.vmap(lambda k: sgld_chain(k, params_star, batch_loss, epsilon, gamma, nbeta,
                                           cfg.burnin + cfg.draws))(jax.random.split(key, cfg.chains))
    per_chain = nbeta * (jnp.mean(losses[:, cfg.burnin:].astype(jnp.float32), 1) - init_loss)
    ok = jnp.isfinite(per_chain) & (per_chain <= n_params)
    n_ok = jnp.sum(ok)
    kept = jnp.where(ok, per_chain, 0.0)
    mean = jnp.sum(kept) / jnp.maximum(n_ok, 1)
    std = jnp.sqrt(jnp.sum(jnp.where(ok, jnp.square(per_chain - mean), 0.0)) / jnp.maximum(n_ok, 1))
    none = n_ok == 0
    return dict(llc=jnp.where(none, jnp.nan, mean), llc_std=jnp.where(none, jnp.nan, std),
                llc_diverged=(cfg.chains - n_ok).astype(jnp.float32))


def skipped(like: jax.Array) -> dict[str, jax.Array]:
    """The columns of an evaluation without an estimate: NaN, varying like ``like`` (a per-run
    value) so that both branches agree under ``shard_map``."""
    nan = like.astype(jnp.float32) * jnp.nan
    return {c: nan for c in COLUMNS}


def maybe_estimate(cfg: LLCConfig, index, **kwargs) -> dict[str, jax.Array]:
    """``estimate`` at the ``index``-th evaluation of a period (0-based) when it falls on the
    cadence, else NaNs. ``index`` is the same for every run (not batched), so under ``vmap`` this
    stays a branch: evaluations off the cadence run no chain. ``kwargs``: ``estimate``'s."""
    return jax.lax.cond((index + 1) % cfg.every == 0, lambda: estimate(cfg, **kwargs),
                        lambda: skipped(kwargs["init_loss"]))


__all__ = ["LLCConfig", "COLUMNS", "default_nbeta", "llc_key", "sgld_chain", "estimate", "maybe_estimate"]
