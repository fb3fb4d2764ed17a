"""No command overwrites results it did not make; two writers never share a folder."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import cli_in_process

import grokjax
from grokjax.folder import LOCK_FILE, FolderLock, check_target

TINY = """
[task]
p = 11
[model]
embed_dim = 8
width = 16
[train]
steps = 20
eval_every = 10
runs_per_batch = 2  # fixed: these tests measure no vmap width
[grid]
seed = [0, 1]
"""


def grokjax_cli(*args, cwd):
    # $XDG_CACHE_HOME (the compilation cache) is the session's, in tmp (conftest.py): TINY compiles once
    return subprocess.run([sys.executable, "-m", "grokjax", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_another_sweeps_results_are_never_overwritten(tmp_path):
    (tmp_path / "a.toml").write_text(TINY)
    # another sweep: other seeds (per-run values, so the same compiled programs as a)
    (tmp_path / "b.toml").write_text(TINY.replace("seed = [0, 1]", "seed = [2, 3]"))
    assert grokjax_cli("run", "a.toml", "--out", "res", "--quiet", cwd=tmp_path).returncode == 0
    before = pd.read_parquet(tmp_path / "res" / "runs.parquet")
    proc = grokjax_cli("run", "b.toml", "--out", "res", "--quiet", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "holds the results of sweep 'a' (2 runs, started" in proc.stderr and "complete)" in proc.stderr
    assert "--resume" in proc.stderr and "--overwrite" in proc.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "res" / "runs.parquet"), before)
    # the same sweep again replaces its own results (the README's quickstart can run twice)
    proc = grokjax_cli("run", "a.toml", "--out", "res", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0 and "the same sweep settings" in proc.stderr
    proc = grokjax_cli("run", "b.toml", "--out", "res", "--quiet", "--overwrite", cwd=tmp_path)
    assert proc.returncode == 0 and "--overwrite: replacing" in proc.stderr
    assert pd.read_parquet(tmp_path / "res" / "runs.parquet").seed.tolist() == [2, 3]
    assert not (tmp_path / "res" / LOCK_FILE).exists()


@pytest.mark.slow
def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(tmp_path):
    out = tmp_path / "res"
    with FolderLock(out):
        refused = pytest.raises(grokjax.SweepError, match=f"being written by another grokjax \\(process {os.getpid()} "
                                                          f"on {socket.gethostname()}")
        with refused, FolderLock(out):
            pass
        (tmp_path / "s.toml").write_text(TINY)
        proc = grokjax_cli("run", "s.toml", "--out", "res", cwd=tmp_path)
        assert proc.returncode == 2 and "being written by another grokjax" in proc.stderr
        assert "Traceback" not in proc.stderr and not (out / "runs.parquet").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK_FILE).write_text(json.dumps(dict(host=socket.gethostname(), pid=int(dead.stdout), since="then")))
    proc = grokjax_cli("run", "s.toml", "--out", "res", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0 and "taking over a stale lock" in proc.stderr
    assert (out / "runs.parquet").exists() and not (out / LOCK_FILE).exists()


@pytest.mark.slow
def test_two_launches_at_once_one_writes_one_is_refused(tmp_path):
    # the overlap is forced: the first launch is paused (SIGSTOP) once it holds the folder's lock,
    # the second starts while it is held, then the first continues and writes
    (tmp_path / "s.toml").write_text(TINY)
    command = [sys.executable, "-m", "grokjax", "run", "s.toml", "--out", "res", "--quiet"]
    first = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    lock, t0 = tmp_path / "res" / LOCK_FILE, time.time()
    while not lock.exists():
        assert first.poll() is None and time.time() - t0 < 300, first.communicate()
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)
    try:
        second = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2 and "being written by another grokjax" in second.stderr, second.stderr
    assert first.wait(timeout=300) == 0 and "Traceback" not in first.stderr.read() + second.stderr
    assert len(pd.read_parquet(tmp_path / "res" / "runs.parquet")) == 2


@pytest.mark.slow
def test_damaged_results_are_named_not_a_traceback(tmp_path):
    (tmp_path / "s.toml").write_text(TINY)
    assert grokjax_cli("run", "s.toml", "--out", "res", "--quiet", cwd=tmp_path).returncode == 0
    meta = tmp_path / "res" / "meta.json"
    meta.write_text(meta.read_text()[:40])
    for command in ("plot", "summary"):  # commands that only read: their main() in this process
        proc = cli_in_process(command, "res", cwd=tmp_path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "meta.json is damaged (not readable JSON" in proc.stderr
    # a damaged folder is still "results": a new sweep does not overwrite it silently
    with pytest.raises(grokjax.SweepError, match="meta.json is missing or unreadable"):
        check_target(tmp_path / "res", {}, overwrite=False)
    meta.write_text("{}")
    runs = tmp_path / "res" / "runs.parquet"
    runs.write_bytes(runs.read_bytes()[:100])
    proc = cli_in_process("summary", "res", cwd=tmp_path)
    assert proc.returncode == 2 and "runs.parquet is damaged (not a readable parquet table" in proc.stderr


@pytest.mark.slow
def test_empty_sweep_and_resume_without_checkpoints_say_what_they_do(tmp_path):
    (tmp_path / "empty.toml").write_text("# nothing yet\n")
    proc = cli_in_process("run", "empty.toml", cwd=tmp_path)  # refused on reading the file
    assert proc.returncode == 2 and "sets nothing" in proc.stderr and not (tmp_path / "results").exists()
    (tmp_path / "s.toml").write_text(TINY)
    proc = grokjax_cli("run", "s.toml", "--out", "res", "--resume", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0 and "no readable checkpoint" in proc.stderr and "from the start" in proc.stderr
    assert (tmp_path / "res" / "runs.parquet").exists()


@pytest.mark.slow
def test_dry_run_checks_everything_and_writes_nothing(tmp_path):
    (tmp_path / "s.toml").write_text(TINY)
    proc = grokjax_cli("run", "s.toml", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0 and "is valid: 2 runs" in proc.stdout and not (tmp_path / "results").exists()


def test_python_api_validates_like_the_cli(sweep):
    config = sweep()
    with pytest.raises(grokjax.SweepError, match="unknown setting 'stepz'.*did you mean 'steps'"):
        config.replace(stepz=3)
    with pytest.raises(grokjax.SweepError, match="train.steps must be >= 1"):
        config.replace(steps=0)
    with pytest.raises(grokjax.SweepError, match="run_sweep needs a SweepConfig"):
        grokjax.run_sweep({"task": {}})
    with pytest.raises(grokjax.SweepError, match="load_results needs a folder path"):
        grokjax.load_results(3)
    with pytest.raises(grokjax.SweepError, match="load_sweep needs a file path"):
        grokjax.load_sweep(None)
    with pytest.raises(grokjax.SweepError, match="max_runs_per_chunk must be an integer >= 1"):
        grokjax.run_sweep(config, max_runs_per_chunk=0)
    with pytest.raises(grokjax.SweepError, match="width must be >= 1 and <= 65536"):
        grokjax.sweep_from_dict({"model": {"width": 2**40}})
    with pytest.raises(grokjax.SweepError, match="at most 1,000,000"):
        grokjax.sweep_from_dict({"grid": {"seed": list(range(1001)), "lr": [1e-3 * (i + 1) for i in range(1001)]}})


def test_a_run_larger_than_the_device_is_refused_before_training(sweep, monkeypatch):
    import grokjax.memory as memory

    monkeypatch.setattr(memory, "device_memory_bytes", lambda device=None: 2**20)  # a 1 MiB device
    with pytest.raises(grokjax.SweepError, match="one run needs about .* GiB"):
        grokjax.run_sweep(sweep(), progress=False)
