import json
import os
import re
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import cli_in_process, make_sweep

import grokjax
from grokjax.report import REPORT_FILE, diagram_data, write_report
from grokjax.report_page import MARK
from grokjax.results import write_results

pytest.importorskip("plotly")

SWEEP_TOML = """name = "tiny"
description = "a tiny grid"
[task]
name = "add"
p = 23
[grid]
data_fraction = [0.3, 0.6]
weight_decay = [0.1, 1.0]
seed = [0, 1]
"""
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A finished 8-run grid (2 fractions x 2 weight decays x 2 seeds, 60 steps) with its sweep file."""
    out = tmp_path_factory.mktemp("report") / "tiny"
    config = make_sweep(name="tiny", grid={"data_fraction": [0.3, 0.6], "weight_decay": [0.1, 1.0], "seed": [0, 1]})
    grokjax.run_sweep(config, out=out, progress=False, sweep_text=SWEEP_TOML, checkpoint_every=0)
    assert cli_in_process("plot", out, cwd=out).returncode == 0  # the figures a report embeds as they are
    return out


def page_data(text: str) -> dict:
    block = re.search(r'<script type="application/json" id="grokjax-data">(.*?)</script>', text, re.S).group(1)
    return json.loads(block)


def test_the_report_is_one_self_contained_page(folder, tmp_path):
    out = write_report(folder, tmp_path / "r.html")
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and MARK in text[:4096]
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=['\"]?(https?:)?//", text)  # nothing fetched
    assert "Plotly" in text and text.count("data:image/png;base64,") >= 3  # plotly.js inline, the figures
    for section in ("What was run", "Summary per cell", "Figures"):
        assert f"<h2>{section}</h2>" in text
    assert "a tiny grid" in text and "data_fraction = [0.3, 0.6]" in text  # description and sweep file
    data = page_data(text)
    runs = grokjax.load_results(folder).runs
    assert (data["x"], data["y"], data["xs"], data["ys"]) == ("data_fraction", "weight_decay", ["0.3", "0.6"],
                                                              ["0.1", "1"])
    assert sorted(i for ids in data["cells"].values() for i in ids) == sorted(runs["run_id"])
    assert data["columns"][:2] == ["run_id", "seed"] and data["varying"] == 1
    for run_id, c in data["curves"].items():
        assert len(c["step"]) == len(c["test_acc"]) == (grokjax.load_results(folder).curves.run_id == int(run_id)).sum()
    assert "<h2>Boundary</h2>" not in text


def test_cells_hold_their_runs(folder):
    results = grokjax.load_results(folder)
    data = diagram_data(results.runs, results.curves, "data_fraction", "weight_decay")
    runs = results.runs.set_index("run_id")
    for key, ids in data["cells"].items():
        i, j = map(int, key.split(","))
        assert len(ids) == 2 and set(runs.loc[ids, "seed"]) == {0, 1}
        assert {f"{v:g}" for v in runs.loc[ids, "data_fraction"]} == {data["xs"][j]}
        grok = runs.loc[ids, "grok_step"].astype(float)
        median = grok.median() if grok.notna().sum() * 2 > len(grok) else None  # never: most runs never grokked
        assert (data["z"][i][j] is None) == (median is None)


def test_the_cli_writes_dir_report_and_replaces_only_its_own(folder, tmp_path):
    copy = tmp_path / "res"
    shutil.copytree(folder, copy)
    for _ in range(2):  # a second report replaces the first
        proc = cli_in_process("report", copy, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert f"report in {copy / REPORT_FILE}" in proc.stdout
    mine = tmp_path / "notes.html"
    mine.write_text("<html>my notes</html>")
    proc = cli_in_process("report", copy, "--out", mine, cwd=tmp_path)
    assert proc.returncode == 2 and "was not written by grokjax report" in proc.stderr
    assert mine.read_text() == "<html>my notes</html>"
    proc = cli_in_process("report", copy, "--out", tmp_path, cwd=tmp_path)
    assert proc.returncode == 2 and "is a folder" in proc.stderr
    proc = cli_in_process("report", tmp_path / "nowhere", cwd=tmp_path)
    assert proc.returncode == 2 and "not a grokjax results folder" in proc.stderr


def test_without_plotly_the_error_names_the_extra(folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "plotly.offline", None)
    proc = cli_in_process("report", folder, "--out", tmp_path / "r.html", cwd=tmp_path)
    assert proc.returncode == 2 and "pip install 'grokjax[report]'" in proc.stderr
    assert not (tmp_path / "r.html").exists()


def test_a_search_shows_its_boundary(folder, tmp_path):
    copy = tmp_path / "search"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("figures"))  # drawn afresh, with the boundary
    (copy / "sweep.toml").write_text(SWEEP_TOML.replace("data_fraction = [0.3, 0.6]\n", "") +
                                     '[search]\naxis = "data_fraction"\nlow = 0.3\nhigh = 0.6\nresolution = 0.3\n'
                                     'by = ["weight_decay"]\n')
    nan = float("nan")
    pd.DataFrame({"weight_decay": [0.1, 1.0], "critical_value": [nan, 0.6], "low": [nan, 0.3], "high": [nan, 0.6],
                  "ci_low": [nan, 0.3], "ci_high": [nan, 0.6], "runs": [4, 4], "status": ["holds nowhere", "found"],
                  "probed_values": [[0.3, 0.6], [0.3, 0.6]]}).to_parquet(copy / "boundary.parquet")
    text = write_report(copy).read_text()
    assert "<h2>Boundary</h2>" in text and "found" in text and "probed_values" not in text
    assert "boundary.png" in text  # the boundary figure, drawn from the saved [search] as data
    assert (page_data(text)["x"], page_data(text)["y"]) == ("data_fraction", "weight_decay")


def test_a_sweep_over_seeds_only_is_one_cell(folder, tmp_path):
    results = grokjax.load_results(folder)
    runs = results.runs[(results.runs.data_fraction == 0.6) & (results.runs.weight_decay == 1.0)]
    curves = results.curves[results.curves.run_id.isin(runs.run_id)]
    write_results(tmp_path / "seeds", runs, curves, results.meta, None)
    data = page_data(write_report(tmp_path / "seeds").read_text())
    assert data["x"] == "" and data["ys"] == ["all"] and list(data["cells"].values()) == [sorted(runs.run_id)]


def _launch(playwright):
    """The system's Chromium, headless (playwright gives it a fresh profile folder of its own)."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"])


