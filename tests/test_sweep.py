
import pytest

from grokjax.results import run_columns
from grokjax.sweep import (
    FIELDS,
    PER_RUN_FIELDS,
    SweepError,
    describe_settings,
    load_sweep,
    read_sweep_file,
    sweep_from_dict,
)

ISSUE_EXAMPLE = """
name = "quickstart"
[task]
name = "add"
p = 23
data_fraction = 0.5
[model]
name = "mlp"
[optimizer]
name = "adamw"
lr = 1e-3
weight_decay = 1.0
[train]
steps = 400
eval_every = 20
[grid]
seed = [0, 1]
data_fraction = [0.3, 0.5]
weight_decay = [0.1, 1.0]
"""


def test_issue_example_loads_and_expands(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(ISSUE_EXAMPLE)
    config = load_sweep(path)
    assert config.name == "quickstart" and config.task.p == 23 and config.optimizer.lr == 1e-3
    runs = config.runs()
    assert len(runs) == 8
    assert [(r.train.seed, r.task.data_fraction, r.optimizer.weight_decay) for r in runs[:3]] == [
        (0, 0.3, 0.1), (0, 0.3, 1.0), (0, 0.5, 0.1)]
    assert len({r.static_key() for r in runs}) == 1  # one compiled program


def test_a_byte_order_mark_reads_as_the_same_file(tmp_path):
    """Windows editors may save UTF-8 with a byte-order mark (and CRLF line ends)."""
    plain, marked = tmp_path / "plain.toml", tmp_path / "marked.toml"
    plain.write_text(ISSUE_EXAMPLE)
    marked.write_bytes(b"\xef\xbb\xbf" + ISSUE_EXAMPLE.replace("\n", "\r\n").encode())
    assert read_sweep_file(marked) == read_sweep_file(plain)
    assert load_sweep(marked) == load_sweep(plain)
    marked.write_bytes(b"\xef\xbb\xbf\xff[task]\n")  # still refused when it is not UTF-8 after the mark
    with pytest.raises(SweepError, match="not a text"):
        load_sweep(marked)


def test_shape_axes_make_groups():
    config = sweep_from_dict(dict(grid={"p": [11, 13], "seed": [0, 1, 2], "model.width": [8, 16]}))
    runs = config.runs()
    assert len(runs) == 12 and len({r.static_key() for r in runs}) == 4


def test_defaults_and_name_from_file(tmp_path):
    path = tmp_path / "my_sweep.toml"
    path.write_text("")
    with pytest.raises(SweepError, match="sets nothing"):  # an empty file would train defaults unasked
        load_sweep(path)
    path.write_text("[task]\nname = 'add'\n")
    config = load_sweep(path)
    assert config.name == "my_sweep" and config.runs() == [config]
    assert config.optimizer.beta2 == 0.98 and config.events.grok_threshold == 0.99


def test_grok_gap_default_scales_with_budget():
    assert sweep_from_dict(dict(train=dict(steps=100000, eval_every=100))).grok_gap == 1000
    assert sweep_from_dict(dict(train=dict(steps=400, eval_every=20))).grok_gap == 20
    assert sweep_from_dict(dict(events=dict(grok_gap=7))).grok_gap == 7


def test_field_tables_are_consistent():
    assert {"seed", "data_fraction", "lr", "init_scale", "warmup_steps", "decay_steps", "label_noise",
            "grokfast_alpha", "grokfast_lamb", "fixed_norm", "llc_epsilon", "llc_gamma",
            "llc_nbeta"} == set(PER_RUN_FIELDS)
    config = sweep_from_dict({"optimizer": {"weight_decay": 0.5, "beta1": 0.8}})
    assert {"weight_decay", "beta1"} <= set(config.per_run_keys())  # the optimizer's floats
    assert {"p", "width", "steps"}.isdisjoint(config.per_run_keys())
    rows = describe_settings()
    assert {(r["section"], r["key"]) for r in rows} >= {("task", "p"), ("model", "width"), ("model", "d_model"),
                                                         ("optimizer", "beta1"), ("optimizer", "momentum")}
    assert all(FIELDS[k][1].metadata["doc"] for k in FIELDS)


BAD = [
    (dict(optimizer=dict(weight_decy=1.0)), "weight_decy", "did you mean 'weight_decay'"),
    (dict(tusk=dict(name="add")), "tusk", "did you mean 'task'"),
    (dict(task=dict(name="addd")), "task.name", "did you mean 'add'"),
    (dict(model=dict(name="cnn")), "model.name", "built-in: mlp, transformer"),
    (dict(task=dict(data_fraction=1.5)), "task.data_fraction", "< 1.0"),
    (dict(task=dict(data_fraction=0)), "task.data_fraction", "> 0.0"),
    (dict(optimizer=dict(weight_decay=-1)), "weight_decay must be", ">= 0"),
    (dict(optimizer=dict(lr=-0.1)), "optimizer.lr", "> 0.0"),
    (dict(task=dict(p=1)), "p must be", ">= 2"),
    (dict(train=dict(steps=0)), "train.steps", ">= 1"),
    (dict(train=dict(steps="many")), "train.steps", "must be a number"),
    (dict(train=dict(steps=10.5)), "train.steps", "must be an integer"),
    (dict(model=dict(name="transformer", layer_norm="yes")), "model.layer_norm", "true or false"),
    (dict(grid=dict(seed=[])), "grid.seed", "empty"),
    (dict(grid=dict(seed=3)), "grid.seed", "must be a list"),
    (dict(grid=dict(data_fraction=[0.5, 1.5])), "grid.data_fraction", "< 1.0"),
    (dict(grid=dict(wieght_decay=[0.1])), "wieght_decay", "did you mean 'weight_decay'"),
    (dict(grid=dict(seed=[1, 1])), "grid.seed", "duplicate"),
    (dict(task=dict(name="div", p=12)), "task.name = 'div'", "prime"),
    (dict(train=dict(steps=100, eval_every=30)), "train.steps", "multiple of train.eval_every"),
    (dict(model=dict(name="mlp", d_model=64)), "unknown key 'd_model' in [model]", "model 'mlp' takes: embed_dim"),
    (dict(optimizer=dict(name="sgd", beta1=0.9)), "unknown key 'beta1' in [optimizer]", "'sgd' takes: momentum"),
    (dict(model=dict(name="transformer", d_model=30, n_heads=4)), "model.name = 'transformer'",
     "d_model (30) must be a multiple of n_heads (4)"),
    (dict(optimizer=dict(name="lino")), "optimizer.name", "did you mean 'lion'"),
    (dict(optimizer=dict(name="lion", b3=0.9)), "unknown key 'b3'", "did you mean 'b2'"),
    (dict(task=dict(name="nowhere.mod:fn")), "task.name = 'nowhere.mod:fn'", "cannot import module 'nowhere.mod'"),
    (dict(task=dict(name="math:pi")), "task.name = 'math:pi'", "not callable"),
    (dict(task=dict(name="math:nothing")), "task.name = 'math:nothing'", "no attribute 'nothing'"),
    (dict(train=dict(loss="hinge")), "train.loss", "built-in: cross_entropy, mse"),
    (dict(train=dict(seed=2**40)), "train.seed", "<= 2147483647"),
    (dict(train=dict(steps=10**10)), "train.steps", "<= 1073741824"),
    (dict(optimizer=dict(schedule="exp")), "optimizer.schedule", "constant, cosine, linear"),
    (dict(task=dict(p=11), train=dict(batch_size=500)), "train.batch_size", "full batch"),
    (dict(name="a/b"), "name", "folder name"),
    (dict(task=dict(label_noise=1.5)), "task.label_noise", "< 1.0"),
    (dict(grid=dict(label_noise=[0.0, -0.1])), "grid.label_noise", ">= 0.0"),
    (dict(optimizer=dict(grokfast="fast")), "optimizer.grokfast", "none, ema, ma"),
    (dict(optimizer=dict(grokfast_alpha=1.0)), "optimizer.grokfast_alpha", "< 1.0"),
    (dict(optimizer=dict(grokfast_window=0)), "optimizer.grokfast_window", ">= 1"),
    (dict(optimizer=dict(orthograd="yes")), "optimizer.orthograd", "true or false"),
    (dict(optimizer=dict(fixed_norm=-1)), "optimizer.fixed_norm", ">= 0.0"),
    (dict(task=dict(name="user_plugins:regression_sum"), train=dict(loss="stablemax")), "train.loss = 'stablemax'",
     "class labels"),
    (dict(task=dict(name="user_plugins:regression_sum"), train=dict(loss="mse"), grid=dict(label_noise=[0.1])),
     "task.label_noise", "class labels"),
]


@pytest.mark.parametrize("raw, field, hint", BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_bad_input_names_the_field(raw, field, hint):
    with pytest.raises(SweepError) as e:
        sweep_from_dict(raw)
    assert field in str(e.value) and hint in str(e.value)


def test_syntax_error_and_missing_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[task\nname = 'add'")
    with pytest.raises(SweepError, match="TOML syntax error"):
        load_sweep(path)
    with pytest.raises(SweepError, match="not found"):
        load_sweep(tmp_path / "missing.toml")


def test_dotted_grid_keys_and_non_numeric_axes(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[task]\np = 13\n[grid]\noptimizer.lr = [1e-3, 1e-2]\ntask.name = ["add", "div"]\n'
                    'model.activation = ["relu", "gelu"]\n')
    config = load_sweep(path)
    assert dict(config.grid) == {"lr": (1e-3, 1e-2), "task": ("add", "div"), "activation": ("relu", "gelu")}
    runs = config.runs()
    assert len(runs) == 8 and {r.task.name for r in runs} == {"add", "div"}
    assert len({r.static_key() for r in runs}) == 4  # lr is per run; task x activation are groups


def test_task_axis_is_checked_per_value():
    with pytest.raises(SweepError, match="task 'div' needs a prime p"):
        sweep_from_dict({"task": {"p": 12}, "grid": {"task": {"name": ["add", "div"]}}})
    with pytest.raises(SweepError, match="task.name = 'plus'"):
        sweep_from_dict({"grid": {"task.name": ["add", "plus"]}})
    with pytest.raises(SweepError, match="model 'transformer' does not take"):
        sweep_from_dict({"model": {"width": 64}, "grid": {"model": {"name": ["mlp", "transformer"]}}})


def test_plugin_settings_read_like_fields_with_their_defaults():
    config = sweep_from_dict({"model": {"width": 64}, "optimizer": {"name": "lion", "b1": 0.95}})
    assert config.model.width == 64 and config.model.embed_dim == 128  # set, and the factory's default
    assert config.optimizer.b1 == 0.95 and config.optimizer.b2 == 0.99
    assert config.get("optimizer.b1") == 0.95 and config.replace(b1=0.9).optimizer.b1 == 0.9
    with pytest.raises(SweepError, match="unknown setting 'stepz'.*did you mean 'steps'"):
        config.replace(stepz=3)
    columns = run_columns(config)
    assert columns["width"] == 64 and columns["b1"] == 0.95 and columns["optimizer"] == "lion"


def test_optimizer_floats_are_per_run_and_ints_make_groups():
    config = sweep_from_dict({"optimizer": {"name": "adafactor"},
                              "grid": {"decay_rate": [0.8, 0.9], "min_dim_size_to_factor": [64, 128]}})
    runs = config.runs()
    assert isinstance(runs[0].optimizer.decay_rate, float) and runs[0].optimizer.min_dim_size_to_factor == 64
    assert len({r.static_key() for r in runs}) == 2


def test_every_shipped_sweep_file_is_valid():
    from pathlib import Path

    files = sorted((Path(__file__).parent.parent / "sweeps").glob("*.toml"))
    assert len(files) >= 8
    for path in files:
        config = load_sweep(path)
        assert config.name == path.stem and config.runs()


def test_run_settings_are_the_schemas_per_run_fields_and_the_optimizers_floats():
    """A setting marked per_run in the schema is a field of RunSettings and an array of
    run_settings, in the dtype its type says, with nothing else to edit."""
    import dataclasses

    import numpy as np

    from grokjax.experiment import run_settings
    from grokjax.program import RunSettings

    assert [f.name for f in dataclasses.fields(RunSettings)] == [*PER_RUN_FIELDS, "optimizer"]
    config = sweep_from_dict(dict(optimizer=dict(grokfast="ema", weight_decay=0.5),
                                  grid=dict(seed=[1, 2], warmup_steps=[0, 5], lr=[1e-3, 0.1])))
    runs = config.runs()
    settings = run_settings(runs)
    for key in PER_RUN_FIELDS:
        dtype = {"int": np.int32, "float": np.float32}[FIELDS[key][1].type]
        assert getattr(settings, key).dtype == dtype, key
        assert getattr(settings, key).tolist() == np.array([r.get(key) for r in runs], dtype).tolist() or \
            key in ("grokfast_lamb", "llc_nbeta"), key
    assert settings.grokfast_lamb.tolist() == [2.0] * 8  # -1 resolved: the EMA filter's default
    batch = runs[0].train.llc_batch_size  # 0 resolved: devinterp's B / log B of the SGLD batch
    assert settings.llc_nbeta.tolist() == pytest.approx([batch / np.log(batch)] * 8)
    assert settings.optimizer.keys() == runs[0].optimizer_per_run().keys() == {"weight_decay"}  # the ones set
    assert settings.optimizer["weight_decay"].dtype == np.float32


def test_a_grid_that_mixes_float64_with_other_precisions_is_refused():
    """float64 needs JAX's 64-bit mode, which holds for the whole process."""
    with pytest.raises(SweepError, match="grid.precision mixes float64 with float32"):
        sweep_from_dict(dict(grid=dict(precision=["float32", "float64"])))
    assert sweep_from_dict(dict(grid=dict(precision=["float64"]))).runs()[0].train.precision == "float64"
    assert len(sweep_from_dict(dict(grid=dict(precision=["float32", "bfloat16"]))).runs()) == 2
