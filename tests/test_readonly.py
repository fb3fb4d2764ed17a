"""Opening someone else's results never runs their code: every command and function that only
reads a results folder reads its saved sweep file as data. A planted folder names a module of its
own (beside its sweep.toml, and on the Python path) as task, model, optimizer and loss; importing
that module or calling it leaves a trace file, and no reader may leave one."""

import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import cli_in_process, make_sweep

import grokjax
from grokjax.export import wandb_runs
from grokjax.folder import describe
from grokjax.plugins import resolve
from grokjax.results import column_of, run_columns, saved_grid, saved_search, saved_sweep, varying_settings

TRAP = "tests_trace_module"
TRAP_SOURCE = '''
import pathlib

pathlib.Path(__file__).with_name("TRACE").write_text("imported")


def plant(*args, **kwargs):
    pathlib.Path(__file__).with_name("TRACE").write_text("called")
    raise RuntimeError("planted code ran")
'''
PLANTED = f'''
name = "planted"
[task]
name = "{TRAP}:plant"
p = 11
[model]
name = "{TRAP}:plant"
[optimizer]
name = "{TRAP}:plant"
lr = 1e-2
[train]
loss = "{TRAP}:plant"
steps = 20
eval_every = 10
[grid]
data_fraction = [0.3, 0.6]
"optimizer.weight_decay" = [0.1, 1.0]
'''
SEARCH = '''
[search]
axis = "optimizer.lr"
low = 1e-3
high = 1e-1
resolution = 1.5
by = ["data_fraction", "optimizer.weight_decay"]
criterion = "memorize"
'''


def tiny_sweep():
    return make_sweep(name="planted", task=dict(p=11), grid={"data_fraction": [0.3, 0.6], "weight_decay": [0.1, 1.0]},
                      train=dict(steps=20, eval_every=10, runs_per_batch=4, progress_measures=True))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 4-run sweep (p=11, 20 steps, progress measures, checkpoints), trained once."""
    out = tmp_path_factory.mktemp("finished") / "res"
    grokjax.run_sweep(tiny_sweep(), out=out, progress=False, checkpoint_every=1)
    return out


@pytest.fixture(params=["grid", "search"])
def planted(request, finished, tmp_path, monkeypatch):
    """A copy of the finished folder whose sweep.toml names the trap module, which sits beside it
    and is importable; the search variant adds a [search] section and a boundary table (one
    row per cell, as a search that bracketed nothing writes it)."""
    folder = tmp_path / "planted"
    shutil.copytree(finished, folder)
    (folder / "sweep.toml").write_text(PLANTED + (SEARCH if request.param == "search" else ""))
    if request.param == "search":
        cells = grokjax.load_results(folder).runs[["data_fraction", "weight_decay"]].drop_duplicates()
        nan = float("nan")
        cells.assign(critical_value=nan, low=nan, high=nan, ci_low=nan, ci_high=nan, runs=1, run_steps=20,
                     status="holds nowhere", probes=1).to_parquet(folder / "boundary.parquet", index=False)
    (folder / f"{TRAP}.py").write_text(TRAP_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, TRAP, raising=False)
    resolve.cache_clear()  # a reader that resolved the trap would import it afresh, leaving its trace
    return folder


def assert_untouched(folder):
    assert TRAP not in sys.modules, "a reader imported the planted module"
    assert not (folder / "TRACE").exists(), (folder / "TRACE").read_text()


def test_the_trap_is_live(planted):
    """Validating the planted file (what plot and summary used to do) does import it."""
    path = list(sys.path)
    resolve.cache_clear()  # plug-ins resolve once per process; import this folder's module afresh
    try:
        with pytest.raises(Exception):  # noqa: B017 - whatever the plug-in check makes of the trap
            grokjax.load_sweep(planted / "sweep.toml")
        assert (planted / "TRACE").exists()
    finally:
        sys.path[:] = path
        sys.modules.pop(TRAP, None)
        resolve.cache_clear()


def has_search(folder) -> bool:
    return "[search]" in (folder / "sweep.toml").read_text()


def test_cli_readers_run_nothing(planted, tmp_path):
    commands = [("plot", planted), ("summary", planted), ("report", planted, "--out", tmp_path / "report.html")]
    if not has_search(planted):  # the search only changes the default axes: the rest once
        commands += [("plot", planted, "--out", tmp_path / "figs", "--format", "svg", "--facet", "seed"),
                     ("plot", planted, "--progress", "--out", tmp_path / "progress"),
                     ("plot", planted, "--progress", "--cell", "data_fraction=0.6", "--out", tmp_path / "cell"),
                     ("summary", planted, "--x", "weight_decay", "--y", "data_fraction")]
    for args in commands:
        proc = cli_in_process(*args, cwd=tmp_path)
        assert proc.returncode == 0, (args, proc.stderr)
        assert_untouched(planted)
        if args == ("plot", planted):  # a search's boundary figure, from the saved [search] as data
            assert ("boundary.png" in proc.stdout) == has_search(planted)
        if args[0] == "summary" and len(args) == 2:
            assert "planted: 4 runs, complete" in proc.stdout
            assert proc.stdout.splitlines()[1].split()[:2] == (["data_fraction", "lr"] if has_search(planted)
                                                                else ["weight_decay", "data_fraction"])


def test_python_readers_run_nothing(planted):
    results = grokjax.load_results(planted)
    assert len(results.runs) == 4
    assert saved_sweep(planted)["task"]["name"] == f"{TRAP}:plant"  # the names, as data
    assert [k for k, _ in saved_grid(planted, results.runs)] == ["data_fraction", "weight_decay"]
    search = dict(axis="lr", by=["data_fraction", "weight_decay"], criterion="memorize")
    assert saved_search(planted, results.runs) == (search if has_search(planted) else None)
    assert "'planted' (4 runs" in describe(planted)[0]
    assert len(wandb_runs(planted)) == 4  # what export sends to W&B
    assert_untouched(planted)


@pytest.mark.parametrize("planted", ["grid"], indirect=True)
def test_resume_uses_the_sweep_you_pass(planted):
    """A resume of the planted folder restores its checkpoint with the caller's sweep; the
    folder's copy of the sweep file is never read."""
    results = grokjax.run_sweep(tiny_sweep(), out=planted, progress=False, checkpoint_every=1, resume=True)
    assert results.meta["resumed_from_checkpoint"] is not None and len(results.runs) == 4
    assert_untouched(planted)


