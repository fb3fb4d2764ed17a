"""Where one training step's time goes, and the grid against the PyTorch loop measured in rounds.

    python benchmarks/step_profile.py [--workload W2] [--rounds 3]

1. Profile: one run of the workload (the grid's program at vmap width 1, what it runs on a CPU
   for W2-W4), ``steps`` training steps in one jitted loop under ``jax.profiler.trace``; the
   trace's per-operation times, averaged per step, each named by what it computes (the HLO
   instruction's source op: ``jvp(MLP)/readout/dot_general`` is the read-out matmul's forward,
   ``transpose(jvp(...))`` the backward), and the matmuls' share.
2. Rounds: ``grokjax bench``'s grid (``runs`` runs) and its PyTorch loop (with ``pip install -e
   ".[bench]"``), alternated ``rounds`` times in this process, so a noisy machine shows its
   spread instead of one ratio.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import importlib.util
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import jax

from grokjax.bench import WORKLOADS, bench_grid, bench_torch, workload_config
from grokjax.experiment import build_program, one_run, run_settings
from grokjax.program import split_mask
from grokjax.width import use_cores_as_devices


def profile_step(name: str, steps: int = 10) -> list[tuple[str, str, float]]:
    """(HLO instruction, its source op, ms per step) of one run's training step, slowest first."""
    config = workload_config(name, 1, steps)
    runs = config.runs()
    program = build_program(runs[0], runs)
    hp = one_run(run_settings(runs), 0)
    state = jax.jit(program.init_run)(hp)
    mask = split_mask(hp.seed, hp.data_fraction, program.task.size)
    rows = None if program.batch_size else program.train_rows_of(mask)
    train = jax.jit(lambda s: jax.lax.fori_loop(0, steps, lambda _, s: program.train_step(s, hp, mask, rows), s))
    state = jax.block_until_ready(train(state))  # compiles
    source = {m.group(1): m.group(2) for m in re.finditer(r'%(\S+) = .*?op_name="([^"]+)"',
                                                           train.lower(state).compile().as_text())}
    repeats = 3
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(repeats):
                state = train(state)
            jax.block_until_ready(state)
        with gzip.open(next(Path(tmp).rglob("*perfetto_trace.json.gz"))) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    total = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e["name"] in source:  # the program's own operations, not the runtime's
            total[e["name"]] += e.get("dur", 0) / 1e3 / (repeats * steps)
    return [(op, source[op].split("/while/body/")[-1], ms) for op, ms in total.most_common()]


def rounds(name: str, runs: int, steps: int, n: int) -> list[tuple[float, float | None]]:
    """(grid, PyTorch loop) run-steps per second, ``n`` rounds alternated."""
    out = []
    for i in range(n):
        grid = bench_grid(workload_config(name, runs, steps))["run_steps_per_s"]
        torch = None
        if importlib.util.find_spec("torch"):
            torch = bench_torch(workload_config(name, runs, steps), WORKLOADS[name], 2, [], bf16_runs=0
                                )["torch_loop"]["run_steps_per_s"]
        out.append((grid, torch))
        print(f"  round {i + 1}: grid {grid:.1f}, torch loop {torch or float('nan'):.1f} run-steps/s"
              + (f", {grid / torch:.2f}x" if torch else ""), flush=True)
    return out


def main() -> None:
    use_cores_as_devices()  # the grid as the grokjax command runs it: its layout measured per group
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="W2", choices=sorted(WORKLOADS))
    parser.add_argument("--steps", type=int, default=20, help="steps per profiled loop and per timed round")
    parser.add_argument("--runs", type=int, default=16, help="grid size of the rounds")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"{args.workload}: {WORKLOADS[args.workload]['description']}; {device.platform}:{device.device_kind}, "
          f"{time.strftime('%Y-%m-%d')}\n")
    ops = profile_step(args.workload, args.steps)
    step_ms = sum(ms for *_, ms in ops)
    matmul_ms = sum(ms for op, src, ms in ops if src.endswith("dot_general") or op.startswith("dot"))
    print(f"one run's step: {step_ms:.1f} ms in the program's operations, {matmul_ms:.1f} ms "
          f"({100 * matmul_ms / step_ms:.0f} %) in matmuls\n")
    print("| ms per step | share | operation | computes |\n|---|---|---|---|")
    for op, src, ms in ops[:15]:
        print(f"| {ms:.2f} | {100 * ms / step_ms:.0f} % | {op} | {src} |")
    if args.rounds:
        print(f"\ngrid of {args.runs} runs against the PyTorch loop, {args.rounds} rounds alternated:")
        ratios = [g / t for g, t in rounds(args.workload, args.runs, args.steps, args.rounds) if t]
        if ratios:
            print(f"  ratio: median {statistics.median(ratios):.2f}x, range {min(ratios):.2f}-{max(ratios):.2f}x")


if __name__ == "__main__":
    main()
