"""A user's own experiment for grokjax, outside the grokjax package: a task, a model, a loss and a
measure.

Nothing here imports grokjax's internals; each function follows one of grokjax's plug-in
contracts and is named in a sweep file by import path (``my_grokking:modular_sum``). grokjax puts
the sweep file's folder on the Python path, so ``examples/lion_grid.toml`` and
``examples/my_measure.toml`` find this package.
"""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import grokjax


def modular_sum(p: int = 47, k: int = 2) -> grokjax.Task:
    """Task: ``(t_1 + ... + t_k) mod p`` over every tuple of ``k`` tokens (``p^k`` examples)."""
    if p < 2 or k < 1:
        raise ValueError(f"need p >= 2 and k >= 1, got p={p}, k={k}")
    inputs = np.array(list(itertools.product(range(p), repeat=k)), dtype=np.int32)
    return grokjax.Task(f"sum{k}_mod{p}", inputs, inputs.sum(1) % p, n_symbols=p)


class BagMLP(nn.Module):
    """Model: a bag of token embeddings (position-free, so the sum's symmetry is built in), one
    ReLU hidden layer, a linear read-out."""

    n_symbols: int
    n_classes: int
    embed_dim: int = 64
    width: int = 256

    @nn.compact
    def __call__(self, tokens):
        embed = nn.Embed(self.n_symbols, self.embed_dim)(tokens).sum(axis=1)  # [B, embed_dim]
        hidden = nn.relu(nn.Dense(self.width)(embed))
        return nn.Dense(self.n_classes)(hidden)


def bag_mlp(n_symbols: int, n_classes: int, embed_dim: int = 64, width: int = 256) -> nn.Module:
    """The model factory grokjax calls: ``fn(n_symbols, n_classes, **settings) -> Module``."""
    return BagMLP(n_symbols, n_classes, embed_dim, width)


def smoothed_cross_entropy(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Loss: cross-entropy against labels smoothed by 0.05, one value per example ``[B]``."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, outputs.shape[-1]), 0.05)
    return optax.softmax_cross_entropy(outputs.astype(jnp.float32), targets)


def weight_sparsity(params, apply, task, batch) -> dict:
    """Measure: the share of weights below 1e-2 in magnitude, and the training accuracy with each
    example's tokens reversed (1 for a model that has learnt that the sum commutes)."""
    leaves = [x.ravel() for x in jax.tree.leaves(params)]
    small = sum(jnp.sum(jnp.abs(x) < 1e-2) for x in leaves) / sum(x.size for x in leaves)
    reversed_outputs = apply(params, batch.inputs[:, ::-1])
    train = batch.train_mask.astype(jnp.float32)
    hits = (jnp.argmax(reversed_outputs, -1) == batch.labels).astype(jnp.float32)
    return {"small_weights": small, "swapped_train_acc": jnp.sum(hits * train) / jnp.maximum(jnp.sum(train), 1.0)}
