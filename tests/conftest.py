import contextlib
import io
import os
import subprocess
import tempfile
from pathlib import Path

# Compiling hundreds of small programs is most of this suite's time on a 2-core CPU, so the
# tests compile cheaply: LLVM's optimization of XLA's own loops (not of the matmul libraries) off,
# and at that level XLA:CPU's older elemental emitters instead of its MLIR fusion emitters, which
# halves a small program's compile time again (docs/development.md). Every
# program of a test and every process it starts compile alike (see devices_env), so what a test
# compares comes from one compiler setting; grokjax's commands and benchmarks run at the default
# settings, and so do the tests that launch the command line as a user does (test_cli's quick
# launches) and the checkpoint invariants (test_checkpoint).
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
# what a user's process compiles with (pytest-xdist's workers inherit the flags from the main process)
USER_XLA_FLAGS = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if f not in TEST_XLA_FLAGS)
os.environ["XLA_FLAGS"] = " ".join((USER_XLA_FLAGS, *TEST_XLA_FLAGS)).strip()

import jax  # noqa: E402  (after XLA_FLAGS: read when the backend starts)
import pytest

import grokjax


def make_sweep(**sections):
    """A small sweep from keyword sections: make_sweep(task=dict(p=11), grid=dict(seed=[0, 1])).
    Progress measures are off unless a test turns them on (they add about 15 % to a small sweep's
    compilation; tests/test_progress.py and the CLI tests of sweep files keep them on). The vmap
    width is set (4): measuring it compiles three more programs, half of a tiny sweep's time;
    tests/test_width.py and the command-line tests measure it (``runs_per_batch=0``)."""
    raw = dict(name="test", task=dict(name="add", p=23), model=dict(name="mlp", embed_dim=32, width=64),
               optimizer=dict(lr=1e-2, weight_decay=1.0),
               train=dict(steps=60, eval_every=10, progress_measures=False, runs_per_batch=4))
    for key, value in sections.items():
        replace = key == "grid" or not isinstance(value, dict) or (key == "model" and "name" in value)
        raw[key] = value if replace else {**raw.get(key, {}), **value}
    return grokjax.sweep_from_dict(raw)


def made_up_results(config, runs, extra=None, evals: int = 2) -> grokjax.Results:
    """Results of ``runs`` (a config's, or any list of run configs) as the recorder writes them
    (``runs_table``, ``curves_table``), with events and curves made up from the run ids, for
    readers of results that need the tables' shape, not training; ``extra``: a ``probe`` column;
    ``evals``: evaluations per run, every 10 steps."""
    import numpy as np

    from grokjax.checkpoint import config_fingerprint
    from grokjax.metrics import CURVE_METRICS
    from grokjax.results import curves_table, runs_table

    ids = np.arange(len(runs))
    events = dict(memorize_step=np.where(ids % 2, 10, -1), grok_step=np.where(ids % 3 == 0, 20, -1),
                  diverged=ids == 5, diverged_step=np.where(ids == 5, 10, -1), done=ids % 3 == 0)
    steps = 10 * np.arange(1, evals + 1)
    part = {"run_id": np.repeat(ids, evals), "step": np.tile(steps, len(ids)),
            **{m: np.repeat(ids, evals) + np.tile(steps, len(ids)) / 100 for m in CURVE_METRICS}}
    curves = curves_table([part])
    table = runs_table(config, ids, runs, events, curves)
    if extra is not None:
        table.insert(1, "probe", extra)
    meta = dict(name=config.name, config=config_fingerprint(config), complete=True)
    return grokjax.Results(table, curves, meta)


@pytest.fixture
def sweep():
    return make_sweep


def pytest_configure(config):
    """One $XDG_CACHE_HOME in tmp for the whole run, made by the main process and inherited by
    pytest-xdist's workers and every process the tests start: `grokjax run` keeps its persistent
    compilation cache and measured vmap widths there, matplotlib its font cache, and nothing is
    written to the user's ~/.cache. A test about the cache itself names its own --cache-dir."""
    if hasattr(config, "workerinput"):  # a worker: the main process made it
        return
    config._grokjax_cache = tempfile.TemporaryDirectory(prefix="grokjax-test-cache-")
    config._grokjax_xdg = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = config._grokjax_cache.name


