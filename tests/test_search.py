"""grokjax search: the bisection against known answers (no training), then one real search on a
small MLP against the dense grid of the same values, resumed, and through the command line."""

import contextlib
import io
import math

import numpy as np
import pandas as pd
import pytest
from conftest import compiled_as_user
from hypothesis import given, settings
from hypothesis import strategies as st

from grokjax.analysis import critical_value
from grokjax.cli import main
from grokjax.run import run_sweep
from grokjax.scheduler import Round
from grokjax.search import BoundarySearch, lattice, search_boundary
from grokjax.sweep import SweepError, sweep_from_dict


def search_config(**search):
    return sweep_from_dict(dict(
        task=dict(p=23), model=dict(embed_dim=8, width=16), train=dict(steps=20, eval_every=10),
        grid=dict(weight_decay=[0.1, 1.0]),
        search={**dict(axis="data_fraction", low=0.2, high=0.8, resolution=0.05, seeds=3), **search}))


def test_lattice_linear_steps_at_most_the_resolution_and_log_ratios():
    assert lattice(search_config().search).tolist() == [round(0.2 + 0.05 * i, 10) for i in range(13)]
    uneven = lattice(search_config(low=0.1, high=0.9, resolution=0.3).search)  # 0.8 / 0.3: 3 steps of 0.2667
    assert len(uneven) == 4 and np.diff(uneven).max() <= 0.3 + 1e-12
    spec = sweep_from_dict(dict(grid=dict(weight_decay=[1.0]), search=dict(axis="lr", low=1e-4, high=1e-1,
                                                                           resolution=2.0))).search
    values = lattice(spec)
    assert spec.scale == "log" and values[0] == 1e-4 and values[-1] == 1e-1 and len(values) == 11
    assert np.allclose(values[1:] / values[:-1], 1000 ** 0.1) and (values[1:] / values[:-1]).max() <= 2.0


def synthetic(search: BoundarySearch, thresholds: dict, direction="up"):
    """Run a search where a run meets the criterion iff its value is above (up) or below (down)
    its seed's threshold; returns the runs table (one row per run) and the rounds it took."""
    search.start()
    pending, rounds = list(range(len(search.runs))), 0
    while pending:
        rounds += 1
        values = np.array([search.runs[r].task.data_fraction for r in pending])
        seeds = [search.runs[r].train.seed for r in pending]
        t = np.array([thresholds[(search.runs[r].optimizer.weight_decay, s)] for r, s in zip(pending, seeds)])
        met = meets(values, t, direction)
        events = dict(grok_step=np.where(met, 10, -1), memorize_step=np.full(len(pending), 10),
                      diverged=np.zeros(len(pending), bool))
        pending = search.extend(Round(np.array(pending), {}, events, 20, 0, 0.0, 1), np.ones(len(pending), bool))
    table = pd.DataFrame([dict(run_id=i, weight_decay=r.optimizer.weight_decay, data_fraction=r.task.data_fraction,
                               seed=r.train.seed, grok_step=10 if meets(r.task.data_fraction, thresholds[
                                   (r.optimizer.weight_decay, r.train.seed)], direction) else None,
                               memorize_step=10, diverged=False, final_step=20) for i, r in enumerate(search.runs)])
    table["grok_step"] = table["grok_step"].astype("Int64")
    return table, rounds


def meets(value, threshold, direction):
    """A seed's criterion at a value: from its threshold up, or up to its threshold (ties in)."""
    return value >= threshold if direction == "up" else value <= threshold


def dense_answer(values, thresholds, direction):
    rows = [dict(weight_decay=wd, data_fraction=v, seed=s, diverged=False, memorize_step=10,
                 grok_step=10 if meets(v, t, direction) else None)
            for (wd, s), t in thresholds.items() for v in values]
    dense = pd.DataFrame(rows).astype({"grok_step": "Int64"})
    return critical_value(dense, "data_fraction", ["weight_decay"], "grok", direction, n_boot=10)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=6, max_size=6), st.sampled_from(["up", "down", "auto"]),
       st.integers(1, 3))
