"""The numbers behind every figure, as DataFrames: per-cell aggregates, phase shares, critical
values (data fraction, or any axis), and events recomputed from curves at other thresholds.

A *cell* is one combination of the two chosen axes (default ``data_fraction`` x
``weight_decay``); every other axis, seeds included, is aggregated within it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from grokjax.metrics import NEVER, PHASES, classify_phases

METRICS = ("grok_step", "grok_delay", "memorize_step", "final_test_acc")  # and any final_<measure> column
EVENT_METRICS = ("grok_step", "grok_delay", "memorize_step")  # never reached: infinitely late


METRIC_LABELS = {"grok_step": "steps to 99 % test accuracy", "grok_delay": "grok delay (steps after memorizing)",
                 "memorize_step": "steps to 99 % train accuracy", "final_test_acc": "final test accuracy"}


def metric_label(metric: str) -> str:
    """A phase diagram's name for ``metric``: ``final_llc`` -> "final llc"."""
    return METRIC_LABELS.get(metric, metric.replace("_", " "))


def is_value_metric(metric: str) -> bool:
    """A final value (``final_test_acc``, ``final_llc``, ...), not the step of an event."""
    return metric.startswith("final_") and metric != "final_step"


def grokked(runs: pd.DataFrame) -> pd.Series:
    """Whether each run reached the grok threshold without diverging.

    Args:
      runs: a runs table (``runs.parquet``).

    Returns:
      A boolean Series aligned with ``runs``.
    """
    return runs["grok_step"].notna() & ~runs["diverged"].astype(bool)


def _metric_values(runs: pd.DataFrame, metric: str) -> np.ndarray:
    """Metric per run as floats; an event never reached counts as infinitely late."""
    if metric not in EVENT_METRICS and not (is_value_metric(metric) and metric in runs):
        finals = [c for c in runs.columns if is_value_metric(str(c))]
        raise ValueError(f"metric must be one of {', '.join(EVENT_METRICS)} or a final value of this sweep "
                         f"({', '.join(finals)}), got {metric!r}")
    values = runs[metric].astype("Float64")
    if metric in EVENT_METRICS:
        values = values.fillna(np.inf)
    return values.astype(float).to_numpy()


def cell_summary(runs: pd.DataFrame, x: str = "data_fraction", y: str | None = "weight_decay",
                 metric: str = "grok_step") -> pd.DataFrame:
    """Per-cell aggregates: what the phase diagram and ``grokjax summary`` show.

    Args:
      runs: a runs table.
      x, y: the cell's axes (columns); ``y`` None for one axis. Other axes, seeds included, are
        aggregated within a cell.
      metric: an event's step (``EVENT_METRICS``; never reached counts as infinitely late) or a
        final value column (``final_test_acc``, ``final_llc``, ...; NaN where a run has none).

    Returns:
      One row per (y, x) cell: ``runs``, ``grokked`` (share), ``median_<metric>``,
      ``q25_<metric>``, ``q75_<metric>`` (inf when most runs never got there), ``phase`` (the
      majority phase) and ``phase_share``.

    Raises:
      ValueError: an axis that is not a column, or an unknown metric.

    Example:
      >>> analysis.cell_summary(results.runs, x="data_fraction", y="weight_decay")
    """
    keys = [k for k in (y, x) if k is not None]
    for key in keys:
        if key not in runs:
            raise ValueError(f"axis '{key}' is not a column of runs.parquet; "
                             f"columns: {', '.join(map(str, runs.columns))}")
    df = runs.assign(_value=_metric_values(runs, metric), _grokked=grokked(runs))

    def per_cell(g: pd.DataFrame) -> pd.Series:
        phases = g["phase"].value_counts()
        values = g["_value"].to_numpy()
        values = values[~np.isnan(values)] if (~np.isnan(values)).any() else np.full(1, np.nan)  # runs with none
        # inverted_cdf picks observed values, so quantiles of never-reached cells stay inf
        q25, q75 = (float(np.quantile(values, q, method="inverted_cdf")) for q in (0.25, 0.75))
        q50 = float(np.median(values))  # inf as soon as half the runs never got there
        return pd.Series({"runs": len(g), "grokked": float(g["_grokked"].mean()), f"median_{metric}": q50,
                          f"q25_{metric}": q25, f"q75_{metric}": q75, "phase": phases.index[0],
                          "phase_share": float(phases.iloc[0] / len(g))})

    return df.groupby(keys, sort=True)[list(df.columns)].apply(per_cell).reset_index()


