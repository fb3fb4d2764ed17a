"""Do bf16 matmuls change when a run groks? The quickstart's model at 50 % data, a few seeds,
trained in float32 and in bfloat16, by grokjax (``train.precision``: bf16 matmuls, float32
parameters and loss) and, with ``pip install -e ".[bench]"``, by the PyTorch loop under bf16
autocast. Prints the grok step (test accuracy >= 99 %) of every run and writes
``bf16_grok.md`` / ``bf16_grok.json`` to ``--out``.

    python benchmarks/bf16_grok.py --out bench_out [--seeds 4] [--steps 1500]

On a GPU the same script answers the question for its tensor cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import grokjax
from grokjax.tasks import make_task

MODEL = dict(name="mlp", embed_dim=64, width=256)
SETTINGS = dict(p=47, data_fraction=0.5, lr=1e-2, weight_decay=1.0, betas=(0.9, 0.98), eval_every=20)


def grokjax_runs(seeds: int, steps: int) -> list[dict]:
    s = SETTINGS
    config = grokjax.sweep_from_dict(dict(
        name="bf16_grok", task=dict(name="add", p=s["p"], data_fraction=s["data_fraction"]), model=MODEL,
        optimizer=dict(name="adamw", lr=s["lr"], weight_decay=s["weight_decay"], beta1=s["betas"][0],
                       beta2=s["betas"][1]),
        train=dict(steps=steps, eval_every=s["eval_every"]), events=dict(stop_early=False),
        grid=dict(precision=["float32", "bfloat16"], seed=list(range(seeds)))))
    t0 = time.perf_counter()
    results = grokjax.run_sweep(config, progress=False)
    print(f"grokjax: {len(results.runs)} runs in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return [dict(implementation="grokjax", precision=r.precision, seed=int(r.seed),
                 memorize_step=_step(r.memorize_step), grok_step=_step(r.grok_step))
            for r in results.runs.itertuples()]


def torch_runs(seeds: int, steps: int) -> list[dict]:
    sys.path.insert(0, str(Path(__file__).resolve().parent / "baselines"))
    import torch_models

    s = SETTINGS
    task = make_task("add", s["p"])
    out = []
    for bf16 in (False, True):
        for seed in range(seeds):
            t0 = time.perf_counter()
            run = torch_models.train_loop(MODEL, task.inputs, task.labels, task.n_symbols, steps, lr=s["lr"],
                                          weight_decay=s["weight_decay"], fraction=s["data_fraction"], seed=seed,
                                          bf16=bf16, eval_every=s["eval_every"], betas=s["betas"])
            first = lambda i: next((step for step, *acc in run["curve"] if acc[i] >= 0.99), None)  # noqa: E731
            out.append(dict(implementation="torch", precision="bfloat16" if bf16 else "float32", seed=seed,
                            memorize_step=first(0), grok_step=first(1)))
            print(f"torch {out[-1]['precision']} seed {seed}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return out


def _step(value) -> int | None:
    return None if pd.isna(value) or value < 0 else int(value)


def report(records: list[dict]) -> str:
    lines = ["| implementation | precision | grok step per seed | median | grokked |", "|---|---|---|---|---|"]
    for impl in dict.fromkeys(r["implementation"] for r in records):
        for precision in ("float32", "bfloat16"):
            rows = [r for r in records if r["implementation"] == impl and r["precision"] == precision]
            steps = [r["grok_step"] for r in sorted(rows, key=lambda r: r["seed"])]
            done = [s for s in steps if s is not None]
            median = f"{np.median(done):.0f}" if done else "never"
            lines.append(f"| {impl} | {precision} | {', '.join('never' if s is None else str(s) for s in steps)} | "
                         f"{median} | {len(done)}/{len(steps)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1500)
    args = parser.parse_args(argv)
    records = grokjax_runs(args.seeds, args.steps)
    if importlib.util.find_spec("torch"):
        records += torch_runs(args.seeds, args.steps)
    table = report(records)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bf16_grok.json").write_text(json.dumps(records, indent=1) + "\n")
    (out / "bf16_grok.md").write_text(table)


if __name__ == "__main__":
    main()
