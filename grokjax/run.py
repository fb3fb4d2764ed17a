"""Running a whole sweep: group the grid by static settings, train each group, write results."""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import pandas as pd

from grokjax.engine import Program, train_group
from grokjax.results import Results, curves_table, runs_table, write_results
from grokjax.sweep import SweepConfig

_PACKAGES = ("grokjax", "jax", "jaxlib", "flax", "optax", "numpy", "pandas", "pyarrow")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def group_runs(runs: list[SweepConfig]) -> list[list[int]]:
    """Run ids grouped by static settings (one compiled program each), in first-seen order."""
    groups: dict[tuple, list[int]] = {}
    for i, run in enumerate(runs):
        groups.setdefault(run.static_key(), []).append(i)
    return list(groups.values())


class ProgressLine:
    """One status line on stderr: rewritten in place on a terminal, a new line every few
    seconds otherwise (logs of batch jobs)."""

    def __init__(self, total_steps: int, n_groups: int, stream=sys.stderr, every_s: float = 5.0):
        self.total, self.n_groups, self.stream, self.every_s = total_steps, n_groups, stream, every_s
        self.tty = stream.isatty()
        self.last = -float("inf")

    def __call__(self, info: dict, group: int = 0) -> None:
        now = time.perf_counter()
        final = info["done"] == info["runs"] or info["step"] >= self.total
        if not self.tty and not final and now - self.last < self.every_s:
            return
        self.last = now
        rate = info["run_steps"] / max(info["seconds"], 1e-9)
        prefix = f"group {group + 1}/{self.n_groups} " if self.n_groups > 1 else ""
        line = (f"{prefix}step {info['step']:>{len(str(self.total))}}/{self.total} | "
                f"memorized {info['memorized']}/{info['runs']} | grokked {info['grokked']}/{info['runs']} | "
                f"diverged {info['diverged']} | done {info['done']} | {rate:,.0f} run-steps/s")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def run_sweep(config: SweepConfig, out: str | Path | None = None, progress: bool | Callable = True,
              sweep_text: str | None = None) -> Results:
    """Train every run of ``config``; with ``out``, write the results folder there.

    ``progress``: True for a status line on stderr, False for none, or a callable receiving a
    dict (step, runs, memorized, grokked, diverged, done, run_steps, seconds) after each round trip.
    """
    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.perf_counter()
    runs = config.runs()
    groups = group_runs(runs)
    if progress is True:
        reporter = ProgressLine(max(r.train.steps for r in runs), len(groups))
    elif callable(progress):
        reporter = lambda info, group: progress(info)  # noqa: E731
    else:
        reporter = None

    events: dict[str, list] = {}
    parts, group_meta = [], []
    for g, run_ids in enumerate(groups):
        program = Program.build(runs[run_ids[0]])
        on_progress = functools.partial(reporter, group=g) if reporter else None
        result = train_group(program, [runs[i] for i in run_ids], run_ids, on_progress)
        parts.append(result.curves)
        for key, value in result.events.items():
            events.setdefault(key, [None] * len(runs))
            for i, v in zip(run_ids, value):
                events[key][i] = v
        group_meta.append(dict(runs=len(run_ids), runs_per_batch=result.runs_per_batch,
                               compile_time_s=round(result.compile_time_s, 3),
                               train_time_s=round(result.train_time_s, 3), run_steps=result.run_steps))

    curves = curves_table(parts)
    table = runs_table(config, runs, {k: pd.Series(v).to_numpy() for k, v in events.items()}, curves)
    train_time = sum(g["train_time_s"] for g in group_meta)
    run_steps = sum(g["run_steps"] for g in group_meta)
    meta = dict(
        name=config.name,
        started_at=started.isoformat(timespec="seconds"),
        runs=len(runs),
        groups=group_meta,
        compile_time_s=round(sum(g["compile_time_s"] for g in group_meta), 3),
        train_time_s=round(train_time, 3),
        wall_time_s=round(time.perf_counter() - t_start, 3),
        run_steps=run_steps,
        run_steps_per_s=round(run_steps / max(train_time, 1e-9), 1),
        phases=table["phase"].value_counts().to_dict(),
        backend=jax.default_backend(),
        devices=[str(d) for d in jax.devices()],
        host=dict(machine=platform.machine(), processor=platform.processor(), cpus=_cpu_count()),
        versions=package_versions(),
    )
    if out is not None:
        write_results(Path(out), table, curves, meta, sweep_text)
    return Results(table, curves, meta)


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
