"""Algorithmic datasets as full tables.

A task is the whole table of operand pairs: ``inputs [N, 2]`` (token ids of x and y), ``labels [N]``
and the number of symbols. Runs never copy data; a run's train/test split is a boolean mask over
this table (see ``engine.split_mask``), so every run of a sweep shares one shape.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    inputs: np.ndarray  # [N, 2] int32 token ids of (x, y)
    labels: np.ndarray  # [N] int32
    n_symbols: int  # token ids are 0 .. n_symbols - 1; labels use the same ids

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])


@dataclasses.dataclass(frozen=True)
class _ModularOp:
    formula: str
    fn: Callable[[np.ndarray, np.ndarray, int], np.ndarray]
    needs_prime: bool = False  # uses modular inverses, so p must be prime
    y_nonzero: bool = False  # the table skips y = 0


def _inverse(y: np.ndarray, p: int) -> np.ndarray:
    return np.array([pow(int(v), -1, p) for v in np.ravel(y)], dtype=np.int64).reshape(np.shape(y))


def _div_or_sub(x, y, p):
    odd = (y % 2) == 1
    safe_y = np.where(odd, y, 1)  # even y (including 0) takes the x - y branch
    return np.where(odd, x * _inverse(safe_y, p), x - y)


MODULAR_OPS: dict[str, _ModularOp] = {
    "add": _ModularOp("x + y", lambda x, y, p: x + y),
    "sub": _ModularOp("x - y", lambda x, y, p: x - y),
    "mul": _ModularOp("x * y", lambda x, y, p: x * y),
    "div": _ModularOp("x / y (y != 0)", lambda x, y, p: x * _inverse(y, p), True, True),
    "x2_y2": _ModularOp("x^2 + y^2", lambda x, y, p: x**2 + y**2),
    "x2_xy_y2": _ModularOp("x^2 + xy + y^2", lambda x, y, p: x**2 + x * y + y**2),
    "x2_xy_y2_x": _ModularOp("x^2 + xy + y^2 + x", lambda x, y, p: x**2 + x * y + y**2 + x),
    "x3_xy": _ModularOp("x^3 + xy", lambda x, y, p: x**3 + x * y),
    "x3_xy2_y": _ModularOp("x^3 + xy^2 + y", lambda x, y, p: x**3 + x * y**2 + y),
    "div_or_sub": _ModularOp("x / y if y is odd else x - y", _div_or_sub, True),
}

# Permutations of 5 elements, composed as functions: (x.y)[i] = x[y[i]].
S5_OPS: dict[str, str] = {
    "s5_mul": "x . y",
    "s5_conj": "x . y . x^-1",
    "s5_xyx": "x . y . x",
}

TASK_NAMES: tuple[str, ...] = tuple(MODULAR_OPS) + tuple(S5_OPS)


def describe_tasks() -> dict[str, str]:
    """Task name -> formula, for documentation and ``grokjax info``."""
    out = {name: f"({op.formula}) mod p" for name, op in MODULAR_OPS.items()}
    out.update({name: f"{formula} in S5" for name, formula in S5_OPS.items()})
    return out


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def task_needs_prime(name: str) -> bool:
    return name in MODULAR_OPS and MODULAR_OPS[name].needs_prime


def make_task(name: str, p: int = 97) -> Task:
    """The full table of ``name``; ``p`` is the modulus (ignored by the S5 tasks)."""
    if name in MODULAR_OPS:
        op = MODULAR_OPS[name]
        if p < 2:
            raise ValueError(f"task.p must be >= 2, got {p}")
        if op.needs_prime and not is_prime(p):
            raise ValueError(f"task '{name}' needs a prime p (it uses modular inverses), got {p}")
        x, y = (a.ravel().astype(np.int64) for a in np.meshgrid(np.arange(p), np.arange(p), indexing="ij"))
        if op.y_nonzero:
            x, y = x[y != 0], y[y != 0]
        labels = np.mod(op.fn(x, y, p), p)
        return Task(name, np.stack([x, y], 1).astype(np.int32), labels.astype(np.int32), p)
    if name in S5_OPS:
        return _s5_task(name)
    raise ValueError(f"unknown task '{name}'; known tasks: {', '.join(TASK_NAMES)}")


def _s5_task(name: str) -> Task:
    perms = list(itertools.permutations(range(5)))
    index = {perm: i for i, perm in enumerate(perms)}
    table = np.array(perms)  # [120, 5]
    inverse = np.argsort(table, axis=1)
    x, y = (a.ravel() for a in np.meshgrid(np.arange(120), np.arange(120), indexing="ij"))

    def compose(a, b):  # rows of permutations a . b
        return np.take_along_axis(a, b, axis=1)

    if name == "s5_mul":
        out = compose(table[x], table[y])
    elif name == "s5_conj":
        out = compose(compose(table[x], table[y]), inverse[x])
    else:
        out = compose(compose(table[x], table[y]), table[x])
    labels = np.array([index[tuple(row)] for row in out])
    return Task(name, np.stack([x, y], 1).astype(np.int32), labels.astype(np.int32), 120)
