"""End to end through the console entry point: every `grokjax run` that trains in a subprocess as a
user runs it; refusals and commands that only read a results folder (plot, summary) through the
same ``main`` in this process, where a new process would add only JAX's start-up."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from conftest import cli_in_process, user_env

QUICK = """
name = "tiny"
[task]
name = "add"
p = 13
[model]
name = "mlp"
embed_dim = 16
width = 32
[optimizer]
lr = 1e-2
[train]
steps = 40
eval_every = 10
[grid]
seed = [0, 1]
data_fraction = [0.3, 0.6]
"""


def grokjax(*args, cwd, env=None):
    # $XDG_CACHE_HOME (the compilation cache) is the session's, in tmp (conftest.py)
    return subprocess.run([sys.executable, "-m", "grokjax", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.fixture(scope="module")
def quick_launches(tmp_path_factory):
    """The quick sweep launched twice in one folder with a compilation cache of its own, cold then
    warm: first as a user runs it (progress line, default results folder), then --quiet --out b;
    both compile at XLA's default level, as the README's commands do."""
    cwd = tmp_path_factory.mktemp("quick")
    (cwd / "tiny.toml").write_text(QUICK)
    first = grokjax("run", "tiny.toml", "--cache-dir", "cache", cwd=cwd, env=user_env())
    second = grokjax("run", "tiny.toml", "--out", "b", "--cache-dir", "cache", "--quiet", cwd=cwd, env=user_env())
    return cwd, first, second


@pytest.mark.slow
def test_run_writes_the_results_folder(quick_launches):
    cwd, proc, _ = quick_launches
    assert proc.returncode == 0, proc.stderr
    out = cwd / "results" / "tiny"
    assert {p.name for p in out.iterdir()} >= {"runs.parquet", "curves.parquet", "meta.json", "sweep.toml"}
    assert "run-steps/s" in proc.stderr and "memorized" in proc.stderr and "grokked" in proc.stderr
    runs = pd.read_parquet(out / "runs.parquet")
    for column in ("run_id", "seed", "data_fraction", "weight_decay", "lr", "memorize_step", "grok_step",
                   "grok_delay", "phase", "diverged", "final_train_acc", "final_test_acc"):
        assert column in runs, column
    assert len(runs) == 4 and str(runs.grok_step.dtype) == "Int64"
    curves = pd.read_parquet(out / "curves.parquet")
    assert list(curves.columns[:7]) == ["run_id", "step", "train_loss", "train_acc", "test_loss", "test_acc",
                                        "param_norm"]
    assert len(curves) == 4 * 4
    meta = json.loads((out / "meta.json").read_text())
    for key in ("versions", "devices", "compile_time_s", "wall_time_s", "run_steps_per_s"):
        assert key in meta
    assert meta["groups"][0]["precision"] == "float32" and meta["groups"][0]["matmul_precision"] == "highest"
    assert (out / "sweep.toml").read_text() == QUICK
    cores = len(os.sched_getaffinity(0))
    if cores >= 2:  # the command made one CPU device per core; the group chose a layout
        layout = meta["groups"][0]["layout"]
        # a sweep this short measures every device at width 1 and nothing more: more would not pay
        assert {k: list(v) for k, v in layout["run_steps_per_s"].items()} == {f"{cores} devices": ["1"]}
        assert set(layout["not_measured"]["1 device"].values()) == {"would not pay"}
        assert meta["groups"][0]["devices"] == layout["devices"] and len(meta["devices"]) == layout["devices"]
        from grokjax import load_sweep, run_sweep  # the layout changes no result: the same grid on one device

        alone = run_sweep(load_sweep(cwd / "tiny.toml"), progress=False)
        assert "layout" not in alone.meta["groups"][0]
        pd.testing.assert_frame_equal(runs, alone.runs, check_exact=False, rtol=1e-5, atol=1e-6)


def test_run_from_python_matches_load_results(tmp_path):
    import grokjax

    path = tmp_path / "tiny.toml"
    path.write_text(QUICK)
    config = grokjax.load_sweep(path)
    results = grokjax.run_sweep(config, out=tmp_path / "r", progress=False)
    loaded = grokjax.load_results(tmp_path / "r")
    pd.testing.assert_frame_equal(loaded.runs, results.runs)
    pd.testing.assert_frame_equal(loaded.curves, results.curves)


BAD_FILES = [
    ("[optimizer]\nweight_decy = 1.0\n", "weight_decy", "weight_decay"),
    ("[task]\ndata_fraction = 1.5\n", "task.data_fraction", "< 1.0"),
    ("[task]\nname = 'addition'\n", "task.name", "did you mean 'add'"),
    ("[model]\nname = 'cnn'\n", "model.name", "mlp, transformer"),
    ("[optimizer]\nlr = 'fast'\n", "optimizer.lr", "number"),
    ("[optimizer]\nweight_decay = -1\n", "weight_decay must be", ">= 0"),
    ("[task]\np = 1\n", "p must be", ">= 2"),
    ("[task]\nname = 'nowhere:task'\n", "task.name = 'nowhere:task'", "cannot import module 'nowhere'"),
    ("[optimizer]\nname = 'lion'\nb1 = 'x'\n", "optimizer.b1", "must be a number"),
    ("[train]\nseed = 1099511627776\n", "train.seed", "<= 2147483647"),
    ("[train]\nsteps = 10000000000\n", "train.steps", "<= 1073741824"),
    ("[train]\nsteps = 0\n", "train.steps", ">= 1"),
    ("[grid]\nseed = []\n", "grid.seed", "empty"),
    ("[task\nname = 'add'\n", "TOML syntax error", "line"),
]


@pytest.mark.parametrize("text, field, hint", BAD_FILES, ids=[b[1] for b in BAD_FILES])
def test_bad_input_exits_2_with_one_clear_message(tmp_path, text, field, hint):
    (tmp_path / "bad.toml").write_text(text)
    proc = cli_in_process("run", "bad.toml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and field in proc.stderr and hint in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()


def test_overrides_are_validated_as_the_file_and_named_in_the_plan(tmp_path):
    (tmp_path / "tiny.toml").write_text(QUICK)
    proc = cli_in_process("run", "tiny.toml", "--dry-run", "--no-cache", "--set", "optimizer.lr=3e-3", "--set",
                          "grid.seed=[0,1,2]", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "(with --set optimizer.lr=3e-3 --set grid.seed=[0,1,2]) is valid: 6 runs (seed x3, data_fraction x2)" \
        in proc.stdout
    for override, named in (("optimizer.lrr=1", "unknown key 'lrr' in [optimizer] (did you mean 'lr'?)"),
                            ("grid.sed=[1]", "unknown grid axis 'sed'"), ("optimiser.lr=1", "'optimiser'"),
                            ("train.steps=45", "multiple of train.eval_every")):
        for command in ("run", "search"):
            proc = cli_in_process(command, "tiny.toml", "--set", override, "--dry-run", cwd=tmp_path)
            assert proc.returncode == 2 and named in proc.stderr and f"--set {override}" in proc.stderr, proc.stderr
            assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "engine settings: lr, " in cli_in_process("run", "tiny.toml", "--set", "optimizer.lrr=1",
                                                     cwd=tmp_path).stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_a_launch_with_overrides_saves_them_and_resumes_only_with_them(tmp_path):
    (tmp_path / "tiny.toml").write_text(QUICK.replace("steps = 40", "steps = 20"))
    sets = ["--set", "optimizer.lr=3e-3", "--set", "grid.seed=[0]"]
    common = ["--out", "res", "--quiet", "--no-cache", "--checkpoint-every", "1"]
    proc = cli_in_process("run", "tiny.toml", *sets, *common, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    saved = (tmp_path / "res" / "sweep.toml").read_text()
    assert saved.startswith("# tiny.toml with --set optimizer.lr=3e-3 --set grid.seed=[0]")
    from grokjax import load_results, load_sweep

    assert load_sweep(tmp_path / "res" / "sweep.toml") == load_sweep(tmp_path / "tiny.toml", sets[1::2])
    runs = load_results(tmp_path / "res").runs
    assert len(runs) == 2 and set(runs.lr) == {3e-3} and set(runs.seed) == {0}
    from grokjax.results import saved_grid  # readers take the grid from the saved copy

    assert saved_grid(tmp_path / "res", runs) == (("seed", (0,)), ("data_fraction", (0.3, 0.6)))
    proc = cli_in_process("summary", "res", cwd=tmp_path)
    assert proc.returncode == 0 and "2 runs, complete" in proc.stdout, proc.stderr
    # a resume with other overrides is refused as a changed file is; with the same ones (or the copy), accepted
    proc = cli_in_process("run", "tiny.toml", "--set", "optimizer.lr=1e-3", "--set", "grid.seed=[0]", *common,
                          "--resume", cwd=tmp_path)
    assert proc.returncode == 2 and "optimizer.lr: 0.003 -> 0.001" in proc.stderr and "--set" in proc.stderr
    proc = cli_in_process("run", "res/sweep.toml", *common, "--resume", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_missing_file_and_unknown_command(tmp_path):
    proc = grokjax("run", "nope.toml", cwd=tmp_path)  # a refusal through a new process: one line, nothing else
    assert proc.returncode == 2 and "not found" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = grokjax("fly", cwd=tmp_path)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_info_lists_tasks_and_settings(tmp_path):
    proc = grokjax("info", cwd=tmp_path)
    assert proc.returncode == 0
    assert "x3_xy2_y" in proc.stdout and "s5_mul" in proc.stdout and "optimizer.weight_decay" in proc.stdout


FIXED_WIDTH = "eval_every = 10\nruns_per_batch = {}"  # the quick sweep measures its vmap width; these need not
PHASE_SWEEP = QUICK.replace('name = "tiny"', 'name = "phases"').replace(
    "data_fraction = [0.3, 0.6]", "data_fraction = [0.3, 0.6]\nweight_decay = [0.1, 1.0]").replace(
    "eval_every = 10", FIXED_WIDTH.format(8))


@pytest.mark.slow
def test_run_plot_and_summary(tmp_path):
    (tmp_path / "phases.toml").write_text(PHASE_SWEEP)
    proc = grokjax("run", "phases.toml", "--out", "res", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    figures = tmp_path / "res" / "figures"
    assert {p.name for p in figures.iterdir()} == {"phase_diagram.png", "phase_map.png", "learning_curves.png",
                                                   "critical_fraction.png", "progress.png"}
    proc = cli_in_process("plot", "res", "--progress", "--cell", "data_fraction=0.6,seed=1", "--out", "one",
                          cwd=tmp_path)
    assert proc.returncode == 0 and (tmp_path / "one" / "progress.png").is_file(), proc.stderr
    for cell in ("widht=1", "seed"):
        proc = cli_in_process("plot", "res", "--progress", "--cell", cell, cwd=tmp_path)
        assert proc.returncode == 2 and cell.split("=")[0] in proc.stderr and "Traceback" not in proc.stderr
    proc = cli_in_process("plot", "res", "--metric", "final_test_acc", "--format", "svg", "--facet", "seed",
                          "--out", "svgs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "svgs" / "phase_diagram.svg").is_file()
    proc = cli_in_process("summary", "res", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "8 runs, complete" in lines[0] and "median grok_step" in lines[1] and len(lines) == 2 + 4
    proc = cli_in_process("plot", "res", "--x", "widht", cwd=tmp_path)
    assert proc.returncode == 2 and "widht" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli_in_process("plot", "nothing_here", cwd=tmp_path)
    assert proc.returncode == 2 and "not a grokjax results folder" in proc.stderr


@pytest.mark.slow
def test_a_running_sweep_can_be_plotted(tmp_path):
    import grokjax as gj

    (tmp_path / "phases.toml").write_text(PHASE_SWEEP.replace("steps = 40", "steps = 80"))
    seen = []

    def on_round(info):
        if not seen:  # after the first round trip: partial results are on disk
            meta = json.loads((tmp_path / "res" / "meta.json").read_text())
            seen.append(meta["complete"])
            proc = grokjax("plot", "res", cwd=tmp_path)
            seen.append((proc.returncode, proc.stdout))

    gj.run_sweep(gj.load_sweep(tmp_path / "phases.toml"), out=tmp_path / "res", progress=on_round,
                 write_every_s=0)
    assert seen[0] is False
    assert seen[1][0] == 0 and "partial results" in seen[1][1]
    assert json.loads((tmp_path / "res" / "meta.json").read_text())["complete"] is True


@pytest.mark.slow
def test_seed_only_sweep_gets_learning_curves(tmp_path):
    (tmp_path / "seeds.toml").write_text(QUICK.replace("data_fraction = [0.3, 0.6]\n", "").replace(
        "eval_every = 10", FIXED_WIDTH.format(2)))
    proc = grokjax("run", "seeds.toml", "--out", "res", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "res" / "figures").iterdir()) == ["learning_curves.png", "progress.png"]
    proc = cli_in_process("summary", "res", cwd=tmp_path)
    assert proc.returncode == 0 and "seed" in proc.stdout.splitlines()[1]


@pytest.mark.slow
def test_second_launch_uses_the_compilation_cache(quick_launches):
    cwd, first, second = quick_launches
    for proc, out in ((first, cwd / "results" / "tiny"), (second, cwd / "b")):
        assert proc.returncode == 0, proc.stderr
        meta = json.loads((out / "meta.json").read_text())
        assert meta["compilation_cache"].endswith("cache")
    assert any((cwd / "cache").iterdir())
    # the vmap width measured by the first launch is remembered beside the cache
    assert meta["groups"][0]["runs_per_batch_choice"]["source"] == "measured earlier"
    # results do not depend on whether the program came from the cache
    a, b = (pd.read_parquet(out / "curves.parquet") for out in (cwd / "results" / "tiny", cwd / "b"))
    pd.testing.assert_frame_equal(a, b)
