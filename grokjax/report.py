"""A results folder as one self-contained HTML page (``grokjax report DIR``): what was run, the
summary per cell, every figure, a search's boundary table, and an interactive phase diagram
whose cells open their runs' numbers and learning curves.

The page needs no network: plotly.js (from the ``plotly`` package, extra ``report``) is inlined,
the figures are embedded PNGs, and the data the diagram shows is a JSON block in the page. Like
every reader, it takes the folder's settings from its saved sweep file read as data: nothing the
sweep file names is imported or called.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from grokjax.analysis import cell_summary, summary_table
from grokjax.errors import SweepError
from grokjax.plots import default_axes, plot_results
from grokjax.report_page import MARK, page
from grokjax.results import RUNS_FILE, SWEEP_FILE, Results, load_results, saved_grid, saved_search, saved_sweep

REPORT_FILE = "report.html"
# what a clicked cell's table shows after its settings that vary (run_id first)
RUN_NUMBERS = ("phase", "memorize_step", "grok_step", "grok_delay", "diverged", "final_step", "final_train_acc",
               "final_test_acc", "final_train_loss", "final_test_loss")
CURVES = ("train_acc", "test_acc")
_ALL = "_all_runs"  # the one cell of a sweep without axes


def write_report(path: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of a results folder.

    Args:
      path: the results folder (finished or still running).
      out: the HTML file (default: ``DIR/report.html``). A file there that an earlier report did
        not write is never replaced.

    Returns:
      The path written.

    Raises:
      FileNotFoundError: not a results folder.
      SweepError: a damaged table, ``out`` taken by another file, or plotly not installed.
    """
    path = Path(path)
    results = load_results(path)
    out = Path(out) if out is not None else path / REPORT_FILE
    _check_out(out)
    text = report_html(path, results)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out


def _check_out(out: Path) -> None:
    """Refuse to replace what a report did not write (results, a user's page, a folder)."""
    if out.is_dir():
        raise SweepError(f"--out {out} is a folder; name the HTML file to write")
    if out.exists():
        with open(out, "rb") as f:
            head = f.read(4096).decode("utf-8", "replace")
        if MARK not in head:
            raise SweepError(f"{out} exists and was not written by grokjax report; refusing to overwrite it "
                             f"(pass another --out file)")


def _plotly_js() -> str:
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise SweepError("grokjax report needs plotly: pip install 'grokjax[report]'") from None
    return get_plotlyjs()


def report_axes(path: Path, runs: pd.DataFrame) -> tuple[str | None, str | None, dict | None]:
    """The diagram's axes as ``grokjax plot`` picks them (a search: its axis against its first
    by axis), and the saved search (None for a grid)."""
    search = saved_search(path, runs)
    if search is not None:
        return search["axis"], (search["by"][0] if search["by"] else None), search
    axes = default_axes(saved_grid(path, runs))
    if axes:
        return axes[0], axes[1], None
    varying = [k for k, v in saved_grid(path, runs) if k != "seed" and len(v) > 1]
    return (varying[0] if varying else None), None, None


def report_html(path: Path, results: Results) -> str:
    """The page's text (``write_report`` without the file).

    Args:
      path: the results folder (its saved sweep file and figures are read).
      results: its tables (``load_results(path)``).

    Returns:
      The HTML document.
    """
    plotly_js = _plotly_js()
    runs, meta = results.runs, results.meta
    x, y, search = report_axes(path, runs)
    try:
        sweep = saved_sweep(path)
    except SweepError:
        sweep = {}
    name = meta.get("name") or sweep.get("name") or path.name
    sweep_text = (path / SWEEP_FILE).read_text(errors="replace") if (path / SWEEP_FILE).is_file() else None
    cell_runs = runs.assign(**{_ALL: "all runs"}) if x is None else runs
    sections = {
        "What was run": _what_was_run(meta, sweep, sweep_text),
        "Summary per cell": _table(summary_table(cell_runs, x or _ALL, y, hide=(_ALL,))),
    }
    if results.boundary is not None:
        sections["Boundary"] = _table(results.boundary.drop(columns=["probed_values"], errors="ignore"))
    sections["Figures"] = _figures(path, results, x, y, search)
    data = diagram_data(cell_runs, results.curves, x or _ALL, y)
    return page(html.escape(str(name)), html.escape(str(sweep.get("description", ""))), sections, _json(data),
                plotly_js)


def _what_was_run(meta: dict, sweep: dict, sweep_text: str | None) -> str:
    """Settings, machine, versions and times, from meta.json; the sweep file as saved."""
    host = meta.get("host", {})
    rows = {
        "state": "complete" if meta.get("complete", True) else "still running (partial results)",
        "runs": meta.get("runs"),
        "started": meta.get("started_at"),
        "wall time": _seconds(meta.get("wall_time_s")),
        "compile time": _seconds(meta.get("compile_time_s")),
        "train time": _seconds(meta.get("train_time_s")),
        "run-steps per second": f"{meta['run_steps_per_s']:,.0f}" if "run_steps_per_s" in meta else None,
        "phases": ", ".join(f"{v} {k}" for k, v in meta.get("phases", {}).items()) or None,
        "resumed from checkpoint": meta.get("resumed_from_checkpoint"),
        "backend": meta.get("backend"),
        "devices": ", ".join(map(str, meta.get("devices", []))) or None,
        "processes": meta.get("processes"),
        "machine": ", ".join(f"{k} {v}" for k, v in host.items() if v) or None,
        "versions": ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()) or None,
    }
    items = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in rows.items()
                    if v is not None)
    settings = meta.get("config", {})
    table = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(json.dumps(v))}</td></tr>"
                    for k, v in settings.items())
    parts = [f"<dl>{items}</dl>"]
    if sweep_text is not None:
        parts.append(f"<details open><summary>sweep.toml (as saved)</summary><pre>{html.escape(sweep_text)}</pre>"
                     f"</details>")
    if table:
        parts.append(f"<details><summary>every setting ({len(settings)})</summary>"
                     f"<table class='data'><tr><th>setting</th><th>value</th></tr>{table}</table></details>")
    return "".join(parts)


