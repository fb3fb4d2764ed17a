"""Models as flax linen modules, used only through ``init`` / ``apply`` on one run.

Both read ``k`` tokens ``[B, k]`` and return logits ``[B, n_classes]``; the MLP also reads float
features ``[B, d]``. The factories ``mlp`` and ``transformer`` are the built-in models behind
``[model] name``: ``fn(n_symbols, n_classes, **settings) -> flax.linen.Module``, the contract any
model of a user's follows (``dtype`` and ``param_dtype``, when a factory takes them, come from
``train.precision``). Each does less work than its textbook form for the same function, because
a grid trains many small runs whose steps are dominated by a few matmuls and passes over
activations (the measured effect of each is on the documentation's benchmarks page):
- the MLP's first layer over the concatenated embeddings is a sum of per-position tables
  (``E @ W1[i]``, each vocab x width) gathered per example; its kernel is stored
  ``[embed, position, width]`` so all tables are one matmul without transposes;
- the transformer reads only the last position, so its last layer computes queries, the
  attention output and the MLP at that position only; attention over its few positions is
  unrolled per (query, key) pair with per-head sums as one small matmul, which XLA's CPU
  backend runs faster than batched per-head matmuls over so few positions;
- the transformer computes what depends on one token once per vocabulary entry and gathers it
  per example: the first layer's LayerNorm, keys, values and queries (its input at a position is
  that token's embedding plus the position's), the ``=`` row (a constant there) with, in one
  layer, its scores against each operand, and position 0 through every layer (causal attention
  lets it see itself alone); the operator token (``operator_token``) is a constant row too and
  stays a table of token 0, so ``[x, op, y, =]`` costs no more per-example rows than
  ``[x, y, =]``. ``benchmarks/transformer_tables.py`` compares it with the per-example model.

Every parameter's initial distribution comes from the convention ``init`` names
(``grokjax.inits``): grokjax's own, PyTorch's defaults, or Nanda et al.'s.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from grokjax.inits import MLP_INITS, TRANSFORMER_INITS, check_init, mlp_init, transformer_init

ACTIVATIONS: dict[str, Callable] = {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "tanh": jnp.tanh,
    "square": jnp.square,  # Gromov 2023
}

class MLP(nn.Module):
    """Embeddings of each input token, ``depth`` hidden layers of ``width``, linear read-out;
    float feature inputs go through a dense first layer instead of the embeddings."""

    n_symbols: int
    n_classes: int
    embed_dim: int = 128
    width: int = 512
    depth: int = 1
    activation: str = "relu"
    dtype: Any = jnp.float32  # computation (bfloat16: matmuls in bf16, parameters stay param_dtype)
    param_dtype: Any = jnp.float32
    convention: str = "grokjax"  # [model] init (grokjax.inits); Module.init is flax's method

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        init = functools.partial(mlp_init, self.convention)

        def dense(features, fan_in, name):
            return nn.Dense(features, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
                            kernel_init=init("kernel", fan_in), bias_init=init("bias", fan_in))

        if jnp.issubdtype(inputs.dtype, jnp.integer):
            k, w = inputs.shape[1], self.width
            embed = self.param("embed", init("embed"), (self.n_symbols, self.embed_dim), self.param_dtype)
            # initialized as a Dense layer over the concatenated embeddings (fan_in = k * embed_dim)
            fan_in = k * self.embed_dim
            w1 = self.param("hidden_0_kernel", init("first_kernel", fan_in), (self.embed_dim, k, w), self.param_dtype)
            # [vocab, k * width]: one plain matmul (no transposes) whose slices are the per-position tables
            tables = embed.astype(self.dtype) @ w1.reshape(self.embed_dim, k * w).astype(self.dtype)
            h = functools.reduce(jnp.add, [tables[inputs[:, i], i * w:(i + 1) * w] for i in range(k)])
        else:
            fan_in = inputs.shape[1]
            w1 = self.param("hidden_0_kernel", init("features_kernel", fan_in), (fan_in, self.width),
                            self.param_dtype)
            h = inputs.astype(self.dtype) @ w1.astype(self.dtype)
        # created after the kernels: flax draws each parameter's initial key in creation order
        b1 = self.param("hidden_0_bias", init("bias", fan_in), (self.width,), self.param_dtype)
        h = act(h + b1.astype(self.dtype))
        for i in range(1, self.depth):
            h = act(dense(self.width, self.width, f"hidden_{i}")(h))
        return dense(self.n_classes, self.width, "readout")(h)


_CONST, _EXAMPLE = "const", "example"


class _Rows(NamedTuple):
    """One position's values (a pytree of arrays) for every example, stored by what they depend
    on. ``by`` is an input position ``t`` (a table over the vocabulary, read at each example's
    ``t``-th token), ``_CONST`` (one row, the same for every example: ``=`` in the first layer) or
    ``_EXAMPLE`` (``[B, ...]``)."""

    value: Any
    by: int | str


def _rowwise(tokens: jax.Array, fn: Callable, *args: _Rows) -> _Rows:
    """``fn`` of its arguments row by row, on as few rows as they allow: constants and tables of
    one position stay a table (a constant's missing row axis broadcasts); anything else is read
    per example first."""
    keyed = {a.by for a in args} - {_CONST}
    if not keyed or (len(keyed) == 1 and _EXAMPLE not in keyed):
        return _Rows(fn(*(a.value for a in args)), keyed.pop() if keyed else _CONST)
    return _Rows(fn(*(_per_example(a, tokens) for a in args)), _EXAMPLE)


def _per_example(rows: _Rows, tokens: jax.Array):
    if rows.by in (_CONST, _EXAMPLE):
        return rows.value
    return jax.tree.map(lambda table: table[tokens[:, rows.by]], rows.value)


def _input_rows(embed: jax.Array, pos: jax.Array, k: int, n_symbols: int, operator_token: bool) -> list[_Rows]:
    """The residual stream per position before the first layer. Every row of the vocabulary is
    tabulated (not only the operands') so that any token id reads what the textbook model
    computes; "=" (id ``n_symbols``) and op (``n_symbols + 1``) are constant rows: op's position
    mixes only what precedes it, so after the first attention it is a table of token 0."""
    xs = []
    for t in range(k):
        if t and operator_token:
            xs.append(_Rows(embed[n_symbols + 1] + pos[len(xs)], _CONST))
        xs.append(_Rows(embed + pos[len(xs)], t))
    return xs + [_Rows(embed[n_symbols] + pos[-1], _CONST)]


class Transformer(nn.Module):
    """Decoder-only transformer over ``[t_1, ..., t_k, =]``, logits read at the last position.

    Nanda et al. 2023: ``n_layers=1, d_model=128, n_heads=4, d_mlp=512, layer_norm=False``.
    Power et al. 2022: ``n_layers=2, d_model=128, n_heads=4, d_mlp=512, layer_norm=True``.
    Attention has no biases; the MLP has. The ``=`` token is id ``n_symbols``, the operator token
    (``operator_token``: ``[x, op, y, =]``, Power et al.'s and Grokfast's input) ``n_symbols + 1``; the unembedding
    has ``n_classes`` outputs (Nanda et al.'s code also unembeds ``=``, a logit that is never a
    label: 226,816 parameters at p=113 there, 226,688 here).

    Each quantity is computed once per value of what it depends on (``_Rows``): the first layer's
    input at position ``t`` depends on token ``t`` alone and its LayerNorm, keys, values and
    queries do too, so they are ``vocab x d`` tables, not ``B`` rows; ``=`` is one constant row in
    the first layer, so the one-layer model's query and its scores against each operand position
    are a constant and ``vocab x heads`` tables. Under causal attention position 0 attends to
    itself alone, so it stays a table of token 0 through every layer (the later layers' keys and
    values there included); every other position mixes tokens after the first layer's attention
    and is computed per example from then on. Equal to the textbook model up to float rounding
    (``tests/test_models.py``).
    """

    n_symbols: int
    n_classes: int
    n_layers: int = 1
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    layer_norm: bool = False
    activation: str = "relu"
    dtype: Any = jnp.float32  # computation (bfloat16: matmuls in bf16, parameters stay param_dtype)
    param_dtype: Any = jnp.float32
    convention: str = "grokjax"  # [model] init (grokjax.inits); Module.init is flax's method
    operator_token: bool = False  # [t_1, op, t_2, ..., =], op = id n_symbols + 1 (Power et al.)
    normed_residual: bool = False  # x = LN(x); x = x + attn(x), as Grokfast's Block

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        d, h = self.d_model, self.n_heads
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError("the transformer reads integer token ids; this task has float features")
        dh = d // h
        act = ACTIVATIONS[self.activation]
        rowwise = functools.partial(_rowwise, tokens)
        vocab = self.n_symbols + 1 + self.operator_token  # the operands' symbols, "=", op
        init = functools.partial(transformer_init, self.convention, d_model=d, vocab=vocab)

        def dense(features, fan_in, name):
            return nn.Dense(features, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
                            kernel_init=init("kernel", fan_in=fan_in), bias_init=init("bias", fan_in=fan_in))

        def param(name, role, shape):
            return self.param(name, init(role), shape, self.param_dtype).astype(self.dtype)

        k = tokens.shape[1]
        T = k + (k - 1) * self.operator_token + 1  # the operands (op between each two), then "="
        embed = param("embed", "embed", (vocab, d))
        pos = param("pos_embed", "embed", (T, d))
        xs = _input_rows(embed, pos, k, self.n_symbols, self.operator_token)
        norm = (lambda name: nn.LayerNorm(name=name, dtype=self.dtype, param_dtype=self.param_dtype)) \
            if self.layer_norm else (lambda name: (lambda v: v))
        heads = (jnp.arange(d)[:, None] // dh == jnp.arange(h)[None, :]).astype(self.dtype)  # [d, h]

        def softmax(*scores):  # over the keys, unrolled: T is small (3 for two operands)
            top = functools.reduce(jnp.maximum, scores)
            exps = [jnp.exp(sc - top) for sc in scores]
            total = sum(exps)
            return tuple((e / total).astype(self.dtype) for e in exps)

        for layer in range(self.n_layers):
            last = layer == self.n_layers - 1
            wq, wk, wv = (param(f"layer_{layer}_{w}", "qkv", (d, h, dh)).reshape(d, d) for w in ("wq", "wk", "wv"))
            wo = param(f"layer_{layer}_wo", "wo", (h, dh, d)).reshape(d, d)
            ln_attn = norm(f"layer_{layer}_ln_attn")
            a = [rowwise(ln_attn, x) for x in xs]
            xs = a if self.normed_residual else xs
            keys = [rowwise(lambda v: v @ wk, r) for r in a]
            values = [rowwise(lambda v: v @ wv, r) for r in a]
            outs = []
            for s in ([T - 1] if last else range(T)):  # only the last position is read out
                if s == 0:  # causal: it attends to itself alone, with weight exactly 1
                    outs.append(rowwise(lambda v: v @ wo, values[0]))
                    continue
                q = rowwise(lambda v: v @ wq, a[s])
                # per (query, key) pair, a product over model dims summed per head by a 0/1 [d, h]
                # matrix: XLA's CPU backend runs the textbook form (batched [T x dh] matmuls per
                # example and head, reductions over T) several times slower
                scores = [rowwise(lambda q_, k_: ((q_ * k_) @ heads / math.sqrt(dh)).astype(
                    jnp.promote_types(self.dtype, jnp.float32)), q, keys[t]) for t in range(s + 1)]
                weights = rowwise(softmax, *scores)
                # weighted values summed, then one wo matmul per example: tables of value x wo per
                # head ([vocab, h, d], gathered per example) were slower on a CPU and no faster to
                # train (see the benchmarks page: the transformer's per-token tables)
                outs.append(rowwise(lambda w, *vs: sum((wt @ heads.T) * vt for wt, vt in zip(w, vs)) @ wo,
                                    weights, *values[:s + 1]))
            xs = [rowwise(jnp.add, x, out) for x, out in zip(xs[T - len(outs):], outs)]
            ln_mlp = norm(f"layer_{layer}_ln_mlp")
            mlp_in = dense(self.d_mlp, d, f"layer_{layer}_mlp_in")
            mlp_out = dense(d, self.d_mlp, f"layer_{layer}_mlp_out")
            xs = [rowwise(lambda v: v + mlp_out(act(mlp_in(ln_mlp(v)))), x) for x in xs]
        ln_final = norm("ln_final")
        unembed = param("unembed", "unembed", (d, self.n_classes))
        logits = rowwise(lambda v: ln_final(v) @ unembed, xs[-1])
        return jnp.broadcast_to(_per_example(logits, tokens), (tokens.shape[0], self.n_classes))


# train.precision -> (computation dtype, parameter dtype); the loss is always at least float32
PRECISIONS = {"float32": (jnp.float32, jnp.float32), "tensorfloat32": (jnp.float32, jnp.float32),
              "bfloat16": (jnp.bfloat16, jnp.float32),
              "float64": (jnp.float64, jnp.float64)}


# train.precision -> the precision of every matmul (jax.default_matmul_precision). JAX's default
# lets float32 matmuls run as TF32 on recent NVIDIA GPUs and as bfloat16 passes on TPUs; grokking
# depends on precision, so "float32" asks for true float32 ("highest") on every backend and
# "tensorfloat32" is the explicit choice of speed. On a CPU both compute in float32.
MATMUL_PRECISION = {"float32": "highest", "tensorfloat32": "high", "bfloat16": "default", "float64": "highest"}


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation = {activation!r} is not one of {', '.join(ACTIVATIONS)}")


def mlp(n_symbols: int, n_classes: int, embed_dim: int = 128, width: int = 512, depth: int = 1,
        activation: str = "relu", dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
        init: str = "grokjax") -> MLP:
    """MLP: embed_dim is each token's embedding size, width the hidden width, depth the hidden
    layers; activation one of relu, gelu, silu, tanh, square; init the initialization
    convention, grokjax or torch (see grokjax.inits)."""
    _check_activation(activation)
    check_init(init, MLP_INITS)
    for key, value, most in (("embed_dim", embed_dim, 2**16), ("width", width, 2**16), ("depth", depth, 64)):
        if not 1 <= value <= most:
            raise ValueError(f"{key} must be >= 1 and <= {most}, got {value}")
    return MLP(n_symbols, n_classes, embed_dim, width, depth, activation, dtype, param_dtype, convention=init)


def transformer(n_symbols: int, n_classes: int, n_layers: int = 1, d_model: int = 128, n_heads: int = 4,
                d_mlp: int = 512, layer_norm: bool = False, activation: str = "relu", dtype: Any = jnp.float32,
                param_dtype: Any = jnp.float32, init: str = "grokjax", operator_token: bool = False,
                normed_residual: bool = False) -> Transformer:
    """Decoder-only transformer read at its last position: n_layers blocks (1 to 8) of width
    d_model with n_heads heads (dividing d_model) and an MLP of d_mlp; layer_norm adds
    pre-LayerNorms; init the initialization convention, grokjax, torch or nanda (see
    grokjax.inits); operator_token reads ``[x, op, y, =]`` (op between each two operands, one
    more vocabulary entry) as Power et al. and Grokfast do, instead of ``[x, y, =]``;
    normed_residual continues the residual stream from the attention's LayerNorm output
    (``x = LN(x); x = x + attn(x)``), as the Block of Grokfast's code (after teddykoker/grokking)
    does, instead of from its input."""
    _check_activation(activation)
    check_init(init, TRANSFORMER_INITS)
    for key, value in (("operator_token", operator_token), ("normed_residual", normed_residual)):
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {value!r}")
    if normed_residual and not layer_norm:
        raise ValueError("normed_residual needs layer_norm = true (it continues from the LayerNorm's output)")
    if not 1 <= n_layers <= 8:
        raise ValueError(f"n_layers must be between 1 and 8, got {n_layers}")
    for key, value in (("d_model", d_model), ("n_heads", n_heads), ("d_mlp", d_mlp)):
        if not 1 <= value <= 2**16:
            raise ValueError(f"{key} must be >= 1 and <= {2**16}, got {value}")
    if d_model % n_heads:
        raise ValueError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
    return Transformer(n_symbols, n_classes, n_layers, d_model, n_heads, d_mlp, layer_norm, activation, dtype,
                       param_dtype, convention=init, operator_token=operator_token, normed_residual=normed_residual)


BUILTIN_MODELS = {"mlp": mlp, "transformer": transformer}
MODEL_NAMES = tuple(BUILTIN_MODELS)


def init_params(model: nn.Module, key: jax.Array, init_scale, sample_inputs: jax.Array) -> dict:
    """Parameters of one run, every initial weight multiplied by ``init_scale`` (Omnigrok's alpha).
    ``sample_inputs`` (a row or more of the task's inputs) gives the input shapes."""
    params = model.init(key, sample_inputs)["params"]
    return jax.tree.map(lambda w: w * init_scale, params)


def count_params(params) -> int:
    return sum(int(w.size) for w in jax.tree.leaves(params))
