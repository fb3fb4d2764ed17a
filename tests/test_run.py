"""Whole sweeps across processes: two JAX processes on localhost train one global grid."""

import socket
import subprocess
import sys

import pandas as pd
import pytest
from conftest import devices_env

from tests.test_checkpoint import SWEEP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    import grokjax

    (tmp_path / "ckpt.toml").write_text(SWEEP.replace("steps = 600", "steps = 60"))
    env = devices_env(2)
    port = free_port()
    base = [sys.executable, "-m", "grokjax", "run", "ckpt.toml", "--quiet", "--no-cache", "--checkpoint-every", "3"]
    procs = [subprocess.Popen(base + ["--out", "multi", "--coordinator", f"localhost:{port}", "--num-processes", "2",
                                      "--process-id", str(i)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in (1, 0)]
    try:
        # meanwhile (the two processes leave a core idle while they coordinate), the same sweep
        # in this one process, on one device: the reference
        grokjax.run_sweep(grokjax.load_sweep(tmp_path / "ckpt.toml"), out=tmp_path / "single", progress=False,
                          checkpoint_every=3)
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), outs
    for table in ("runs", "curves"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "multi" / f"{table}.parquet"),
                                      pd.read_parquet(tmp_path / "single" / f"{table}.parquet"), rtol=1e-4, atol=1e-5)
    meta = pd.read_json(tmp_path / "multi" / "meta.json", typ="series")
    assert meta["processes"] == 2 and len(meta["devices"]) == 4
    assert "results in" in outs[1][1] and "results in" not in outs[0][1]  # process 0 reports, 1 stays quiet
