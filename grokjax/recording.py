"""The host's record of a sweep as it trains: the progress line on stderr (drawn by rich) and the ``Recorder``
that collects each round's curves and events and writes the results folder, part-way too."""

from __future__ import annotations

import datetime
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from grokjax.checkpoint import config_fingerprint
from grokjax.results import concat_parts, curves_table, runs_table, write_results
from grokjax.scheduler import Round


class ProgressLine:
    """The sweep's progress on stderr, drawn by rich: on a terminal one line redrawn in place (a
    bar over the sweep's run-step budget, runs done, grokked, diverged, run-steps per second and
    rich's estimate of the time left); otherwise (CI, batch-job logs) a plain line every
    ``every_s`` seconds and at the end of each group, with the step and the runs memorized too.

    The time left is the budget still open (``run_steps_left``: the steps of runs that have not
    finished; a run that stops early frees the rest of its budget) at the speed of the last
    minutes. A search adds probes as it goes: its estimate covers the probes started so far.
    """

    def __init__(self, total_steps: int, n_groups: int, stream=None, every_s: float = 5.0, open_ended: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.n_groups, self.every_s, self.clock = total_steps, n_groups, every_s, clock
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.last = -float("inf")
        self.left_label = "left >=" if open_ended else "left"
        console = Console(file=self.stream, highlight=False)
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(bar_width=8),
                            TextColumn("{task.fields[counts]} · {task.fields[rate]} ·" + (" >=" if open_ended else "")),
                            TimeRemainingColumn(compact=True), TextColumn("left"), console=console,
                            auto_refresh=False, transient=False, redirect_stdout=False, redirect_stderr=False,
                            speed_estimate_period=300, get_time=clock, disable=not self.tty)
        self.task = self.bar.add_task("", total=None, counts="", rate="", start=False)
        self.started = False

    def __call__(self, info: dict, group: int = 0) -> None:
        budget, left = info.get("run_steps_budget"), info.get("run_steps_left")
        prefix = f"group {group + 1}/{self.n_groups} " if self.n_groups > 1 else ""
        rate = info["run_steps"] / max(info["seconds"], 1e-9)
        if not self.started:
            self.bar.start_task(self.task)
        self.bar.update(self.task, total=budget, completed=budget - left if budget is not None else 0,
                        description=prefix.strip(), rate=f"{rate:,.0f} run-steps/s",
                        counts=f"{info['done']}/{info['runs']} done, {info['grokked']} grokked, "
                               f"{info['diverged']} diverged")
        if self.tty:
            if not self.started:
                self.bar.start()
            self.started = True
            self.bar.refresh()
            if info.get("last", False) and group + 1 >= self.n_groups:
                self.close()
            return
        self.started = True
        now = self.clock()
        if not info.get("last", False) and now - self.last < self.every_s:
            return
        self.last = now
        self.stream.write(self.plain_line(info, prefix, rate) + "\n")
        self.stream.flush()

    def plain_line(self, info: dict, prefix: str, rate: float) -> str:
        """The line a log gets: the numbers of the terminal's line, as text."""
        remaining = self.bar.tasks[0].time_remaining
        left = str(datetime.timedelta(seconds=int(remaining))) if remaining is not None else "-:--:--"  # as rich
        return (f"{prefix}step {info['step']:>{len(str(self.total))}}/{self.total} | "
                f"memorized {info['memorized']}/{info['runs']} | grokked {info['grokked']}/{info['runs']} | "
                f"diverged {info['diverged']} | done {info['done']}/{info['runs']} | {rate:,.0f} run-steps/s | "
                f"{self.left_label} {left}")

    def close(self) -> None:
        """End the terminal's line (the cursor shown again); idempotent."""
        if self.tty and self.started:
            self.bar.stop()
        self.started = False


