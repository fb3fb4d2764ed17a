"""Quickstart-sized grid trained as one compiled program vs. a Python loop over runs.

The loop is what a JAX user writes first: for each run, a jitted single-run step dispatched from
Python every step, with a jitted evaluation read back every ``eval_every`` steps, as the grid
evaluates. Both sides use the same model, data, optimizer and per-run settings, in this one
process, so the ratio holds on a noisy machine. Compilation is excluded from both rates. The
loops are ``grokjax.bench.bench_jax_loops``, the grid ``grokjax.bench.bench_grid``.

    python benchmarks/grid_vs_loop.py [--runs 16 64] [--steps 200]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
from pathlib import Path

import jax

import grokjax
from grokjax.bench import bench_grid, bench_jax_loops


def quickstart_grid(n_runs: int, steps: int) -> grokjax.SweepConfig:
    """The quickstart's model and task at 50 % data, weight decay 1, over ``n_runs`` seeds."""
    base = grokjax.load_sweep(Path(__file__).parent.parent / "sweeps" / "quickstart.toml")
    config = base.replace(steps=steps, stop_early=False, data_fraction=0.5, weight_decay=1.0)
    return dataclasses.replace(config, grid=(("seed", tuple(range(n_runs))),))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    print(f"# grokjax grid vs. Python loop of jitted steps; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, {jax.devices()[0].device_kind}, {datetime.date.today()}")
    print("| runs | steps | grid run-steps/s | loop run-steps/s | grid / loop | runs_per_batch | grid compile s |")
    print("|---|---|---|---|---|---|---|")
    for n in args.runs:
        config = quickstart_grid(n, args.steps)
        grid = bench_grid(config)
        loop = bench_jax_loops(config, n)["jax_loop_step"]
        ratio = grid["run_steps_per_s"] / loop["run_steps_per_s"]
        print(f"| {n} | {args.steps} | {grid['run_steps_per_s']:,.0f} | {loop['run_steps_per_s']:,.0f} | "
              f"{ratio:.2f} | {grid['runs_per_batch']} | {grid['compile_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