def phase_shares(runs: pd.DataFrame, x: str = "data_fraction", y: str | None = "weight_decay") -> pd.DataFrame:
    """Share of runs in each phase per cell (what the phase map draws).

    Args:
      runs: a runs table.
      x, y: the cell's axes; ``y`` None for one axis.

    Returns:
      One row per cell: its axes, then one column per phase (``metrics.PHASES``); rows sum to 1.
    """
    keys = [k for k in (y, x) if k is not None]
    shares = pd.crosstab([runs[k] for k in keys], runs["phase"], normalize="index")
    return shares.reindex(columns=list(PHASES), fill_value=0.0).reset_index().rename_axis(columns=None)


def holds(runs: pd.DataFrame, criterion: str = "grok") -> pd.Series:
    """Per run, whether it met a search criterion within its budget.

    Args:
      runs: a runs table.
      criterion: ``grok`` (reached the grok threshold), ``memorize`` (the memorize threshold),
        both without diverging, or ``diverge``.

    Returns:
      A boolean Series aligned with ``runs``.

    Raises:
      ValueError: an unknown criterion.
    """
    diverged = runs["diverged"].astype(bool)
    if criterion == "grok":
        return grokked(runs)
    if criterion == "memorize":
        return runs["memorize_step"].notna() & ~diverged
    if criterion == "diverge":
        return diverged
    raise ValueError(f"criterion must be grok, memorize or diverge, got {criterion!r}")


def critical_value(runs: pd.DataFrame, axis: str, by=(), criterion: str = "grok", direction: str = "up",
                   majority: float = 0.5, n_boot: int = 1000, **interval) -> pd.DataFrame:
    """For each combination of the ``by`` columns: the value of ``axis`` nearest the boundary where
    more than ``majority`` of the runs meet ``criterion``, with a bootstrap interval.

    Args:
      runs: a runs table (``runs.parquet``).
      axis: the column whose critical value is sought (``data_fraction``, ``lr``, ...).
      by: columns with one critical value per combination of their values.
      criterion: ``grok``, ``memorize`` or ``diverge`` (see ``holds``).
      direction: ``up``: the criterion holds above the boundary (the smallest such value is
        returned); ``down``: below it (the largest).
      majority: share of a value's runs that must meet the criterion.
      n_boot: bootstrap samples; each resamples the runs (seeds) of every value.
      **interval: ``level`` of the interval (0.95) and ``seed`` of the resampling (0).

    Returns:
      One row per combination: the ``by`` columns, ``critical_value``, ``ci_low``, ``ci_high``,
      ``runs``, ``seeds_per_value``. NaN where no value qualifies (in a bootstrap sample: counted
      as beyond the range, so the interval's far end is NaN when that happens often).

    Raises:
      ValueError: an unknown direction, criterion or interval setting.

    Example:
      >>> analysis.critical_value(runs, "lr", by=["weight_decay"], criterion="diverge")
    """
    if direction not in ("up", "down"):
        raise ValueError(f"direction must be up or down, got {direction!r}")
    if set(interval) - {"level", "seed"}:
        raise ValueError(f"critical_value takes level and seed besides its arguments, got {sorted(interval)}")
    level, seed = interval.get("level", 0.95), interval.get("seed", 0)
    rng = np.random.default_rng(seed)
    by = [by] if isinstance(by, str) else list(by or ())
    df = runs.assign(_holds=holds(runs, criterion).to_numpy())
    rows = []
    for key, g in (df.groupby(by, sort=True) if by else [((), df)]):
        cells = list(g.groupby(axis, sort=True))
        values = np.array([v for v, _ in cells], dtype=float)
        outcomes = [c["_holds"].to_numpy(bool) for _, c in cells]

        def estimate(shares: np.ndarray) -> float:
            ok = np.nonzero(shares > majority)[0]
            if not len(ok):
                return np.inf if direction == "up" else -np.inf
            return float(values[ok[0] if direction == "up" else ok[-1]])

        point = estimate(np.array([o.mean() for o in outcomes]))
        boot = np.array([estimate(np.array([rng.choice(o, len(o)).mean() for o in outcomes]))
                         for _ in range(n_boot)])
        lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), "critical_value": point, "ci_low": lo, "ci_high": hi, "runs": len(g),
                     "seeds_per_value": min(len(o) for o in outcomes)})
    columns = [*by, "critical_value", "ci_low", "ci_high", "runs", "seeds_per_value"]
    return pd.DataFrame(rows, columns=columns).replace([np.inf, -np.inf], np.nan)


