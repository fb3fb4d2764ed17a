"""The one prepared device check: what a lent GPU or TPU must tell us, in one command.

Within about 8 minutes on an H100/H200 it measures, one section after another (a section that
would overrun the time budget is skipped and says so):

1. W1-W4 (``grokjax.bench.WORKLOADS``) at 1 / 64 / 256 / 1,024 runs as memory allows, in
   float32 and TF32 (``train.precision``), against the PyTorch per-run loop and the
   ``torch.func`` ensemble when torch is installed (``pip install -e ".[bench]"``);
2. a Nanda-size phase diagram: the 1-layer transformer on (x + y) mod 113, 10 data fractions x
   10 weight decays x 3 seeds at a few thousand steps: run-steps/s and the projected time of the
   full 10k-step diagram;
3. the boundary search of ``sweeps/search_cpu.toml`` (wall time, compile seconds);

and for each: compile seconds per program (``meta.json``'s ``programs``) and peak device
memory. Writes ``accelerator.json`` and ``accelerator.md`` in ``--out``. ``--tiny`` runs the same
sections at toy sizes on a CPU in seconds (the test suite runs it, so the script cannot rot).

    python benchmarks/accelerator.py --out results/accelerator [--tiny] [--budget-s 480] [--sections nanda,search]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax

import grokjax
from grokjax.bench import WORKLOADS, bench_torch, naive_flops_per_step
from grokjax.sweep_file import read_sweep_file

SIZES = dict(full=dict(runs=[1, 64, 256, 1024], steps=50, torch_runs=2, ensemble=[64], nanda_steps=2000, p=113,
                       fractions=10, decays=10, seeds=3, search_steps=None, tiny=False),
             tiny=dict(runs=[2], steps=4, torch_runs=1, ensemble=[2], nanda_steps=20, p=11, fractions=2,
                       decays=2, seeds=1, search_steps=30, tiny=True))
SEARCH_FILE = Path(__file__).resolve().parent.parent / "sweeps" / "search_cpu.toml"
TINY_DIMS = dict(embed_dim=8, width=16, d_model=16, d_mlp=32, n_heads=2)  # --tiny: every path, toy sizes


def workload(name: str, tiny: bool) -> dict:
    """A workload's description (``bench.WORKLOADS``), or with ``tiny`` the same at toy sizes."""
    w = WORKLOADS[name]
    if not tiny:
        return w
    return dict(w, task=dict(w["task"], p=11), batch_size=8 if w["batch_size"] else 0,
                model={k: TINY_DIMS.get(k, v) for k, v in w["model"].items()})


def config_of(w: dict, runs: int, steps: int, precision: str, runs_per_batch: int = 0) -> grokjax.SweepConfig:
    """The grid of ``runs`` seeds of workload ``w`` (as ``bench.workload_config`` builds it);
    ``runs_per_batch`` 0: the vmap width chosen as for a user (measured on a CPU)."""
    return grokjax.sweep_from_dict(dict(
        name="accelerator", task=dict(w["task"], data_fraction=0.5), model=w["model"],
        optimizer=dict(name="adamw", lr=1e-3, weight_decay=1.0),
        train=dict(steps=steps, eval_every=steps, batch_size=w["batch_size"], precision=precision,
                   runs_per_batch=runs_per_batch),
        events=dict(stop_early=False), grid=dict(seed=list(range(runs)))))