def test_bisection_finds_the_dense_grids_critical_value(raw, direction, probes):
    config = search_config(direction=direction, probes=probes)
    search = BoundarySearch(config)
    truth = "down" if direction == "down" else "up"
    thresholds = {(wd, s): raw[2 * s + j] for j, wd in enumerate((0.1, 1.0)) for s in range(3)}
    table, rounds = synthetic(search, thresholds, truth)
    dense = dense_answer(search.values, thresholds, truth).set_index("weight_decay")
    boundary = search.boundary(table, n_boot=20).set_index("weight_decay")
    for wd in (0.1, 1.0):
        row, want = boundary.loc[wd], dense.loc[wd, "critical_value"]
        ends = [raw[2 * s + (wd == 1.0)] for s in range(3)]
        if direction == "auto" and (sorted(ends)[1] <= 0.2) == (sorted(ends)[1] <= 0.8):
            assert row.status in ("holds at both ends", "holds at neither end") and math.isnan(row.critical_value)
            continue
        assert (math.isnan(want) and math.isnan(row.critical_value)) or row.critical_value == want
        if row.status == "bracketed":
            assert row.high - row.low <= 0.05 + 1e-9 and row.low < row.critical_value + 1e-12
        bisections = math.ceil(math.log(len(search.values) + 1, probes + 1)) + 2 * (direction == "auto")
        assert row.probes <= probes * bisections  # ~log2(13 values) probes, not 13
    assert (table.groupby(["weight_decay", "data_fraction"]).size() == 3).all()  # every probe: all seeds


def test_statuses_at_the_range_ends():
    search = BoundarySearch(search_config(direction="up"))
    table, _ = synthetic(search, {(wd, s): 0.0 for wd in (0.1, 1.0) for s in range(3)})
    row = search.boundary(table, n_boot=10).iloc[0]
    assert row.status == "holds throughout" and row.critical_value == 0.2 and math.isnan(row.low)
    search = BoundarySearch(search_config(direction="up"))
    table, _ = synthetic(search, {(wd, s): 1.0 for wd in (0.1, 1.0) for s in range(3)})
    row = search.boundary(table, n_boot=10).iloc[0]
    assert row.status == "holds nowhere" and math.isnan(row.critical_value) and row.low == 0.8


@pytest.mark.parametrize("search, message", [
    (dict(low=0.9, high=0.8), "search.low (0.9) must be smaller than search.high (0.8)"),
    (dict(axis="activation"), "search.axis = 'activation' is not numeric"),
    (dict(axis="p"), "search.axis = 'p' changes the compiled program"),
    (dict(resolution=0.7), "search.resolution (0.7) is larger than the range high - low (0.6)"),
    (dict(high=1.5), "search.high: task.data_fraction must be > 0.0 and < 1.0, got 1.5"),
    (dict(axis="weight_decay"), "is also a [grid] axis"),
    (dict(by=["lr"]), "search.by: 'lr' is not a [grid] axis"),
    (dict(by=[]), "grid.weight_decay is not in search.by"),
    (dict(criterion="fast"), "search.criterion = 'fast' is not allowed"),
    (dict(axis="lr", low=1e-4, high=1e-1, resolution=0.01), "on a log scale"),
    (dict(seeds=0), "search.seeds must be between 1 and 1000"),
    (dict(resolution=1e-9), "at most 100,000"),
    (dict(step=2), "unknown key 'step' in [search]"),
])
def test_bad_search_settings_are_refused_by_name(search, message):
    raw = {**dict(axis="data_fraction", low=0.2, high=0.8, resolution=0.1), **search}
    with pytest.raises(SweepError) as e:
        sweep_from_dict(dict(grid=dict(weight_decay=[1.0]), search=raw))
    assert message in str(e.value)


# -- one real search --------------------------------------------------------------------------

SWEEP = """
name = "boundary"
[task]
name = "add"
p = 47
[model]
name = "mlp"
embed_dim = 64
width = 256
[optimizer]
name = "adamw"
lr = 1e-2
beta2 = 0.98
[train]
steps = 300
eval_every = 20
runs_per_batch = 4
progress_measures = false
[grid]
weight_decay = [3.0]
[search]
axis = "data_fraction"
low = 0.3
high = 0.7
resolution = 0.1
seeds = 3
direction = "up"
"""


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    folder = tmp_path_factory.mktemp("search")
    (folder / "boundary.toml").write_text(SWEEP)
    with compiled_as_user():  # it trains for long: compiled as for a user, it runs several times faster
        code = main(["search", str(folder / "boundary.toml"), "--out", str(folder / "out"), "--quiet", "--no-cache",
                     "--checkpoint-every", "0"])
    assert code == 0
    return folder


