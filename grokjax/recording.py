"""The host's record of a sweep as it trains: the progress line on stderr and the ``Recorder``
that collects each round's curves and events and writes the results folder, part-way too."""

from __future__ import annotations

import datetime
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from grokjax.checkpoint import config_fingerprint
from grokjax.results import concat_parts, curves_table, runs_table, write_results
from grokjax.scheduler import Round


class ProgressLine:
    """One status line on stderr: rewritten in place on a terminal, a new line every few
    seconds otherwise (logs of batch jobs)."""

    def __init__(self, total_steps: int, n_groups: int, stream=sys.stderr, every_s: float = 5.0):
        self.total, self.n_groups, self.stream, self.every_s = total_steps, n_groups, stream, every_s
        self.tty = stream.isatty()
        self.last = -float("inf")

    def __call__(self, info: dict, group: int = 0) -> None:
        now = time.perf_counter()
        final = info.get("last", False)
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

    def __init__(self, source, out: Path | None, sweep_text: str | None, write_every_s: float = 30.0):
        """``source``: the run source (its config, its runs so far and its result columns);
        ``out``: the results folder, None to keep the tables in memory only."""
        self.config, self.runs, self.annotate = source.config, source.runs, source.annotate
        self.out, self.sweep_text, self.write_every_s = out, sweep_text, write_every_s
        self.curve_parts: list[dict] = []
        self.events: dict[int, dict] = {}  # run_id -> latest events
        self.last_write = time.perf_counter()
        self.started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

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