CELL_CENTRE = """([i, j]) => { const h = document.getElementById('heatmap'), L = h._fullLayout,
    r = h.getBoundingClientRect();
  return [r.left + L.xaxis._offset + L.xaxis.l2p(j), r.top + L.yaxis._offset + L.yaxis.l2p(i)]; }"""


@pytest.mark.slow
def test_in_a_browser_a_clicked_cell_opens_its_curves(folder, tmp_path):
    """Headless Chromium (the system's) opens the report offline: the phase diagram renders, and
    clicking another cell shows that cell's runs and their learning curves."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium")
    out = write_report(folder, tmp_path / "report.html")
    data = page_data(out.read_text())
    with sync_api.sync_playwright() as p:
        browser = _launch(p)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.route("**/*", lambda route: route.abort() if not route.request.url.startswith("file:")
                   else route.continue_())  # offline: anything fetched fails
        page.goto(out.as_uri())
        page.wait_for_selector("#heatmap .hm", timeout=30_000)
        start = ",".join(map(str, data["start"]))
        assert page.get_attribute("#curves", "data-cell") == start
        target = next(k for k in sorted(data["cells"]) if k != start)
        i, j = map(int, target.split(","))
        page.screenshot(path=str(tmp_path / "before.png"))
        x, y = page.evaluate(CELL_CENTRE, [i, j])
        page.mouse.click(x, y)
        page.wait_for_function(f"document.getElementById('curves').dataset.cell === '{target}'", timeout=10_000)
        ids = data["cells"][target]
        assert page.get_attribute("#curves", "data-runs") == ",".join(map(str, ids))
        assert page.locator("#curves .scatterlayer .trace").count() == 2 * len(ids)  # test and train per run
        assert page.locator("#cell-runs tr").count() == 1 + len(ids)
        title = page.inner_text("#cell-title")
        assert f"data_fraction = {data['xs'][j]}" in title and f"weight_decay = {data['ys'][i]}" in title
        page.screenshot(path=str(tmp_path / "after.png"), full_page=True)
        browser.close()
    assert errors == []
    if os.environ.get("GROKJAX_SCREENSHOTS"):  # keep them to look at
        shutil.copy(tmp_path / "after.png", Path(os.environ["GROKJAX_SCREENSHOTS"]) / "report_after.png")
