import pytest

import grokjax


def make_sweep(**sections):
    """A small sweep from keyword sections: make_sweep(task=dict(p=11), grid=dict(seed=[0, 1]))."""
    raw = dict(name="test", task=dict(name="add", p=23), model=dict(name="mlp", embed_dim=32, width=64),
               optimizer=dict(lr=1e-2, weight_decay=1.0), train=dict(steps=60, eval_every=10))
    for key, value in sections.items():
        replace = key == "grid" or not isinstance(value, dict) or (key == "model" and "name" in value)
        raw[key] = value if replace else {**raw.get(key, {}), **value}
    return grokjax.sweep_from_dict(raw)


@pytest.fixture
def sweep():
    return make_sweep
