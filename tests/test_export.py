import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_in_process, make_sweep

import grokjax
from grokjax.export import wandb_runs


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A finished 8-run grid (2 fractions x 2 weight decays x 2 seeds, 40 steps)."""
    out = tmp_path_factory.mktemp("export") / "tiny"
    config = make_sweep(name="tiny", train=dict(steps=40),
                        grid={"data_fraction": [0.3, 0.6], "weight_decay": [0.1, 1.0], "seed": [0, 1]})
    grokjax.run_sweep(config, out=out, progress=False, checkpoint_every=0)
    return out


def test_one_wandb_run_per_grid_run_grouped_by_cell(folder):
    results = grokjax.load_results(folder)
    runs = wandb_runs(folder)
    assert [r["config"]["run_id"] for r in runs] == list(results.runs["run_id"])
    assert len({r["group"] for r in runs}) == 4 and runs[0]["group"] == "data_fraction=0.3,weight_decay=0.1"
    for run, row in zip(runs, results.runs.to_dict("records")):
        config = run["config"]
        assert config["sweep"] == "tiny" and run["name"] == f"tiny-{row['run_id']}"
        assert (config["data_fraction"], config["weight_decay"], config["seed"], config["lr"]) == \
            (row["data_fraction"], row["weight_decay"], row["seed"], row["lr"])
        curve = results.curves[results.curves.run_id == row["run_id"]]
        assert [h["step"] for h in run["history"]] == list(curve["step"])
        assert [h["test_acc"] for h in run["history"]] == pytest.approx(list(curve["test_acc"]))
        assert run["summary"]["phase"] == row["phase"]
        assert run["summary"]["final_test_acc"] == pytest.approx(row["final_test_acc"])
        assert "grok_step" in run["summary"] and "data_fraction" not in run["summary"]
    json.dumps(runs, allow_nan=False)  # plain values only: nothing W&B would refuse


def test_without_wandb_the_error_names_the_extra(folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    proc = cli_in_process("export", folder, "--wandb", "proj", "--offline", cwd=tmp_path)
    assert proc.returncode == 2 and "pip install 'grokjax[wandb]'" in proc.stderr
    proc = cli_in_process("export", tmp_path / "nowhere", "--wandb", "proj", cwd=tmp_path)
    assert proc.returncode == 2 and "not a grokjax results folder" in proc.stderr


def offline_records(path):
    """The records of an offline run file (run-ID.wandb): W&B's log format, 32 KiB blocks of
    chunks, each with a 7-byte header (crc, length, type: 1 full, 2 first, 3 middle, 4 last),
    after a 7-byte file header."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, chunks = 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):  # a block's padding
            pos += left
            continue
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


@pytest.mark.slow
def test_offline_export_writes_runs_wandb_sync_reads(folder, tmp_path, monkeypatch):
    """Offline, one run directory per grid run; read back from its run file: the group, the
    settings as config, one history row per evaluation, the final columns in the summary."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    proc = cli_in_process("export", folder, "--wandb", "grokjax-test", "--offline", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "8 offline W&B runs" in proc.stdout and "wandb sync" in proc.stdout
    files = sorted(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 8
    expected = {r["name"]: r for r in wandb_runs(folder)}
    seen = set()
    for file in files:
        records = list(offline_records(file))
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        want = expected[run.display_name]
        assert run.project == "grokjax-test" and run.run_group == want["group"] and run.job_type == "grokjax"
        config = {u.key: json.loads(u.value_json) for u in run.config.update}
        assert {k: config[k] for k in ("data_fraction", "weight_decay", "seed", "sweep")} == \
            {k: want["config"][k] for k in ("data_fraction", "weight_decay", "seed", "sweep")}
        history = [{i.nested_key[0]: json.loads(i.value_json) for i in r.history.item}
                   for r in records if r.WhichOneof("record_type") == "history"]
        assert [h["_step"] for h in history] == [h["step"] for h in want["history"]]
        assert [h["test_acc"] for h in history] == pytest.approx([h["test_acc"] for h in want["history"]])
        summary = {(u.key or u.nested_key[0]): json.loads(u.value_json)
                   for r in records if r.WhichOneof("record_type") == "summary" for u in r.summary.update}
        assert summary["phase"] == want["summary"]["phase"]
        seen.add(run.display_name)
    assert seen == set(expected)
    sync = subprocess.run([str(Path(sys.executable).with_name("wandb")), "sync", "--dry-run", *map(str, files)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert sync.returncode == 0 and "Would sync 8 run(s)" in sync.stdout + sync.stderr, sync.stderr
