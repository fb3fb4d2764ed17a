"""Figures from a results table (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from grokjax.analysis import cell_summary  # noqa: E402


def phase_diagram(runs: pd.DataFrame, path: str | Path, x: str = "data_fraction", y: str = "weight_decay",
                  title: str | None = None) -> Path:
    """Heatmap of the median grok step per (x, y) cell; cells where most seeds never grokked are
    grey and hatched. Every cell is labelled with its median and the share of seeds that grokked."""
    cells = cell_summary(runs, x, y)
    xs, ys = sorted(cells[x].unique()), sorted(cells[y].unique())
    grid = np.full((len(ys), len(xs)), np.nan)
    share = np.zeros_like(grid)
    for row in cells.itertuples(index=False):
        i, j = ys.index(getattr(row, y)), xs.index(getattr(row, x))
        grid[i, j] = getattr(row, "median_grok_step")
        share[i, j] = row.grokked
    finite = np.where(np.isfinite(grid), grid, np.nan)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(xs), 1.4 + 0.8 * len(ys)), constrained_layout=True)
    ax.set_facecolor("0.85")
    image = ax.imshow(finite, origin="lower", cmap="viridis_r", aspect="auto")
    for i in range(len(ys)):
        for j in range(len(xs)):
            if np.isfinite(grid[i, j]):
                label, color = f"{grid[i, j]:.0f}", "white" if finite[i, j] > np.nanmean(finite) else "black"
            else:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", color="0.6", lw=0))
                label, color = "never", "0.25"
            ax.text(j, i, f"{label}\n{share[i, j]:.0%} grokked", ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
    ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(y.replace("_", " "))
    ax.set_title(title or "median steps to 99 % test accuracy")
    if np.isfinite(finite).any():
        fig.colorbar(image, ax=ax, label="grok step (median over seeds)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def default_axes(grid: tuple) -> tuple[str, str] | None:
    """The two axes a phase diagram shows: data_fraction x weight_decay when both vary, else the
    first two grid axes with more than one value (seeds are aggregated)."""
    varying = [k for k, v in grid if k != "seed" and len(v) > 1]
    if "data_fraction" in varying and "weight_decay" in varying:
        return "data_fraction", "weight_decay"
    return tuple(varying[:2]) if len(varying) >= 2 else None
