"""Datasets as full tables, and the built-in tasks.

A task is a function of its settings returning a ``Task``: the whole table of examples, which
every run of a sweep shares. Runs never copy data; a run's train/test split is a boolean mask
over the table drawn from its seed (``program.split_mask``), so every run has the same shapes.

The contract for a task of your own (``[task] name = "package.module:attribute"``)::

    def my_task(**settings) -> grokjax.Task: ...

Built-ins are registered through the same door (``plugins.register_task``).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Task:
    """The whole table of a task.

    Attributes:
      name: what results tables call it.
      inputs: ``[N, k]`` integer token ids in ``0 .. n_symbols - 1`` (any ``k >= 1``), or
        ``[N, d]`` float features.
      labels: ``[N]`` integer classes in ``0 .. n_classes - 1``, or ``[N, o]`` float targets
        (regression).
      n_symbols: the vocabulary of token inputs (for float features, their dimension ``d``).
      n_classes: outputs the model must produce; default ``n_symbols`` for integer labels (the
        algorithmic tasks label with the same ids as their operands), ``o`` for float targets.
      tolerance: regression only: an example counts as correct when every output is within
        ``tolerance`` of its target (0.5: rounding the output gives the target's integer).
      modulus: for tasks over ``Z_p`` (tokens ``0 .. p - 1`` are residues): ``p``. Turns on the
        Fourier progress measures of the embedding (``progress``).

    Raises:
      ValueError: arrays of the wrong shape or dtype, or ids outside the vocabulary (checked
        when the task is made, so a task plug-in's mistake is named before anything trains).

    Example:
      >>> def cyclic(n: int = 12) -> Task:  # a task plug-in: (x + y) mod n, every pair
      ...     x, y = np.divmod(np.arange(n * n), n)
      ...     return Task("cyclic", np.stack([x, y], 1), (x + y) % n, n_symbols=n, modulus=n)
    """

    name: str
    inputs: np.ndarray
    labels: np.ndarray
    n_symbols: int
    n_classes: int | None = None
    tolerance: float = 0.5
    modulus: int | None = None

    def __post_init__(self):
        inputs, labels = np.asarray(self.inputs), np.asarray(self.labels)
        if inputs.ndim != 2 or inputs.shape[0] < 2 or inputs.shape[1] < 1:
            raise ValueError(f"inputs must be an array [N, k] with N >= 2 examples, got shape {inputs.shape}")
        if np.issubdtype(inputs.dtype, np.integer):
            inputs = inputs.astype(np.int32)
            if inputs.min() < 0 or inputs.max() >= self.n_symbols:
                raise ValueError(f"integer inputs must be token ids in 0 .. n_symbols - 1 = {self.n_symbols - 1}, "
                                 f"got values {inputs.min()} .. {inputs.max()}")
        elif np.issubdtype(inputs.dtype, np.floating):
            inputs = inputs.astype(np.float32)
        else:
            raise ValueError(f"inputs must be integer tokens or float features, got dtype {inputs.dtype}")
        if labels.shape[:1] != inputs.shape[:1] or labels.ndim not in (1, 2):
            raise ValueError(f"labels must be [N] classes or [N, o] targets with N = {inputs.shape[0]} "
                             f"(the inputs' rows), got shape {labels.shape}")
        if np.issubdtype(labels.dtype, np.integer) and labels.ndim == 1:
            labels = labels.astype(np.int32)
            n_classes = self.n_symbols if self.n_classes is None else self.n_classes
            if labels.min() < 0 or labels.max() >= n_classes:
                raise ValueError(f"integer labels must be classes in 0 .. n_classes - 1 = {n_classes - 1}, "
                                 f"got values {labels.min()} .. {labels.max()}")
        elif np.issubdtype(labels.dtype, np.floating) and labels.ndim == 2:
            labels = labels.astype(np.float32)
            n_classes = labels.shape[1]
        else:
            raise ValueError(f"labels must be integer classes [N] or float targets [N, o], got dtype "
                             f"{labels.dtype} and shape {labels.shape}")
        if not isinstance(self.n_symbols, (int, np.integer)) or self.n_symbols < 1:
            raise ValueError(f"n_symbols must be a positive integer, got {self.n_symbols!r}")
        if self.modulus is not None and not (isinstance(self.modulus, (int, np.integer)) and
                                             2 <= self.modulus <= self.n_symbols):
            raise ValueError(f"modulus must be None or an integer p with 2 <= p <= n_symbols = {self.n_symbols} "
                             f"(tokens 0 .. p - 1 are residues), got {self.modulus!r}")
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "n_classes", int(n_classes))

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])

    @property
    def regression(self) -> bool:
        return self.labels.ndim == 2


# ---------------------------------------------------------------------------------------------
# Binary operations mod p (Power et al. 2022)


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


MAX_P = 4096


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def modular_task(op: str) -> Callable[..., Task]:
    """The task factory of one operation: ``fn(p=97) -> Task`` over all pairs ``(x, y)``."""
    spec = MODULAR_OPS[op]

    def make(p: int = 97) -> Task:
        if not 2 <= p <= MAX_P:
            raise ValueError(f"p must be >= 2 and <= {MAX_P} (the table has p^2 rows), got {p}")
        if spec.needs_prime and not is_prime(p):
            raise ValueError(f"task '{op}' needs a prime p (it uses modular inverses), got {p}")
        x, y = (a.ravel().astype(np.int64) for a in np.meshgrid(np.arange(p), np.arange(p), indexing="ij"))
        if spec.y_nonzero:
            x, y = x[y != 0], y[y != 0]
        labels = np.mod(spec.fn(x, y, p), p)
        return Task(op, np.stack([x, y], 1), labels, p, modulus=p)

    make.__name__ = make.__qualname__ = op
    make.__doc__ = f"({spec.formula}) mod p over every pair; p is the modulus" + \
        (" (prime: the task uses modular inverses)." if spec.needs_prime else ".")
    return make


# ---------------------------------------------------------------------------------------------
# The permutation group S5

S5_OPS: dict[str, str] = {"s5_mul": "x . y", "s5_conj": "x . y . x^-1", "s5_xyx": "x . y . x"}


def s5_task(op: str) -> Callable[..., Task]:
    """The task factory of one S5 operation over all 120 x 120 pairs. Permutations compose as
    functions, ``(x . y)[i] = x[y[i]]``. ``p`` is accepted and ignored, so that a grid over
    ``task.name`` can mix S5 and modular tasks."""

    def make(p: int | None = None) -> Task:
        perms = list(itertools.permutations(range(5)))
        index = {perm: i for i, perm in enumerate(perms)}
        table = np.array(perms)  # [120, 5]
        inverse = np.argsort(table, axis=1)
        x, y = (a.ravel() for a in np.meshgrid(np.arange(120), np.arange(120), indexing="ij"))

        def compose(a, b):  # rows of permutations a . b
            return np.take_along_axis(a, b, axis=1)

        out = compose(table[x], table[y])
        if op == "s5_conj":
            out = compose(out, inverse[x])
        elif op == "s5_xyx":
            out = compose(out, table[x])
        labels = np.array([index[tuple(row)] for row in out])
        return Task(op, np.stack([x, y], 1), labels, 120)

    make.__name__ = make.__qualname__ = op
    make.__doc__ = f"{S5_OPS[op]} in S5 (p is ignored)."
    return make


# ---------------------------------------------------------------------------------------------
# Beyond two operands


def sparse_parity(n: int = 40, k: int = 3, examples: int = 2000, table_seed: int = 0) -> Task:
    """Sparse parity (Barak et al. 2022): ``n`` random bits, the label is the parity of ``k``
    of them (fixed by ``table_seed``, as are the examples). The full table of ``2^n`` inputs when
    ``examples`` is 0 (``n <= 20``), else ``examples`` distinct draws. Inputs are bit tokens
    ``[N, n]`` (two symbols), labels the parity (two classes)."""
    if not 1 <= n <= 1024:
        raise ValueError(f"n must be between 1 and 1024, got {n}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and n = {n}, got {k}")
    if not 0 <= table_seed <= 2**63 - 1:
        raise ValueError(f"table_seed must be >= 0, got {table_seed}")
    rng = np.random.default_rng(table_seed)
    relevant = np.sort(rng.choice(n, k, replace=False))
    if examples == 0:
        if n > 20:
            raise ValueError(f"the full table of n = {n} bits has 2^{n} rows; give examples > 0 (or n <= 20)")
        bits = (np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1
    else:
        most = min(2**n, 2**25 // n)  # distinct inputs, and a table of at most 2^25 bits
        if not 2 <= examples <= most:
            raise ValueError(f"examples must be between 2 and {most:,} for n = {n} (or 0: the full table), "
                             f"got {examples}")
        bits = rng.integers(0, 2, (examples, n))
        while len(unique := np.unique(bits, axis=0)) < examples:  # distinct rows: a test row is never trained on
            bits = np.concatenate([unique, rng.integers(0, 2, (examples - len(unique), n))])
        bits = rng.permutation(bits)
    labels = bits[:, relevant].sum(1) % 2
    return Task("sparse_parity", bits, labels, 2)


def digits() -> Task:
    """scikit-learn's 8 x 8 images of handwritten digits (1,797 images, shipped inside
    scikit-learn, no download): float features ``[1797, 64]`` in ``[0, 1]``, ten classes.
    Needs the optional extra: ``pip install 'grokjax[digits]'``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ValueError("task 'digits' needs scikit-learn: pip install 'grokjax[digits]'") from None
    data = load_digits()
    return Task("digits", data.data / 16.0, data.target, 64, n_classes=10)


BUILTIN_TASKS: dict[str, Callable[..., Task]] = {
    **{op: modular_task(op) for op in MODULAR_OPS},
    **{op: s5_task(op) for op in S5_OPS},
    "sparse_parity": sparse_parity,
    "digits": digits,
}
TASK_NAMES: tuple[str, ...] = tuple(BUILTIN_TASKS)


def describe_tasks() -> dict[str, str]:
    """Built-in task name -> what it computes, for documentation and ``grokjax info``."""
    out = {name: f"({op.formula}) mod p" for name, op in MODULAR_OPS.items()}
    out.update({name: f"{formula} in S5" for name, formula in S5_OPS.items()})
    out["sparse_parity"] = "parity of k of n random bits (Barak et al. 2022)"
    out["digits"] = "scikit-learn's 8x8 digit images, 10 classes (optional extra)"
    return out


def make_task(name: str, p: int = 97) -> Task:
    """A built-in algorithmic task's table; ``p`` is the modulus (ignored by the S5 tasks)."""
    if name not in BUILTIN_TASKS or name in ("sparse_parity", "digits"):
        raise ValueError(f"unknown task '{name}'; binary-operation tasks: "
                         f"{', '.join(t for t in TASK_NAMES if t not in ('sparse_parity', 'digits'))}")
    return BUILTIN_TASKS[name](p=p)