def peak_memory_bytes() -> int | None:
    """The device's peak bytes in use so far (None where the backend does not say, as on a CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def programs_of(meta: dict) -> list[dict]:
    return [p for g in meta["groups"] for p in g.get("programs", [])]


def workloads(sizes: dict, budget) -> list[dict]:
    """Section 1: each workload's grid at each size and precision, then its PyTorch baselines."""
    rows = []
    for name in WORKLOADS:
        w = workload(name, sizes["tiny"])
        # --tiny: TF32 on W1 alone and no width measurement, the paths without their compile time
        for precision in ("float32", "tensorfloat32") if not sizes["tiny"] or name == "W1" else ("float32",):
            for runs in sizes["runs"]:
                if not budget(f"{name} {precision} at {runs} runs"):
                    continue
                config = config_of(w, runs, sizes["steps"], precision, runs if sizes["tiny"] else 0)
                try:
                    r = grokjax.run_sweep(config, progress=False, tune_cache=None)
                except Exception as e:  # noqa: BLE001 - out of memory at the largest sizes: say so, go on
                    rows.append(dict(section="workloads", workload=name, precision=precision, runs=runs,
                                     error=f"{type(e).__name__}: {str(e)[:200]}"))
                    continue
                rate = r.meta["run_steps_per_s"]
                rows.append(dict(section="workloads", workload=name, implementation="grokjax_grid",
                                 precision=precision, runs=runs, run_steps_per_s=rate,
                                 gflops=rate * naive_flops_per_step(config) / 1e9,
                                 compile_s=[round(p["lower_s"] + p["compile_s"], 2) for p in programs_of(r.meta)],
                                 peak_bytes=peak_memory_bytes()))
        if importlib.util.find_spec("torch") and budget(f"{name} PyTorch baselines"):
            config = config_of(w, max(sizes["runs"]), sizes["steps"], "float32")
            result = bench_torch(config, w, sizes["torch_runs"], sizes["ensemble"], bf16_runs=0)
            for impl, res in result.items():
                if isinstance(res, dict):
                    impl, _, runs = impl.partition("@")
                    rows.append(dict(section="workloads", workload=name, implementation=impl, precision="float32",
                                     runs=int(runs) if runs else res.get("timed_runs"),
                                     run_steps_per_s=res["run_steps_per_s"],
                                     gflops=res["run_steps_per_s"] * naive_flops_per_step(config) / 1e9))
    return rows


