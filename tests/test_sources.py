"""Run sources: the dense grid and the search follow the protocol, and a source of one's own
trains through the same loop, runs it adds while training included."""

import numpy as np
import pandas as pd
import pytest

import grokjax
from grokjax.experiment import build_program, run_settings
from grokjax.options import SweepOptions
from grokjax.run import train_source
from grokjax.search import SearchSource
from grokjax.sources import GridSource, Group, RunSource

TINY = dict(task=dict(p=11), model=dict(embed_dim=8, width=16),
            train=dict(steps=20, eval_every=10, runs_per_batch=2, progress_measures=False))


class SeedLadder(GridSource):
    """A source of one's own: the grid's runs, and for each run that finishes one more seed of
    it, until ``extra`` runs were added (runs added while training, like a search's probes)."""

    def __init__(self, config, extra: int):
        super().__init__(config)
        self.extra, self.added = extra, []

    def groups(self, check: bool = True) -> list[Group]:
        ids = list(range(len(self.runs)))
        later = [self.runs[0].replace(seed=100 + i) for i in range(self.extra)]
        program = build_program(self.runs[0], self.runs + later, check=check)  # serves the runs to come
        return [Group(ids, program, run_settings(self.runs))]

    def extend(self, group, round_, finished):
        new = []
        for _ in range(int(finished.sum())):
            if len(self.added) < self.extra:
                self.runs.append(self.runs[0].replace(seed=100 + len(self.added)))
                self.added.append(len(self.runs) - 1)
                new.append(len(self.runs) - 1)
        return new

    def annotate(self, table):
        return table.assign(added=table.run_id.isin(self.added))

    def finish(self, table):
        return {"ladder": dict(added=len(self.added))}, {}


def test_the_built_in_sources_follow_the_protocol():
    grid = grokjax.sweep_from_dict(dict(**TINY, grid=dict(seed=[0, 1])))
    search = grokjax.sweep_from_dict(dict(**TINY, grid=dict(weight_decay=[1.0]), search=dict(
        axis="data_fraction", low=0.3, high=0.7, resolution=0.2, seeds=2, direction="up")))
    assert isinstance(GridSource(grid), RunSource) and isinstance(SearchSource(search), RunSource)
    with pytest.raises(grokjax.SweepError, match="grokjax search"):
        GridSource(search)
    with pytest.raises(grokjax.SweepError, match="no \\[search\\] section"):
        SearchSource(grid)


def test_a_source_of_ones_own_trains_through_the_same_loop():
    config = grokjax.sweep_from_dict(dict(**TINY, grid=dict(seed=[0, 1])))
    source = SeedLadder(config, extra=2)
    results = train_source(source, SweepOptions(progress=False, tune_cache=None))
    runs = results.runs
    assert list(runs.seed) == [0, 1, 100, 101] and list(runs.added) == [False, False, True, True]
    assert results.meta["ladder"] == dict(added=2) and results.meta["runs"] == 4
    # an added run trains as it would in a grid of its own
    alone = grokjax.run_sweep(grokjax.sweep_from_dict(dict(**TINY, grid=dict(seed=[100, 101]))), progress=False,
                              tune_cache=None)
    later = results.curves[results.curves.run_id >= 2].assign(run_id=lambda d: d.run_id - 2).reset_index(drop=True)
    pd.testing.assert_frame_equal(later, alone.curves, check_exact=False, rtol=1e-6)
    assert np.array_equal(runs.grok_step.fillna(-1).to_numpy()[2:], alone.runs.grok_step.fillna(-1).to_numpy())
