"""Initialization conventions of the built-in models: ``[model] init``, one named choice per
published codebase, every parameter's initial distribution by its role in the model.

- ``grokjax`` (the default, grokjax's own since its first release): the transformer draws its
  embeddings, attention and unembedding from N(0, 1/d_model) (Nanda et al.'s convention) and its
  MLP layers from flax's ``Dense`` defaults (LeCun normal, truncated: std 1/sqrt(fan_in); biases
  0); the MLP model draws embeddings from N(0, 1), its first layer (over the concatenated
  embeddings) from N(0, 1/fan_in) and the others from flax's ``Dense`` defaults, biases 0.
- ``torch``: PyTorch's defaults, layer by layer, as the PyTorch grokking code (Grokfast's
  ``main.py``, danielmamay/grokking) gets them: ``nn.Embedding`` (token and position embeddings)
  N(0, 1); ``nn.Linear`` weight and bias U(+-1/sqrt(fan_in)) (``kaiming_uniform_``
  with ``a = sqrt(5)`` gives that bound); ``nn.LayerNorm`` weight 1, bias 0;
  ``nn.MultiheadAttention``: the packed ``[3 d, d]`` query/key/value matrix Xavier-uniform,
  U(+-sqrt(6 / (d + 3 d))), its output projection as ``nn.Linear``, U(+-1/sqrt(d)) (its biases,
  0 at initialization, are not parameters here).
- ``nanda`` (the transformer): Nanda et al. 2023's code (``transformers.py`` of the progress
  measures paper, the HookedTransformer style): every matrix N(0, 1/d_model) (the MLP's output
  too, although its fan-in is d_mlp) except the unembedding, N(0, 1/d_vocab) with d_vocab the
  embedded vocabulary; biases 0, LayerNorm 1 and 0.

``init_scale`` multiplies whichever is chosen (``models.init_params``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import jax

TRANSFORMER_INITS = ("grokjax", "torch", "nanda")
MLP_INITS = ("grokjax", "torch")
INITS = TRANSFORMER_INITS  # every name some built-in model takes


def check_init(init: str, allowed: tuple[str, ...]) -> None:
    """Refuse an unknown convention.

    Raises:
      ValueError: naming ``model.init`` and the allowed values (the factory's caller reports it
        as a SweepError).
    """
    if init not in allowed:
        raise ValueError(f"model.init = {init!r} is not one of {', '.join(allowed)}")


def normal(std: float) -> Callable:
    return nn.initializers.normal(stddev=std)


def uniform(bound: float) -> Callable:
    """U(-bound, bound), as ``torch.nn.init.uniform_(w, -bound, bound)`` draws it."""
    def init(key, shape, dtype=jax.numpy.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


ZEROS = nn.initializers.zeros
LECUN = nn.initializers.lecun_normal()  # flax Dense's default kernel: the current convention


def transformer_init(init: str, role: str, d_model: int, fan_in: int = 0, vocab: int = 0) -> Callable:
    """The initializer of one transformer parameter.

    Args:
      init: a name of ``TRANSFORMER_INITS``.
      role: ``embed`` (tokens and positions), ``qkv`` (a query, key or value matrix), ``wo``
        (attention output), ``kernel`` or ``bias`` (an MLP layer's, of input size ``fan_in``),
        ``unembed``.
      d_model: the width of the residual stream.
      fan_in: an MLP layer's input size.
      vocab: the embedded vocabulary's size (the ``nanda`` unembedding's scale).

    Returns:
      A flax initializer ``fn(key, shape, dtype)``.
    """
    if role in ("kernel", "bias"):  # an MLP layer's
        if init == "torch":
            return uniform(1 / math.sqrt(fan_in))
        if role == "bias":
            return ZEROS
        return normal(1 / math.sqrt(d_model)) if init == "nanda" else LECUN
    if init == "torch":
        return {"embed": normal(1.0), "qkv": uniform(math.sqrt(6.0 / (d_model + 3 * d_model)))}.get(
            role, uniform(1 / math.sqrt(d_model)))  # wo and unembed: nn.Linear of fan-in d_model
    if init == "nanda" and role == "unembed":
        return normal(1 / math.sqrt(vocab))
    return normal(1 / math.sqrt(d_model))


def mlp_init(init: str, role: str, fan_in: int = 0) -> Callable:
    """The initializer of one MLP-model parameter.

    Args:
      init: a name of ``MLP_INITS``.
      role: ``embed``; ``first_kernel`` (the first layer over the concatenated embeddings,
        ``fan_in = k * embed_dim``), ``features_kernel`` (the first layer over float features),
        ``kernel``, or ``bias``, of a layer of input size ``fan_in``.
      fan_in: the layer's input size.

    Returns:
      A flax initializer ``fn(key, shape, dtype)``.
    """
    if role == "embed":
        return normal(1.0)
    if init == "torch":
        return uniform(1 / math.sqrt(fan_in))
    if role == "first_kernel":
        return normal(1 / math.sqrt(fan_in))
    return ZEROS if role == "bias" else LECUN
