import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from grokjax.analysis import cell_summary
from grokjax.plots import default_axes, draw_metric_map, draw_phase_map, plot_results, progress_figure, select_cell
from grokjax.results import Results
from tests.test_analysis import curve, synthetic_runs


def synthetic_curves(runs):
    parts = []
    for row in runs.itertuples():
        test = [0.0, 0.0, 0.5, 1.0] if pd.notna(row.grok_step) else [0.0, 0.0, 0.0, 0.1]
        parts.append(curve(row.run_id, [0.5, 1, 1, 1], test, every=250))
    return pd.concat(parts)


def test_heatmap_labels_are_the_cell_aggregates():
    runs = synthetic_runs()
    fig, ax = plt.subplots()
    draw_metric_map(ax, runs, "data_fraction", "weight_decay")
    labels = sorted(t.get_text() for t in ax.texts)
    plt.close(fig)
    cells = cell_summary(runs)
    expected = sorted(("never" if np.isinf(m) else f"{m:.0f}") + f"\n{g:.0%} grok"
                      for m, g in zip(cells.median_grok_step, cells.grokked))
    assert labels == expected


def test_phase_map_labels_and_legend():
    runs = synthetic_runs()
    fig, ax = plt.subplots()
    handles = draw_phase_map(ax, runs, "data_fraction", "weight_decay")
    texts = [t.get_text() for t in ax.texts]
    plt.close(fig)
    assert {h.get_label() for h in handles} == {"grokking", "memorization"}
    assert texts.count("memorization\n100%") == 9 and len(texts) == 18


@pytest.mark.parametrize("fmt", ["png", "svg", "pdf"])
def test_all_figures_are_written(tmp_path, fmt):
    runs = synthetic_runs()
    paths = plot_results(Results(runs, synthetic_curves(runs), {}), tmp_path, "data_fraction", "weight_decay", fmt=fmt)
    assert [p.name for p in paths] == [f"{n}.{fmt}" for n in
                                       ("phase_diagram", "phase_map", "learning_curves", "critical_fraction")]
    for p in paths:
        assert p.stat().st_size > 1000
    if fmt == "png":
        for p in paths:
            with Image.open(p) as image:
                assert image.size[0] > 300 and image.size[1] > 200


def test_facets_metrics_and_a_half_finished_sweep(tmp_path):
    runs = synthetic_runs()
    runs["lr"] = np.where(runs.seed < 2, 1e-3, 1e-2)
    curves = synthetic_curves(runs)
    for metric in ("grok_delay", "memorize_step", "final_test_acc"):
        plot_results(Results(runs, curves, {}), tmp_path / metric, "data_fraction", "weight_decay", metric=metric,
                     facet="lr")
    partial = runs[runs.weight_decay < 5]  # a sweep that has not reached its last cells
    partial = partial[~((partial.weight_decay == 1.0) & (partial.data_fraction > 0.5))]
    paths = plot_results(Results(partial, curves[curves.run_id.isin(partial.run_id)], {}), tmp_path / "p",
                         "data_fraction", "weight_decay")
    assert len(paths) == 4


def test_bad_options():
    runs = synthetic_runs()
    with pytest.raises(ValueError, match="format"):
        plot_results(Results(runs, synthetic_curves(runs), {}), "/tmp", "data_fraction", "weight_decay", fmt="jpg")
    with pytest.raises(ValueError, match="not a column"):
        plot_results(Results(runs, synthetic_curves(runs), {}), "/tmp", "width", "weight_decay")


def test_default_axes():
    grid = (("seed", (0, 1)), ("lr", (1e-3, 1e-2)), ("weight_decay", (0.1, 1)), ("data_fraction", (0.3, 0.5)))
    assert default_axes(grid) == ("data_fraction", "weight_decay")
    assert default_axes((("seed", (0, 1)), ("lr", (1, 2)), ("init_scale", (1, 2)))) == ("lr", "init_scale")
    assert default_axes((("seed", (0, 1)), ("lr", (1, 2)))) is None


def test_categorical_axis(tmp_path):
    runs = synthetic_runs()
    runs["task"] = np.where(runs.weight_decay == 1.0, "add", "div")
    assert default_axes((("task", ("add", "div")), ("data_fraction", (0.3, 0.5)))) == ("data_fraction", "task")
    paths = plot_results(Results(runs, synthetic_curves(runs), {}), tmp_path, "data_fraction", "task")
    assert len(paths) == 4


def test_progress_figure_draws_the_recorded_measures_of_one_cell(tmp_path):
    runs = synthetic_runs()
    curves = synthetic_curves(runs)
    curves["restricted_loss"] = 1.0 / curves["step"].clip(lower=1)
    curves["norm_embeddings"] = 2.0
    curves["fourier_gini"] = 0.5
    curves["key_frequencies"] = [[3, 14]] * len(curves)
    label, ids = select_cell(runs, None, "data_fraction", "weight_decay")
    assert label.startswith("grokking") and runs.set_index("run_id").loc[ids, "phase"].eq("grokking").mean() > 0.5
    label, ids = select_cell(runs, {"weight_decay": 1.0, "data_fraction": 0.5}, None, None)
    assert len(ids) == runs.query("weight_decay == 1.0 and data_fraction == 0.5").shape[0] > 0
    path = progress_figure(runs, curves, tmp_path / "progress.png", {"seed": 0})
    with Image.open(path) as image:
        assert image.size[0] > 4 * 300  # four panels: losses, norms, concentration, key frequencies
    for bad, match in (({"widht": 1}, "not a column"), ({"seed": 99}, "no run has")):
        with pytest.raises(ValueError, match=match):
            select_cell(runs, bad, None, None)
    paths = plot_results(Results(runs, curves, {}), tmp_path, "data_fraction", "weight_decay")
    assert paths[-1].name == "progress.png"


IMPORTS_LEAVE_MATPLOTLIB_ALONE = """
import sys
import matplotlib
import grokjax, grokjax.cli, grokjax.plots
print(matplotlib.rcParams._get_backend_or_none(), "matplotlib.pyplot" in sys.modules)
"""


def test_importing_grokjax_leaves_matplotlibs_backend_alone():
    """A notebook's backend stays its own: grokjax draws on Figure objects, without pyplot."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    proc = subprocess.run([sys.executable, "-c", IMPORTS_LEAVE_MATPLOTLIB_ALONE], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["None", "False"]
