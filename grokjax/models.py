"""Models as flax linen modules, used only through ``init`` / ``apply`` on one run.

Both read ``k`` tokens ``[B, k]`` and return logits ``[B, n_classes]``; the MLP also reads float
features ``[B, d]``. The factories ``mlp`` and ``transformer`` are the built-in models behind
``[model] name``: ``fn(n_symbols, n_classes, **settings) -> flax.linen.Module``, the contract any
model of a user's follows (``dtype`` and ``param_dtype``, when a factory takes them, come from
``train.precision``). Each does less work than its textbook form for the same function:
- the MLP's first layer over the concatenated embeddings is a sum of per-position tables
  (``E @ W1[i]``, each vocab x width) gathered per example; its kernel is stored
  ``[embed, position, width]`` so all tables are one matmul without transposes (W1 +28 %,
  W2 +20 % run-steps/s on this CPU against ``[operand, embed, width]``);
- the transformer reads only the last position, so its last layer computes queries, the
  attention output and the MLP at that position only; attention over its few positions is
  unrolled per (query, key) pair with per-head sums as one small matmul (forward 25 % faster on
  this CPU than batched per-head matmuls: W3 7.9 -> 5.9 ms, W4 26 -> 20 ms per step).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable] = {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "tanh": jnp.tanh,
    "square": jnp.square,  # Gromov 2023
}

def _normal(std: float):
    return nn.initializers.normal(stddev=std)


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

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
        if jnp.issubdtype(inputs.dtype, jnp.integer):
            k, w = inputs.shape[1], self.width
            embed = self.param("embed", _normal(1.0), (self.n_symbols, self.embed_dim), self.param_dtype)
            # Same init as a Dense layer over the concatenated embeddings (fan_in = k * embed_dim).
            w1 = self.param("hidden_0_kernel", _normal(1.0 / math.sqrt(k * self.embed_dim)),
                            (self.embed_dim, k, w), self.param_dtype)
            # [vocab, k * width]: one plain matmul (no transposes) whose slices are the per-position tables
            tables = embed.astype(self.dtype) @ w1.reshape(self.embed_dim, k * w).astype(self.dtype)
            h = functools.reduce(jnp.add, [tables[inputs[:, i], i * w:(i + 1) * w] for i in range(k)])
        else:
            w1 = self.param("hidden_0_kernel", nn.initializers.lecun_normal(), (inputs.shape[1], self.width),
                            self.param_dtype)
            h = inputs.astype(self.dtype) @ w1.astype(self.dtype)
        # created after the kernels: flax draws each parameter's initial key in creation order
        b1 = self.param("hidden_0_bias", nn.initializers.zeros, (self.width,), self.param_dtype)
        h = act(h + b1.astype(self.dtype))
        for i in range(1, self.depth):
            h = act(dense(self.width, name=f"hidden_{i}")(h))
        return dense(self.n_classes, name="readout")(h)


class Transformer(nn.Module):
    """Decoder-only transformer over ``[t_1, ..., t_k, =]``, logits read at the last position.

    Nanda et al. 2023: ``n_layers=1, d_model=128, n_heads=4, d_mlp=512, layer_norm=False``.
    Power et al. 2022: ``n_layers=2, d_model=128, n_heads=4, d_mlp=512, layer_norm=True``.
    Attention has no biases; the MLP has. The ``=`` token is id ``n_symbols``; the unembedding
    has ``n_classes`` outputs (Nanda et al.'s code also unembeds ``=``, a logit that is never a
    label: 226,816 parameters at p=113 there, 226,688 here).
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

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        d, h = self.d_model, self.n_heads
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError("the transformer reads integer token ids; this task has float features")
        dh = d // h
        act = ACTIVATIONS[self.activation]
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)

        def param(name, std, shape):
            return self.param(name, _normal(std), shape, self.param_dtype).astype(self.dtype)

        eq = jnp.full((tokens.shape[0], 1), self.n_symbols, tokens.dtype)
        seq = jnp.concatenate([tokens, eq], axis=1)  # [B, k + 1]
        embed = param("embed", 1.0 / math.sqrt(d), (self.n_symbols + 1, d))
        pos = param("pos_embed", 1.0 / math.sqrt(d), (seq.shape[1], d))
        x = embed[seq] + pos  # [B, T, d]
        norm = (lambda name: nn.LayerNorm(name=name, dtype=self.dtype, param_dtype=self.param_dtype)) \
            if self.layer_norm else (lambda name: (lambda v: v))
        T = seq.shape[1]
        for layer in range(self.n_layers):
            last = layer == self.n_layers - 1
            std = 1.0 / math.sqrt(d)
            wq = param(f"layer_{layer}_wq", std, (d, h, dh))
            wk = param(f"layer_{layer}_wk", std, (d, h, dh))
            wv = param(f"layer_{layer}_wv", std, (d, h, dh))
            wo = param(f"layer_{layer}_wo", std, (h, dh, d))
            a = norm(f"layer_{layer}_ln_attn")(x)
            k = a @ wk.reshape(d, d)
            v = a @ wv.reshape(d, d)
            q = (a[:, -1:] if last else a) @ wq.reshape(d, d)  # only the last position is read out
            # T is small (3 for two operands): per (query, key) pair, a product over model dims
            # summed per head by a 0/1 [d, h] matrix, and a softmax over the pairs unrolled. XLA's CPU backend runs the
            # textbook form (batched [T x dh] matmuls per example and head, reductions over T)
            # several times slower.
            heads = (jnp.arange(d)[:, None] // dh == jnp.arange(h)[None, :]).astype(x.dtype)  # [d, h]
            zs = []
            for s_ in range(q.shape[1]):
                query = T - q.shape[1] + s_  # its position; it sees keys 0..query (causal)
                scores = [((q[:, s_] * k[:, t]) @ heads / math.sqrt(dh)).astype(
                    jnp.promote_types(x.dtype, jnp.float32)) for t in range(query + 1)]  # [B, h] each
                top = functools.reduce(jnp.maximum, scores)
                exps = [jnp.exp(sc - top) for sc in scores]
                total = sum(exps)
                zs.append(sum(((e / total).astype(v.dtype) @ heads.T) * v[:, t] for t, e in enumerate(exps)))
            z = jnp.stack(zs, 1)  # [B, S, d]
            x = (x[:, -1:] if last else x) + z @ wo.reshape(d, d)
            m = norm(f"layer_{layer}_ln_mlp")(x)
            m = dense(self.d_mlp, name=f"layer_{layer}_mlp_in")(m)
            x = x + dense(d, name=f"layer_{layer}_mlp_out")(act(m))
        x = norm("ln_final")(x[:, -1])
        return x @ param("unembed", 1.0 / math.sqrt(d), (d, self.n_classes))


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
        activation: str = "relu", dtype: Any = jnp.float32, param_dtype: Any = jnp.float32) -> MLP:
    """MLP: embed_dim is each token's embedding size, width the hidden width, depth the hidden
    layers; activation one of relu, gelu, silu, tanh, square."""
    _check_activation(activation)
    for key, value, most in (("embed_dim", embed_dim, 2**16), ("width", width, 2**16), ("depth", depth, 64)):
        if not 1 <= value <= most:
            raise ValueError(f"{key} must be >= 1 and <= {most}, got {value}")
    return MLP(n_symbols, n_classes, embed_dim, width, depth, activation, dtype, param_dtype)


