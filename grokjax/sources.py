"""Run sources: what the training loop (``grokjax.run.train_source``) trains.

A run source says which runs exist, how they group into compiled programs, which runs join a
group while it trains, what extra columns and tables its results carry, and what of it a
checkpoint must keep. The loop trains, records, checkpoints and writes for any source; it knows
nothing else about them. The dense grid (``GridSource``, here) and the boundary search
(``grokjax.search.SearchSource``) are two sources; a new one (successive halving, a user's own)
is a new class with these methods, not an edit of the loop.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from grokjax.errors import SweepError
from grokjax.experiment import build_program, run_settings
from grokjax.program import Program, RunSettings
from grokjax.scheduler import Round
from grokjax.sweep import SweepConfig


@dataclasses.dataclass
class Group:
    """Runs that share one program: their global ids, the program and their settings [R]."""

    run_ids: list[int]
    program: Program
    settings: RunSettings


@runtime_checkable
class RunSource(Protocol):
    """The contract between a kind of sweep and the training loop.

    Attributes:
      config: the sweep (its name and fingerprint; the settings results record).
      runs: every run made so far, one config each; a run's id is its position. A source that
        adds runs while training appends to this list.
    """

    config: SweepConfig
    runs: list[SweepConfig]

    def groups(self, check: bool = True) -> list[Group]:
        """The program groups, in training order: run ids, program (built, and with ``check``
        traced, here: bad plug-ins are refused before anything trains) and settings.

        Raises:
          SweepError: a plug-in or setting that cannot build or trace.
        """

    def extend(self, group: int, round_: Round, finished: np.ndarray) -> list[int]:
        """Runs to add to ``group``'s queue after a round (``finished``: which of its runs
        finished in it); their ids, already appended to ``runs``. ``[]``: none."""

    def annotate(self, table: pd.DataFrame) -> pd.DataFrame:
        """The runs table with this source's own columns (e.g. a search's ``probe``)."""

    def state(self) -> dict:
        """What a checkpoint keeps of the source, as JSON-able plain data."""

    def restore(self, state: dict) -> list[list[int]]:
        """Continue from ``state()``'s data; returns each group's run ids (its queue order)."""

    def finish(self, table: pd.DataFrame) -> tuple[dict, dict[str, pd.DataFrame]]:
        """At the end: entries for ``meta.json`` and extra tables (file name -> table)."""


class GridSource:
    """The dense grid of a sweep file: every combination of its ``[grid]`` axes, one run each,
    grouped by the settings that change the program."""

    def __init__(self, config: SweepConfig):
        if not isinstance(config, SweepConfig):
            raise SweepError(f"run_sweep needs a SweepConfig (from load_sweep or sweep_from_dict), got "
                             f"{type(config).__name__}")
        if config.search is not None:
            raise SweepError("this sweep file has a [search] section: run it with grokjax search (search_boundary)")
        self.config = config
        self.runs = config.runs()

    def groups(self, check: bool = True) -> list[Group]:
        out = []
        for ids in group_runs(self.runs):
            members = [self.runs[i] for i in ids]
            out.append(Group(ids, build_program(members[0], members, check=check), run_settings(members)))
        return out

    def extend(self, group: int, round_: Round, finished: np.ndarray) -> list[int]:
        return []

    def annotate(self, table: pd.DataFrame) -> pd.DataFrame:
        return table

    def state(self) -> dict:
        return {}

    def restore(self, state: dict) -> list[list[int]]:
        return group_runs(self.runs)

    def finish(self, table: pd.DataFrame) -> tuple[dict, dict[str, pd.DataFrame]]:
        return {}, {}


def group_runs(runs: list[SweepConfig]) -> list[list[int]]:
    """Run ids grouped by static settings (one compiled program each), in first-seen order."""
    groups: dict[tuple, list[int]] = {}
    for i, run in enumerate(runs):
        groups.setdefault(run.static_key(), []).append(i)
    return list(groups.values())
