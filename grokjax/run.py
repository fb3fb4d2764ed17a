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
import numpy as np
import pandas as pd

from grokjax.engine import Program, Round, train_group
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


class Recorder:
    """Collects each round's curves and events; writes the results folder, also part-way
    (at most every ``write_every_s``) so a running sweep can be inspected and plotted."""

    def __init__(self, config: SweepConfig, runs: list[SweepConfig], out: Path | None, sweep_text: str | None,
                 write_every_s: float = 30.0):
        self.config, self.runs, self.out, self.sweep_text = config, runs, out, sweep_text
        self.write_every_s = write_every_s
        self.curve_parts: list[dict] = []
        self.events: dict[int, dict] = {}  # run_id -> latest events
        self.last_write = time.perf_counter()

    def record(self, round_: Round) -> None:
        keep = round_.metrics["recorded"]
        ids = np.broadcast_to(round_.run_ids[:, None], keep.shape)
        part = {key: value[keep] for key, value in round_.metrics.items() if key != "recorded"}
        part["run_id"] = ids[keep]
        self.curve_parts.append(part)
        for i, run_id in enumerate(round_.run_ids):
            self.events[int(run_id)] = {key: value[i] for key, value in round_.events.items()}
        if self.out is not None and time.perf_counter() - self.last_write > self.write_every_s:
            self.write(dict(complete=False))

    def tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        curves = curves_table(self.curve_parts)
        ids = sorted(self.events)
        events = {key: np.array([self.events[i][key] for i in ids]) for key in self.events[ids[0]]} if ids else {}
        table = runs_table(self.config, ids, [self.runs[i] for i in ids], events, curves) if ids else None
        return table, curves

    def write(self, meta: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
        table, curves = self.tables()
        if self.out is not None and table is not None:
            write_results(self.out, table, curves, dict(name=self.config.name, **meta), self.sweep_text)
        self.last_write = time.perf_counter()
        return table, curves


def run_sweep(config: SweepConfig, out: str | Path | None = None, progress: bool | Callable = True,
              sweep_text: str | None = None, write_every_s: float = 30.0) -> Results:
    """Train every run of ``config``; with ``out``, write the results folder there (part-way
    results every ``write_every_s``, flagged ``complete: false`` in meta.json, then the final ones).

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
    recorder = Recorder(config, runs, Path(out) if out is not None else None, sweep_text, write_every_s)

    group_meta = []
    for g, run_ids in enumerate(groups):
        def on_round(round_: Round, g=g) -> None:
            recorder.record(round_)
            if reporter:
                ev = round_.events
                reporter(dict(step=round_.step, runs=len(round_.run_ids),
                              memorized=int((ev["memorize_step"] >= 0).sum()),
                              grokked=int((ev["grok_step"] >= 0).sum()), diverged=int(ev["diverged"].sum()),
                              done=int((ev["done"] | ev["diverged"]).sum()), run_steps=round_.run_steps,
                              seconds=round_.seconds), group=g)

        stats = train_group(Program.build(runs[run_ids[0]]), [runs[i] for i in run_ids], run_ids, on_round)
        group_meta.append(dict(runs=len(run_ids), runs_per_batch=stats.runs_per_batch,
                               compile_time_s=round(stats.compile_time_s, 3),
                               train_time_s=round(stats.train_time_s, 3), run_steps=stats.run_steps))

    table, curves = recorder.tables()
    train_time = sum(g["train_time_s"] for g in group_meta)
    run_steps = sum(g["run_steps"] for g in group_meta)
    meta = dict(
        name=config.name,
        complete=True,
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
