"""Progress measures, computed inside the jitted program at every evaluation, per run.

Which measures apply is decided once per program from the task and the model (``Measures``);
each is a pure function of the run's parameters and its outputs on the whole table, which the
evaluation computes anyway. Curve columns (``curves.parquet``) and what each costs per
evaluation, next to the evaluation's own forward pass over the table:

- ``norm_<group>``: the norm of each parameter group (embeddings, attention, mlp, readout; other
  for names none of those match), read from the parameter names. One pass over the parameters.
- ``softmax_collapse`` (Prieto et al. 2025): share of training examples whose softmax, in float32,
  is exactly one-hot (``sum_j exp(x_j - max x) == 1``): their cross-entropy gradient is exactly 0.
  One exp per output. Classification tasks.
- ``fourier_gini``, ``fourier_ipr``, ``key_frequencies`` (Nanda et al. 2023): the spectrum of the
  embedding over ``Z_p`` (rows ``0 .. p - 1`` of the parameter named ``embed``): the squared norm
  per frequency ``k = 1 .. (p - 1) // 2`` of its projections on ``cos(2 pi k a / p)`` and
  ``sin(2 pi k a / p)``; its Gini coefficient and inverse participation ratio (``sum share^2``:
  ``1 / K`` when flat, 1 when one frequency holds everything); key frequencies are those holding
  at least ``KEY_FACTOR`` times the mean. Two ``[K, p] x [p, d]`` matmuls. Modular tasks
  (``Task.modulus``) whose model has such a parameter.
- ``restricted_loss``, ``excluded_loss`` (Nanda et al. 2023): on the full ``p x p`` table of a task
  whose label is a linear function of the operands (``a + b``, ``a - b``), the read-out's outputs
  over all inputs, kept to their mean plus their projections on ``cos/sin(w_k y)`` (``y`` the label,
  ``w_k = 2 pi k / p``, ``k`` the run's key frequencies) give the restricted loss on all data; those
  projections removed give the excluded loss on the training data. The projections are taken of the
  logits: the same as projecting the read-out position's activations whenever the output layers are
  affine (the built-in MLP, the transformer without LayerNorm), since an affine map commutes with
  the projection. One segment sum over the table, a ``[p, p] x [p, C]`` transform.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from grokjax.metrics import weighted_mean
from grokjax.tasks import Task

GROUPS = {  # group: name fragments, checked in this order ("unembed" is read-out, not an embedding)
    "readout": ("unembed", "readout", "ln_final", "head", "output"),
    "embeddings": ("embed",),
    "attention": ("attn", "attention", "_wq", "_wk", "_wv", "_wo", "query", "key", "value"),
    "mlp": ("mlp", "hidden", "dense", "ffn"),
}
EMBED_PARAM = "embed"
KEY_FACTOR = 2.0  # a key frequency holds at least this many times the mean squared norm per frequency
# (at initialization no frequency of a d >= 32 embedding comes near: the largest holds ~1.2 x the mean)


@dataclasses.dataclass(frozen=True)
class Measures:
    """Which measures a program computes (static: one program per value).

    Attributes:
      enabled: any at all (``train.progress_measures``).
      collapse: classification task: softmax collapse.
      modulus: ``p`` of a modular task, 0 otherwise: the embedding's Fourier spectrum.
      restricted: the table is every ``(a, b)`` pair once with each label ``p`` times (``a + b``,
        ``a - b``): restricted and excluded losses.
    """

    enabled: bool = True
    collapse: bool = False
    modulus: int = 0
    restricted: bool = False


def measures_for(task: Task, enabled: bool = True) -> Measures:
    if not enabled:
        return Measures(enabled=False)
    p = int(task.modulus or 0)
    restricted = False
    if p and not task.regression and task.size == p * p and task.n_classes == p and task.inputs.shape[1] == 2:
        counts = np.bincount(task.labels, minlength=p)
        pairs = np.unique(task.inputs[:, 0].astype(np.int64) * p + task.inputs[:, 1])
        restricted = bool((counts == p).all() and len(pairs) == p * p)
    return Measures(True, not task.regression, p, restricted)


def group_of(path: str) -> str:
    name = path.lower()
    for group, fragments in GROUPS.items():
        if any(f in name for f in fragments):
            return group
    return "other"


def param_paths(params) -> list[tuple[str, jax.Array]]:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return [("/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path), leaf) for path, leaf in leaves]


def group_norms(params) -> dict[str, jax.Array]:
    squares: dict[str, jax.Array] = {}
    for path, leaf in param_paths(params):
        group = group_of(path)
        squares[group] = squares.get(group, 0.0) + jnp.sum(jnp.square(leaf.astype(jnp.float32)))
    return {f"norm_{g}": jnp.sqrt(s) for g, s in squares.items()}


def embedding(params, p: int) -> jax.Array | None:
    """Rows ``0 .. p - 1`` of the parameter named ``embed`` (the operands' embeddings), or None."""
    for path, leaf in param_paths(params):
        if path.split("/")[-1] == EMBED_PARAM and leaf.ndim == 2 and leaf.shape[0] >= p:
            return leaf[:p].astype(jnp.float32)
    return None


def fourier_basis(p: int) -> tuple[np.ndarray, np.ndarray]:
    """``cos`` and ``sin`` of ``2 pi k a / p`` for ``k = 1 .. (p - 1) // 2``, ``a = 0 .. p - 1``: [K, p] each."""
    k = np.arange(1, (p - 1) // 2 + 1)[:, None]
    angle = 2 * np.pi * k * np.arange(p)[None, :] / p
    return np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)


def spectrum(embed: jax.Array, p: int) -> jax.Array:
    """Squared norm per frequency [K] of an embedding [p, d] over ``Z_p``."""
    cos, sin = fourier_basis(p)
    return jnp.sum(jnp.square(cos @ embed), -1) + jnp.sum(jnp.square(sin @ embed), -1)


def concentration(power: jax.Array) -> dict[str, jax.Array]:
    """Gini coefficient (0 flat, -> 1 one frequency) and inverse participation ratio of a spectrum."""
    share = power / jnp.maximum(jnp.sum(power), 1e-30)
    n = share.shape[0]
    ranked = jnp.sort(share)
    gini = jnp.sum((2 * jnp.arange(1, n + 1) - n - 1) * ranked) / n
    return dict(fourier_gini=gini, fourier_ipr=jnp.sum(jnp.square(share)))


def key_frequencies(power: jax.Array) -> jax.Array:
    """[K] bool: frequencies holding at least ``KEY_FACTOR`` times the mean."""
    return power >= KEY_FACTOR * jnp.mean(power)


def restricted_excluded(outputs: jax.Array, labels: jax.Array, run_labels: jax.Array, train_mask: jax.Array,
                        keys: jax.Array, p: int, loss_fn) -> dict[str, jax.Array]:
    """Restricted loss (all data) and excluded loss (training data); see the module's docstring."""
    logits = outputs.astype(jnp.promote_types(outputs.dtype, jnp.float32))
    # every label has p rows: projecting on functions of the label is the mean per label
    per_label = jax.ops.segment_sum(logits, labels, num_segments=p) / p  # [p, C]
    cos, sin = fourier_basis(p)  # [K, p]
    a, b = (2.0 / p) * (cos @ per_label), (2.0 / p) * (sin @ per_label)  # [K, C] coefficients
    keep = keys.astype(logits.dtype)[:, None]
    key_part = cos.T @ (keep * a) + sin.T @ (keep * b)  # [p, C]: the key frequencies' part per label
    restricted = jnp.mean(per_label, axis=0) + key_part
    classes = jnp.arange(p)
    excluded = logits - key_part[labels]
    return dict(restricted_loss=jnp.mean(loss_fn(restricted, classes)),
                excluded_loss=weighted_mean(loss_fn(excluded, run_labels), train_mask.astype(jnp.float32)))


def measure(m: Measures, params, outputs: jax.Array, labels: jax.Array, run_labels: jax.Array,
            train_mask: jax.Array, loss_fn) -> dict[str, jax.Array]:
    """The measures ``m`` asks for, of one run: ``labels`` the task's, ``run_labels`` what the run
    trains on (its label noise included)."""
    if not m.enabled:
        return {}
    out = group_norms(params)
    if m.collapse:
        x = outputs.astype(jnp.promote_types(outputs.dtype, jnp.float32))
        one_hot = jnp.sum(jnp.exp(x - jnp.max(x, -1, keepdims=True)), -1) == 1.0
        out["softmax_collapse"] = weighted_mean(one_hot.astype(jnp.float32), train_mask.astype(jnp.float32))
    embed = embedding(params, m.modulus) if m.modulus >= 3 else None
    if embed is not None:
        power = spectrum(embed, m.modulus)
        keys = key_frequencies(power)
        out.update(concentration(power), key_frequencies=keys)
        if m.restricted:
            out.update(restricted_excluded(outputs, labels, run_labels, train_mask, keys, m.modulus, loss_fn))
    return out


__all__ = ["Measures", "measures_for", "measure", "group_norms", "spectrum", "concentration", "key_frequencies",
           "restricted_excluded"]
