"""Tidy result tables: one row per run (``runs.parquet``), one row per run x evaluation
(``curves.parquet``), plus ``meta.json`` and a copy of the sweep file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from grokjax.errors import SweepError
from grokjax.llc import COLUMNS as LLC_COLUMNS
from grokjax.metrics import CURVE_METRICS, NEVER, classify_phases
from grokjax.plugins import resolve, scalar_defaults
from grokjax.schema import FIELDS, PLUGIN_SECTIONS
from grokjax.sweep_config import SweepConfig, axis_key
from grokjax.sweep_file import flatten, read_sweep_file

RUNS_FILE, CURVES_FILE, META_FILE, SWEEP_FILE = "runs.parquet", "curves.parquet", "meta.json", "sweep.toml"
BOUNDARY_FILE = "boundary.parquet"


@dataclasses.dataclass(frozen=True)
class Results:
    runs: pd.DataFrame
    curves: pd.DataFrame
    meta: dict
    boundary: pd.DataFrame | None = None  # a search's critical values (boundary.parquet)

    def to_xarray(self, curves: bool = True):
        """The results as an ``xarray.Dataset`` whose dimensions are the grid's axes
        (``grokjax.labelled``): ``ds.grok_step.median("seed")``, ``ds.test_acc.sel(step=500)``.

        Args:
          curves: also the curve columns, over the grid's axes and ``step``.

        Returns:
          The Dataset: per-run columns as variables over the grid's axes (a search: its ``by``
          axes, the searched axis and ``seed``, with the boundary's columns over the ``by`` axes),
          curve columns over those and ``step``, NaN where a cell has no run; the settings every
          run shares, the sweep's name and whether it is complete, as attributes.

        Raises:
          SweepError: the runs table cannot be labelled by the grid's axes.

        Example:
          >>> ds = grokjax.load_results("results/quickstart").to_xarray()
          >>> ds.grok_step.median("seed").plot()
        """
        from grokjax.labelled import to_dataset

        attrs = {k: self.meta[k] for k in ("name", "complete") if k in self.meta}
        return to_dataset(self.runs, self.curves if curves else None, label_columns(self.meta, self.runs), attrs,
                          self.boundary)


def _steps(values) -> pd.Series:
    values = np.asarray(values)
    return pd.array(np.where(values == NEVER, None, values).tolist(), dtype="Int64")


def concat_parts(parts: list[dict]) -> dict[str, np.ndarray]:
    """Curve columns of several rounds as flat arrays. A column some groups lack (a progress
    measure that does not apply to their task) is NaN there; a per-evaluation set
    (``key_frequencies``, a mask [n, K]) is stored as int8 rows padded to the widest, -1 where the
    measure does not apply."""
    keys = list(dict.fromkeys(k for part in parts for k in part))
    out = {}
    for key in keys:
        wide = [p[key].shape[1] for p in parts if key in p and np.ndim(p[key]) == 2]
        if wide:
            width = max(wide)
            blocks = []
            for p in parts:
                n = len(p["step"])
                block = np.full((n, width), -1, np.int8)
                if key in p:  # bool masks, or int8 rows read back from a checkpoint (-1 kept)
                    v = np.asarray(p[key]).astype(np.int8)
                    block[:, :v.shape[1]] = v
                    block[:, v.shape[1]:] = np.where(v[:, :1] < 0, -1, 0)
                blocks.append(block)
            out[key] = np.concatenate(blocks)
        else:
            out[key] = np.concatenate([np.asarray(p[key]) if key in p else np.full(len(p["step"]), np.nan)
                                       for p in parts])
    return out


def _sets(mask: np.ndarray) -> list:
    """Rows of a key-frequency mask as lists of frequencies (from 1); None where it does not apply."""
    return [None if len(row) and row[0] < 0 else [int(k) + 1 for k in np.flatnonzero(row > 0)] for row in mask]


def curves_table(curve_parts: list[dict]) -> pd.DataFrame:
    """One row per run and evaluation: ``CURVE_METRICS``, then the progress measures recorded."""
    if not curve_parts:
        return pd.DataFrame(columns=["run_id", "step", *CURVE_METRICS])
    flat = concat_parts(curve_parts)
    order = ["run_id", "step", *CURVE_METRICS]
    columns = order + [k for k in flat if k not in order]
    df = pd.DataFrame({c: _sets(flat[c]) if np.ndim(flat[c]) == 2 else flat[c] for c in columns})
    df = df.astype({"run_id": "int64", "step": "int64"})
    return df.sort_values(["run_id", "step"], kind="stable").reset_index(drop=True)


def measure_columns(curves: pd.DataFrame) -> list[str]:
    """The curve columns after the run id and step: metrics, then progress measures."""
    return [c for c in curves.columns if c not in ("run_id", "step")]


def run_columns(run: SweepConfig) -> dict:
    """One run's settings as its row of ``runs.parquet``.

    Args:
      run: one run of a sweep (an element of ``SweepConfig.runs()``).

    Returns:
      Column -> value: the plug-ins' names and the loss, the engine's per-run settings as the
      program uses them (the LLC's only when ``train.llc_every`` is on), then every plug-in
      setting (set or default) by its short name (``section.key`` where two plug-ins take the
      same key).
    """
    out = {"task": run.task.name, "model": run.model.name, "optimizer": run.optimizer.name, "loss": run.train.loss}
    # the LLC's per-run settings only where it is estimated: a sweep without it keeps its columns
    out.update((k, v) for k, v in run.per_run_values().items() if run.train.llc_every or not k.startswith("llc_"))
    plugin = run.plugin_keys()
    for section in PLUGIN_SECTIONS:
        part = getattr(run, section)
        values = {**scalar_defaults(section, resolve(section, part.name)), **dict(part.settings)}
        for key, value in values.items():
            out.setdefault(key if key in plugin else f"{section}.{key}", value)
    return out


def runs_table(config: SweepConfig, run_ids, runs: list[SweepConfig], events: dict[str, np.ndarray],
               curves: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its settings (plug-in names, per-run settings, every plug-in setting),
    events, phase and final metrics (last evaluation it trained). ``runs`` and the ``events``
    arrays are aligned with ``run_ids``."""
    df = pd.DataFrame({"run_id": np.asarray(run_ids, dtype=np.int64)})
    rows = [run_columns(r) for r in runs]
    for key in dict.fromkeys(k for row in rows for k in row):  # plug-ins of a name axis may differ
        df[key] = [row.get(key) for row in rows]
    for key, _ in config.grid:  # static axes from [train] (steps, batch_size, ...)
        if key not in df:
            df[key] = [r.get(key) for r in runs]
    df["memorize_step"] = _steps(events["memorize_step"])
    df["grok_step"] = _steps(events["grok_step"])
    df["grok_delay"] = df["grok_step"] - df["memorize_step"]
    df["diverged"] = np.asarray(events["diverged"], bool)
    df["diverged_step"] = _steps(events["diverged_step"])
    df["collapse_step"] = _steps(events.get("collapse_step", np.full(len(df), NEVER)))
    df["grok_gap"] = [r.grok_gap for r in runs]
    df["phase"] = classify_phases(events["memorize_step"], events["grok_step"], events["diverged"], df["grok_gap"])
    df["done"] = np.asarray(events["done"], bool)
    last = curves.groupby("run_id").tail(1).set_index("run_id")
    df["final_step"] = df["run_id"].map(last["step"]).astype("Int64")
    estimated = curves.dropna(subset=["llc"]).groupby("run_id").tail(1).set_index("run_id") \
        if "llc" in curves else None  # the LLC's last estimate: evaluations off its cadence have none
    for metric in measure_columns(curves):
        if metric == "key_frequencies":  # the final set, a list per run
            df[metric] = df["run_id"].map(last[metric])
        elif metric in LLC_COLUMNS:
            df[f"final_{metric}"] = df["run_id"].map(estimated[metric]).astype(float)
        else:
            df[f"final_{metric}"] = df["run_id"].map(last[metric])
    if estimated is not None:
        df["final_llc_step"] = df["run_id"].map(estimated["step"]).astype("Int64")
    return df


def write_results(out: Path, runs: pd.DataFrame, curves: pd.DataFrame, meta: dict, sweep_text: str | None,
                  boundary: pd.DataFrame | None = None, extra: dict[str, pd.DataFrame] | None = None) -> None:
    """Write a results folder: the two tables, ``meta.json``, the sweep file's text, and a run
    source's own tables (``extra``: file name -> table; ``boundary``: a search's).

    Args:
      out: the folder (made if missing).
      runs, curves: ``runs.parquet`` and ``curves.parquet``.
      meta: ``meta.json``'s entries.
      sweep_text: saved as ``sweep.toml`` when given.
      boundary: ``boundary.parquet`` when given.
      extra: more tables by file name.
    """
    out.mkdir(parents=True, exist_ok=True)
    # Write to temporary names and rename, so a reader never sees a half-written table.
    more = {**({BOUNDARY_FILE: boundary} if boundary is not None else {}), **(extra or {})}
    for name, df in ((RUNS_FILE, runs), (CURVES_FILE, curves), *more.items()):
        tmp = out / f".{name}.tmp"
        df.to_parquet(tmp, index=False)
        tmp.replace(out / name)
    (out / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    if sweep_text is not None:
        (out / SWEEP_FILE).write_text(sweep_text)


def label_columns(meta: dict, runs: pd.DataFrame) -> list[str]:
    """The runs columns that label a run: the grid's axes in file order, from ``meta.json``'s
    settings (``grid.<axis>``); a search adds its axis and ``seed``. Where meta holds no grid (a
    folder of an older grokjax), the settings columns that vary.

    Args:
        meta: the results' ``meta.json``.
        runs: the runs table.
    Returns:
        Column names, each a column of ``runs``.
    """
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    grid = [column_of(key[len("grid."):], runs.columns) for key in config if key.startswith("grid.")]
    if not config or None in grid:
        grid = [k for k, _ in varying_settings(runs)]
    if isinstance(config.get("search.axis"), str):
        grid += [column_of(config["search.axis"], runs.columns), "seed"]
    return [c for c in dict.fromkeys(grid) if c in runs.columns]


def load_dataset(path: str | Path, curves: bool = True):
    """A results folder as an ``xarray.Dataset`` over the grid's axes: ``load_results(path).to_xarray()``.

    Args:
      path: the results folder, finished or still running.
      curves: also the curve columns, over the grid's axes and ``step``.

    Returns:
      The Dataset (``Results.to_xarray``). Reads data only: nothing the folder names is imported.

    Raises:
      FileNotFoundError: a folder without ``runs.parquet``.
      SweepError: a damaged file, or runs the grid's axes do not tell apart.

    Example:
      >>> ds = grokjax.load_dataset("results/quickstart")
      >>> (ds.phase == "comprehension").mean("seed")
    """
    return load_results(path).to_xarray(curves)


def load_results(path: str | Path) -> Results:
    """The tables of a results folder, finished or still being written. Reads data only: nothing a
    sweep file in the folder names is imported or called.

    Args:
      path: the results folder (``runs.parquet``, ``curves.parquet``, ``meta.json``, and a
        search's ``boundary.parquet``).

    Returns:
      ``Results``: ``.runs`` and ``.curves`` (pandas DataFrames), ``.meta`` (a dict), and
      ``.boundary`` (a search's critical values, else None).

    Raises:
      FileNotFoundError: a folder without ``runs.parquet``.
      SweepError: a damaged file (truncated parquet or JSON), named.

    Example:
      >>> results = grokjax.load_results("results/quickstart")
      >>> results.runs.groupby("data_fraction").grok_step.median()
    """
    if not isinstance(path, (str, Path)):
        raise SweepError(f"load_results needs a folder path, got {type(path).__name__}")
    path = Path(path)
    if not (path / RUNS_FILE).is_file():
        raise FileNotFoundError(f"no {RUNS_FILE} in {path}: not a grokjax results folder")
    meta_path, curves_path = path / META_FILE, path / CURVES_FILE
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise SweepError(f"{meta_path} is damaged (not readable JSON: {e}); the tables may still be intact") from None
    tables = []
    for file in (path / RUNS_FILE, curves_path):
        try:
            tables.append(pd.read_parquet(file) if file.is_file() else curves_table([]))
        except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a truncated file
            raise SweepError(f"{file} is damaged (not a readable parquet table: {type(e).__name__}); rerun the "
                             f"sweep or resume it from its checkpoints") from None
    boundary = None
    if (path / BOUNDARY_FILE).is_file():
        try:
            boundary = pd.read_parquet(path / BOUNDARY_FILE)
        except Exception:  # noqa: BLE001
            raise SweepError(f"{path / BOUNDARY_FILE} is damaged (not a readable parquet table); rerun or resume "
                             f"the search") from None
    return Results(tables[0], tables[1], meta, boundary)


# ---------------------------------------------------------------------------------------------
# The saved sweep file as data. A results folder may come from anyone; reading it must never run
# the code its sweep file names (only ``run`` and ``search`` do, on a file the user chose), so
# every reader takes names, axes and the search from here, never from ``load_sweep``.


def saved_sweep(path: str | Path) -> dict:
    """The sweep file a results folder keeps (``sweep.toml``), as plain TOML data: nothing it
    names is imported or called, and nothing is validated.

    Args:
        path: the results folder.
    Returns:
        The parsed tables; ``{}`` for a folder without a sweep file (results made from Python
        without ``sweep_text``).
    Raises:
        SweepError: the sweep file cannot be read or is not valid TOML.
    """
    file = Path(path) / SWEEP_FILE
    return read_sweep_file(file) if file.is_file() else {}


def column_of(key: str, columns) -> str | None:
    """The runs.parquet column a setting of a sweep file (a ``[grid]`` key, ``search.axis``) is
    stored under, found without importing plug-ins: an engine setting by its short name
    (``optimizer.lr`` -> ``lr``, ``task.name`` -> ``task``); a plug-in's setting by its key where
    a column has that name, else ``section.key`` (the two forms ``runs_table`` writes).

    Args:
        key: the setting as the sweep file names it.
        columns: the columns of the runs table.
    Returns:
        The column's name, or None where no column holds the setting.
    """
    columns = set(columns)
    short = axis_key(key)
    section, _, rest = key.partition(".")
    if short in FIELDS:
        candidates = [short]
    elif rest in FIELDS:  # an engine setting under another section's name: not a setting
        candidates = []
    elif section in PLUGIN_SECTIONS and rest:
        candidates = [key, rest]  # section.key where two plug-ins share the key, else key
    else:
        candidates = [key]
    return next((c for c in candidates if c in columns), None)


def varying_settings(runs: pd.DataFrame) -> tuple[tuple[str, tuple], ...]:
    """The settings columns of a runs table (before ``memorize_step``) that take more than one
    value, as a grid: ((column, values), ...) in column order."""
    settings = runs.columns[:runs.columns.get_loc("memorize_step")] if "memorize_step" in runs else []
    return tuple((k, tuple(runs[k].unique())) for k in settings if k != "run_id" and runs[k].nunique() > 1)


def _grid_of(sweep: dict, columns) -> tuple[tuple[str, tuple], ...] | None:
    """A saved sweep's [grid] by column names, in file order; None where a key maps to no column
    or an axis is not a list."""
    table = sweep.get("grid", {})
    if not isinstance(table, dict):
        return None
    grid = []
    for key, values in flatten(table):
        column = column_of(key, columns)
        if column is None or not isinstance(values, list):
            return None
        grid.append((column, tuple(values)))
    return tuple(grid)


def saved_grid(path: str | Path, runs: pd.DataFrame) -> tuple[tuple[str, tuple], ...]:
    """The grid of a results folder, read as data: its saved sweep file's ``[grid]`` in file
    order, each axis under its runs.parquet column name, for a reader's default axes.

    Args:
        path: the results folder.
        runs: its runs table (``load_results(path).runs``).
    Returns:
        ((column, values), ...). Where the folder keeps no readable sweep file, or a grid key no
        column holds: the settings columns that vary (``varying_settings``).
    """
    try:
        sweep = saved_sweep(path)
    except SweepError:
        sweep = {}
    grid = _grid_of(sweep, runs.columns) if sweep else None
    return grid if grid is not None else varying_settings(runs)


def saved_search(path: str | Path, runs: pd.DataFrame) -> dict | None:
    """The ``[search]`` of a results folder's saved sweep file, read as data: its axis, ``by``
    axes (default: every grid axis) and criterion, by runs.parquet column names.

    Args:
        path: the results folder.
        runs: its runs table.
    Returns:
        dict(axis=..., by=[...], criterion=...), or None for a folder without a readable sweep
        file, without a ``[search]``, or one whose axes name no column.
    """
    try:
        sweep = saved_sweep(path)
    except SweepError:
        return None
    table = sweep.get("search")
    if not isinstance(table, dict) or not isinstance(table.get("axis"), str):
        return None
    axis = column_of(table["axis"], runs.columns)
    by = table.get("by")
    if by is None:
        grid = _grid_of(sweep, runs.columns)
        by = [k for k, _ in grid] if grid is not None else None
    else:
        by = [by] if isinstance(by, str) else by
        by = [column_of(b, runs.columns) if isinstance(b, str) else None for b in by] if isinstance(by, list) else None
    criterion = table.get("criterion", "grok")
    if axis is None or by is None or None in by or not isinstance(criterion, str):
        return None
    return dict(axis=axis, by=by, criterion=criterion)


__all__ = ["Results", "load_results", "load_dataset", "label_columns", "write_results", "runs_table", "curves_table",
           "saved_sweep", "saved_grid", "saved_search", "column_of", "varying_settings"]
