"""``--set KEY=VALUE``: values read as TOML, applied to the file's data before validation, and the
merged sweep written back as TOML that parses to the same data."""

import math
import sys

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from grokjax.overrides import apply_overrides, parse_override, to_toml
from grokjax.sweep import SweepError, load_sweep, sweep_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FILE = """# a comment the merged copy does not keep
name = "small"
[task]
name = "add"
p = 23
[optimizer]
lr = 1e-2
[train]
steps = 40
eval_every = 10
[grid]
seed = [0, 1]
optimizer.weight_decay = [0.1, 1.0]
"""


@pytest.mark.parametrize("text, path, value", [
    ("optimizer.lr=3e-3", ("optimizer", "lr"), 3e-3),
    ("grid.seed=[0,1,2]", ("grid", "seed"), [0, 1, 2]),
    ("task.name=add", ("task", "name"), "add"),  # a bare word: a string
    ('task.name="add"', ("task", "name"), "add"),
    ("task.name=my_plugins:task", ("task", "name"), "my_plugins:task"),
    ("events.stop_early=false", ("events", "stop_early"), False),
    ("train.steps = 1_000", ("train", "steps"), 1000),
    ('grid."task.p"=[11]', ("grid", "task.p"), [11]),
])
def test_parse_override_reads_toml_values_and_bare_words(text, path, value):
    assert parse_override(text) == (path, value)


@pytest.mark.parametrize("text, hint", [
    ("optimizer.lr", "KEY=VALUE"), ("=3", "KEY=VALUE"), ("optimizer.lr=", "no value"),
    ("grid.seed=[0,1", "not a TOML value"), ("task.name='add", "not a TOML value"), ("a..b=1", "not a setting's key"),
])
def test_malformed_overrides_are_refused(text, hint):
    with pytest.raises(SweepError, match=hint):
        parse_override(text)


def test_apply_overrides_replaces_values_and_grid_axes_in_place():
    raw = tomllib.loads(FILE)
    merged = apply_overrides(raw, ["optimizer.lr=3e-3", "grid.weight_decay=[1.0]", "grid.seed=[5]", "model.width=64"])
    assert raw == tomllib.loads(FILE), "the file's data is not modified"
    assert merged["optimizer"]["lr"] == 3e-3 and merged["model"] == {"width": 64}
    # grid.weight_decay replaces grid.optimizer.weight_decay, each axis keeps its place (the runs' order)
    assert list(merged["grid"]) == ["seed", "weight_decay"] and merged["grid"]["weight_decay"] == [1.0]
    assert apply_overrides(raw, {"grid.lr": [1e-3, 1e-2]})["grid"]["lr"] == [1e-3, 1e-2]  # Python values as given
    assert apply_overrides(raw, None) is raw
    with pytest.raises(SweepError, match="task.p is a value"):
        apply_overrides(raw, ["task.p.x=1"])


def test_load_sweep_validates_overrides_as_the_file(tmp_path):
    path = tmp_path / "small.toml"
    path.write_text(FILE)
    config = load_sweep(path, ["optimizer.lr=3e-3", "grid.seed=[0,1,2]"])
    assert config.optimizer.lr == 3e-3 and dict(config.grid)["seed"] == (0, 1, 2) and len(config.runs()) == 6
    with pytest.raises(SweepError, match=r"--set optimizer.lrr=1: unknown key 'lrr' in \[optimizer\] "
                                         r"\(did you mean 'lr'\?\).*engine settings: lr, "):
        load_sweep(path, ["optimizer.lrr=1"])
    with pytest.raises(SweepError, match="optimizer.lr must be a number, got 'fast'"):
        load_sweep(path, ["optimizer.lr=fast"])
    with pytest.raises(SweepError, match="train.steps .* must be a multiple of train.eval_every"):
        load_sweep(path, ["train.steps=45"])  # checks across settings see the overridden value


def test_sweep_text_keeps_the_file_or_writes_the_merged_sweep(tmp_path):
    path = tmp_path / "small.toml"
    path.write_text(FILE)
    assert sweep_text(path) == FILE
    text = sweep_text(path, ["optimizer.lr=3e-3", "grid.seed=[0,1,2]"])
    assert text.startswith("# small.toml with --set optimizer.lr=3e-3 --set grid.seed=[0,1,2]")
    saved = tmp_path / "saved.toml"
    saved.write_text(text)  # the copy reproduces the launch: the same settings, the same name
    assert load_sweep(saved) == load_sweep(path, ["optimizer.lr=3e-3", "grid.seed=[0,1,2]"])
    unnamed = tmp_path / "unnamed.toml"
    unnamed.write_text(FILE.replace('name = "small"\n', ""))
    saved.write_text(sweep_text(unnamed, ["train.steps=20"]))
    assert load_sweep(saved).name == "unnamed"


keys = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=8)
scalars = (st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False)
           | st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
                      max_leaves=6)
documents = st.dictionaries(keys, values | st.dictionaries(keys, values, max_size=4), max_size=5)


@settings(max_examples=150, deadline=None)
@given(documents)
@example({"0": False, "0\n": {}})  # a key ending in a newline once passed for a bare key
def test_to_toml_parses_back_to_the_same_data(data):
    assert tomllib.loads(to_toml(data)) == data


def test_to_toml_writes_special_floats():
    back = tomllib.loads(to_toml({"grid": {"x": [math.inf, -math.inf, 1e-300]}, "t": {"n": math.nan}}))
    assert back["grid"]["x"] == [math.inf, -math.inf, 1e-300] and math.isnan(back["t"]["n"])
