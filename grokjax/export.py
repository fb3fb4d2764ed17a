"""A results folder in the field's dashboards: ``grokjax export DIR --wandb PROJECT`` writes one
W&B run per grid run, grouped by cell, with the run's settings as config, its curves as history
and its events and final metrics as summary.

Offline (``--offline`` or ``WANDB_MODE=offline``) the runs are written to ``./wandb`` (or
``$WANDB_DIR``) for ``wandb sync`` later. The folder is read as data: nothing its sweep file names
is imported or called.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from grokjax.errors import SweepError
from grokjax.report import report_axes
from grokjax.results import load_results, measure_columns


def _wandb():
    try:
        import wandb
    except ImportError:
        raise SweepError("grokjax export --wandb needs wandb: pip install 'grokjax[wandb]'") from None
    return wandb


def _value(value):
    """A table's cell as W&B takes it: plain Python numbers, None for missing and non-finite."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_value(v) for v in value]
    return value


def settings_columns(runs: pd.DataFrame) -> list[str]:
    """The settings columns of a runs table (before the events), ``run_id`` excluded."""
    end = runs.columns.get_loc("memorize_step") if "memorize_step" in runs else len(runs.columns)
    return [c for c in runs.columns[:end] if c != "run_id"]


def cell_axes(path: Path, runs: pd.DataFrame) -> list[str]:
    """The axes a run's group names: the settings that vary, seeds aside (the diagram's axes first)."""
    x, y, _ = report_axes(path, runs)
    varying = [c for c in settings_columns(runs) if c != "seed" and runs[c].nunique() > 1]
    first = [a for a in (x, y) if a in varying]
    return first + [c for c in varying if c not in first]


def wandb_runs(path: str | Path) -> list[dict]:
    """What ``export_wandb`` writes, one dict per grid run, without W&B.

    Args:
      path: the results folder.

    Returns:
      Per run: ``name``, ``group`` (its cell, ``axis=value`` pairs), ``config`` (settings, and the
      sweep's name under ``sweep``), ``history`` (one dict per evaluation, ``step`` among them) and
      ``summary`` (events, phase, final metrics).

    Raises:
      FileNotFoundError: not a results folder.
      SweepError: a damaged table.
    """
    path = Path(path)
    results = load_results(path)
    runs, curves = results.runs, results.curves
    name = results.meta.get("name") or path.name
    axes, settings = cell_axes(path, runs), settings_columns(runs)
    metrics = [m for m in measure_columns(curves) if m != "key_frequencies"]
    by_run = dict(list(curves.groupby("run_id", sort=True)))
    out = []
    for row in runs.to_dict("records"):
        run_id = int(row["run_id"])
        group = ",".join(f"{a}={_value(row[a])}" for a in axes) or "all runs"
        c = by_run.get(run_id, curves.iloc[:0])
        history = [{"step": int(s), **{m: _value(v) for m, v in zip(metrics, values)}}
                   for s, *values in zip(c["step"], *(c[m] for m in metrics))]
        summary = {k: _value(v) for k, v in row.items() if k not in settings and k != "run_id"}
        out.append(dict(name=f"{name}-{run_id}", group=group,
                        config={"sweep": name, "run_id": run_id, **{k: _value(row[k]) for k in settings}},
                        history=history, summary=summary))
    return out


def export_wandb(path: str | Path, project: str, entity: str | None = None, offline: bool = False) -> str:
    """Write a results folder as W&B runs.

    Args:
      path: the results folder.
      project: the W&B project.
      entity: the W&B entity (None: the logged-in user's default).
      offline: write offline runs only (as ``WANDB_MODE=offline``), for ``wandb sync``.

    Returns:
      A line saying what was written and, offline, how to upload it.

    Raises:
      FileNotFoundError: not a results folder.
      SweepError: wandb not installed, a damaged table, or an empty project name.
    """
    if not project or not project.strip():
        raise SweepError("--wandb needs a project name")
    runs = wandb_runs(path)
    wandb = _wandb()
    mode = "offline" if offline else None
    for run in runs:
        live = wandb.init(project=project, entity=entity, name=run["name"], group=run["group"],
                          job_type="grokjax", config=run["config"], mode=mode, reinit="create_new",
                          settings=wandb.Settings(silent=True))  # one line at the end, not dozens per run
        try:
            for row in run["history"]:
                step = row["step"]
                live.log({k: v for k, v in row.items() if k != "step" and v is not None}, step=step)
            live.summary.update({k: v for k, v in run["summary"].items() if v is not None})
        finally:
            live.finish()
    if offline or os.environ.get("WANDB_MODE") in ("offline", "dryrun"):
        where = Path(os.environ.get("WANDB_DIR", ".")) / "wandb"
        return (f"{len(runs)} offline W&B runs of project '{project}' in {where}/; upload them with: "
                f"wandb sync {where}/offline-run-*")
    return f"{len(runs)} W&B runs in project '{project}'"