def critical_fraction(runs: pd.DataFrame, by: str | None = "weight_decay", fraction: str = "data_fraction",
                      majority: float = 0.5, n_boot: int = 1000, level: float = 0.95,
                      seed: int = 0) -> pd.DataFrame:
    """For each value of ``by``: the smallest data fraction at which more than ``majority`` of
    the runs grok within the budget (``critical_value`` with direction up).

    Args:
      runs: a runs table.
      by: the column with one critical fraction per value (None: one for all runs).
      fraction: the data-fraction column.
      majority, n_boot, level, seed: as for ``critical_value``.

    Returns:
      One row per value of ``by``: ``critical_fraction``, the bootstrap interval ``low`` and
      ``high`` (resampling the runs, seeds, of every cell), ``runs``, ``seeds_per_cell``. NaN where
      no fraction qualifies (in a bootstrap sample: counted as above the largest fraction, so the
      upper bound is NaN when that happens often).
    """
    table = critical_value(runs, fraction, [by] if by else [], "grok", "up", majority, n_boot, level=level, seed=seed)
    return table.rename(columns={"critical_value": "critical_fraction", "ci_low": "low", "ci_high": "high",
                                 "seeds_per_value": "seeds_per_cell"})


def events_from_curves(curves: pd.DataFrame, memorize_threshold: float = 0.99,
                       grok_threshold: float = 0.99) -> pd.DataFrame:
    """Events recomputed from the curves at other thresholds (Liu et al. use 0.9).

    Args:
      curves: a curves table (``curves.parquet``).
      memorize_threshold, grok_threshold: train and test accuracy that define the events.

    Returns:
      One row per run: ``run_id``, ``memorize_step``, ``grok_step`` (nullable; null where never
      reached).
    """
    def first_step(df: pd.DataFrame, column: str, threshold: float) -> pd.Series:
        hit = df[df[column] >= threshold]
        return hit.groupby("run_id")["step"].min()

    ids = pd.Index(sorted(curves["run_id"].unique()), name="run_id")
    out = pd.DataFrame(index=ids)
    out["memorize_step"] = first_step(curves, "train_acc", memorize_threshold).reindex(ids).astype("Int64")
    out["grok_step"] = first_step(curves, "test_acc", grok_threshold).reindex(ids).astype("Int64")
    return out.reset_index()


def reclassify(runs: pd.DataFrame, curves: pd.DataFrame, memorize_threshold: float = 0.99,
               grok_threshold: float = 0.99, gap: int | None = None) -> pd.DataFrame:
    """The runs table with events and phases recomputed at other thresholds.

    Args:
      runs, curves: a sweep's two tables.
      memorize_threshold, grok_threshold: as for ``events_from_curves``.
      gap: the grok delay above which a run is grokking rather than comprehension (None: each
        run's own ``grok_gap``).

    Returns:
      A copy of ``runs`` with ``memorize_step``, ``grok_step``, ``grok_delay`` and ``phase``
      recomputed.

    Example:
      >>> liu = analysis.reclassify(results.runs, results.curves, 0.9, 0.9, gap=1000)
    """
    events = events_from_curves(curves, memorize_threshold, grok_threshold).set_index("run_id")
    out = runs.copy()
    for column in ("memorize_step", "grok_step"):
        out[column] = out["run_id"].map(events[column]).astype("Int64")
    out["grok_delay"] = out["grok_step"] - out["memorize_step"]
    gap = out["grok_gap"].to_numpy() if gap is None else gap
    out["phase"] = classify_phases(out["memorize_step"].fillna(NEVER).to_numpy(),
                                   out["grok_step"].fillna(NEVER).to_numpy(), out["diverged"].to_numpy(), gap)
    return out


