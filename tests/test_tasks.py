import itertools

import numpy as np
import pytest

from grokjax.tasks import MODULAR_OPS, S5_OPS, TASK_NAMES, make_task

P = 7

PYTHON = {
    "add": lambda x, y, p: (x + y) % p,
    "sub": lambda x, y, p: (x - y) % p,
    "mul": lambda x, y, p: (x * y) % p,
    "div": lambda x, y, p: (x * pow(y, p - 2, p)) % p,  # Fermat inverse
    "x2_y2": lambda x, y, p: (x * x + y * y) % p,
    "x2_xy_y2": lambda x, y, p: (x * x + x * y + y * y) % p,
    "x2_xy_y2_x": lambda x, y, p: (x * x + x * y + y * y + x) % p,
    "x3_xy": lambda x, y, p: (x**3 + x * y) % p,
    "x3_xy2_y": lambda x, y, p: (x**3 + x * y * y + y) % p,
    "div_or_sub": lambda x, y, p: (x * pow(y, p - 2, p)) % p if y % 2 else (x - y) % p,
}


def test_every_task_is_covered():
    assert set(PYTHON) | set(S5_OPS) == set(TASK_NAMES)


@pytest.mark.parametrize("name", sorted(MODULAR_OPS))
def test_modular_tables_match_python(name):
    task = make_task(name, P)
    ys = range(1, P) if name == "div" else range(P)
    expected = {(x, y): PYTHON[name](x, y, P) for x in range(P) for y in ys}
    got = {(int(x), int(y)): int(label) for (x, y), label in zip(task.inputs, task.labels)}
    assert got == expected
    assert task.n_symbols == P and task.size == len(expected)
    assert task.inputs.dtype == np.int32 and task.labels.dtype == np.int32


def _compose(a, b):  # (a . b)(i) = a(b(i))
    return tuple(a[b[i]] for i in range(5))


def _inverse(a):
    inv = [0] * 5
    for i, v in enumerate(a):
        inv[v] = i
    return tuple(inv)


S5_PYTHON = {
    "s5_mul": lambda a, b: _compose(a, b),
    "s5_conj": lambda a, b: _compose(_compose(a, b), _inverse(a)),
    "s5_xyx": lambda a, b: _compose(_compose(a, b), a),
}


@pytest.mark.parametrize("name", sorted(S5_OPS))
def test_s5_tables_match_python(name):
    perms = list(itertools.permutations(range(5)))
    task = make_task(name)
    assert task.n_symbols == 120 and task.size == 120 * 120
    for (x, y), label in zip(task.inputs[::37], task.labels[::37]):
        assert perms[label] == S5_PYTHON[name](perms[x], perms[y])


def test_s5_mul_is_a_group_table():
    task = make_task("s5_mul")
    table = task.labels.reshape(120, 120)
    assert all(len(set(row)) == 120 for row in table)  # Latin square
    assert not np.array_equal(table, table.T)  # S5 is not abelian


def test_division_needs_a_prime():
    with pytest.raises(ValueError, match="prime"):
        make_task("div", 9)
    with pytest.raises(ValueError, match="prime"):
        make_task("div_or_sub", 10)
    assert make_task("add", 9).size == 81  # no field needed


def test_unknown_task_and_small_p():
    with pytest.raises(ValueError, match="known tasks"):
        make_task("addition", 7)
    with pytest.raises(ValueError, match="p must be >= 2"):
        make_task("add", 1)
