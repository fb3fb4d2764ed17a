"""The benchmark suite end to end at toy size: its files and the fields scripts rely on."""

import json

import pytest

from grokjax.bench import WORKLOADS, naive_flops_per_step, run_benchmarks, workload_config


def test_naive_flops_count_the_textbook_models():
    mlp = workload_config("W2", 1, 10)  # p=97: train rows = round(0.5 * 9409) = 4704 (rounded half to even)
    rows = round(0.5 * 97 * 97)
    assert naive_flops_per_step(mlp) == 3 * rows * (2 * 256 * 512 + 2 * 512 * 97)
    nanda = workload_config("W4", 1, 10)
    per_layer = 3 * (2 * 4 * 128 * 128 + 2 * 2 * 128 * 512) + 2 * 2 * 9 * 128
    # unembedding: the 113 classes
    assert naive_flops_per_step(nanda) == 3 * round(0.5 * 113 * 113) * (per_layer + 2 * 128 * 113)
    assert set(WORKLOADS) == {"W1", "W2", "W3", "W4"}


@pytest.mark.slow  # runs the benchmark suite itself (its quick sizes)
def test_quick_suite_writes_its_report(tmp_path):
    records = run_benchmarks(tmp_path, quick=True, workloads=["W1"], runs=[1, 2], steps=2, min_seconds=0)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved == json.loads(json.dumps(records))
    required = {"workload", "implementation", "runs", "run_steps_per_s", "achieved_gflops", "device", "threads"}
    assert all(required <= set(r) for r in saved)
    implementations = {r["implementation"] for r in saved}
    assert {"matmul_ceiling", "grokjax_grid", "jax_loop_step", "jax_loop_scan"} <= implementations
    assert {r["runs"] for r in saved if r["implementation"] == "grokjax_grid"} == {1, 2}
    assert all(r["run_steps_per_s"] > 0 for r in saved if r["implementation"] != "matmul_ceiling")
    report = (tmp_path / "bench.md").read_text()
    assert report.count("| W1 |") >= 6 and "| W1 | 2 |" in report  # the table, then the ratios of the grid at 2 runs
    assert (tmp_path / "bench.png").stat().st_size > 0
    grids = [r for r in saved if r["implementation"] == "grokjax_grid"]
    assert all(r["runs_per_batch"] >= 1 and r["devices"] >= 1 for r in grids)
    assert f"| {grids[0]['devices']} x {grids[0]['runs_per_batch']} |" in report  # the layout the grid ran


@pytest.mark.slow  # the prepared device check end to end at toy sizes: every section, on the CPU
def test_the_prepared_device_check_runs_tiny_on_a_cpu(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "accelerator.py"
    spec = importlib.util.spec_from_file_location("accelerator", path)
    accelerator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(accelerator)
    assert accelerator.main(["--tiny", "--out", str(tmp_path), "--budget-s", "3600"]) == 0
    saved = json.loads((tmp_path / "accelerator.json").read_text())
    rows = saved["rows"]
    assert {r["section"] for r in rows} == {"workloads", "nanda", "search"}  # nothing skipped or failed
    assert not [r for r in rows if "error" in r]
    grids = [r for r in rows if r.get("implementation") == "grokjax_grid"]
    assert {(r["workload"], r["precision"]) for r in grids} == {(w, "float32") for w in WORKLOADS} | {
        ("W1", "tensorfloat32")}  # --tiny: TF32 on W1 alone
    assert all(r["run_steps_per_s"] > 0 and r["compile_s"] for r in grids)
    nanda, search = (next(r for r in rows if r["section"] == s) for s in ("nanda", "search"))
    assert nanda["projected_10k_s"] > 0 and search["programs"] >= 1
    table = (tmp_path / "accelerator.md").read_text()
    assert "| workloads | W1 grokjax_grid | tensorfloat32 |" in table and "full 10k-step diagram projected" in table