@pytest.mark.slow
def test_search_agrees_with_the_dense_grid_for_fewer_run_steps(searched, user_compiler):
    from grokjax.results import load_results
    from grokjax.sweep import load_sweep

    found = load_results(searched / "out")
    config = load_sweep(searched / "boundary.toml")
    spec = config.search
    dense_config = sweep_from_dict(dict(
        task=dict(p=47), model=dict(embed_dim=64, width=256), optimizer=dict(lr=1e-2, beta2=0.98),
        train=dict(steps=300, eval_every=20, runs_per_batch=4, progress_measures=False),
        grid=dict(weight_decay=[3.0], data_fraction=lattice(spec).tolist(), seed=list(spec.seeds))))
    dense = run_sweep(dense_config, progress=False)
    want = critical_value(dense.runs, "data_fraction", ["weight_decay"], n_boot=200)
    row = found.boundary.iloc[0]
    assert row.status == "bracketed" and row.critical_value == want.critical_value.iloc[0]
    assert row.high - row.low <= spec.resolution + 1e-9
    assert found.boundary.run_steps.sum() < dense.runs.final_step.sum()
    assert set(found.runs.columns[:2]) == {"run_id", "probe"} and found.runs.probe.nunique() == row.probes
    assert (searched / "out" / "figures" / "boundary.png").exists()
    with contextlib.redirect_stdout(io.StringIO()) as out:  # the command line's summary of it
        assert main(["summary", str(searched / "out")]) == 0
    assert "boundary (critical data_fraction per cell)" in out.getvalue() and "bracketed" in out.getvalue()


@pytest.mark.slow
def test_search_resumes_to_the_same_results(searched, tmp_path, user_compiler):
    from grokjax.results import load_results
    from grokjax.sweep import load_sweep

    config = load_sweep(searched / "boundary.toml")
    calls = []

    def stop_part_way(info):
        calls.append(info)
        if len(calls) == 28:  # the third probe trains; the newest checkpoint (round 25) launched it
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search_boundary(config, tmp_path / "out", progress=stop_part_way, sweep_text=SWEEP, checkpoint_every=5)
    resumed = search_boundary(config, tmp_path / "out", progress=False, sweep_text=SWEEP, checkpoint_every=5,
                              resume=True)
    assert resumed.meta["resumed_from_checkpoint"] is not None
    full = load_results(searched / "out")
    pd.testing.assert_frame_equal(resumed.runs, full.runs)
    pd.testing.assert_frame_equal(resumed.curves, full.curves)
    pd.testing.assert_frame_equal(resumed.boundary, full.boundary)


DIVERGE = """
name = "diverge"
[task]
name = "add"
p = 11
[model]
embed_dim = 8
width = 16
[optimizer]
weight_decay = 1.0
[train]
steps = 20
eval_every = 10
runs_per_batch = 2
progress_measures = false
[grid]
data_fraction = [0.5]
[search]
axis = "lr"
low = 1e-3
high = 1e12
resolution = 10.0
seeds = 2
criterion = "diverge"
"""


def test_cli_prints_the_boundary_and_refuses_the_wrong_command(tmp_path, capsys):
    """Through the command line: a small search (where the learning rate diverges: no grokking
    to wait for), its summary, and the files ``search`` or ``run`` refuse."""
    (tmp_path / "diverge.toml").write_text(DIVERGE)
    assert main(["search", str(tmp_path / "diverge.toml"), "--out", str(tmp_path / "out"), "--quiet", "--no-cache",
                 "--checkpoint-every", "0"]) == 0
    assert main(["summary", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "boundary (critical lr per cell)" in out and "bracketed" in out
    assert main(["run", str(tmp_path / "diverge.toml")]) == 2
    assert "grokjax search" in capsys.readouterr().err
    (tmp_path / "plain.toml").write_text(SWEEP.split("[search]")[0])
    assert main(["search", str(tmp_path / "plain.toml")]) == 2
    assert "no [search] section" in capsys.readouterr().err
    (tmp_path / "bad.toml").write_text(SWEEP.replace("low = 0.3", "low = 0.8"))
    assert main(["search", str(tmp_path / "bad.toml"), "--dry-run"]) == 2
    assert "search.low (0.8) must be smaller than search.high (0.7)" in capsys.readouterr().err


def test_a_log_spaced_search_over_the_learning_rate_finds_where_runs_diverge(tmp_path):
    from grokjax.sweep import load_sweep

    (tmp_path / "diverge.toml").write_text(DIVERGE)  # the command line test's search, from Python
    config = load_sweep(tmp_path / "diverge.toml")
    found = search_boundary(config, progress=False, n_boot=50)
    row = found.boundary.iloc[0]
    assert config.search.scale == "log" and row.status == "bracketed" and row.direction == "up"
    assert row.high / row.low <= 10.0 * (1 + 1e-9) and row.critical_value == row.high
    below = found.runs[found.runs.lr < row.critical_value]
    assert found.runs[found.runs.lr >= row.critical_value].diverged.all() and not below.diverged.all()
    assert row.probes < 16 and set(found.runs.probe) == set(range(row.probes))
