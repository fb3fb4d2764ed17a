"""Quickstart-sized grid trained as one compiled program vs. a Python loop over runs.

The loop is what a JAX user writes first: for each run, a jitted single-run step dispatched from
Python every step, with a jitted evaluation every ``eval_every`` steps. Both sides use the same
model, data, optimizer and per-run settings, in this one process, so the ratio holds on a noisy
machine. Compilation is excluded from both rates (and reported).

    python benchmarks/grid_vs_loop.py [--runs 16 64] [--steps 200]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import time

import jax
import numpy as np

import grokjax
from grokjax.engine import Program, choose_runs_per_batch, hp_arrays, make_grid_init, make_grid_period, split_mask
from grokjax.metrics import evaluate


def quickstart_grid(n_runs: int, steps: int) -> grokjax.SweepConfig:
    base = grokjax.load_sweep(os.path.join(os.path.dirname(__file__), "..", "sweeps", "quickstart.toml"))
    fractions, decays = (0.3, 0.4, 0.5, 0.6, 0.7), (0.3, 1.0, 3.0)
    seeds = list(range(-(-n_runs // (len(fractions) * len(decays)))))
    grid = (("seed", tuple(seeds)), ("data_fraction", fractions), ("weight_decay", decays))
    return dataclasses.replace(base.replace(steps=steps, stop_early=False), grid=grid)


def time_grid(runs) -> tuple[float, float, int]:
    program = Program.build(runs[0], runs)
    cfg = program.config
    k = choose_runs_per_batch(cfg, len(runs), rows=program.train_rows)
    n_evals = cfg.train.steps // cfg.train.eval_every
    hp = hp_arrays(runs)
    t0 = time.perf_counter()
    states = make_grid_init(program, len(runs), k)(hp)
    period = make_grid_period(program, len(runs), k, n_evals).lower(states, hp).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    states, metrics = period(states, hp)
    jax.block_until_ready(metrics)
    return time.perf_counter() - t0, compile_s, k


def time_loop(runs) -> tuple[float, float]:
    program = Program.build(runs[0], runs)
    cfg = program.config
    inputs, labels = program.task.inputs, program.task.labels
    step = jax.jit(program.train_step, donate_argnums=0)
    init = jax.jit(program.init_run)
    mask_of = jax.jit(split_mask, static_argnums=2)
    eval_fn = jax.jit(lambda params, mask: evaluate(program.apply(params, inputs), labels, mask, params))
    hp_all = hp_arrays(runs)
    compile_s = train_s = 0.0
    for i in range(len(runs)):
        hp = {k: v[i] for k, v in hp_all.items()}
        mask = mask_of(hp["seed"], hp["data_fraction"], program.task.size)
        rows = None if program.config.train.batch_size else program.train_rows_of(mask)  # the train set, once
        state = init(hp)
        if i == 0:  # compile outside the timed region
            t0 = time.perf_counter()
            jax.block_until_ready(eval_fn(step(init(hp), hp, mask, rows).params, mask))
            compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for s in range(1, cfg.train.steps + 1):
            state = step(state, hp, mask, rows)
            if s % cfg.train.eval_every == 0:
                metrics = jax.device_get(eval_fn(state.params, mask))  # the host reads metrics
        train_s += time.perf_counter() - t0
    return train_s, compile_s


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
        runs = quickstart_grid(n, args.steps).runs()[:n]
        grid_s, grid_compile, k = time_grid(runs)
        loop_s, _ = time_loop(runs)
        work = n * args.steps
        print(f"| {n} | {args.steps} | {work / grid_s:,.0f} | {work / loop_s:,.0f} | {loop_s / grid_s:.2f} | {k} "
              f"| {grid_compile:.1f} |", flush=True)


if __name__ == "__main__":
    main()
