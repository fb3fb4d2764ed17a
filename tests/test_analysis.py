import numpy as np
import pandas as pd
import pytest

from grokjax.analysis import cell_summary, critical_fraction, events_from_curves, phase_shares, reclassify
from grokjax.metrics import classify_phases


def synthetic_runs(critical=0.5, seeds=4):
    """Runs that grok iff data_fraction >= critical (grok step shrinking with data and decay)."""
    rows = []
    for wd in (0.1, 1.0, 10.0):
        for f in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7):
            for seed in range(seeds):
                groks = f >= critical
                rows.append(dict(run_id=len(rows), seed=seed, data_fraction=f, weight_decay=wd, diverged=False,
                                 memorize_step=20, grok_step=int(1000 * (1 - f) / wd + seed) if groks else None,
                                 final_test_acc=1.0 if groks else 0.1, grok_gap=10))
    df = pd.DataFrame(rows)
    df["memorize_step"] = df["memorize_step"].astype("Int64")
    df["grok_step"] = df["grok_step"].astype("Int64")
    df["grok_delay"] = df["grok_step"] - df["memorize_step"]
    df["phase"] = classify_phases(df["memorize_step"].fillna(-1), df["grok_step"].fillna(-1), df["diverged"], 10)
    return df


def test_cell_summary_medians_and_shares():
    runs = synthetic_runs()
    cells = cell_summary(runs)
    assert len(cells) == 18 and (cells.runs == 4).all()
    cell = cells[(cells.weight_decay == 1.0) & (cells.data_fraction == 0.6)].iloc[0]
    expected = np.median([int(1000 * 0.4 + s) for s in range(4)])
    assert cell.median_grok_step == expected and cell.grokked == 1.0 and cell.phase == "grokking"
    never = cells[cells.data_fraction == 0.2].iloc[0]
    assert np.isinf(never.median_grok_step) and never.grokked == 0 and never.phase == "memorization"
    assert never.phase_share == 1.0


def test_median_is_never_when_most_seeds_never_grok():
    runs = synthetic_runs()
    cell = runs[(runs.data_fraction == 0.6) & (runs.weight_decay == 1.0)].copy()
    cell.loc[cell.index[:3], "grok_step"] = pd.NA
    summary = cell_summary(cell).iloc[0]
    assert np.isinf(summary.median_grok_step) and summary.grokked == 0.25


def test_final_test_acc_metric_and_bad_metric():
    cells = cell_summary(synthetic_runs(), metric="final_test_acc")
    assert set(cells.median_final_test_acc) == {0.1, 1.0}
    with pytest.raises(ValueError, match="metric"):
        cell_summary(synthetic_runs(), metric="loss")
    with pytest.raises(ValueError, match="not a column"):
        cell_summary(synthetic_runs(), x="width")


def test_phase_shares_sum_to_one():
    shares = phase_shares(synthetic_runs())
    phases = ["comprehension", "grokking", "memorization", "confusion", "diverged"]
    np.testing.assert_allclose(shares[phases].sum(axis=1), 1.0)
    assert shares.loc[shares.data_fraction == 0.2, "memorization"].eq(1).all()


def test_phases_of_every_combination_of_events():
    from grokjax.metrics import NEVER, classify_phases

    mem = [100, 100, 100, NEVER, NEVER, 100]
    grok = [150, 900, NEVER, NEVER, 400, 150]
    phases = classify_phases(mem, grok, [False] * 5 + [True], 100)
    # test accuracy without train accuracy: generalizing instead of fitting noisy labels
    assert list(phases) == ["comprehension", "grokking", "memorization", "confusion", "comprehension", "diverged"]


@pytest.mark.parametrize("critical", [0.3, 0.5, 0.7])
def test_critical_fraction_known_answer(critical):
    table = critical_fraction(synthetic_runs(critical), n_boot=200)
    assert (table.critical_fraction == critical).all()
    assert (table.low == critical).all() and (table.high == critical).all()


