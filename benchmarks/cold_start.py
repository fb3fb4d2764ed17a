"""A launch's cold start, an older commit against this tree, side by side.

``grokjax run`` of a sweep (default the quickstart) with an empty cache each time (no compiled
programs, no measured widths), in turns old, new, old, new: wall seconds, the seconds compiling
(what rounds waited for), measuring the layout, and the layout chosen, read from each launch's
meta.json. The older commit is read from git (``git archive``) and runs from its source with
this environment's packages.

    python benchmarks/cold_start.py --old 2b21a58 --steps 100 --rounds 2 [--out cold.md]
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def launch(tree: Path, sweep: Path, steps: int | None, work: Path) -> dict:
    """One cold launch of ``tree``'s grokjax; its wall time and meta.json's compile and layout."""
    cache, out = Path(tempfile.mkdtemp(dir=work)), Path(tempfile.mkdtemp(dir=work)) / "out"
    env = {**os.environ, "PYTHONPATH": str(tree), "XDG_CACHE_HOME": str(cache), "MPLBACKEND": "Agg"}
    command = [sys.executable, "-m", "grokjax", "run", str(sweep), "--out", str(out), "--quiet"]
    if steps:
        command += ["--set", f"train.steps={steps}"]
    t0 = time.perf_counter()
    subprocess.run(command, env=env, check=True, cwd=work)
    wall = time.perf_counter() - t0
    meta = json.loads((out / "meta.json").read_text())
    groups = meta["groups"]
    layout = [g.get("layout", {}) for g in groups]
    return dict(wall_s=wall, compile_s=meta["compile_time_s"],
                layout_s=sum(entry.get("tune_time_s", 0.0) for entry in layout),
                widths_timed=sum(len(rates) for entry in layout for rates in entry.get("run_steps_per_s", {}).values()),
                chosen=", ".join(f"{g['devices']} x {g['runs_per_batch']}" for g in groups))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="the older commit (any git revision)")
    parser.add_argument("--sweep", default=str(ROOT / "sweeps" / "quickstart.toml"))
    parser.add_argument("--steps", type=int, default=0, help="train.steps for every launch (0: the file's)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        old = work / "old"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.old], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        rows = []
        for r in range(args.rounds):
            for name, tree in ((f"{args.old}", old), ("this tree", ROOT)):
                rows.append(dict(tree=name, round=r + 1, **launch(tree, Path(args.sweep), args.steps, work)))
                print(rows[-1], file=sys.stderr)
    lines = [f"{platform.node()}, {os.cpu_count()} cores, {datetime.date.today()}, sweep {Path(args.sweep).name}"
             f"{f', steps = {args.steps}' if args.steps else ''}, empty caches", "",
             "| tree | round | wall s | compile s | layout measured s | widths timed | devices x width |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['tree']} | {r['round']} | {r['wall_s']:.1f} | {r['compile_s']:.1f} | {r['layout_s']:.1f} | "
              f"{r['widths_timed']} | {r['chosen']} |" for r in rows]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
