import itertools

import numpy as np
import pytest

from grokjax.tasks import MODULAR_OPS, S5_OPS, TASK_NAMES, Task, digits, make_task, sparse_parity

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
    assert set(PYTHON) | set(S5_OPS) | {"sparse_parity", "digits"} == set(TASK_NAMES)


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
    with pytest.raises(ValueError, match="unknown task 'addition'"):
        make_task("addition", 7)
    with pytest.raises(ValueError, match="p must be >= 2"):
        make_task("add", 1)


def test_sparse_parity_labels_the_parity_of_k_fixed_bits():
    task = sparse_parity(n=10, k=3, examples=0, table_seed=4)
    assert task.inputs.shape == (1024, 10) and task.n_symbols == 2 and task.n_classes == 2
    assert len({tuple(r) for r in task.inputs}) == 1024  # the full table
    # exactly three coordinates decide the label: flipping any of them flips it, others do not
    flips = [np.mean(task.labels[np.argsort([int("".join(map(str, r[::-1] ^ (np.arange(10) == i)[::-1])), 2)
                                             for r in task.inputs])] != task.labels) for i in range(10)]
    assert sorted(flips)[-3:] == [1.0, 1.0, 1.0] and sorted(flips)[:7] == [0.0] * 7
    sampled = sparse_parity(n=40, k=3, examples=500)
    assert sampled.inputs.shape == (500, 40) and len({tuple(r) for r in sampled.inputs}) == 500
    assert 0.4 < sampled.labels.mean() < 0.6
    with pytest.raises(ValueError, match="examples > 0"):
        sparse_parity(n=40, examples=0)


def test_digits_are_float_features_with_ten_classes():
    pytest.importorskip("sklearn")
    task = digits()
    assert task.inputs.shape == (1797, 64) and task.inputs.dtype == np.float32 and task.n_classes == 10
    assert task.inputs.min() >= 0.0 and task.inputs.max() <= 1.0


@pytest.mark.parametrize("inputs, labels, n_symbols, match", [
    (np.zeros((4, 2), np.int32), np.zeros(3, np.int32), 5, "labels must be"),
    (np.zeros(4, np.int32), np.zeros(4, np.int32), 5, r"inputs must be an array \[N, k\]"),
    (np.full((4, 2), 9), np.zeros(4, np.int32), 5, "token ids in 0 .. n_symbols - 1 = 4"),
    (np.zeros((4, 2), np.int32), np.full(4, 7), 5, "classes in 0 .. n_classes - 1 = 4"),
    (np.array([["a", "b"]] * 4), np.zeros(4, np.int32), 5, "integer tokens or float features"),
    (np.zeros((4, 2), np.int32), np.zeros(4, np.float32), 5, "integer classes"),
])
def test_task_refuses_bad_arrays(inputs, labels, n_symbols, match):
    with pytest.raises(ValueError, match=match):
        Task("bad", inputs, labels, n_symbols)


def test_modular_tasks_declare_their_modulus():
    assert make_task("add", 13).modulus == 13 and make_task("div", 13).modulus == 13
    with pytest.raises(ValueError, match="modulus must be None or an integer p"):
        Task("bad", np.zeros((4, 2), np.int32), np.zeros(4, np.int32), 5, modulus=9)
