"""Grid size and repacking: run-steps per second from 1 to 10,000 runs, and the compute that
repacking finished runs saves.

    python benchmarks/scale.py [--sizes 1 10 100 1000 10000] [--chunk 2500]

Part 1 trains a tiny MLP on (x + y) mod 11 (100 steps per run) at each grid size, with the
working set chosen from memory and, for the largest grid, also capped by ``--chunk`` so the
grid runs chunk after chunk. Part 2 trains a p=23 grid where most runs generalize early and
stop, with and without repacking, side by side, at the vmap width a CPU measures and at an
accelerator's (the whole working set). Compilation is excluded from run-steps/s.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import jax

import grokjax


def tiny_grid(n_runs: int) -> grokjax.SweepConfig:
    return grokjax.sweep_from_dict(dict(
        name=f"scale_{n_runs}", task=dict(name="add", p=11, data_fraction=0.5),
        model=dict(name="mlp", embed_dim=8, width=16), optimizer=dict(lr=1e-2),
        train=dict(steps=100, eval_every=50), events=dict(stop_early=False), grid=dict(seed=list(range(n_runs)))))


def early_finishers() -> grokjax.SweepConfig:
    # 24 of 32 runs grok within ~700 steps at 80-90 % data; the 8 at 30 % train for the whole budget
    return grokjax.sweep_from_dict(dict(
        name="repack", task=dict(name="add", p=23), model=dict(name="mlp", embed_dim=32, width=64),
        optimizer=dict(lr=1e-2), train=dict(steps=1500, eval_every=10), events=dict(patience=2),
        grid=dict(data_fraction=[0.9, 0.85, 0.8, 0.3], seed=list(range(8)))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100, 1000, 10000])
    parser.add_argument("--chunk", type=int, default=2500, help="working-set cap for a chunked run of the largest grid")
    args = parser.parse_args()
    print(f"# grokjax scale benchmark; {platform.machine()}, {os.cpu_count()} cores, "
          f"{jax.devices()[0].device_kind}, {datetime.date.today()}")
    print("\n| runs | chunk cap | widths | run-steps/s | compile s | wall s |\n|---|---|---|---|---|---|")
    for n in args.sizes:
        caps = [None] + ([args.chunk] if n == max(args.sizes) and args.chunk < n else [])
        for cap in caps:
            t0 = time.perf_counter()
            r = grokjax.run_sweep(tiny_grid(n), progress=False, max_runs_per_chunk=cap)
            g = r.meta["groups"][0]
            assert len(r.runs) == n and r.runs.final_step.eq(100).all()
            print(f"| {n} | {cap or 'memory'} | {g['widths'][0]} | {r.meta['run_steps_per_s']:,.0f} | "
                  f"{r.meta['compile_time_s']:.1f} | {time.perf_counter() - t0:.1f} |", flush=True)
    # Repacking in both regimes: the vmap width a CPU measures (buckets shrink in multiples of it,
    # then narrow it), and an accelerator's, where the vmap width is the whole working set.
    print("\n| vmap width | repacking | train s | slot-steps computed | run-steps trained | widths (vmap widths) |"
          "\n|---|---|---|---|---|---|")
    for regime, per_batch in (("measured", 0), ("whole working set (accelerator)", 32)):
        times = {}
        for repack in (False, True):
            config = early_finishers().replace(runs_per_batch=per_batch)
            r = grokjax.run_sweep(config, progress=False, repack=repack)
            g = r.meta["groups"][0]
            times[repack] = g["train_time_s"]
            print(f"| {regime}: {g['runs_per_batch']} | {'on' if repack else 'off'} | {g['train_time_s']:.1f} | "
                  f"{g['slot_steps']:,} | {g['run_steps']:,} | {g['widths']} ({g['vmap_widths']}) |", flush=True)
        print(f"| {regime} | repacking saves | {times[False] / times[True]:.2f}x training time | | | |")

if __name__ == "__main__":
    main()