def transformer(n_symbols: int, n_classes: int, n_layers: int = 1, d_model: int = 128, n_heads: int = 4,
                d_mlp: int = 512, layer_norm: bool = False, activation: str = "relu", dtype: Any = jnp.float32,
                param_dtype: Any = jnp.float32) -> Transformer:
    """Decoder-only transformer read at its last position: n_layers blocks (1 to 8) of width
    d_model with n_heads heads (dividing d_model) and an MLP of d_mlp; layer_norm adds
    pre-LayerNorms."""
    _check_activation(activation)
    if not 1 <= n_layers <= 8:
        raise ValueError(f"n_layers must be between 1 and 8, got {n_layers}")
    for key, value in (("d_model", d_model), ("n_heads", n_heads), ("d_mlp", d_mlp)):
        if not 1 <= value <= 2**16:
            raise ValueError(f"{key} must be >= 1 and <= {2**16}, got {value}")
    if d_model % n_heads:
        raise ValueError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
    return Transformer(n_symbols, n_classes, n_layers, d_model, n_heads, d_mlp, layer_norm, activation, dtype,
                       param_dtype)


BUILTIN_MODELS = {"mlp": mlp, "transformer": transformer}
MODEL_NAMES = tuple(BUILTIN_MODELS)


def init_params(model: nn.Module, key: jax.Array, init_scale, sample_inputs: jax.Array) -> dict:
    """Parameters of one run, every initial weight multiplied by ``init_scale`` (Omnigrok's alpha).
    ``sample_inputs`` (a row or more of the task's inputs) gives the input shapes."""
    params = model.init(key, sample_inputs)["params"]
    return jax.tree.map(lambda w: w * init_scale, params)


def count_params(params) -> int:
    return sum(int(w.size) for w in jax.tree.leaves(params))
