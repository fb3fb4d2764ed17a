"""The documentation cannot drift from the code: generated reference pages are current, every
results column and meta.json key written is documented (and every documented one is written),
every sweep file shown in README.md and docs/ is valid (``grokjax run --dry-run``), and the
notebook tutorial runs."""

import importlib.util
import re
from pathlib import Path

import pytest
from conftest import cli_in_process, made_up_results, make_sweep

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
SNIPPET = re.compile(r'^(\s*)--8<-- "([^"]+)"\s*$', re.M)
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
TOML_BLOCK = re.compile(r"^(?P<indent>[ ]*)```toml\n(?P<body>.*?)^(?P=indent)```", re.M | re.S)
EXCERPT = "# excerpt"  # a block whose first line starts so is part of a sweep file, not a whole one


def _gen():
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def _resolve(text: str) -> str:
    """pymdownx.snippets' includes (``--8<-- "path"``), as the site renders them."""
    def include(m):
        body = (ROOT / m.group(2)).read_text()
        return "\n".join(m.group(1) + line if line else line for line in body.splitlines())
    return SNIPPET.sub(include, text)


def toml_blocks() -> list[tuple[str, str]]:
    blocks = []
    for page in _pages():
        for i, m in enumerate(TOML_BLOCK.finditer(_resolve(page.read_text()))):
            indent = len(m.group("indent"))
            body = "\n".join(line[indent:] for line in m.group("body").splitlines()) + "\n"
            if not body.lstrip().startswith(EXCERPT):
                blocks.append((f"{page.relative_to(ROOT)}#{i}", body))
    return blocks


def test_generated_reference_pages_are_current():
    gen = _gen()
    for name, make in gen.PAGES.items():
        committed = (DOCS / "reference" / name).read_text()
        assert committed == make(), f"docs/reference/{name} is stale: run python docs/gen_reference.py"


def test_every_setting_and_task_is_in_the_settings_reference():
    from grokjax.sweep import describe_settings
    from grokjax.tasks import TASK_NAMES

    text = (DOCS / "reference" / "settings.md").read_text()
    for row in describe_settings():
        assert f"`{row['section']}.{row['key']}`" in text, row["key"]
    guide = (DOCS / "sweep-files.md").read_text()
    for name in TASK_NAMES:
        assert f"`{name}`" in text and f"`{name}`" in guide, name


def test_every_page_is_in_the_site_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in DOCS.rglob("*"):
        if page.suffix in (".md", ".ipynb"):
            assert str(page.relative_to(DOCS)) in nav, page


@pytest.mark.parametrize("where,body", toml_blocks(), ids=[w for w, _ in toml_blocks()])
def test_every_sweep_file_shown_is_valid(where, body, tmp_path, monkeypatch):
    if "my_grokking" in body:  # the tutorial's plug-ins, found next to the file as in examples/
        monkeypatch.syspath_prepend(str(ROOT / "examples"))
    if "torch_port:" in body:  # sweeps/torch_port.py, next to sweeps/torch_init_cpu.toml
        monkeypatch.syspath_prepend(str(ROOT / "sweeps"))
    (tmp_path / "shown.toml").write_text(body)
    command = "search" if re.search(r"^\[search\]", body, re.M) else "run"
    proc = cli_in_process(command, "shown.toml", "--dry-run", "--no-cache", "--out", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 0, f"{where}: {proc.stderr}"
    assert not (tmp_path / "out").exists()


def test_the_labelled_array_analyses_run(monkeypatch, tmp_path):
    """The Python blocks of the results page's xarray section, run in order on a dataset over the
    quickstart's grid (the tables made up, as only their shape matters here)."""
    import matplotlib

    import grokjax

    matplotlib.use("Agg")
    section = (DOCS / "results.md").read_text().split("## As labelled arrays", 1)[1].split("\n## ", 1)[0]
    blocks = PYTHON_BLOCK.findall(section)
    assert len(blocks) >= 4, "the section shows the dataset and three analyses"
    config = grokjax.load_sweep(ROOT / "sweeps" / "quickstart.toml")
    results = made_up_results(config, config.runs(), evals=100)
    monkeypatch.setattr(grokjax, "load_dataset", lambda path, curves=True: results.to_xarray(curves))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/results.md", "exec"), namespace)  # noqa: S102 - the page's own code


def test_the_readme_is_short_and_shows_the_quickstart_figure():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme):
        assert (ROOT / image).is_file(), image
    assert "docs/assets/quickstart_phase_diagram.png" in readme
    assert not re.search(r"20\d\d-\d\d-\d\d", readme), "dated measurements belong on the findings pages"


