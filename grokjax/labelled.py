"""A results folder as labelled arrays: an ``xarray.Dataset`` whose dimensions are the grid's axes.

A grid is an N-dimensional array held as a long table (``runs.parquet``, one row per run); here
each per-run column becomes a variable over the grid's axes (``seed`` among them when it is one),
and each curve column a variable over those axes and ``step``. A search's runs are its probes:
their dimensions are the ``by`` axes, the searched axis (the lattice values probed) and ``seed``,
missing where a value was not probed; its boundary table's columns are variables over the ``by``
axes alone. Built from the tables only: nothing a results folder names is imported.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from grokjax.errors import SweepError

# run_id and probe link a cell back to the tables; key_frequencies holds a list per run and
# evaluation, which a numeric array cannot (read it from the curves table)
LIST_COLUMNS = ("key_frequencies", "probed_values")


def to_dataset(runs: pd.DataFrame, curves: pd.DataFrame | None, dims: list[str], attrs: dict,
               boundary: pd.DataFrame | None = None) -> xr.Dataset:
    """The runs (and their curves) of a results folder as one Dataset over ``dims``.

    Args:
      runs: the runs table.
      curves: the curves table, or None for the per-run variables only.
      dims: the runs columns that label a run (the grid's axes), in order.
      attrs: the Dataset's attributes (the settings every run shares are added).
      boundary: a search's boundary table; its columns become variables over its ``by`` axes.

    Returns:
      The Dataset: a coordinate per dimension (numbers ascending, names in the order the runs
      took them), ``step`` for the curves; per-run variables, curve variables; a setting every run shares as
      an attribute. Missing cells (a sweep still running, a value a search did not probe) are NaN.

    Raises:
      SweepError: the columns ``dims`` do not tell the runs apart, or one is not a column.
    """
    missing = [d for d in dims if d not in runs]
    if missing:
        raise SweepError(f"the runs table has no column {missing[0]!r} to label the runs by")
    if runs[dims].duplicated().any():
        raise SweepError(f"the columns {', '.join(dims) or '(none)'} do not tell the runs apart: several runs share "
                         f"one combination of them")
    runs = runs.sort_values("run_id", kind="stable")
    coords = {d: _ordered(runs[d]) for d in dims}
    shared = {}
    if "memorize_step" in runs:
        settings = runs.columns[:runs.columns.get_loc("memorize_step")]
        shared = {c: _python(runs[c].iloc[0]) for c in settings if c not in (*dims, "run_id", "probe")
                  and len(runs) and runs[c].nunique(dropna=False) == 1}
    table = _numeric(runs.drop(columns=[*shared, *(c for c in LIST_COLUMNS if c in runs)]))
    ds = _unstack(table, dims, coords)
    if curves is not None and len(curves):
        ds = ds.merge(_curves(curves, runs, dims, coords))
    if boundary is not None:
        by = [c for c in dims if c in boundary]
        bounds = _numeric(boundary.drop(columns=[c for c in LIST_COLUMNS if c in boundary]))
        ds = ds.merge(_unstack(bounds, by, {d: coords[d] for d in by}))
    ds.attrs.update({**shared, **attrs})
    return ds


def _curves(curves: pd.DataFrame, runs: pd.DataFrame, dims: list[str], coords: dict) -> xr.Dataset:
    """The curve columns over ``dims`` and ``step``: each run's evaluations at their steps."""
    labels = runs[["run_id", *dims]]
    table = curves.drop(columns=[c for c in LIST_COLUMNS if c in curves]).merge(labels, on="run_id", how="inner")
    steps = np.sort(table["step"].unique())
    return _unstack(table.drop(columns="run_id"), [*dims, "step"], {**coords, "step": steps})


def _unstack(table: pd.DataFrame, dims: list[str], coords: dict) -> xr.Dataset:
    """A table keyed by ``dims`` as a Dataset with ``coords`` (in their order), NaN where no row."""
    if not dims:  # a sweep of one run: scalar variables
        return xr.Dataset({c: ((), table[c].iloc[0]) for c in table.columns})
    index = (pd.MultiIndex.from_product([coords[d] for d in dims], names=dims) if len(dims) > 1
             else pd.Index(coords[dims[0]], name=dims[0]))
    full = table.set_index(dims).reindex(index)
    shape = [len(coords[d]) for d in dims]
    return xr.Dataset({c: (dims, full[c].to_numpy().reshape(shape)) for c in full.columns},
                      coords={d: np.asarray(coords[d]) for d in dims})


def _ordered(values: pd.Series) -> np.ndarray:
    """A dimension's values: ascending where they are numbers (xarray's plots and ``sel`` slices
    read coordinates in order), else in the order the runs took them."""
    unique = pd.unique(values)
    return np.sort(unique) if values.dtype.kind in "biuf" else unique


def _numeric(table: pd.DataFrame) -> pd.DataFrame:
    """Columns as numpy dtypes: nullable integers (a step that never came) as float, NaN for it;
    booleans stay booleans, strings become objects."""
    out = {}
    for column in table.columns:
        values = table[column]
        if isinstance(values.dtype, pd.api.extensions.ExtensionDtype) and values.dtype.kind in "iu":
            out[column] = values.astype("float64")
        elif values.dtype.kind in "biuf":
            out[column] = values
        else:
            out[column] = values.astype(object)
    return pd.DataFrame(out, index=table.index)


def _python(value):
    """A numpy scalar as the Python value it holds (attributes read and save as plain values)."""
    return value.item() if isinstance(value, np.generic) else value
