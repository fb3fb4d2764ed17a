"""Measures as plug-ins: what an evaluation records of one run besides its losses and accuracies.

A measure is a callable named like a task or a model (a built-in name, or ``package.module:attr``),
listed in ``train.measures``, and traced into the program's evaluation of *one* run:

    ``fn(params, apply, task, batch) -> {column: scalar}``

- ``params``: the run's parameters (a pytree);
- ``apply``: ``apply(params, inputs) -> outputs``, the model at the program's precision;
- ``task``: the ``grokjax.Task`` (static: numpy arrays, read it in Python to decide what applies);
- ``batch``: a ``Batch`` of the whole table the evaluation just computed: ``inputs``, ``outputs``,
  ``labels`` (what the run trains on, label noise included), ``task_labels``, ``train_mask``, and
  ``loss`` (the sweep's per-example loss function).

It returns a dict of scalars (0-d arrays) by column name: each becomes a column of
``curves.parquet`` and ``final_<column>`` of ``runs.parquet``. A measure that does not apply to a
task returns ``{}``. Its computation is traced once per program; it must be a pure function of its
arguments (per-run values are arrays, so no Python branching on them).

Built-in measures (``BUILTIN_MEASURES``): ``norms``, ``softmax_collapse``, ``fourier`` (the
progress measures of ``grokjax.progress``: ``train.progress_measures = true`` means these, where
they apply), ``effective_rank`` and ``logits``, which a sweep lists to get.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import struct

from grokjax import progress
from grokjax.errors import SweepError
from grokjax.metrics import CURVE_METRICS, weighted_mean
from grokjax.tasks import Task

DEFAULT_MEASURES = ("norms", "softmax_collapse", "fourier")  # train.progress_measures = true
RESERVED = (*CURVE_METRICS, "run_id", "step", "recorded")  # columns the evaluation writes itself


@struct.dataclass
class Batch:
    """The whole table as one run's evaluation sees it (see the module docstring)."""

    inputs: jax.Array
    outputs: jax.Array
    labels: jax.Array
    task_labels: jax.Array
    train_mask: jax.Array
    loss: Callable = struct.field(pytree_node=False)


def norms(params, apply, task: Task, batch: Batch) -> dict:
    """Norm of each parameter group (``norm_embeddings``, ``norm_attention``, ``norm_mlp``, ...)."""
    return progress.group_norms(params)


def softmax_collapse(params, apply, task: Task, batch: Batch) -> dict:
    """Share of training examples whose float32 softmax is exactly one-hot (classification tasks)."""
    if not progress.measures_for(task).collapse:
        return {}
    x = batch.outputs.astype(jnp.promote_types(batch.outputs.dtype, jnp.float32))
    one_hot = jnp.sum(jnp.exp(x - jnp.max(x, -1, keepdims=True)), -1) == 1.0
    return {"softmax_collapse": weighted_mean(one_hot.astype(jnp.float32), batch.train_mask.astype(jnp.float32))}


def fourier(params, apply, task: Task, batch: Batch) -> dict:
    """The embedding's Fourier spectrum over ``Z_p`` (Gini, IPR, key frequencies) and, on the full
    table of ``a + b`` or ``a - b``, the restricted and excluded losses (modular tasks)."""
    m = progress.measures_for(task)
    embed = progress.embedding(params, m.modulus) if m.modulus >= 3 else None
    if embed is None:
        return {}
    power = progress.spectrum(embed, m.modulus)
    keys = progress.key_frequencies(power)
    out = dict(progress.concentration(power), key_frequencies=keys)
    if m.restricted:
        out.update(progress.restricted_excluded(batch.outputs, batch.task_labels, batch.labels, batch.train_mask,
                                                keys, m.modulus, batch.loss))
    return out