class Recorder:
    """Collects each round's curves and events; writes the results folder, also part-way
    (at most every ``write_every_s``) so a running sweep can be inspected and plotted."""

    def __init__(self, source, out: Path | None, sweep_text: str | None, write_every_s: float = 30.0):
        """``source``: the run source (its config, its runs so far and its result columns);
        ``out``: the results folder, None to keep the tables in memory only."""
        self.config, self.runs, self.annotate = source.config, source.runs, source.annotate
        self.out, self.sweep_text, self.write_every_s = out, sweep_text, write_every_s
        self.curve_parts: list[dict] = []
        self.events: dict[int, dict] = {}  # run_id -> latest events
        self.last_write = time.perf_counter()
        self.started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        # per run id, for the time left: its step budget, the furthest step recorded, whether it stopped
        self.budget, self.reached = np.zeros(0, np.int64), np.zeros(0, np.int64)
        self.stopped = np.zeros(0, bool)

    def record(self, round_: Round) -> None:
        keep = round_.metrics["recorded"]
        ids = np.broadcast_to(round_.run_ids[:, None], keep.shape)
        part = {key: value[keep] for key, value in round_.metrics.items() if key != "recorded"}
        part["run_id"] = ids[keep]
        self.curve_parts.append(part)
        for i, run_id in enumerate(round_.run_ids):
            self.events[int(run_id)] = {key: value[i] for key, value in round_.events.items()}
        self._grow()
        ids = np.asarray(round_.run_ids, np.int64)
        steps = np.where(keep, round_.metrics["step"], 0).max(axis=1, initial=0)
        self.reached[ids] = np.maximum(self.reached[ids], steps)
        self.stopped[ids] = self._stops(round_.events)
        if self.out is not None and time.perf_counter() - self.last_write > self.write_every_s:
            self.write(dict(complete=False))

    def host_arrays(self) -> dict[str, np.ndarray]:
        """Curves and events so far as flat arrays (a checkpoint's host item)."""
        out = {f"curve/{c}": v for c, v in concat_parts(self.curve_parts).items()} if self.curve_parts else {}
        ids = sorted(self.events)
        out["events/run_id"] = np.array(ids, dtype=np.int64)
        for key in (self.events[ids[0]] if ids else {}):
            out[f"events/{key}"] = np.array([self.events[i][key] for i in ids])
        return out

    def load(self, host: dict[str, np.ndarray]) -> None:
        curves = {k.split("/", 1)[1]: v for k, v in host.items() if k.startswith("curve/")}
        self.curve_parts = [curves] if len(curves.get("run_id", ())) else []
        fields = [k.split("/", 1)[1] for k in host if k.startswith("events/") and k != "events/run_id"]
        self.events = {int(r): {f: host[f"events/{f}"][i] for f in fields}
                       for i, r in enumerate(host.get("events/run_id", []))}
        self._grow()
        if len(curves.get("run_id", ())):
            np.maximum.at(self.reached, curves["run_id"].astype(np.int64), curves["step"].astype(np.int64))
        ids = np.asarray(host.get("events/run_id", []), np.int64)
        if len(ids):
            self.stopped[ids] = self._stops({f: host[f"events/{f}"] for f in ("diverged", "done")})

    def _grow(self) -> None:
        """Budgets of runs added since (a search adds probes while it trains)."""
        new = self.runs[len(self.budget):]
        if new:
            self.budget = np.concatenate([self.budget, [r.train.steps for r in new]]).astype(np.int64)
            self.reached = np.concatenate([self.reached, np.zeros(len(new), np.int64)])
            self.stopped = np.concatenate([self.stopped, np.zeros(len(new), bool)])

    def _stops(self, events: dict) -> np.ndarray:
        """Which runs train no further: diverged, or done where runs stop early."""
        stopped = np.asarray(events["diverged"], bool)
        return stopped | (np.asarray(events["done"], bool) & self.config.events.stop_early)

    def work(self) -> dict[str, int]:
        """The run-step budget of the runs so far and what of it is still open: the steps left to
        runs that have not finished (a run that stopped early frees the rest of its budget)."""
        self._grow()
        left = np.where(self.stopped, 0, np.maximum(self.budget - self.reached, 0))
        return dict(run_steps_budget=int(self.budget.sum()), run_steps_left=int(left.sum()))

    def counts(self) -> dict[str, int]:
        """Runs memorized, grokked, diverged and finished so far, over the whole sweep."""
        ev = self.events.values()
        return dict(memorized=sum(e["memorize_step"] >= 0 for e in ev), grokked=sum(e["grok_step"] >= 0 for e in ev),
                    diverged=sum(bool(e["diverged"]) for e in ev),
                    done=sum(bool(e["done"] | e["diverged"]) for e in ev))

    def tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        curves = curves_table(self.curve_parts)
        ids = sorted(self.events)
        events = {key: np.array([self.events[i][key] for i in ids]) for key in self.events[ids[0]]} if ids else {}
        table = runs_table(self.config, ids, [self.runs[i] for i in ids], events, curves) if ids else None
        if table is not None:
            table = self.annotate(table)
        return table, curves

    def write(self, meta: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
        table, curves = self.tables()
        if self.out is not None and table is not None:
            write_results(self.out, table, curves, dict(name=self.config.name, config=config_fingerprint(self.config),
                                                        runs=len(self.runs), started_at=self.started, **meta),
                          self.sweep_text)
        self.last_write = time.perf_counter()
        return table, curves
