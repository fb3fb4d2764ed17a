"""``grokjax search``: the critical value of one per-run setting per cell of the grid, found by
bisection inside the running program instead of a dense axis.

The ``[search]`` axis is split into a lattice from ``low`` to ``high`` (steps of at most
``resolution``; geometric on a log scale). A *probe* is one lattice value of one cell, trained
with every seed of ``search.seeds``; it is *in* when more than half of them meet the criterion
(grok, memorize or diverge within the budget). Per cell the search keeps a bracket of two probed
values whose outcomes differ, and probes inside it until its ends are neighbours on the lattice:
with ``probes = 1``, bisection, about ``log2(values)`` probes where a dense axis trains every
value. With ``direction = auto`` both ends are probed first (they tell which side holds); ``up``
or ``down`` says it, saving those two probes. Outcomes are assumed monotone along the axis, as in
any bisection: the critical value is the probed value nearest the boundary on the side where the
criterion holds, what ``analysis.critical_value`` reads from a dense grid of the same lattice.

New probes enter the program already running: the search axis is a per-run setting, the program
is built for both ends of the range (the largest training split it may gather), and a probe's
runs take the slots finished runs free (``train_group``'s ``extend``). Every cell of the grid
searches at once; a cell's next probes start as soon as its current ones are decided.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from grokjax.analysis import critical_value
from grokjax.errors import SweepError
from grokjax.experiment import build_program, run_settings
from grokjax.options import options_from
from grokjax.results import BOUNDARY_FILE, Results
from grokjax.run import train_source
from grokjax.scheduler import Round
from grokjax.sources import Group
from grokjax.sweep import SearchConfig, SweepConfig

# a cell's result: the bracket is settled, or the criterion's side could not be bracketed
STATUSES = ("bracketed", "holds throughout", "holds nowhere", "holds at both ends", "holds at neither end",
            "unfinished")


def lattice(spec: SearchConfig) -> np.ndarray:
    """The values a search may probe: ``low`` to ``high`` in equal steps of at most ``resolution``
    (equal ratios of at most ``resolution`` on a log scale), rounded to 12 significant digits so
    that a dense grid written by hand names the same values."""
    if spec.scale == "log":
        n = math.ceil(math.log(spec.high / spec.low) / math.log(spec.resolution) - 1e-9)
        values = spec.low * (spec.high / spec.low) ** (np.arange(n + 1) / n)
    else:
        n = math.ceil((spec.high - spec.low) / spec.resolution - 1e-9)
        values = spec.low + (spec.high - spec.low) * np.arange(n + 1) / n
    return np.array([float(f"{v:.12g}") for v in values])


@dataclasses.dataclass
class Probe:
    cell: int
    index: int  # position on the lattice
    run_ids: list[int]
    outcomes: dict[int, bool] = dataclasses.field(default_factory=dict)  # run id -> criterion met

    @property
    def decided(self) -> bool:
        return len(self.outcomes) == len(self.run_ids)

    @property
    def holds(self) -> bool:
        return sum(self.outcomes.values()) > len(self.run_ids) / 2


class BoundarySearch:
    """The search's host side: its cells (one per combination of the ``by`` axes), the probes
    and runs made so far (``runs``: the sweep's run list, run id = position), and what to probe
    next. Its state is plain data (``state`` / ``restore``), so a checkpoint carries it."""

    def __init__(self, config: SweepConfig):
        if config.search is None:
            raise SweepError("the sweep file has no [search] section (axis, low, high, resolution); grokjax run "
                             "trains its grid (run_sweep)")
        self.config, self.spec = config, config.search
        self.values = lattice(self.spec)
        self.n = len(self.values) - 1
        self.cells = config.runs()  # the grid's combinations: the by axes only
        keys: dict[tuple, int] = {}
        self.cell_group = [keys.setdefault(c.static_key(), len(keys)) for c in self.cells]
        self.n_groups = len(keys)
        self.runs: list[SweepConfig] = []
        self.probes: list[Probe] = []
        self.run_probe: list[int] = []  # run id -> probe id

    # -- what to probe ------------------------------------------------------------------------

    def _known(self, cell: int) -> dict[int, bool] | None:
        """Decided probes of a cell by lattice index; None while one of its probes is running."""
        probes = [p for p in self.probes if p.cell == cell]
        if not all(p.decided for p in probes):
            return None
        return {p.index: p.holds for p in probes}

    def _direction(self, known: dict[int, bool]) -> str | None:
        if self.spec.direction != "auto":
            return self.spec.direction
        if 0 in known and self.n in known and known[0] != known[self.n]:
            return "up" if known[self.n] else "down"
        return None

    def _bracket(self, known: dict[int, bool], direction: str) -> tuple[int, int]:
        """The first pair of neighbouring probed indices where the outcome turns from out to in
        (scanning upwards for ``up``, downwards for ``down``); -1 and n + 1 stand for the range's
        outer sides when the direction was given (out below / in above for ``up``)."""
        points = dict(known)
        if self.spec.direction != "auto":
            points.setdefault(-1, direction == "down")
            points.setdefault(self.n + 1, direction == "up")
        order = sorted(points, reverse=direction == "down")
        for before, after in zip(order, order[1:]):
            if not points[before] and points[after]:
                return min(before, after), max(before, after)
        raise AssertionError("a bracket always exists once the direction is known")

    def next_indices(self, cell: int) -> list[int]:
        """Lattice indices to probe next in a cell: none while a probe runs or once it is done."""
        known = self._known(cell)
        if known is None:
            return []
        if self.spec.direction == "auto" and not {0, self.n} <= set(known):
            return [i for i in (0, self.n) if i not in known]
        direction = self._direction(known)
        if direction is None:  # both ends agree: nothing to bracket
            return []
        a, b = self._bracket(known, direction)
        m = min(self.spec.probes, b - a - 1)
        return sorted({a + round(j * (b - a) / (m + 1)) for j in range(1, m + 1)}) if m > 0 else []

    def _launch(self, cell: int) -> list[int]:
        ids = []
        for index in self.next_indices(cell):
            probe_ids = list(range(len(self.runs), len(self.runs) + len(self.spec.seeds)))
            for seed in self.spec.seeds:
                self.runs.append(self.run_config(cell, self.values[index], seed))
                self.run_probe.append(len(self.probes))
            self.probes.append(Probe(cell, index, probe_ids))
            ids += probe_ids
        return ids

    def run_config(self, cell: int, value: float, seed: int) -> SweepConfig:
        return self.cells[cell].replace(**{self.spec.axis: float(value), "seed": seed})

    def start(self) -> None:
        """The first probes of every cell (both ends with direction auto, else the middle)."""
        if not self.runs:
            for cell in range(len(self.cells)):
                self._launch(cell)

    def group_run_ids(self, group: int) -> list[int]:
        """Run ids of a program group, in the order they were made (its queue order)."""
        return [r for r, p in enumerate(self.run_probe) if self.cell_group[self.probes[p].cell] == group]

    def program_runs(self, group: int) -> list[SweepConfig]:
        """Runs a group's program must serve: both ends of the range in each of its cells."""
        return [self.run_config(c, v, self.spec.seeds[0]) for c in range(len(self.cells))
                if self.cell_group[c] == group for v in (self.values[0], self.values[-1])]

    def extend(self, round_: Round, finished: np.ndarray) -> list[int]:
        """Record the outcomes of the runs that finished in a round; returns the ids of the runs of
        the probes this decides (already appended to ``runs``)."""
        met = _criterion(self.spec.criterion, round_.events)
        touched = set()
        for run_id, done, ok in zip(round_.run_ids, finished, met):
            if done:
                probe = self.probes[self.run_probe[int(run_id)]]
                probe.outcomes[int(run_id)] = bool(ok)
                touched.add(probe.cell)
        return [r for cell in sorted(touched) for r in self._launch(cell)]

    # -- results --------------------------------------------------------------------------------

    def cell_result(self, cell: int) -> dict:
        """status, direction, critical_value and its bracket (low, high) of one cell."""
        probes = [p for p in self.probes if p.cell == cell]
        known = {p.index: p.holds for p in probes if p.decided}
        direction = self._direction(known)
        out = dict(status="unfinished", direction=direction or self.spec.direction, critical_value=np.nan,
                   low=np.nan, high=np.nan)
        if self.next_indices(cell) or not all(p.decided for p in probes):
            return out
        if direction is None:
            out["status"] = "holds at both ends" if known.get(0) else "holds at neither end"
            return out
        a, b = self._bracket(known, direction)
        inside = b if direction == "up" else a
        out.update(low=self.values[a] if a >= 0 else np.nan, high=self.values[b] if b <= self.n else np.nan)
        if 0 <= inside <= self.n:
            out["critical_value"] = self.values[inside]
        out["status"] = ("holds nowhere" if not 0 <= inside <= self.n else
                         "holds throughout" if not (a >= 0 and b <= self.n) else "bracketed")
        return out

    def boundary(self, runs: pd.DataFrame, n_boot: int = 1000) -> pd.DataFrame:
        """One row per cell: the by axes, critical_value, its bracket low/high, the bootstrap
        interval ci_low/ci_high over seeds (from the probed values), runs and run_steps, then
        status, direction, probes and the values probed."""
        by = list(self.spec.by)
        rows = []
        for cell, config in enumerate(self.cells):
            result = self.cell_result(cell)
            ids = [r for r, p in enumerate(self.run_probe) if self.probes[p].cell == cell]
            done = runs[runs["run_id"].isin(ids)]
            done = done[done["run_id"].map(lambda r: self.probes[self.run_probe[r]].decided)]
            ci = (np.nan, np.nan)
            if result["direction"] in ("up", "down") and len(done):
                table = critical_value(done, self.spec.axis, [], self.spec.criterion, result["direction"],
                                       n_boot=n_boot, seed=cell)
                ci = (table["ci_low"].iloc[0], table["ci_high"].iloc[0])
            probed = sorted(self.values[p.index] for p in self.probes if p.cell == cell)
            rows.append({**{b: config.get(b) for b in by}, "critical_value": result["critical_value"],
                         "low": result["low"], "high": result["high"], "ci_low": ci[0], "ci_high": ci[1],
                         "runs": len(ids), "run_steps": int(done["final_step"].fillna(0).sum()),
                         "status": result["status"], "direction": result["direction"],
                         "probes": len(probed), "probed_values": probed})
        return pd.DataFrame(rows)

    def probe_columns(self, table: pd.DataFrame) -> pd.DataFrame:
        """A results table with each run's probe (its id, in order of launch) after run_id."""
        table = table.copy()
        table.insert(1, "probe", table["run_id"].map(lambda r: self.run_probe[int(r)]).astype("int64"))
        return table

    def state(self) -> dict:
        """The search as plain data (a checkpoint's metadata)."""
        return dict(probes=[[p.cell, p.index, p.run_ids, {str(k): v for k, v in p.outcomes.items()}]
                            for p in self.probes])

    def restore(self, state: dict) -> None:
        self.runs.clear(), self.probes.clear(), self.run_probe.clear()
        for cell, index, run_ids, outcomes in state["probes"]:
            if run_ids[0] != len(self.runs):
                raise SweepError("the checkpoint's search state does not match its runs")
            for seed in self.spec.seeds:
                self.runs.append(self.run_config(cell, self.values[index], seed))
                self.run_probe.append(len(self.probes))
            self.probes.append(Probe(cell, index, list(run_ids), {int(k): bool(v) for k, v in outcomes.items()}))


def _criterion(criterion: str, events: dict[str, np.ndarray]) -> np.ndarray:
    diverged = np.asarray(events["diverged"], bool)
    if criterion == "grok":
        return (np.asarray(events["grok_step"]) >= 0) & ~diverged
    if criterion == "memorize":
        return (np.asarray(events["memorize_step"]) >= 0) & ~diverged
    return diverged


class SearchSource:
    """The boundary search as a run source of the training loop (``grokjax.sources.RunSource``):
    its runs are the probes made so far, added while the program trains as brackets narrow."""

    def __init__(self, config: SweepConfig, n_boot: int = 1000):
        if not isinstance(config, SweepConfig):
            raise SweepError(f"search_boundary needs a SweepConfig (from load_sweep or sweep_from_dict), got "
                             f"{type(config).__name__}")
        if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
            raise SweepError(f"n_boot must be an integer >= 1, got {n_boot!r}")
        self.search = BoundarySearch(config)
        self.search.start()
        self.config, self.runs, self.n_boot = config, self.search.runs, n_boot

    def groups(self, check: bool = True) -> list[Group]:
        """One group per program, each program built for both ends of the range (the largest
        training split it may gather)."""
        out = []
        for g in range(self.search.n_groups):
            ends, ids = self.search.program_runs(g), self.search.group_run_ids(g)
            out.append(Group(ids, build_program(ends[0], ends, check=check), run_settings([self.runs[i] for i in ids])))
        return out

    def extend(self, group: int, round_: Round, finished: np.ndarray) -> list[int]:
        return self.search.extend(round_, finished)  # a cell's new probes stay in its group

    def annotate(self, table: pd.DataFrame) -> pd.DataFrame:
        return self.search.probe_columns(table)

    def state(self) -> dict:
        return self.search.state()

    def restore(self, state: dict) -> list[list[int]]:
        self.search.restore(state)
        return [self.search.group_run_ids(g) for g in range(self.search.n_groups)]

    def finish(self, table: pd.DataFrame) -> tuple[dict, dict[str, pd.DataFrame]]:
        search = self.search
        boundary = search.boundary(table, self.n_boot)
        meta = dict(search=dict(axis=search.spec.axis, values=len(search.values), cells=len(search.cells),
                                probes=len(search.probes), statuses=boundary["status"].value_counts().to_dict()))
        return meta, {BOUNDARY_FILE: boundary}


def search_boundary(config: SweepConfig, out: str | Path | None = None, progress: bool | Callable = True,
                    sweep_text: str | None = None, n_boot: int = 1000, **options) -> Results:
    """Run the ``[search]`` of ``config``: the critical value of its axis per cell of its grid.

    Args:
      config: a sweep with a ``[search]`` section (``load_sweep`` / ``sweep_from_dict``).
      out: results folder: every run trained (with its ``probe``) and ``boundary.parquet``.
      progress, sweep_text: as for ``run_sweep``.
      n_boot: bootstrap samples of each critical value's interval over seeds.
      **options: the other fields of ``grokjax.options.SweepOptions`` (devices,
        max_runs_per_chunk, checkpoint_every, resume, tune_cache, overwrite, write_every_s).

    Returns:
      ``Results`` whose ``.boundary`` has one row per cell: its ``by`` axes, ``critical_value``,
      the bracket ``low``/``high``, the bootstrap interval ``ci_low``/``ci_high``, ``status``.

    Raises:
      SweepError: no ``[search]`` section, or as ``run_sweep``.
      Interrupted: stopped by a signal after saving a checkpoint.

    Example:
      >>> results = grokjax.search_boundary(grokjax.load_sweep("sweeps/search_cpu.toml"))
      >>> results.boundary[["weight_decay", "critical_value", "status"]]
    """
    source = SearchSource(config, n_boot)
    return train_source(source, options_from(options, out=out, progress=progress, sweep_text=sweep_text))


__all__ = ["BoundarySearch", "SearchSource", "lattice", "search_boundary", "BOUNDARY_FILE", "STATUSES"]
