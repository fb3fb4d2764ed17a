"""Tidy result tables: one row per run (``runs.parquet``), one row per run x evaluation
(``curves.parquet``), plus ``meta.json`` and a copy of the sweep file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from grokjax.metrics import CURVE_METRICS, NEVER, classify_phases
from grokjax.errors import SweepError
from grokjax.plugins import resolve, scalar_defaults
from grokjax.schema import PLUGIN_SECTIONS
from grokjax.sweep_config import SweepConfig

RUNS_FILE, CURVES_FILE, META_FILE, SWEEP_FILE = "runs.parquet", "curves.parquet", "meta.json", "sweep.toml"
BOUNDARY_FILE = "boundary.parquet"


@dataclasses.dataclass(frozen=True)
class Results:
    runs: pd.DataFrame
    curves: pd.DataFrame
    meta: dict
    boundary: pd.DataFrame | None = None  # a search's critical values (boundary.parquet)


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
      program uses them, then every plug-in setting (set or default) by its short name
      (``section.key`` where two plug-ins take the same key).
    """
    out = {"task": run.task.name, "model": run.model.name, "optimizer": run.optimizer.name, "loss": run.train.loss}
    out.update(run.per_run_values())
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
    df["grok_gap"] = [r.grok_gap for r in runs]
    df["phase"] = classify_phases(events["memorize_step"], events["grok_step"], events["diverged"], df["grok_gap"])
    df["done"] = np.asarray(events["done"], bool)
    last = curves.groupby("run_id").tail(1).set_index("run_id")
    df["final_step"] = df["run_id"].map(last["step"]).astype("Int64")
    for metric in measure_columns(curves):
        if metric == "key_frequencies":  # the final set, a list per run
            df[metric] = df["run_id"].map(last[metric])
        else:
            df[f"final_{metric}"] = df["run_id"].map(last[metric])
    return df


def write_results(out: Path, runs: pd.DataFrame, curves: pd.DataFrame, meta: dict, sweep_text: str | None,
                  boundary: pd.DataFrame | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # Write to temporary names and rename, so a reader never sees a half-written table.
    tables = ((RUNS_FILE, runs), (CURVES_FILE, curves)) + (((BOUNDARY_FILE, boundary),) if boundary is not None else ())
    for name, df in tables:
        tmp = out / f".{name}.tmp"
        df.to_parquet(tmp, index=False)
        tmp.replace(out / name)
    (out / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    if sweep_text is not None:
        (out / SWEEP_FILE).write_text(sweep_text)


def load_results(path: str | Path) -> Results:
    """The tables of a results folder as pandas DataFrames (``.runs``, ``.curves``, and a search's
    ``.boundary``) and ``.meta``.
    Raises ``FileNotFoundError`` for a folder without results, ``SweepError`` naming the file for
    a damaged one (truncated parquet or JSON)."""
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


__all__ = ["Results", "load_results", "write_results", "runs_table", "curves_table"]
