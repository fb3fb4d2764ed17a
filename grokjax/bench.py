"""Throughput benchmarks: grokjax's grid against what users would run instead, side by side in
one process. ``grokjax bench`` and ``python benchmarks/run.py`` run this module.

Every implementation trains the same workload (model, data, AdamW settings) for a fixed number
of steps after its compilation or warm-up; rates are run-steps per second, and achieved
GFLOP/s count the *naive* model's matmul FLOPs (forward + backward = 3 x forward, the MLP's
first layer over concatenated embeddings, the transformer at every position), whatever shortcut
the implementation takes.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from grokjax.experiment import build_program, one_run, run_settings
from grokjax.plugins import build_task
from grokjax.program import split_mask, train_size
from grokjax.run import run_sweep
from grokjax.sweep import SweepConfig, sweep_from_dict

WORKLOADS = {
    "W1": dict(description="small MLP: x+y mod 23, full batch", task=dict(name="add", p=23),
               model=dict(name="mlp", embed_dim=128, width=512), batch_size=0),
    "W2": dict(description="full-batch MLP: x+y mod 97, width 512", task=dict(name="add", p=97),
               model=dict(name="mlp", embed_dim=128, width=512), batch_size=0),
    "W3": dict(description="Power et al.: 2-layer transformer d=128, x+y mod 97, batch 512",
               task=dict(name="add", p=97),
               model=dict(name="transformer", n_layers=2, d_model=128, n_heads=4, d_mlp=512, layer_norm=True),
               batch_size=512),
    "W4": dict(description="Nanda et al.: 1-layer transformer d=128, x+y mod 113, full batch",
               task=dict(name="add", p=113),
               model=dict(name="transformer", n_layers=1, d_model=128, n_heads=4, d_mlp=512, layer_norm=False),
               batch_size=0),
}
# Grid sizes and timed steps per workload: --quick is sized for a 2-core CPU (minutes, most of it
# compiling and the PyTorch baselines; W1 is cheap enough to reach the 256 runs its loop
# comparison asks for; the benchmarks page has its times), the default for a GPU. Every
# implementation evaluates once on the whole table per timed window (eval_every = steps). A CPU
# without bf16 matmul units runs PyTorch's bf16 autocast many times slower than float32, so
# --quick times one run of it rather than two.
QUICK = dict(runs=dict(W1=[1, 16, 256], W2=[1, 16], W3=[1, 16], W4=[1, 16]),
             steps=dict(W1=50, W2=20, W3=20, W4=10), loop_runs=2, bf16_runs=1, ensemble_runs=[16])
FULL = dict(runs={w: [1, 16, 64, 256, 1024] for w in WORKLOADS}, steps={w: 50 for w in WORKLOADS}, loop_runs=4,
            bf16_runs=4, ensemble_runs=[16, 64])


def workload_config(name: str, runs: int, steps: int) -> SweepConfig:
    w = WORKLOADS[name]
    return sweep_from_dict(dict(
        name=f"bench_{name}", task=dict(w["task"], data_fraction=0.5), model=w["model"],
        optimizer=dict(name="adamw", lr=1e-3, weight_decay=1.0),
        train=dict(steps=steps, eval_every=steps, batch_size=w["batch_size"]),
        events=dict(stop_early=False), grid=dict(seed=list(range(runs)))))


def naive_flops_per_step(config: SweepConfig) -> float:
    """Matmul FLOPs of one training step of the textbook model (3 x forward)."""
    task = build_task(config.task.name, config.task.settings)
    rows = config.train.batch_size or train_size(config.task.data_fraction, task.size)  # the training set
    m, c = config.model, task.n_classes
    if m.name == "mlp":
        per_row = 2 * 2 * m.embed_dim * m.width + 2 * m.width * m.width * (m.depth - 1) + 2 * m.width * c
    else:
        t, d = 3, m.d_model
        per_layer = t * (2 * 4 * d * d + 2 * 2 * d * m.d_mlp) + 2 * 2 * t * t * d
        per_row = m.n_layers * per_layer + 2 * d * c
    return 3.0 * rows * per_row


def matmul_ceiling(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Best f32 GFLOP/s of a large square matmul through jnp.dot (and torch.matmul if installed)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    best = min(_timed(lambda: dot(a, a).block_until_ready()) for _ in range(repeats))
    out = {"jnp.dot": 2 * n**3 / best / 1e9}
    if importlib.util.find_spec("torch"):
        import torch

        t = torch.randn(n, n)
        torch.matmul(t, t)
        out["torch.matmul"] = 2 * n**3 / min(_timed(lambda: torch.matmul(t, t)) for _ in range(repeats)) / 1e9
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_grid(config: SweepConfig) -> dict:
    results = run_sweep(config, progress=False)
    group = results.meta["groups"][0]
    return dict(run_steps_per_s=results.meta["run_steps_per_s"], compile_s=results.meta["compile_time_s"],
                runs_per_batch=group["runs_per_batch"], devices=group["devices"],
                width_rates=group["runs_per_batch_choice"].get("run_steps_per_s"))  # how the width was chosen


def bench_jax_loops(config: SweepConfig, n_runs: int, min_seconds: float = 1.0) -> dict[str, dict]:
    """What a JAX user writes before a grid, evaluating at the grid's cadence: (a) a jitted
    single-run step dispatched from Python every step, a jitted evaluation read back every
    ``eval_every`` steps; (b) each run trained by one jitted scan over all its steps and
    evaluations (the grid's own per-run program, alone)."""
    runs = config.runs()
    program = build_program(runs[0], runs)
    steps, every = config.train.steps, config.train.eval_every
    hp_all = run_settings(runs)
    step = jax.jit(program.train_step, donate_argnums=0)
    evaluate_fn = jax.jit(program.evaluate)
    scan = jax.jit(lambda s, h: program.train_period(s, h, steps // every), donate_argnums=0)
    init = jax.jit(program.init_run)
    mask_of = jax.jit(split_mask, static_argnums=2)

    def loop(state, hp, mask, rows):
        for s in range(1, steps + 1):
            state = step(state, hp, mask, rows)
            if s % every == 0:
                jax.device_get(evaluate_fn(state.params, mask))  # the host reads its metrics
        return state

    out = {}
    for name in ("jax_loop_step", "jax_loop_scan"):
        seconds, i = 0.0, 0
        while i < n_runs or seconds < min_seconds:  # at least n_runs runs and min_seconds of training
            hp = one_run(hp_all, i % len(runs))
            mask = mask_of(hp.seed, hp.data_fraction, program.task.size)
            rows = None if config.train.batch_size else program.train_rows_of(mask)  # the train set, once
            if i == 0:  # compile outside the timed region
                warm = init(hp)
                if name == "jax_loop_step":
                    jax.block_until_ready(evaluate_fn(step(warm, hp, mask, rows).params, mask))
                else:
                    jax.block_until_ready(scan(warm, hp))
            state = init(hp)
            jax.block_until_ready(state)
            t0 = time.perf_counter()
            state = loop(state, hp, mask, rows) if name == "jax_loop_step" else jax.device_get(scan(state, hp))[0]
            jax.device_get(state.step)
            seconds += time.perf_counter() - t0
            i += 1
        out[name] = dict(run_steps_per_s=i * steps / seconds, timed_runs=i)
    return out


def bench_torch(config: SweepConfig, w: dict, n_runs: int, ensemble_runs: list[int],
                ensemble_budget_s: float = 5.0, min_seconds: float = 1.0, bf16_runs: int | None = None
                ) -> dict[str, dict]:
    """The PyTorch baselines on the same workload, evaluating at the grid's cadence; each loop
    trains at least ``n_runs`` runs (``bf16_runs`` under bf16 autocast, default the same; 0 skips
    it) and ``min_seconds`` (a cheap workload's runs are short). The ensemble, slow at large
    sizes, trains for as many of the steps as fit ``ensemble_budget_s`` (at least 2), timed after
    one warm-up step."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks" / "baselines"))
    import torch
    import torch_models

    task = build_task(config.task.name, config.task.settings)
    steps, batch, every = config.train.steps, w["batch_size"], config.train.eval_every
    args = (w["model"], task.inputs, task.labels, task.n_symbols)
    # on the grid's kind of device: a GPU when JAX has one and this torch build can use it
    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    out = {}
    bf16_runs = n_runs if bf16_runs is None else bf16_runs
    for name, bf16, runs in (("torch_loop", False, n_runs), ("torch_loop_bf16", True, bf16_runs)):
        if not runs:
            continue
        torch_models.train_loop(*args, 2, batch, bf16=bf16, eval_every=1, device=device)  # warm-up
        seconds, i = 0.0, 0
        while i < runs or seconds < min_seconds:
            seconds += torch_models.train_loop(*args, steps, batch, seed=i, bf16=bf16, eval_every=every,
                                               device=device)["seconds"]
            i += 1
        out[name] = dict(run_steps_per_s=i * steps / seconds, timed_runs=i)
    for r in ensemble_runs:
        try:
            one = torch_models.train_ensemble(*args, 1, r, batch, device=device)
            n = int(min(steps, max(2, ensemble_budget_s // max(one, 1e-9))))
            # cut short, it skips the evaluation (in its favour) rather than evaluate more often
            seconds = torch_models.train_ensemble(*args, n, r, batch, eval_every=every if n == steps else 0,
                                                  device=device)
            out[f"torch_func_ensemble@{r}"] = dict(run_steps_per_s=r * n / seconds, runs=r, timed_steps=n,
                                                   evaluates=n == steps)
        except (RuntimeError, MemoryError) as e:  # too large for this machine
            print(f"  torch.func ensemble at {r} runs failed: {type(e).__name__}", file=sys.stderr)
    out["threads"] = torch.get_num_threads()
    out["device"] = device
    return out


def run_benchmarks(out: str | Path = ".", quick: bool = False, workloads: list[str] | None = None,
                   runs: list[int] | None = None, steps: int | None = None, min_seconds: float = 1.0) -> list[dict]:
    sizes = dict(QUICK if quick else FULL)
    device = jax.devices()[0]
    common = dict(device=f"{device.platform}:{device.device_kind}", threads=os.cpu_count(),
                  host=platform.machine(), date=str(datetime.date.today()))
    records = []
    ceiling = matmul_ceiling()
    for name in workloads or list(WORKLOADS):
        w = WORKLOADS[name]
        grid_sizes, n_steps = runs or sizes["runs"][name], steps or sizes["steps"][name]
        flops = naive_flops_per_step(workload_config(name, 1, n_steps))
        print(f"{name}: {w['description']} ({flops / 1e9:.2f} naive GFLOP per run-step)", file=sys.stderr)
        for impl, gflops in ceiling.items():
            records.append(dict(common, workload=name, implementation="matmul_ceiling", runs=None,
                                run_steps_per_s=None, achieved_gflops=gflops, source=impl))

        def add(impl: str, r: int | None, result: dict):
            rate = result["run_steps_per_s"]
            records.append(dict(common, workload=name, implementation=impl, runs=r, run_steps_per_s=rate,
                                achieved_gflops=rate * flops / 1e9,
                                **{k: v for k, v in result.items() if k not in ("run_steps_per_s", "runs")}))
            print(f"  {impl:24s} runs={r!s:5s} {rate:10.1f} run-steps/s {rate * flops / 1e9:8.1f} GFLOP/s",
                  file=sys.stderr, flush=True)

        for r in grid_sizes:
            try:
                add("grokjax_grid", r, bench_grid(workload_config(name, r, n_steps)))
            except Exception as e:  # noqa: BLE001 - e.g. out of memory at the largest sizes
                print(f"  grokjax grid at {r} runs failed: {type(e).__name__}: {e}", file=sys.stderr)
        config = workload_config(name, max(grid_sizes), n_steps)
        for impl, result in bench_jax_loops(config, sizes["loop_runs"], min_seconds).items():
            add(impl, result.pop("timed_runs"), result)  # a loop's rate does not depend on how many runs
        if importlib.util.find_spec("torch"):
            ensembles = [r for r in sizes["ensemble_runs"] if r <= max(grid_sizes)]
            result = bench_torch(config, w, sizes["loop_runs"], ensembles, min_seconds=min_seconds,
                                 bf16_runs=sizes["bf16_runs"])
            threads, torch_device = result.pop("threads"), result.pop("device")
            for impl, res in result.items():
                impl, _, r = impl.partition("@")
                add(impl, int(r) if r else res.pop("timed_runs"), dict(res, torch_threads=threads,
                                                                       torch_device=torch_device))
    write_report(records, Path(out))
    return records


def write_report(records: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(records, indent=1) + "\n")
    lines = ["| workload | implementation | runs | run-steps/s | naive GFLOP/s | % of ceiling "
             "| grid: devices x vmap width |", "|---|---|---|---|---|---|---|"]
    for w in dict.fromkeys(r["workload"] for r in records):
        rows = [r for r in records if r["workload"] == w]
        ceiling = max(r["achieved_gflops"] for r in rows if r["implementation"] == "matmul_ceiling")
        lines.append(f"| {w} | matmul ceiling | | | {ceiling:.0f} | 100 | |")
        for r in rows:
            if r["implementation"] != "matmul_ceiling":
                layout = f"{r['devices']} x {r['runs_per_batch']}" if "devices" in r else ""
                lines.append(f"| {w} | {r['implementation']} | {r['runs']} | {r['run_steps_per_s']:.1f} | "
                             f"{r['achieved_gflops']:.1f} | {100 * r['achieved_gflops'] / ceiling:.0f} | {layout} |")
    first = records[0]
    header = f"Measured {first['date']} on {first['device']} ({first['host']}, {first['threads']} cores).\n\n"
    (out / "bench.md").write_text(header + "\n".join(lines) + "\n\n" + ratios(records))
    _plot(records, out / "bench.png")


def ratios(records: list[dict]) -> str:
    """The grid at its largest size against each alternative (the ensemble at the same size),
    measured in the same run: the figures the issue's targets are stated in."""
    lines = ["| workload | grid runs | vs torch loop | vs torch.func ensemble | vs JAX step loop | vs JAX scan loop "
             "| % of ceiling |", "|---|---|---|---|---|---|---|"]
    for w in dict.fromkeys(r["workload"] for r in records):
        rows = [r for r in records if r["workload"] == w]
        grids = [r for r in rows if r["implementation"] == "grokjax_grid"]
        if not grids:
            continue
        grid = max(grids, key=lambda r: r["runs"])

        def vs(impl: str, runs: int | None = None) -> str:
            other = [r for r in rows if r["implementation"] == impl and (runs is None or r["runs"] == runs)]
            if not other:
                return "–"
            same = [g for g in grids if g["runs"] == other[0]["runs"]] if runs is not None else [grid]
            return f"{same[0]['run_steps_per_s'] / other[0]['run_steps_per_s']:.2f}x" if same else "–"

        ensemble = max((r["runs"] for r in rows if r["implementation"] == "torch_func_ensemble"), default=None)
        ceiling = max(r["achieved_gflops"] for r in rows if r["implementation"] == "matmul_ceiling")
        lines.append(f"| {w} | {grid['runs']} | {vs('torch_loop')} | "
                     f"{vs('torch_func_ensemble', ensemble) if ensemble else '–'} ({ensemble} runs) | "
                     f"{vs('jax_loop_step')} | {vs('jax_loop_scan')} | {100 * grid['achieved_gflops'] / ceiling:.0f} |")
    return "\n".join(lines) + "\n"


def _plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(r["workload"] for r in records))
    fig, axes = plt.subplots(1, len(workloads), figsize=(3.6 * len(workloads), 3.2), constrained_layout=True,
                             squeeze=False)
    for ax, w in zip(axes[0], workloads):
        rows = [r for r in records if r["workload"] == w and r["implementation"] != "matmul_ceiling"]
        for impl in dict.fromkeys(r["implementation"] for r in rows):
            pts = sorted((r["runs"], r["run_steps_per_s"]) for r in rows if r["implementation"] == impl)
            ax.plot(*zip(*pts), "o-" if len(pts) > 1 else "s", label=impl)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("runs")
        ax.set_ylabel("run-steps / s")
        ax.set_title(w, fontsize=9)
    axes[0][0].legend(fontsize=6)
    fig.savefig(path, dpi=130)
    plt.close(fig)