def test_critical_fraction_interval_widens_with_disagreeing_seeds():
    runs = synthetic_runs(0.5, seeds=6)
    # at 0.5, half the seeds fail: the majority now first holds at 0.6, and resampling moves it
    flip = runs[(runs.data_fraction == 0.5) & (runs.seed < 3)].index
    runs.loc[flip, "grok_step"] = pd.NA
    table = critical_fraction(runs, n_boot=500).set_index("weight_decay")
    assert (table.critical_fraction == 0.6).all()
    assert (table.low == 0.5).all() and (table.high == 0.6).all()


def test_critical_fraction_nan_when_nothing_groks():
    runs = synthetic_runs(0.9)
    assert critical_fraction(runs, n_boot=50).critical_fraction.isna().all()


def curve(run_id, train, test, every=10):
    steps = np.arange(1, len(train) + 1) * every
    return pd.DataFrame(dict(run_id=run_id, step=steps, train_acc=train, test_acc=test, train_loss=0.0,
                             test_loss=0.0, param_norm=1.0))


HAND_MADE = {  # run: (train accuracies, test accuracies, diverged, expected phase)
    0: ([0.5, 0.995, 1, 1, 1, 1], [0.1, 0.995, 1, 1, 1, 1], False, "comprehension"),
    1: ([0.5, 1, 1, 1, 1, 1], [0.0, 0.0, 0.1, 0.3, 0.9, 0.999], False, "grokking"),  # at the very last eval
    2: ([0.5, 1, 1, 1, 1, 1], [0.0, 0.0, 0.0, 0.1, 0.2, 0.3], False, "memorization"),
    3: ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.0, 0.1, 0.1, 0.1, 0.1, 0.1], False, "confusion"),  # never memorized
    4: ([0.5, 1, 1, 1, 1, 1], [0.0, 0.0, 0.5, 1, 1, 1], True, "diverged"),
}


def test_phases_from_hand_made_curves():
    curves = pd.concat([curve(i, tr, te) for i, (tr, te, _, _) in HAND_MADE.items()])
    events = events_from_curves(curves).set_index("run_id")
    assert events.loc[1, "grok_step"] == 60 and events.loc[1, "memorize_step"] == 20
    assert pd.isna(events.loc[3, "memorize_step"]) and pd.isna(events.loc[2, "grok_step"])
    runs = pd.DataFrame(dict(run_id=list(HAND_MADE), diverged=[d for *_, d, _ in HAND_MADE.values()],
                             grok_gap=10, final_step=60))
    phases = reclassify(runs, curves).set_index("run_id")["phase"]
    assert phases.to_dict() == {i: expected for i, (*_, expected) in HAND_MADE.items()}


def test_reclassify_at_liu_threshold():
    curves = curve(0, [0.5, 0.95, 1, 1], [0.1, 0.5, 0.92, 0.95])
    runs = pd.DataFrame(dict(run_id=[0], diverged=[False], grok_gap=[10], final_step=[40]))
    strict = reclassify(runs, curves).iloc[0]
    liu = reclassify(runs, curves, 0.9, 0.9).iloc[0]
    assert strict.phase == "memorization" and liu.phase == "comprehension" and liu.grok_step == 30


def test_progress_steps_reads_when_each_measure_moves():
    from grokjax.analysis import progress_steps

    steps = [100, 200, 300, 400, 500]
    curves = pd.DataFrame(dict(
        run_id=0, step=steps, test_loss=[3.0, 2.0, 0.5, 0.05, 0.01], restricted_loss=[3.5, 0.8, 0.05, 0.0, 0.0],
        excluded_loss=[0.1, 2.0, 6.0, 5.0, 4.0], param_norm=[40.0, 42.0, 38.0, 35.0, 33.0],
        key_frequencies=[[], [4], [4, 9], [4, 9, 11], [4, 9, 11]]))
    row = progress_steps(curves, loss_threshold=0.1).iloc[0]
    assert (row.test_loss_step, row.restricted_loss_step, row.keys_first_step, row.keys_settled_step) == (
        400, 300, 200, 400)
    assert row.key_frequencies == [4, 9, 11] and row.excluded_loss_peak_step == 300
    assert (row.norm_peak_step, row.norm_peak, row.norm_final) == (200, 42.0, 33.0)
    bare = progress_steps(curves[["run_id", "step", "test_loss", "param_norm"]]).iloc[0]
    assert pd.isna(bare.restricted_loss_step) and bare.key_frequencies is None
