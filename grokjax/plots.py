"""Figures from a results folder (matplotlib, no display needed). Every number drawn comes
from ``grokjax.analysis``, so a notebook gets the same values as the figures.

Figures are ``matplotlib.figure.Figure`` objects drawn and saved without pyplot, so importing this
module leaves matplotlib's backend (a notebook's inline one, say) as the user chose it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from grokjax.analysis import cell_summary, critical_fraction, holds, is_value_metric, metric_label, phase_shares
from grokjax.metrics import PHASES
from grokjax.results import Results

PHASE_COLORS = {"comprehension": "#4daf4a", "grokking": "#377eb8", "memorization": "#ff7f00",
                "confusion": "#999999", "diverged": "#e41a1c"}
FORMATS = ("png", "svg", "pdf")


def default_axes(grid) -> tuple[str, str] | None:
    """The two axes a phase diagram shows: data_fraction x weight_decay when both vary, else
    data_fraction (when it varies) against the first other varying axis, else the first two
    varying axes. Seeds are always aggregated."""
    varying = [k for k, v in grid if k != "seed" and len(v) > 1]
    if "data_fraction" in varying:
        others = [k for k in varying if k != "data_fraction"]
        y = "weight_decay" if "weight_decay" in others else (others[0] if others else None)
        return ("data_fraction", y) if y else None
    return tuple(varying[:2]) if len(varying) >= 2 else None


def _is_numeric(values) -> bool:
    return all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values)


def _fmt(value) -> str:
    return f"{value:g}" if _is_numeric([value]) else str(value)


def _spans_decades(values, include_zero: bool = False) -> bool:
    """A log axis suits values > 0 over a decade or more (``include_zero``: ignore a 0)."""
    if not _is_numeric(values):
        return False
    values = np.asarray(values, float)
    if include_zero:
        values = values[values != 0]
    return bool(len(values) > 2 and values.min() > 0 and values.max() / values.min() >= 10)


def _positions(values) -> list:
    """Where cells sit along an axis: at their values, or at 0, 1, ... for names (a task) and for
    grids like weight decay [0, 0.1, 1, 10] whose 0 rules out a log axis."""
    categorical = not _is_numeric(values) or (0 in values and _spans_decades(values, include_zero=True))
    return list(range(len(values))) if categorical else list(values)


def _edges(values, log: bool) -> np.ndarray:
    """Cell edges around sorted centres: midpoints (geometric on a log axis), mirrored at the ends."""
    v = np.log(values) if log else np.asarray(values, float)
    if len(v) == 1:
        mid = np.array([v[0] - 0.5, v[0] + 0.5]) if not log else np.array([v[0] - 0.3, v[0] + 0.3])
    else:
        inner = (v[1:] + v[:-1]) / 2
        mid = np.concatenate([[v[0] - (inner[0] - v[0])], inner, [v[-1] + (v[-1] - inner[-1])]])
    return np.exp(mid) if log else mid


def _cell_axes(ax, cells: pd.DataFrame, x: str, y: str):
    """Set up a heatmap axes; returns (xs, ys, x_edges, y_edges)."""
    xs, ys = sorted(cells[x].unique()), sorted(cells[y].unique())
    xlog, ylog = _spans_decades(xs), _spans_decades(ys)
    xpos, ypos = _positions(xs), _positions(ys)
    xe, ye = _edges(xpos, xlog), _edges(ypos, ylog)
    if xlog:
        ax.set_xscale("log")
    if ylog:
        ax.set_yscale("log")
    ax.set_xlim(xe[0], xe[-1])
    ax.set_ylim(ye[0], ye[-1])
    ax.set_xticks(xpos, [_fmt(v) for v in xs])
    ax.set_yticks(ypos, [_fmt(v) for v in ys])
    ax.minorticks_off()
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(y.replace("_", " "))
    return xs, ys, xe, ye


def _centre(edges, i, log):
    return np.sqrt(edges[i] * edges[i + 1]) if log else (edges[i] + edges[i + 1]) / 2


def draw_metric_map(ax, runs: pd.DataFrame, x: str, y: str, metric: str = "grok_step"):
    """Median ``metric`` per cell; cells where most runs never got there are grey and hatched.
    Each cell is labelled with its median and the share of its runs that grokked."""
    cells = cell_summary(runs, x, y, metric)
    xs, ys, xe, ye = _cell_axes(ax, cells, x, y)
    grid = np.full((len(ys), len(xs)), np.nan)
    share = np.full_like(grid, np.nan)
    for row in cells.to_dict("records"):
        i, j = ys.index(row[y]), xs.index(row[x])
        grid[i, j], share[i, j] = row[f"median_{metric}"], row["grokked"]
    finite = np.ma.masked_invalid(np.where(np.isfinite(grid), grid, np.nan))
    ax.set_facecolor("white")
    value_metric = is_value_metric(metric)
    cmap = "viridis" if value_metric else "viridis_r"
    mesh = ax.pcolormesh(xe, ye, finite, cmap=cmap, shading="flat")
    mid = np.nanmean(finite.filled(np.nan)) if finite.count() else 0
    xlog, ylog = ax.get_xscale() == "log", ax.get_yscale() == "log"
    for i in range(len(ys)):
        for j in range(len(xs)):
            cx, cy = _centre(xe, j, xlog), _centre(ye, i, ylog)
            if np.isnan(share[i, j]):
                continue  # no runs in this cell (a half-finished sweep)
            if np.isfinite(grid[i, j]):
                value = f"{grid[i, j]:{'.2f' if metric == 'final_test_acc' else '.3g' if value_metric else '.0f'}}"
                dark = (grid[i, j] < mid) if value_metric else (grid[i, j] > mid)
                color = "white" if dark else "black"
            else:
                ax.add_patch(Rectangle((xe[j], ye[i]), xe[j + 1] - xe[j], ye[i + 1] - ye[i], facecolor="0.88",
                                       hatch="///", edgecolor="0.65", lw=0))
                value, color = "n/a" if value_metric else "never", "0.2"
            ax.text(cx, cy, f"{value}\n{share[i, j]:.0%} grok", ha="center", va="center", fontsize=7, color=color)
    return mesh if finite.count() else None


def draw_phase_map(ax, runs: pd.DataFrame, x: str, y: str):
    """Each cell coloured by its majority phase, labelled with the share of runs agreeing."""
    cells = cell_summary(runs, x, y)
    xs, ys, xe, ye = _cell_axes(ax, cells, x, y)
    codes = np.full((len(ys), len(xs)), np.nan)
    for row in cells.to_dict("records"):
        i, j = ys.index(row[y]), xs.index(row[x])
        codes[i, j] = PHASES.index(row["phase"])
        ax.text(_centre(xe, j, ax.get_xscale() == "log"), _centre(ye, i, ax.get_yscale() == "log"),
                f"{row['phase']}\n{row['phase_share']:.0%}", ha="center", va="center", fontsize=6.5)
    cmap = ListedColormap([PHASE_COLORS[p] for p in PHASES])
    ax.pcolormesh(xe, ye, np.ma.masked_invalid(codes), cmap=cmap, vmin=-0.5, vmax=len(PHASES) - 0.5, alpha=0.75)
    present = [p for p in PHASES if p in set(cells["phase"])]
    return [Patch(facecolor=PHASE_COLORS[p], alpha=0.75, label=p) for p in present]


def _facets(runs: pd.DataFrame, facet: str | None):
    if facet is None:
        return [(None, runs)]
    if facet not in runs:
        raise ValueError(f"--facet '{facet}' is not a column of runs.parquet")
    return list(runs.groupby(facet, sort=True))


def _subplots(n: int, cell_w: float, cell_h: float):
    fig = Figure(figsize=(cell_w * n + 1.2, cell_h), constrained_layout=True)
    return fig, fig.subplots(1, n, squeeze=False)[0]


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    return path


def phase_diagram(runs: pd.DataFrame, path, x: str = "data_fraction", y: str = "weight_decay",
                  metric: str = "grok_step", facet: str | None = None, title: str | None = None) -> Path:
    facets = _facets(runs, facet)
    nx, ny = runs[x].nunique(), runs[y].nunique()
    fig, axes = _subplots(len(facets), 1.0 + 0.95 * nx, 1.5 + 0.75 * ny)
    mesh = None
    for ax, (value, sub) in zip(axes, facets):
        mesh = draw_metric_map(ax, sub, x, y, metric) or mesh
        if facet:
            ax.set_title(f"{facet} = {_fmt(value)}", fontsize=9)
    if mesh is not None:
        fig.colorbar(mesh, ax=list(axes), label=f"median {metric_label(metric)}")
    fig.suptitle(title or f"median {metric_label(metric)} (over seeds and other axes)", fontsize=10)
    return _save(fig, Path(path))


def phase_map(runs: pd.DataFrame, path, x: str = "data_fraction", y: str = "weight_decay",
              facet: str | None = None, title: str | None = None) -> Path:
    facets = _facets(runs, facet)
    nx, ny = runs[x].nunique(), runs[y].nunique()
    fig, axes = _subplots(len(facets), 1.0 + 1.0 * nx, 1.6 + 0.75 * ny)
    handles = {}
    for ax, (value, sub) in zip(axes, facets):
        for h in draw_phase_map(ax, sub, x, y):
            handles[h.get_label()] = h
        if facet:
            ax.set_title(f"{facet} = {_fmt(value)}", fontsize=9)
    fig.legend(handles=list(handles.values()), loc="outside right center", fontsize=8, frameon=False)
    fig.suptitle(title or "majority phase per cell (share of runs agreeing)", fontsize=10)
    return _save(fig, Path(path))


def representative_cells(runs: pd.DataFrame, x: str | None, y: str | None) -> dict[str, tuple[str, pd.Series]]:
    """For each phase present: a title and the run ids of the (y, x) cell where that phase holds
    the largest share; without axes, all runs of that phase."""
    out = {}
    if x is None or y is None:
        for phase in PHASES:
            ids = runs.loc[runs["phase"] == phase, "run_id"]
            if len(ids):
                out[phase] = (f"{phase} ({len(ids)} runs)", ids)
        return out
    shares = phase_shares(runs, x, y)
    for phase in PHASES:
        if phase in shares and shares[phase].max() > 0:
            best = shares.loc[shares[phase].idxmax()]
            ids = runs.loc[(runs[x] == best[x]) & (runs[y] == best[y]), "run_id"]
            out[phase] = (f"{phase}: {x}={_fmt(best[x])}, {y}={_fmt(best[y])} ({len(ids)} runs)", ids)
    return out


def learning_curves(runs: pd.DataFrame, curves: pd.DataFrame, path, x: str | None = "data_fraction",
                    y: str | None = "weight_decay", title: str | None = None) -> Path:
    """One panel per phase, for its most typical cell: train (dashed) and test (solid) accuracy
    against step, each run thin and the median over runs bold; parameter norm on a twin axis."""
    cells = representative_cells(runs, x, y)
    fig, axes = _subplots(max(len(cells), 1), 3.4, 3.0)
    for ax, (label, ids) in zip(axes, cells.values()):
        sub = curves[curves["run_id"].isin(ids) & (curves["step"] > 0)]  # log x: a run diverged at step 0 has none
        norm_ax = ax.twinx()
        for _, c in sub.groupby("run_id"):
            ax.plot(c["step"], c["train_acc"], "--", color="C1", lw=0.6, alpha=0.5)
            ax.plot(c["step"], c["test_acc"], "-", color="C0", lw=0.6, alpha=0.5)
            norm_ax.plot(c["step"], c["param_norm"], ":", color="0.5", lw=0.6, alpha=0.5)
        med = sub.groupby("step")[["train_acc", "test_acc", "param_norm"]].median()
        ax.plot(med.index, med["train_acc"], "--", color="C1", lw=2, label="train acc")
        ax.plot(med.index, med["test_acc"], "-", color="C0", lw=2, label="test acc")
        norm_ax.plot(med.index, med["param_norm"], ":", color="0.3", lw=1.5, label="param norm")
        if len(sub):
            ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy")
        norm_ax.set_ylabel("parameter norm", color="0.4")
        ax.set_title(label, fontsize=8.5)
    if cells:
        handles, labels = axes[0].get_legend_handles_labels()
        handles.append(Line2D([], [], ls=":", color="0.3", lw=1.5))
        axes[0].legend(handles, labels + ["param norm (right)"], fontsize=7, loc="center left")
    fig.suptitle(title or "learning curves of a typical cell per phase", fontsize=10)
    return _save(fig, Path(path))


PROGRESS_PANELS = (  # (title, y label, log y, columns); a panel is drawn when one of its columns was recorded
    ("losses", "loss", True, ("train_loss", "test_loss", "restricted_loss", "excluded_loss")),
    ("local learning coefficient", "LLC (band: chain-to-chain std)", False, ("llc",)),
    ("parameter norms", "norm", False, ("param_norm", "norm_embeddings", "norm_attention", "norm_mlp",
                                         "norm_readout", "norm_other")),
    ("concentration and collapse", "share", False, ("test_acc", "fourier_gini", "fourier_ipr", "softmax_collapse")),
    ("key frequencies", "how many", False, ("n_key_frequencies",)),
)


def select_cell(runs: pd.DataFrame, cell: dict | None, x: str | None, y: str | None) -> tuple[str, pd.Series]:
    """A title and the run ids of one cell: the runs matching ``cell`` ({setting: value}), else the
    cell where grokking holds the largest share (the most common phase when none groks)."""
    if cell:
        keep = np.ones(len(runs), bool)
        for key, value in cell.items():
            if key not in runs:
                raise ValueError(f"'{key}' is not a column of runs.parquet")
            column = runs[key]
            keep &= np.isclose(column.astype(float), float(value)) if _is_numeric(column.tolist()) and \
                _is_numeric([value]) else (column.astype(str) == str(value)).to_numpy()
        if not keep.any():
            raise ValueError(f"no run has {', '.join(f'{k}={v}' for k, v in cell.items())}")
        ids = runs.loc[keep, "run_id"]
        return ", ".join(f"{k}={_fmt(v)}" for k, v in cell.items()) + f" ({len(ids)} runs)", ids
    cells = representative_cells(runs, x, y)
    if not cells:
        return f"all runs ({len(runs)})", runs["run_id"]
    phase = "grokking" if "grokking" in cells else runs["phase"].mode().iloc[0]
    return cells.get(phase, next(iter(cells.values())))


def progress_figure(runs: pd.DataFrame, curves: pd.DataFrame, path, cell: dict | None = None,
                    x: str | None = None, y: str | None = None, title: str | None = None) -> Path:
    """The progress measures of one cell against step (log): each seed thin, the median bold; the
    median grok step (dashed) and memorize step (dotted) marked."""
    label, ids = select_cell(runs, cell, x, y)
    sub = curves[curves["run_id"].isin(ids) & (curves["step"] > 0)].copy()
    if "key_frequencies" in sub:
        sub["n_key_frequencies"] = [np.nan if k is None else len(k) for k in sub["key_frequencies"]]
    panels = [p for p in PROGRESS_PANELS if any(c in sub and sub[c].notna().any() for c in p[3])]
    fig, axes = _subplots(max(len(panels), 1), 3.6, 3.0)
    cell_runs = runs[runs["run_id"].isin(ids)]
    marks = [(cell_runs[k].dropna().astype(float).median(), ls, k.replace("_", " "))
             for k, ls in (("memorize_step", ":"), ("grok_step", "--"))
             if k in cell_runs and cell_runs[k].notna().any()]
    for ax, (name, ylabel, log, columns) in zip(axes, panels):
        present = [c for c in columns if c in sub and sub[c].notna().any()]
        for i, column in enumerate(present):
            color = f"C{i}"
            for _, c in sub.groupby("run_id"):
                c = c.dropna(subset=[column]) if column == "llc" else c  # estimated at its cadence only
                ax.plot(c["step"], c[column], color=color, lw=0.6, alpha=0.4)
                if column == "llc" and "llc_std" in c:
                    ax.fill_between(c["step"], c.llc - c.llc_std, c.llc + c.llc_std, color=color, alpha=0.12, lw=0)
            med = sub.groupby("step")[column].median().dropna()
            ax.plot(med.index, med.values, color=color, lw=2, label=column.replace("_", " "))
        for step, ls, what in marks:
            ax.axvline(step, color="0.2", ls=ls, lw=1, label=f"median {what} ({step:,.0f})")
        ax.set_xscale("log")
        if log and (sub[present] > 0).all().all():
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=6.5)
    fig.suptitle(title or f"progress measures: {label}", fontsize=10)
    return _save(fig, Path(path))


def has_progress_measures(curves: pd.DataFrame) -> bool:
    return any(c.startswith("norm_") or c in ("fourier_gini", "softmax_collapse", "llc") for c in curves.columns)


def critical_fraction_plot(runs: pd.DataFrame, path, by: str = "weight_decay", title: str | None = None) -> Path:
    """Smallest data fraction at which most runs grok, per value of ``by``, with bootstrap
    intervals over seeds. Values where no fraction qualifies are marked at the top."""
    table = critical_fraction(runs, by)
    fig = Figure(figsize=(4.8, 3.4), constrained_layout=True)
    ax = fig.subplots()
    ok = table["critical_fraction"].notna()
    low = (table["critical_fraction"] - table["low"]).where(ok, 0)
    high = (table["high"] - table["critical_fraction"]).where(table["high"].notna() & ok, 0)
    values = table[by].tolist()
    pos = np.asarray(_positions(values), dtype=float)
    ax.errorbar(pos[ok], table.loc[ok, "critical_fraction"], yerr=[low[ok], high[ok]], fmt="o-",
                capsize=4, label="critical data fraction (95 % bootstrap)")
    top = runs["data_fraction"].max()
    if (~ok).any():
        ax.plot(pos[~ok], [top] * int((~ok).sum()), "v", color="C3", label=f"none up to {top:g}")
    if _spans_decades(values) and list(pos) == values and ok.any():
        ax.set_xscale("log")
        ax.minorticks_off()
    ax.set_xticks(pos, [_fmt(v) for v in values])
    ax.set_xlabel(by.replace("_", " "))
    ax.set_ylabel("data fraction")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title(title or "smallest data fraction where most seeds grok", fontsize=10)
    return _save(fig, Path(path))


def boundary_figure(runs: pd.DataFrame, boundary: pd.DataFrame, path, axis: str, by: list[str],
                    criterion: str = "grok", title: str | None = None) -> Path:
    """A search's answer over what it probed: one row per cell of the ``by`` axes; each probed
    value a dot in its majority phase's colour (filled where the criterion held for most seeds,
    labelled with how many seeds met it), the critical value a black diamond with its bootstrap
    interval over seeds, the final bracket a grey band."""
    labels = [", ".join(f"{b} {_fmt(row[b])}" for b in by) or "all runs" for row in boundary.to_dict("records")]
    fig = Figure(figsize=(6.8, 1.5 + 0.55 * len(boundary)), constrained_layout=True)
    ax = fig.subplots()
    values = sorted(runs[axis].unique())
    if _spans_decades(values):
        ax.set_xscale("log")
    seen = set()
    for i, row in enumerate(boundary.to_dict("records")):
        cell = runs
        for b in by:
            cell = cell[cell[b] == row[b]]
        for value, probe in cell.groupby(axis, sort=True):
            phase = probe["phase"].value_counts().index[0]
            met = holds(probe, criterion)
            colour = PHASE_COLORS[phase]
            ax.scatter([value], [i], s=70, color=colour if met.mean() > 0.5 else "white", edgecolors=colour,
                       linewidths=1.5, zorder=3, label=phase if phase not in seen else None)
            seen.add(phase)
            ax.annotate(f"{int(met.sum())}/{len(probe)}", (value, i), textcoords="offset points", xytext=(0, 7),
                        ha="center", fontsize=6)
        if np.isfinite(row["low"]) and np.isfinite(row["high"]):
            ax.fill_betweenx([i - 0.3, i + 0.3], row["low"], row["high"], color="0.85", zorder=1)
        if np.isfinite(row["critical_value"]):
            c = row["critical_value"]
            lo = row["ci_low"] if np.isfinite(row["ci_low"]) else min(values)
            hi = row["ci_high"] if np.isfinite(row["ci_high"]) else max(values)
            ax.errorbar([c], [i - 0.22], xerr=[[c - lo], [hi - c]], fmt="D", color="black", markersize=5,
                        capsize=3, zorder=4, label="critical value (95 % bootstrap)" if "ci" not in seen else None)
            seen.add("ci")
        else:
            ax.annotate(row["status"], (values[-1], i - 0.3), ha="right", fontsize=7, color="C3")
    ax.set_yticks(range(len(boundary)), labels)
    ax.set_ylim(-0.7, len(boundary) - 0.4)
    ax.set_xlabel(axis.replace("_", " "))
    fig.legend(fontsize=7, loc="outside right center", frameon=False)
    ax.set_title(title or "critical value per cell over the probed runs (filled: criterion held)", fontsize=9)
    return _save(fig, Path(path))


def plot_results(results: Results, out_dir, x: str | None = None, y: str | None = None, metric: str = "grok_step",
                 facet: str | None = None, fmt: str = "png", search: dict | None = None) -> list[Path]:
    """Every figure of a sweep's tables into ``out_dir``.

    Args:
      results: the tables (``load_results``, ``run_sweep``); ``meta["name"]`` titles the figures.
      out_dir: the folder (made if missing).
      x, y: the phase diagram's axes (columns of ``results.runs``); without both (a sweep over
        seeds only) just the learning curves, one panel per phase.
      metric: the heatmap's value (``analysis.METRICS``).
      facet: one panel per value of this column; other axes are aggregated.
      fmt: png, svg or pdf.
      search: a search's ``axis``, ``by`` axes and ``criterion``: with ``results.boundary``,
        adds ``boundary.<fmt>``.

    Returns:
      The paths written.

    Raises:
      ValueError: an unknown format or metric, an axis that is not a column.
    """
    runs, curves, name = results.runs, results.curves, results.meta.get("name", "")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if results.boundary is not None and search is not None:
        prefix = f"{name}: " if name else ""
        path = boundary_figure(runs, results.boundary, Path(out_dir) / f"boundary.{fmt}", search["axis"],
                               search["by"], search.get("criterion", "grok"),
                               f"{prefix}critical {search['axis'].replace('_', ' ')} per cell (filled: criterion "
                               f"held for most seeds)")
        return [path, *plot_results(results, out_dir, x, y, metric, facet, fmt)]
    for axis in (x, y):
        if axis is not None and axis not in runs:
            raise ValueError(f"axis '{axis}' is not a column of runs.parquet")
    out_dir = Path(out_dir)
    prefix = f"{name}: " if name else ""
    progress = [progress_figure(runs, curves, out_dir / f"progress.{fmt}", None, x, y)] \
        if has_progress_measures(curves) and len(curves) else []
    if x is None or y is None:
        return [learning_curves(runs, curves, out_dir / f"learning_curves.{fmt}", None, None,
                                f"{prefix}learning curves per phase"), *progress]
    paths = [
        phase_diagram(runs, out_dir / f"phase_diagram.{fmt}", x, y, metric, facet,
                      f"{prefix}median {metric_label(metric)}"),
        phase_map(runs, out_dir / f"phase_map.{fmt}", x, y, facet, f"{prefix}majority phase per cell"),
        learning_curves(runs, curves, out_dir / f"learning_curves.{fmt}", x, y,
                        f"{prefix}learning curves of a typical cell per phase"),
    ]
    other = y if x == "data_fraction" else x if y == "data_fraction" else None
    if other is not None and runs["data_fraction"].nunique() > 1:
        paths.append(critical_fraction_plot(runs, out_dir / f"critical_fraction.{fmt}", other,
                                            f"{prefix}critical data fraction"))
    return paths + progress
