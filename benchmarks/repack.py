"""Repacking against none: does shrinking the working set pay for its compilations?

The 16-run sweep of issue #24 (the MLP on (x + y) mod 23, 4 seeds x data_fraction {0.6, 0.8}
x weight_decay {1, 3}, lr 1e-2, 1,500 steps, runs_per_batch = 16), trained once per variant,
each in a fresh process with an empty compilation cache (every program compiles cold), one
variant after the other in turns, all on the layout the first one measured (a measured-widths
file shared by the variants: a layout measured anew could differ, and with it the last bits):

- ``off``: ``repack=False``, the working set keeps its 16 slots;
- ``ladder``: ``repack="always"``, halving as soon as the survivors fit (what repacking did
  before it weighed compilation);
- ``pays``: ``repack=True, compile_ahead=False``: shrink to the survivors only when the compute
  saved exceeds the compilation, the round waiting for it;
- ``ahead``: ``repack=True`` (the default): the same, compiled in a background thread.

Prints wall time, seconds waited on compilation, programs compiled, slot-steps, widths, and
whether the results equal ``off``'s (exactly, or the largest relative difference).

    python benchmarks/repack.py [--devices default|8] [--rounds 1] [--variants off,ladder,pays,ahead]
                                [--dense-of sweeps/search_cpu.toml]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

SWEEP = dict(name="repack16", task=dict(name="add", p=23), model=dict(name="mlp"),
             optimizer=dict(lr=1e-2), train=dict(steps=1500, eval_every=10, runs_per_batch=16),
             grid=dict(seed=[0, 1, 2, 3], data_fraction=[0.6, 0.8], weight_decay=[1.0, 3.0]))
VARIANTS = dict(off=dict(repack=False), ladder=dict(repack="always"), pays=dict(repack=True, compile_ahead=False),
                ahead=dict(repack=True, compile_ahead=True))
CHILD = """
import json, sys, time
from grokjax.width import use_cores_as_devices
if {cores!r}:
    use_cores_as_devices()  # the layout the grokjax command gives a CPU
import grokjax
sys.path.insert(0, {here!r})
config = grokjax.sweep_from_dict({sweep!r}) if not {dense_of!r} else \
    __import__("search_vs_grid").dense_config(grokjax.load_sweep({dense_of!r}))
t0 = time.perf_counter()
r = grokjax.run_sweep(config, {out!r}, progress=False, tune_cache={tune_cache!r},
                      **{options!r})
wall = time.perf_counter() - t0
g = r.meta["groups"][0]
print(json.dumps(dict(wall_s=wall, compile_s=r.meta["compile_time_s"], programs=len(g["programs"]),
                      slot_steps=g["slot_steps"], widths=g["widths"], devices=g["devices"],
                      vmap_width=g["runs_per_batch"])))
"""


def run_variant(name: str, devices: str, out: Path, tune_cache: Path, dense_of: str = "") -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if devices != "default":
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    with tempfile.TemporaryDirectory() as cache:
        env["XDG_CACHE_HOME"] = cache  # an empty persistent cache: every program compiles cold
        code = CHILD.format(cores=devices == "default", sweep=SWEEP, out=str(out), options=VARIANTS[name],
                            tune_cache=str(tune_cache), here=str(Path(__file__).parent), dense_of=dense_of)
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{name}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def difference(a: Path, b: Path) -> str:
    """'exact', or the largest relative difference of the two folders' numeric columns."""
    worst = 0.0
    for table in ("runs.parquet", "curves.parquet"):
        x, y = pd.read_parquet(a / table), pd.read_parquet(b / table)
        if x.equals(y):
            continue
        if len(x) != len(y):  # a run stopped at another evaluation: its numbers moved across a threshold
            return f"{table}: {len(x)} vs {len(y)} rows"
        for column in x.select_dtypes("number").columns:
            u, v = x[column].to_numpy(float), y[column].to_numpy(float)
            both = np.isfinite(u) & np.isfinite(v)
            if not np.array_equal(np.isfinite(u), np.isfinite(v)):
                return f"{table}:{column} differs in which values are finite"
            scale = np.maximum(np.abs(u[both]), 1e-12)
            worst = max(worst, float(np.max(np.abs(u[both] - v[both]) / scale, initial=0.0)))
    return "exact" if worst == 0 else f"rel {worst:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="default", help="'default' (the CLI's layout) or a device count")
    parser.add_argument("--rounds", type=int, default=1, help="turns of every variant")
    parser.add_argument("--variants", default="off,ladder,pays,ahead")
    parser.add_argument("--dense-of", default="", metavar="SEARCH_TOML",
                        help="instead of the 16-run sweep, the dense grid a search file replaces (search_vs_grid.py)")
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {sorted(VARIANTS)}")
    what = f"the dense grid of {args.dense_of}" if args.dense_of else \
        "16 runs of the MLP on (x + y) mod 23, 1,500 steps"
    print(f"# repacking, {what}; {platform.machine()}, "
          f"{os.cpu_count()} cores, devices {args.devices}, {datetime.date.today()}, cold compiles")
    print("| variant | round | wall s | waited on compiling s | programs | slot-steps | widths | devices x vmap width "
          "| results vs off |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name in names:
                out = Path(tmp) / f"{name}-{r}"
                m = run_variant(name, args.devices, out, Path(tmp) / "widths.json", args.dense_of)
                same = difference(Path(tmp) / f"off-{r}", out) if "off" in names and name != "off" else "-"
                print(f"| {name} | {r} | {m['wall_s']:.1f} | {m['compile_s']:.1f} | {m['programs']} | "
                      f"{m['slot_steps']:,} | {m['widths']} | {m['devices']} x {m['vmap_width']} | {same} |",
                      flush=True)


if __name__ == "__main__":
    main()