def nanda_diagram(sizes: dict, budget) -> list[dict]:
    """Section 2: the Nanda-size phase diagram at a few thousand steps, and its 10k-step projection."""
    if not budget("Nanda-size phase diagram"):
        return []
    fractions = [round(0.1 + 0.8 * i / max(sizes["fractions"] - 1, 1), 3) for i in range(sizes["fractions"])]
    decays = [round(0.1 * 10 ** (2 * i / max(sizes["decays"] - 1, 1)), 4) for i in range(sizes["decays"])]
    steps = sizes["nanda_steps"]
    config = grokjax.sweep_from_dict(dict(
        name="nanda_diagram", task=dict(name="add", p=sizes["p"]),
        model=workload("W4", sizes["tiny"])["model"], optimizer=dict(name="adamw", lr=1e-3, beta1=0.9, beta2=0.98),
        train=dict(steps=steps, eval_every=max(steps // 20, 1), progress_measures=False),
        events=dict(stop_early=False),
        grid=dict(data_fraction=fractions, weight_decay=decays, seed=list(range(sizes["seeds"])))))
    t0 = time.perf_counter()
    r = grokjax.run_sweep(config, progress=False, tune_cache=None)
    wall = time.perf_counter() - t0
    rate, n = r.meta["run_steps_per_s"], len(r.runs)
    return [dict(section="nanda", runs=n, steps=steps, run_steps_per_s=rate, wall_s=wall,
                 compile_s=[round(p["lower_s"] + p["compile_s"], 2) for p in programs_of(r.meta)],
                 projected_10k_s=n * 10_000 / rate, peak_bytes=peak_memory_bytes(),
                 grokked=int(r.runs.grok_step.notna().sum()))]


def search(sizes: dict, budget, out: Path) -> list[dict]:
    """Section 3: the boundary search of sweeps/search_cpu.toml (steps cut in --tiny)."""
    if not budget("search of sweeps/search_cpu.toml"):
        return []
    raw = read_sweep_file(SEARCH_FILE)
    if sizes["tiny"]:
        raw["task"]["p"], raw["model"]["embed_dim"], raw["model"]["width"] = 11, 8, 16
        raw["train"].update(steps=sizes["search_steps"], eval_every=sizes["search_steps"] // 3)
    config = grokjax.sweep_from_dict(raw)
    t0 = time.perf_counter()
    r = grokjax.search_boundary(config, out / "search", progress=False, overwrite=True)
    programs = programs_of(r.meta)
    return [dict(section="search", runs=len(r.runs), wall_s=time.perf_counter() - t0,
                 compile_waited_s=r.meta["compile_time_s"], programs=len(programs),
                 compile_s=[round(p["lower_s"] + p["compile_s"], 2) for p in programs],
                 compiled_ahead=sum(p["background"] for p in programs), peak_bytes=peak_memory_bytes())]


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| section | what | precision | runs | run-steps/s | GFLOP/s | compile s per program "
             "| peak GiB | notes |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        what = r.get("workload", "") + (f" {r['implementation']}" if "implementation" in r else "")
        rate = f"{r['run_steps_per_s']:,.0f}" if "run_steps_per_s" in r else ""
        peak = f"{r['peak_bytes'] / 2**30:.2f}" if r.get("peak_bytes") else ""
        notes = r.get("error") or r.get("skipped") or ""
        if r["section"] == "nanda":
            notes = f"{r['steps']} steps; full 10k-step diagram projected {r['projected_10k_s']:.0f} s"
        if r["section"] == "search":
            notes = f"wall {r['wall_s']:.1f} s, waited on compiling {r['compile_waited_s']:.1f} s, " \
                    f"{r['compiled_ahead']} of {r['programs']} programs compiled ahead"
        gflops = f"{r['gflops']:,.1f}" if "gflops" in r else ""
        lines.append(f"| {r['section']} | {what} | {r.get('precision', '')} | {r.get('runs', '')} | {rate} | {gflops} "
                     f"| {' '.join(map(str, r.get('compile_s', [])))} | {peak} | {notes} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/accelerator")
    parser.add_argument("--tiny", action="store_true", help="toy sizes, for a CPU and the test suite")
    parser.add_argument("--budget-s", type=float, default=480.0, help="skip sections once this is spent")
    parser.add_argument("--sections", default="workloads,nanda,search", help="which sections, comma-separated")
    args = parser.parse_args(argv)
    sections = args.sections.split(",")
    if not set(sections) <= {"workloads", "nanda", "search"}:
        parser.error(f"--sections: choose from workloads, nanda, search; got {args.sections!r}")
    sizes, out, t0 = SIZES["tiny" if args.tiny else "full"], Path(args.out), time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    skipped: list[dict] = []

    def budget(what: str) -> bool:
        if time.perf_counter() - t0 < args.budget_s:
            print(f"accelerator: {what} ({time.perf_counter() - t0:.0f} s so far)", file=sys.stderr, flush=True)
            return True
        skipped.append(dict(section="skipped", skipped=f"{what}: over the {args.budget_s:.0f} s budget"))
        return False

    device = jax.devices()[0]
    header = (f"Measured {datetime.date.today()} on {device.platform}:{device.device_kind} x {len(jax.devices())} "
              f"({platform.machine()}), jax {jax.__version__}{', --tiny' if args.tiny else ''}.")
    with tempfile.TemporaryDirectory() as tmp:
        rows = ((workloads(sizes, budget) if "workloads" in sections else [])
                + (nanda_diagram(sizes, budget) if "nanda" in sections else [])
                + (search(sizes, budget, Path(tmp)) if "search" in sections else []))
    rows += skipped
    total = time.perf_counter() - t0
    (out / "accelerator.json").write_text(json.dumps(dict(header=header, total_s=total, rows=rows), indent=1) + "\n")
    (out / "accelerator.md").write_text(markdown(rows, header) + f"\nTotal {total:.0f} s.\n")
    print((out / "accelerator.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