def pytest_unconfigure(config):
    if hasattr(config, "_grokjax_cache"):
        if config._grokjax_xdg is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = config._grokjax_xdg
        config._grokjax_cache.cleanup()


@pytest.fixture(scope="session", autouse=True)
def session_cache_home():
    """The run's $XDG_CACHE_HOME, and JAX's persistent compilation cache in it for the programs
    tests compile in this process. Most of this suite's time is compiling small programs, and many
    tests build the same ones (the same tiny sweep, other seeds): each compiles once per run, in
    whichever worker or child process meets it first, the others load it. Tests whose subject is
    counting compilations turn it off (``no_persistent_cache``)."""
    path = Path(os.environ["XDG_CACHE_HOME"])
    before = jax.config.jax_compilation_cache_dir
    # not the CLI's default folder, so that cli_in_process tells a command that enabled that one
    jax.config.update("jax_compilation_cache_dir", str(path / "jax-in-process"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield path
    jax.config.update("jax_compilation_cache_dir", before)


@pytest.fixture
def no_persistent_cache():
    """For a test that counts the programs a sweep compiles: no program comes from the disk."""
    jax.config.update("jax_enable_compilation_cache", False)
    yield
    jax.config.update("jax_enable_compilation_cache", True)


# XLA's own defaults, for programs compiled with ``user_compiler``: they override TEST_XLA_FLAGS
USER_COMPILER_OPTIONS = {"xla_backend_optimization_level": 3, "xla_cpu_use_fusion_emitters": True}


@contextlib.contextmanager
def compiled_as_user():
    """Within: programs compiled ahead of time (every grid program of a sweep,
    ``grokjax.compiling``) get XLA's default settings instead of the suite's cheap ones. For
    tests that train for long: a program compiled at level 0 runs several times slower (the
    quickstart's MLP period, about 5x), which costs more than its compilation saves once it trains
    for more than a second or two. Small programs (eager operations, the width measurement) keep
    the cheap settings."""
    compile_lowered = jax.stages.Lowered.compile

    def compile_as_a_user(self, compiler_options=None, **kwargs):
        return compile_lowered(self, {**USER_COMPILER_OPTIONS, **(compiler_options or {})}, **kwargs)

    jax.stages.Lowered.compile = compile_as_a_user
    try:
        yield
    finally:
        jax.stages.Lowered.compile = compile_lowered


@pytest.fixture
def user_compiler():
    """The test's grid programs compiled at XLA's default settings (``compiled_as_user``)."""
    with compiled_as_user():
        yield


def devices_env(n: int, as_user: bool = False) -> dict[str, str]:
    """The environment of a child process with ``n`` CPU devices, compiling as this one does, or
    with ``as_user`` at XLA's default optimization level, as grokjax's commands run for a user."""
    base = USER_XLA_FLAGS if as_user else os.environ.get("XLA_FLAGS", "")
    flags = f"{base} --xla_force_host_platform_device_count={n}".strip()
    return {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}


def user_env() -> dict[str, str]:
    """The environment of a child process that compiles as a user's (XLA's default level)."""
    return {**os.environ, "XLA_FLAGS": USER_XLA_FLAGS}


def cli_in_process(*args, cwd) -> subprocess.CompletedProcess:
    """``grokjax ARGS`` run in cwd through the console script's own ``main`` in this process, for
    commands that refuse their input or only read a results folder: a new process would add only
    JAX's start-up (seconds each). Exit code, stdout and stderr as ``subprocess.run`` gives them."""
    from grokjax.cli import main

    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    cache = jax.config.jax_compilation_cache_dir
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:  # argparse refuses unknown commands and flags this way
                code = e.code
    finally:
        os.chdir(here)
    # a command that got as far as enabling the compilation cache belongs in a subprocess
    assert jax.config.jax_compilation_cache_dir == cache, f"grokjax {' '.join(args)} enabled the cache in-process"
    return subprocess.CompletedProcess(["grokjax", *args], code, out.getvalue(), err.getvalue())