def effective_rank(params, apply, task: Task, batch: Batch) -> dict:
    """``effective_rank_<group>``: the mean over the group's weight matrices (2-d parameters) of
    ``exp(entropy)`` of their normalized singular values (Roy and Vetterli 2007): 1 for rank one,
    ``min(m, n)`` for a flat spectrum."""
    ranks: dict[str, list] = {}
    for path, leaf in progress.param_paths(params):
        if leaf.ndim != 2 or min(leaf.shape) < 2:
            continue
        s = jnp.linalg.svd(leaf.astype(jnp.float32), compute_uv=False)
        share = s / jnp.maximum(jnp.sum(s), 1e-30)
        entropy = -jnp.sum(jnp.where(share > 0, share * jnp.log(jnp.where(share > 0, share, 1.0)), 0.0))
        ranks.setdefault(progress.group_of(path), []).append(jnp.exp(entropy))
    return {f"effective_rank_{g}": jnp.mean(jnp.stack(r)) for g, r in ranks.items()}


def logits(params, apply, task: Task, batch: Batch) -> dict:
    """``logit_norm``: the mean L2 norm of the outputs over the training set; ``logit_margin``: the
    mean over it of the correct class's logit minus the largest other (classification tasks)."""
    if task.regression:
        return {}
    x = batch.outputs.astype(jnp.promote_types(batch.outputs.dtype, jnp.float32))
    train = batch.train_mask.astype(jnp.float32)
    correct = jnp.take_along_axis(x, batch.labels[:, None], -1)[:, 0]
    others = jnp.where(jax.nn.one_hot(batch.labels, x.shape[-1], dtype=bool), -jnp.inf, x)
    return {"logit_norm": weighted_mean(jnp.linalg.norm(x, axis=-1), train),
            "logit_margin": weighted_mean(correct - jnp.max(others, -1), train)}


BUILTIN_MEASURES: dict[str, Callable] = {"norms": norms, "softmax_collapse": softmax_collapse,
                                         "fourier": fourier, "effective_rank": effective_rank, "logits": logits}


def measure_names(progress_measures: bool, listed: tuple[str, ...]) -> tuple[str, ...]:
    """The measures a program computes: the default built-ins when ``progress_measures``, then
    those ``train.measures`` lists (each once, in that order)."""
    return tuple(dict.fromkeys((*(DEFAULT_MEASURES if progress_measures else ()), *listed)))


def compute(measures: tuple[tuple[str, Callable], ...], params, apply, task: Task, batch: Batch) -> dict:
    """Every measure's columns of one run, checked against the contract (at trace time).

    Args:
      measures: ``(name, fn)`` pairs, in order.
      params, apply, task, batch: the contract's arguments (see the module docstring).

    Returns:
      Column -> value, the measures' columns merged in order.

    Raises:
      SweepError: a measure raised, returned something other than a dict of scalars, or a column
        another measure or the evaluation writes.
    """
    out: dict = {}
    for name, fn in measures:
        where = f"train.measures: {name!r}"
        try:
            columns = fn(params, apply, task, batch)
        except SweepError:
            raise
        except Exception as e:  # noqa: BLE001 - a user's measure: report it, do not crash
            raise SweepError(f"{where} raised {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}"
                             f"; expected fn(params, apply, task, batch) -> dict of scalars") from None
        if not isinstance(columns, dict):
            raise SweepError(f"{where} returned {type(columns).__name__}; expected a dict of column name -> scalar")
        for column, value in columns.items():
            _check_column(where, name, column, value, out)
            out[column] = value
    return out


def _check_column(where: str, name: str, column, value, seen: dict) -> None:
    if not isinstance(column, str) or not column.isidentifier():
        raise SweepError(f"{where} returned the column {column!r}; column names are identifiers (letters, digits, _)")
    if column in RESERVED or column in seen:
        raise SweepError(f"{where} returns the column {column!r}, which "
                         f"{'the evaluation' if column in RESERVED else 'another measure'} writes; rename it")
    shape = getattr(value, "shape", None)
    builtin_set = name in BUILTIN_MEASURES and column == "key_frequencies"  # a set per evaluation
    if shape is None or (tuple(shape) != () and not builtin_set):
        got = f"shape {tuple(shape)}" if shape is not None else type(value).__name__
        raise SweepError(f"{where} returned {column!r} of {got}; expected a scalar (0-d array) per run")