def progress_steps(curves: pd.DataFrame, loss_threshold: float = 0.1) -> pd.DataFrame:
    """When each run's progress measures move (Nanda et al.'s story), one row per run:

    - ``test_loss_step``, ``restricted_loss_step``: first evaluation with that loss at most
      ``loss_threshold`` (the restricted loss falling first says the circuit forms before the
      memorizing solution is cleaned up);
    - ``keys_first_step``: first evaluation with a key frequency; ``keys_settled_step``: first
      evaluation from which the key frequencies stay the final set (non-empty), and
      ``key_frequencies``, that set;
    - ``excluded_loss_peak_step`` and ``excluded_loss_peak``: where the excluded loss is largest
      (it rises as the training set comes to rely on the key frequencies);
    - ``norm_peak_step``, ``norm_peak`` and ``norm_final``: the parameter norm's peak and where it
      ended (it falls through the clean-up).
    Null where a measure was not recorded or never got there.

    Args:
      curves: a curves table with progress measures (``train.progress_measures = true``).
      loss_threshold: the loss a "_step" column waits for.

    Returns:
      One row per run with the columns above.
    """
    rows = []
    for run_id, c in curves.sort_values(["run_id", "step"]).groupby("run_id"):
        row = {"run_id": run_id}
        for column in ("test_loss", "restricted_loss"):
            hit = c.loc[c[column] <= loss_threshold, "step"] if column in c else pd.Series(dtype=float)
            row[f"{column}_step"] = hit.iloc[0] if len(hit) else None
        keys = c["key_frequencies"].tolist() if "key_frequencies" in c else []
        final = list(keys[-1]) if keys and keys[-1] is not None else []
        settled = None
        if final:
            same = [k is not None and list(k) == final for k in keys]
            first = len(same) - next((i for i, s in enumerate(reversed(same)) if not s), len(same))
            settled = c["step"].iloc[first]
        first_key = next((s for s, k in zip(c["step"], keys) if k is not None and len(k)), None)
        row.update(keys_first_step=first_key, keys_settled_step=settled, key_frequencies=final or None)
        if "excluded_loss" in c and c["excluded_loss"].notna().any():
            peak = c["excluded_loss"].idxmax()
            row.update(excluded_loss_peak_step=c.loc[peak, "step"], excluded_loss_peak=c.loc[peak, "excluded_loss"])
        top = c["param_norm"].idxmax()
        row.update(norm_peak_step=c.loc[top, "step"], norm_peak=c.loc[top, "param_norm"],
                   norm_final=c["param_norm"].iloc[-1])
        rows.append(row)
    out = pd.DataFrame(rows)
    for column in ("test_loss_step", "restricted_loss_step", "keys_first_step", "keys_settled_step",
                   "excluded_loss_peak_step", "norm_peak_step"):
        if column in out:
            out[column] = out[column].astype("Int64")
    return out


def summary_table(runs: pd.DataFrame, x: str, y: str | None = None, hide: tuple[str, ...] = ()) -> pd.DataFrame:
    """The table ``grokjax summary`` prints: per cell, runs, share grokked, median grok step with
    its interquartile range, and the majority phase with its share, formatted for reading.

    Args:
      runs: ``runs.parquet`` as a DataFrame.
      x, y: the cell's axes (``y`` optional), as ``cell_summary`` takes them.
      hide: axis columns to leave out of the table (a placeholder axis).

    Returns:
      One row per cell, strings where a number needs words ("never").
    """
    cells = cell_summary(runs, x, y)

    def steps(v):
        return "never" if not np.isfinite(v) else f"{v:.0f}"

    return pd.DataFrame({
        **{k: cells[k] for k in (y, x) if k and k not in hide},
        "runs": cells["runs"],
        "grokked": [f"{v:.0%}" for v in cells["grokked"]],
        "median grok_step": [steps(v) for v in cells["median_grok_step"]],
        "IQR": [steps(a) if a == b else f"{steps(a)}-{steps(b)}"
                for a, b in zip(cells["q25_grok_step"], cells["q75_grok_step"])],
        "phase": [f"{p} ({s:.0%})" for p, s in zip(cells["phase"], cells["phase_share"])],
    })