def test_column_names_without_plugins(finished):
    runs = grokjax.load_results(finished).runs
    assert column_of("optimizer.lr", runs.columns) == "lr" and column_of("task.name", runs.columns) == "task"
    assert column_of("train.seed", runs.columns) == "seed" and column_of("model.width", runs.columns) == "width"
    assert column_of("optimizer.weight_decay", runs.columns) == "weight_decay"
    assert column_of("model.lr", runs.columns) is None and column_of("nowhere", runs.columns) is None
    assert saved_grid(finished, runs) == varying_settings(runs)  # made from Python: no sweep.toml


REPO = Path(__file__).parent.parent
SWEEP_FILES = sorted([*REPO.glob("sweeps/*.toml"), *REPO.glob("examples/*.toml")])


@pytest.mark.parametrize("file", SWEEP_FILES, ids=[f.name for f in SWEEP_FILES])
def test_grid_and_search_read_as_load_sweep_names_them(file, tmp_path):
    """For the repository's sweep files, the data reading names each grid axis and the search as
    the validated sweep does (the columns are those runs_table writes for its runs)."""
    config = grokjax.load_sweep(file)
    columns = set(run_columns(config)) | {k for k, _ in config.grid}
    for key, values in config.grid:
        if key in ("task", "model", "optimizer"):  # a name axis: each plug-in's settings
            columns |= {c for v in values for c in run_columns(config.replace(**{key: v}))}
    (tmp_path / "sweep.toml").write_bytes(file.read_bytes())
    runs = pd.DataFrame(columns=sorted(columns))
    assert [(k, len(v)) for k, v in saved_grid(tmp_path, runs)] == [(k, len(v)) for k, v in config.grid]
    spec = config.search
    expected = dict(axis=spec.axis, by=list(spec.by), criterion=spec.criterion) if spec is not None else None
    assert saved_search(tmp_path, runs) == expected


def test_a_grid_key_no_column_holds_falls_back_to_what_varies(finished, tmp_path):
    folder = tmp_path / "res"
    shutil.copytree(finished, folder)
    runs = grokjax.load_results(folder).runs
    (folder / "sweep.toml").write_text("[grid]\nmodel.unknown_knob = [1, 2]\n")
    assert saved_grid(folder, runs) == varying_settings(runs)
    (folder / "sweep.toml").write_text("[grid\n")  # damaged: the same fallback, and no search
    assert saved_grid(folder, runs) == varying_settings(runs) and saved_search(folder, runs) is None
    with pytest.raises(grokjax.SweepError, match="TOML syntax error"):
        saved_sweep(folder)
    (folder / "sweep.toml").write_bytes(b"\xef\xbb\xbf" + PLANTED.encode())  # a byte-order mark: the same data
    assert saved_grid(folder, runs) == (("data_fraction", (0.3, 0.6)), ("weight_decay", (0.1, 1.0)))


@pytest.mark.parametrize("command", ["run", "search"])
def test_help_says_a_sweep_file_is_code(command, tmp_path):
    proc = cli_in_process(command, "--help", cwd=tmp_path)
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 0 and "A sweep file is code" in text and "as you would a script" in text
    assert "never the folder's copy" in text
