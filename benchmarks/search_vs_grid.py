"""``grokjax search`` against the dense grid it replaces, side by side in one process.

The search (a sweep file's ``[search]``) and a dense grid of the same lattice, ``by`` cells and
seeds are trained one after the other; the dense grid's critical value per cell is read with
``analysis.critical_value`` (the smallest value where most seeds meet the criterion, with its
bootstrap interval), the search's from ``boundary.parquet``. Run-steps are steps trained summed
over runs (a run stops once it is done); wall time includes compilation.

    python benchmarks/search_vs_grid.py [sweeps/search_cpu.toml] [--out results/search_vs_grid]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np

import grokjax
from grokjax.analysis import critical_value
from grokjax.search import lattice


def dense_config(config: grokjax.SweepConfig) -> grokjax.SweepConfig:
    """The grid a search replaces: every lattice value of its axis, every seed, every by cell."""
    spec = config.search
    grid = (*config.grid, (spec.axis, tuple(lattice(spec).tolist())), ("seed", tuple(spec.seeds)))
    return dataclasses.replace(config, name=f"{config.name}_dense", grid=grid, search=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", default=str(Path(__file__).parent.parent / "sweeps" / "search_cpu.toml"))
    parser.add_argument("--out", default="results/search_vs_grid")
    args = parser.parse_args()
    config = grokjax.load_sweep(args.file)
    spec, out = config.search, Path(args.out)
    print(f"# grokjax search vs the dense grid; {platform.processor() or platform.machine()}, {os.cpu_count()} "
          f"cores, {jax.devices()[0].device_kind}, {datetime.date.today()}; {Path(args.file).name}: "
          f"{spec.axis} in [{spec.low:g}, {spec.high:g}], {len(lattice(spec))} values, {len(spec.seeds)} seeds")
    t0 = time.perf_counter()
    found = grokjax.search_boundary(config, out / "search", progress=False, overwrite=True)
    t_search = time.perf_counter() - t0
    dense = dense_config(config)
    t0 = time.perf_counter()
    grid = grokjax.run_sweep(dense, out / "dense", progress=False, overwrite=True)
    t_dense = time.perf_counter() - t0
    by = list(spec.by)
    want = critical_value(grid.runs, spec.axis, by, spec.criterion,
                          spec.direction if spec.direction != "auto" else "up").set_index(by)
    print(f"| {' | '.join(by)} | search: critical (bracket) | search 95 % interval | dense grid: critical | "
          f"dense 95 % interval | agree | search runs | dense runs | search run-steps | dense run-steps |")
    print("|" + "---|" * (len(by) + 9))
    f = "{:g}".format
    steps = grid.runs.groupby(by)["final_step"].sum()
    runs = grid.runs.groupby(by).size()
    for row in found.boundary.to_dict("records"):
        key = tuple(row[b] for b in by) if len(by) > 1 else row[by[0]]
        d = want.loc[key]
        same = row["critical_value"] == d["critical_value"] or (
            np.isnan(row["critical_value"]) and np.isnan(d["critical_value"]))
        near = abs(row["critical_value"] - d["critical_value"]) <= spec.resolution + 1e-9
        inside = d["ci_low"] <= row["critical_value"] <= d["ci_high"]
        agree = "same" if same else "within resolution" if near else "within interval" if inside else "no"
        print(f"| {' | '.join(f(row[b]) for b in by)} | {f(row['critical_value'])} ({f(row['low'])}-"
              f"{f(row['high'])}) | {f(row['ci_low'])}-{f(row['ci_high'])} | {f(d['critical_value'])} | "
              f"{f(d['ci_low'])}-{f(d['ci_high'])} | {agree} | {row['runs']} | {runs.loc[key]} | "
              f"{row['run_steps']:,} | {steps.loc[key]:,} |")
    s_steps, d_steps = found.meta["run_steps"], grid.meta["run_steps"]
    s_c, d_c = compiled(found.meta), compiled(grid.meta)
    print(f"\ntotal: search {len(found.runs)} runs, {s_steps:,} run-steps, {t_search:.0f} s wall "
          f"({found.meta['compile_time_s']:.0f} s waiting on compiles; {s_c[0]} programs, {s_c[1]:.0f} s compiling); "
          f"dense grid {len(grid.runs)} runs, {d_steps:,} run-steps, {t_dense:.0f} s wall "
          f"({grid.meta['compile_time_s']:.0f} s waiting; {d_c[0]} programs, {d_c[1]:.0f} s compiling); run-steps "
          f"{s_steps / d_steps:.2f} of the dense grid's, wall time {t_search / t_dense:.2f}, compiling "
          f"{s_c[1] / max(d_c[1], 1e-9):.2f}")


def compiled(meta: dict) -> tuple[int, float]:
    """Programs compiled and their lowering and compiling seconds, in the rounds or beside them."""
    programs = [p for g in meta.get("groups", []) for p in g.get("programs", [])]
    return len(programs), sum(p["lower_s"] + p["compile_s"] for p in programs)


if __name__ == "__main__":
    main()