def _seconds(value) -> str | None:
    return None if value is None else f"{value:,.1f} s"


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, classes="data", border=0, na_rep="-",
                      float_format=lambda v: f"{v:g}")


def _figures(path: Path, results: Results, x, y, search) -> str:
    """The PNGs ``grokjax plot`` makes, embedded: the folder's own when newer than its tables,
    else drawn afresh (in a temporary folder: the report writes nothing else)."""
    folder = path / "figures"
    made = path / RUNS_FILE
    pngs = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if pngs and all(p.stat().st_mtime >= made.stat().st_mtime for p in pngs):
        return _images(pngs)
    with tempfile.TemporaryDirectory() as tmp:
        named = dataclasses.replace(results, meta={"name": path.name, **results.meta})
        return _images(plot_results(named, Path(tmp), x, y, search=search))


def _images(paths) -> str:
    return "".join(f"<figure><img alt='{html.escape(p.stem)}' src='data:image/png;base64,"
                   f"{base64.b64encode(Path(p).read_bytes()).decode()}'><figcaption>{html.escape(p.name)}"
                   f"</figcaption></figure>" for p in paths)


def _label(value) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{value:g}"
    return str(value)


def diagram_data(runs: pd.DataFrame, curves: pd.DataFrame, x: str, y: str | None) -> dict:
    """What the interactive diagram draws: per cell its summary and run ids; per run its
    numbers and learning curves.

    Args:
      runs, curves: the tables.
      x, y: the cell's axes (``y`` None: one row).

    Returns:
      A JSON-ready dict: ``x``, ``y`` (axis names), ``xs``, ``ys`` (labels), ``z`` (median grok
      step, None where most runs never grokked), ``text`` and ``hover`` (per cell), ``cells``
      ("i,j" -> run ids), ``columns`` and ``runs`` (run id -> row; after ``run_id`` the first
      ``varying`` columns are settings that vary within a cell), ``curves`` (run id -> steps and
      accuracies), ``start`` (the cell shown first: where grokking is most common).
    """
    cells = cell_summary(runs, x, y)
    xs = sorted(runs[x].unique())
    ys = sorted(runs[y].unique()) if y else [None]
    z = [[None] * len(xs) for _ in ys]
    text, hover = [[""] * len(xs) for _ in ys], [[""] * len(xs) for _ in ys]
    members = {}
    for row in cells.to_dict("records"):
        i, j = ys.index(row[y]) if y else 0, xs.index(row[x])
        median = row["median_grok_step"]
        z[i][j] = float(median) if np.isfinite(median) else None
        steps = f"{median:.0f}" if np.isfinite(median) else "never"
        text[i][j] = f"{steps}<br>{row['grokked']:.0%} grok"
        hover[i][j] = (f"{row['runs']} runs, {row['grokked']:.0%} grokked<br>median grok step {steps}<br>"
                       f"phase {row['phase']} ({row['phase_share']:.0%})<br>click: runs and curves")
        mask = (runs[x] == row[x]) & ((runs[y] == row[y]) if y else True)
        members[f"{i},{j}"] = [int(r) for r in runs.loc[mask, "run_id"]]
    best = cells.sort_values(["grokked", "median_grok_step"], ascending=[False, True]).iloc[0]
    start = [ys.index(best[y]) if y else 0, xs.index(best[x])]
    varying = [k for k in runs.columns[:runs.columns.get_loc("memorize_step")]
               if k not in ("run_id", x, y, _ALL) and runs[k].nunique() > 1] if "memorize_step" in runs else []
    columns = ["run_id", *varying, *[c for c in RUN_NUMBERS if c in runs]]
    table = {int(r["run_id"]): [_plain(r[c]) for c in columns] for r in runs[columns].to_dict("records")}
    per_run = {}
    for run_id, c in curves.groupby("run_id", sort=True):
        per_run[int(run_id)] = {"step": c["step"].astype(int).tolist(),
                                **{k: [_plain(round(float(v), 4)) for v in c[k]] for k in CURVES if k in c}}
    return dict(x="" if x == _ALL else x, y=y or "", xs=[_label(v) for v in xs],
                ys=[_label(v) for v in ys] if y else ["all"], z=z, text=text, hover=hover, cells=members,
                columns=columns, varying=len(varying), runs=table, curves=per_run, start=start)


def _plain(value):
    """A cell of a table as JSON: None for missing and non-finite values, numbers as numbers."""
    if value is None or value is pd.NA or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return _plain(float(value))
    if isinstance(value, (int, float, str)):
        return value
    return str(value)


def _json(data: dict) -> str:
    """JSON safe inside a <script> block."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
