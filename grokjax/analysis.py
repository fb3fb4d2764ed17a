"""Per-cell aggregates of a results table: the numbers behind every phase diagram."""

from __future__ import annotations

import numpy as np
import pandas as pd


def cell_summary(runs: pd.DataFrame, x: str = "data_fraction", y: str = "weight_decay",
                 metric: str = "grok_step") -> pd.DataFrame:
    """One row per (y, x) cell over the other axes (seeds): runs, share grokked, median and
    interquartile range of ``metric`` with never-reached counted as infinitely late (so the
    median is infinite when most seeds never got there), and the majority phase."""
    df = runs.copy()
    value = df[metric].astype("Float64").fillna(np.inf).astype(float)
    df["_value"] = value
    df["_grokked"] = df["grok_step"].notna() & ~df["diverged"].astype(bool)

    def per_cell(g: pd.DataFrame) -> pd.Series:
        phases = g["phase"].value_counts()
        return pd.Series({
            "runs": len(g),
            "grokked": g["_grokked"].mean(),
            f"median_{metric}": float(np.median(g["_value"])),
            # inverted_cdf picks observed values, so quantiles of never-reached cells stay inf
            f"q25_{metric}": float(np.quantile(g["_value"], 0.25, method="inverted_cdf")),
            f"q75_{metric}": float(np.quantile(g["_value"], 0.75, method="inverted_cdf")),
            "phase": phases.index[0],
            "phase_share": phases.iloc[0] / len(g),
        })

    keys = [k for k in (y, x) if k is not None]
    return df.groupby(keys, sort=True)[list(df.columns)].apply(per_cell).reset_index()
