"""Plug-ins as a user writes them, outside the grokjax package (the contract tests use them)."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import grokjax


def weighted_sum(p: int = 7, k: int = 3) -> grokjax.Task:
    """(t_1 + 2 t_2 + ... + k t_k) mod p over every k-tuple."""
    inputs = np.array(list(itertools.product(range(p), repeat=k)), dtype=np.int32)
    return grokjax.Task("weighted_sum", inputs, (inputs * np.arange(1, k + 1)).sum(1) % p, p)


class FlatNet(nn.Module):
    n_symbols: int
    n_classes: int
    width: int = 32

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(self.n_symbols, 8)(tokens).reshape(tokens.shape[0], -1)
        return nn.Dense(self.n_classes)(nn.tanh(nn.Dense(self.width)(x)))


def flat_net(n_symbols: int, n_classes: int, width: int = 32) -> nn.Module:
    return FlatNet(n_symbols, n_classes, width)


def penalized_cross_entropy(outputs, labels):
    """Cross-entropy plus a small penalty on the logits, per example."""
    ce = optax.softmax_cross_entropy_with_integer_labels(outputs, labels)
    return ce + 1e-3 * jnp.mean(jnp.square(outputs), axis=-1)


# --- plug-ins that break the contract -------------------------------------------------------


def string_task() -> grokjax.Task:
    return grokjax.Task("strings", np.array([["a", "b"]] * 4), np.zeros(4, np.int32), 2)


def not_a_task():
    return {"inputs": np.zeros((4, 2))}


def wide_net(n_symbols: int, n_classes: int) -> nn.Module:
    return FlatNet(n_symbols, n_classes + 1)


class Boom(nn.Module):
    n_symbols: int
    n_classes: int

    @nn.compact
    def __call__(self, tokens):
        raise ValueError("boom: my model is broken")


def scalar_loss(outputs, labels):
    return optax.softmax_cross_entropy_with_integer_labels(outputs, labels).mean()


def branching_sgd(learning_rate, decay: float = 0.9):
    if decay > 0.5:  # Python control flow on a per-run (traced) value
        return optax.sgd(learning_rate, momentum=decay)
    return optax.sgd(learning_rate)


def raising_task(p: int = 5):
    raise RuntimeError("disk on fire")


def jax_task():
    return jax.numpy.zeros(3)


def dict_model(n_symbols, n_classes):
    return {"layers": 2}


def regression_sum(p: int = 5) -> grokjax.Task:
    """Float targets: (x + y) / p as a regression."""
    x, y = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    inputs = np.stack([x.ravel(), y.ravel()], 1)
    return grokjax.Task("regression_sum", inputs, (inputs.sum(1, keepdims=True) / p).astype(np.float32), p)


# --- measures -------------------------------------------------------------------------------


def mean_abs_weight(params, apply, task, batch):
    """The mean |w| over every parameter, and the training loss recomputed through ``apply``."""
    leaves = jax.tree.leaves(params)
    loss = batch.loss(apply(params, batch.inputs), batch.labels)
    train = batch.train_mask.astype(jnp.float32)
    return {"mean_abs_weight": sum(jnp.sum(jnp.abs(x)) for x in leaves) / sum(x.size for x in leaves),
            "loss_again": jnp.sum(loss * train) / jnp.sum(train)}


def vector_measure(params, apply, task, batch):
    return {"per_class": jnp.mean(batch.outputs, 0)}


def list_measure(params, apply, task, batch):
    return [1.0]


def clashing_measure(params, apply, task, batch):
    return {"test_acc": jnp.zeros(())}


def two_argument_measure(params, apply):
    return {}
