"""Results as labelled arrays: the grid's axes are the Dataset's dimensions, every run sits at its
settings, curves add ``step``, a search's probes sit at their probed values."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
from conftest import made_up_results, make_sweep

import grokjax
from grokjax.errors import SweepError
from grokjax.sweep import sweep_from_dict


@pytest.fixture(scope="module")
def grid():
    config = make_sweep(task=dict(p=11), grid=dict(weight_decay=[1.0, 0.1], seed=[0, 1], data_fraction=[0.3, 0.6]))
    return made_up_results(config, config.runs())


@pytest.fixture(scope="module")
def search():
    """Probes of a search over two cells: data fraction 0.3 and 0.7 in one, 0.5 in the other."""
    config = sweep_from_dict(dict(
        name="s", task=dict(name="add", p=11), train=dict(steps=20, eval_every=10), grid=dict(weight_decay=[1.0, 0.3]),
        search=dict(axis="data_fraction", low=0.3, high=0.7, resolution=0.2, seeds=2, direction="up")))
    probes = [(1.0, 0.3), (1.0, 0.7), (0.3, 0.5)]
    runs = [config.replace(weight_decay=wd, data_fraction=f, seed=s) for wd, f in probes for s in (0, 1)]
    results = made_up_results(config, runs, extra=np.repeat(np.arange(3), 2))
    boundary = pd.DataFrame(dict(weight_decay=[1.0, 0.3], critical_value=[0.7, np.nan], status=["bracketed",
                                 "unfinished"], probes=[2, 1], probed_values=[[0.3, 0.7], [0.5]]))
    return dataclasses.replace(results, boundary=boundary)


def test_a_grid_is_an_array_over_its_axes(grid):
    loaded = grid
    ds = loaded.to_xarray()
    assert dict(ds.sizes) == {"weight_decay": 2, "seed": 2, "data_fraction": 2, "step": 2}
    assert list(ds.weight_decay.values) == [0.1, 1.0] and list(ds.step.values) == [10, 20]  # numbers ascending
    assert ds.grok_step.dims == ("weight_decay", "seed", "data_fraction")
    assert ds.test_acc.dims == ("weight_decay", "seed", "data_fraction", "step")
    for row in loaded.runs.itertuples():  # every run sits at its settings
        cell = dict(weight_decay=row.weight_decay, seed=row.seed, data_fraction=row.data_fraction)
        assert int(ds.run_id.sel(cell)) == row.run_id
        assert float(ds.final_test_acc.sel(cell)) == pytest.approx(row.final_test_acc)
        assert ds.phase.sel(cell).item() == row.phase
        curve = loaded.curves[loaded.curves.run_id == row.run_id]
        np.testing.assert_allclose(ds.train_loss.sel(cell).values, curve.train_loss.values)
    # a step that never came is NaN; a setting every run shares is an attribute
    assert np.isnan(ds.grok_step.values).sum() == loaded.runs.grok_step.isna().sum()
    assert ds.attrs["p"] == 11 and ds.attrs["task"] == "add" and ds.attrs["name"] == "test" and ds.attrs["complete"]
    assert "lr" not in ds
    assert set(loaded.to_xarray(curves=False).sizes) == {"weight_decay", "seed", "data_fraction"}
    # the three analyses of the docs' page run
    assert ds.grok_step.median("seed").dims == ("weight_decay", "data_fraction")
    assert float((ds.phase == "comprehension").mean("seed").max()) <= 1
    assert ds.test_acc.sel(weight_decay=1.0, data_fraction=0.6).dims == ("seed", "step")


def test_a_search_sits_at_its_probed_values_with_its_boundary(search):
    loaded = search
    ds = loaded.to_xarray()
    assert set(ds.sizes) == {"weight_decay", "data_fraction", "seed", "step"}
    assert list(ds.data_fraction.values) == [0.3, 0.5, 0.7]
    assert "probed_values" not in ds and ds.probes.sel(weight_decay=0.3).item() == 1
    assert ds.critical_value.dims == ("weight_decay",) and ds.status.dims == ("weight_decay",)
    for row in loaded.boundary.itertuples():
        assert ds.status.sel(weight_decay=row.weight_decay).item() == row.status
    probes = ds.probe.notnull().sum().item()
    assert probes == len(loaded.runs)  # the lattice values a cell did not probe are NaN
    for row in loaded.runs.itertuples():
        cell = dict(weight_decay=row.weight_decay, data_fraction=row.data_fraction, seed=row.seed)
        assert int(ds.run_id.sel(cell)) == row.run_id


def test_a_partial_grid_is_nan_where_runs_have_not_started(grid):
    loaded = grid
    partial = grokjax.Results(loaded.runs[loaded.runs.run_id < 5], loaded.curves, loaded.meta)
    ds = partial.to_xarray()
    assert dict(ds.sizes)["data_fraction"] == 2 and int(ds.run_id.notnull().sum()) == 5
    assert int(ds.train_loss.notnull().any("step").sum()) == 5


def test_runs_the_axes_do_not_tell_apart_are_refused(grid):
    loaded = grid
    meta = {**loaded.meta, "config": {"grid.weight_decay": [1.0, 0.1]}}
    with pytest.raises(SweepError, match="do not tell the runs apart"):
        grokjax.Results(loaded.runs, loaded.curves, meta).to_xarray()
    # without a grid in meta.json (an older folder), the settings that vary label the runs
    ds = grokjax.Results(loaded.runs, loaded.curves, {}).to_xarray(curves=False)
    assert set(ds.sizes) == {"weight_decay", "seed", "data_fraction"}
    single = grokjax.Results(loaded.runs.iloc[:1], loaded.curves.iloc[:0], {"config": {}}).to_xarray()
    assert not single.sizes and single.run_id.item() == 0


@pytest.mark.slow
def test_a_results_folder_of_a_trained_grid_loads_as_a_dataset(tmp_path):
    config = make_sweep(task=dict(p=11), train=dict(steps=20, eval_every=10, progress_measures=True),
                        grid=dict(seed=[0, 1], data_fraction=[0.3, 0.6]))
    results = grokjax.run_sweep(config, out=tmp_path, progress=False, tune_cache=None)
    ds = grokjax.load_dataset(tmp_path)
    assert dict(ds.sizes) == {"seed": 2, "data_fraction": 2, "step": 2}
    assert "fourier_gini" in ds and "key_frequencies" not in ds  # a set per evaluation: read it from the table
    xr = pytest.importorskip("xarray")
    xr.testing.assert_identical(ds, results.to_xarray())
