"""Checkpoint and resume, end to end: a killed sweep continues to the same tables."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import devices_env

from grokjax.checkpoint import config_fingerprint, describe_changes
from grokjax.sweep import sweep_from_dict

SWEEP = """
name = "ckpt"
[task]
name = "add"
p = 23
[model]
name = "mlp"
embed_dim = 32
width = 64
[optimizer]
lr = 1e-2
[train]
steps = 600
eval_every = 10
runs_per_batch = 3
[grid]
lr = [1e-2, 1e20]
data_fraction = [0.3, 0.8]
seed = [0, 1, 2]
"""
ENV = devices_env(8, as_user=True)  # resumed = uninterrupted, at the level users compile with
# the session's compilation cache (conftest): every launch after the first loads the same executables
FLAGS = ["--devices", "2", "--max-runs-per-chunk", "6", "--checkpoint-every", "6", "--quiet"]


def grokjax_run(cwd, out, *extra):
    return subprocess.Popen([sys.executable, "-m", "grokjax", "run", "ckpt.toml", "--out", out, *FLAGS, *extra],
                            cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoints(folder: Path, n: int, proc, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        steps = [p for p in folder.glob("*") if p.name.isdigit()] if folder.exists() else []
        if len(steps) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise TimeoutError


def killed_after(cwd: Path, n_checkpoints: int, sig=signal.SIGKILL):
    """Start the sweep in cwd/res and send ``sig`` once it has saved ``n_checkpoints``."""
    (cwd / "ckpt.toml").write_text(SWEEP)
    proc = grokjax_run(cwd, "res")
    wait_for_checkpoints(cwd / "res" / "checkpoints", n_checkpoints, proc)
    proc.send_signal(sig)
    return proc


def tables(folder: Path):
    return pd.read_parquet(folder / "runs.parquet"), pd.read_parquet(folder / "curves.parquet")


@pytest.fixture(scope="module")
def uninterrupted_folder(tmp_path_factory):
    """The sweep trained without interruption (its checkpoints stay in full/checkpoints)."""
    cwd = tmp_path_factory.mktemp("full")
    (cwd / "ckpt.toml").write_text(SWEEP)
    proc = grokjax_run(cwd, "full")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    group = json.loads((cwd / "full" / "meta.json").read_text())["groups"][0]
    assert group["devices"] == 2 and group["widths"][0] == 6  # sharded and chunked (12 runs, 6 at a time)
    return cwd / "full"


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_folder):
    return tables(uninterrupted_folder)


def assert_same(folder: Path, expected):
    runs, curves = tables(folder)
    pd.testing.assert_frame_equal(runs, expected[0])
    pd.testing.assert_frame_equal(curves, expected[1])
    bad = runs[runs.lr == 1e20]
    assert bad.diverged.all() and not runs[runs.lr == 1e-2].diverged.any()  # still isolated


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, uninterrupted):
    killed_after(tmp_path, 2).wait()
    resumed = grokjax_run(tmp_path, "res", "--resume")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert_same(tmp_path / "res", uninterrupted)


# The command line with SIGINT sent to itself just after its first checkpoint: the signal always
# lands while the sweep trains (a signal from outside could arrive after its last round).
SIGINT_AFTER_FIRST_SAVE = """
import os, signal, sys
from grokjax import run
save = run.Session.save
def save_then_signal(self, g, state):
    save(self, g, state)
    if self.saves == 1:
        os.kill(os.getpid(), signal.SIGINT)
run.Session.save = save_then_signal
from grokjax.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigint_saves_and_exits_then_resumes(tmp_path, uninterrupted):
    (tmp_path / "ckpt.toml").write_text(SWEEP)
    proc = subprocess.run([sys.executable, "-c", SIGINT_AFTER_FIRST_SAVE, "run", "ckpt.toml", "--out", "res", *FLAGS],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 130 and "--resume" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert json.loads((tmp_path / "res" / "meta.json").read_text())["complete"] is False
    resumed = grokjax_run(tmp_path, "res", "--resume")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert_same(tmp_path / "res", uninterrupted)


@pytest.mark.slow
def test_truncated_checkpoint_falls_back_to_the_previous(tmp_path, uninterrupted):
    killed_after(tmp_path, 3).wait()
    folder = tmp_path / "res" / "checkpoints"
    latest = max((p for p in folder.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    for f in (latest / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # a torn write
    resumed = grokjax_run(tmp_path, "res", "--resume")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert f"checkpoint {latest.name} is unreadable" in out + err
    assert_same(tmp_path / "res", uninterrupted)


@pytest.mark.slow
def test_changed_sweep_file_is_refused(tmp_path, uninterrupted_folder):
    import shutil

    shutil.copytree(uninterrupted_folder, tmp_path / "res")  # a sweep's folder with its checkpoints
    (tmp_path / "ckpt.toml").write_text(SWEEP.replace("steps = 600", "steps = 900"))
    resumed = grokjax_run(tmp_path, "res", "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 2 and "train.steps: 600 -> 900" in err and "Traceback" not in err


def test_describe_changes():
    a = config_fingerprint(sweep_from_dict(dict(grid=dict(seed=[0, 1]))))
    b = config_fingerprint(sweep_from_dict(dict(name="other", optimizer=dict(lr=0.1), grid=dict(seed=[0, 1, 2]))))
    assert describe_changes(a, b) == ["grid.seed: [0, 1] -> [0, 1, 2]", "optimizer.lr: 0.001 -> 0.1"]


def test_a_setting_added_since_the_checkpoint_counts_as_its_default():
    # a checkpoint written before a grokjax version added settings (the LLC's, say) resumes when
    # the sweep leaves them at their defaults, and is refused when it sets one
    now = config_fingerprint(sweep_from_dict(dict(grid=dict(seed=[0, 1]))))
    before = {k: v for k, v in now.items() if not k.startswith("train.llc_") and k != "train.measures"}
    assert describe_changes(before, now) == []
    later = config_fingerprint(sweep_from_dict(dict(train=dict(measures=["logits"]), grid=dict(seed=[0, 1]))))
    assert describe_changes(before, later) == ["train.measures: '(unset)' -> ['logits']"]