def test_every_results_column_and_meta_key_is_documented(tmp_path):
    """A small sweep and a small search, both with progress measures and a transformer-free
    modular task: every column and key they write is in the results reference, and every fixed
    column documented there is written by one of them."""
    import grokjax
    from grokjax.sweep import describe_settings

    gen = _gen()
    config = make_sweep(task=dict(p=11), train=dict(steps=20, eval_every=10, progress_measures=True),
                        grid=dict(seed=[0, 1], weight_decay=[0.5, 1.0]))
    sweep = grokjax.run_sweep(config, out=tmp_path / "sweep", progress=False, tune_cache=None)
    search_config = grokjax.sweep_from_dict(dict(
        name="s", task=dict(name="add", p=11), model=dict(name="mlp", embed_dim=16, width=32),
        optimizer=dict(lr=1e-2), train=dict(steps=20, eval_every=10, progress_measures=False),
        grid=dict(weight_decay=[1.0]),
        search=dict(axis="data_fraction", low=0.3, high=0.7, resolution=0.2, seeds=2, direction="up")))
    search = grokjax.search_boundary(search_config, out=tmp_path / "search", progress=False, tune_cache=None)

    documented = {c for c, *_ in gen.RUNS_SETTINGS + gen.RUNS_EVENTS}
    documented |= {f"final_{c}" for c, *_ in gen.CURVES_COLUMNS[2:]}
    measures = {c for c, *_ in gen.CURVES_MEASURES}
    settings = {r["key"] for r in describe_settings()} | {f"{r['section']}.{r['key']}" for r in describe_settings()}
    written = set()
    for results in (sweep, search):
        for column in results.runs.columns:
            written.add(column)
            ok = column in documented or column in settings or column.removeprefix("final_") in measures
            assert ok, f"runs.parquet column {column!r} is not in docs/gen_reference.py"
        for column in results.curves.columns:
            written.add(column)
            assert column in {c for c, *_ in gen.CURVES_COLUMNS} | measures, f"curves.parquet column {column!r}"
    assert documented <= written, f"documented but not written: {documented - written}"
    boundary = set(search.boundary.columns) - set(search_config.search.by)
    assert boundary == {c for c, *_ in gen.BOUNDARY_COLUMNS if not c.startswith("<")}
    meta_keys = {k for k, _ in gen.META_KEYS}
    for results in (sweep, search):
        assert set(results.meta) <= meta_keys, set(results.meta) - meta_keys
        for group in results.meta["groups"]:
            assert set(group) <= {k for k, _ in gen.GROUP_KEYS}, set(group)
    assert set(sweep.meta) | set(search.meta) == meta_keys
    # meta.json on disk is what run_sweep returned (layout is written only when grokjax chose one)
    assert set(grokjax.load_results(tmp_path / "sweep").meta) == set(sweep.meta)


@pytest.mark.slow
def test_the_notebook_tutorial_runs(tmp_path, monkeypatch):
    from conftest import USER_XLA_FLAGS

    monkeypatch.setenv("XLA_FLAGS", USER_XLA_FLAGS)  # the kernel compiles as a reader's would (and trains faster)
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(DOCS / "tutorial.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the tutorial draws no figure"
    committed = nbformat.read(DOCS / "tutorial.ipynb", as_version=4)
    assert any("image/png" in o.get("data", {}) for c in committed.cells for o in c.get("outputs", [])), \
        "commit docs/tutorial.ipynb with its outputs (the site shows them)"
