"""The training loop of a sweep: any run source's groups trained, recorded, checkpointed, written.

``train_source(source, options)`` is the one loop: it builds and checks every group of the run
source (``grokjax.sources``) before anything trains, locks the results folder, restores a
checkpoint, then trains group after group (``scheduler.train_group``), handing each round to a
``Session`` that records it (``recording.Recorder``), reports progress and checkpoints; at the end
the source adds its own tables and ``meta.json`` entries. ``run_sweep`` is this loop over the
dense grid; ``grokjax.search.search_boundary`` over the boundary search.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib.metadata
import os
import platform
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import pandas as pd
from jax.sharding import Mesh

from grokjax.checkpoint import Restored, SweepCheckpointer, config_fingerprint
from grokjax.experiment import run_settings
from grokjax.folder import FolderLock, check_target
from grokjax.options import SweepOptions, options_from
from grokjax.program import RUN_AXIS, vmap_width
from grokjax.recording import ProgressLine, Recorder
from grokjax.results import BOUNDARY_FILE, Results, write_results
from grokjax.scheduler import GroupState, GroupStats, Layout, Round, Stop, abstract_states, train_group
from grokjax.sources import GridSource, Group, RunSource
from grokjax.sweep import SweepConfig, SweepError
from grokjax.width import choose_layout, cores_as_devices

_PACKAGES = ("grokjax", "jax", "jaxlib", "flax", "optax", "numpy", "pandas", "pyarrow")


def run_sweep(config: SweepConfig, out: str | Path | None = None, progress: bool | Callable = True,
              sweep_text: str | None = None, **options) -> Results:
    """Train every run of a sweep's grid.

    Every group's plug-ins are built and traced before anything trains or is written; ``out`` is
    locked while the sweep writes there (a second writer is refused). With ``out``, part-way
    results are written every ``write_every_s`` (``complete: false`` in meta.json), then the
    final ones. A checkpointed sweep (``checkpoint_every > 0``) also saves a checkpoint and raises
    ``Interrupted`` on SIGINT or SIGTERM.

    Args:
      config: the sweep, from ``load_sweep`` or ``sweep_from_dict`` (without ``[search]``).
      out: results folder (None: return the tables without writing them).
      progress: True for a status line on stderr, False for none, or a callable receiving a dict
        (step, runs, memorized, grokked, diverged, done, run_steps, seconds, last) after each round.
      sweep_text: the sweep file's text, saved as ``out/sweep.toml``.
      **options: the other fields of ``grokjax.options.SweepOptions`` (devices,
        max_runs_per_chunk, checkpoint_every, resume, repack, compile_ahead, tune_cache, overwrite,
        write_every_s).

    Returns:
      ``Results``: ``.runs`` (one row per run), ``.curves`` (one row per run and evaluation),
      ``.meta``.

    Raises:
      SweepError: a bad config or option, a plug-in that does not build or trace, a folder that
        holds another sweep's results (without ``overwrite``) or is locked by another launch.
      Interrupted: stopped by a signal after saving a checkpoint.

    Example:
      >>> config = grokjax.sweep_from_dict({"task": {"name": "add", "p": 23},
      ...                                   "grid": {"weight_decay": [0.3, 1.0]}})
      >>> grokjax.run_sweep(config, progress=False).runs[["weight_decay", "grok_step"]]
    """
    source = GridSource(config)
    return train_source(source, options_from(options, out=out, progress=progress, sweep_text=sweep_text))


def plan(source: RunSource, options: SweepOptions) -> tuple[list[Group], Mesh | None]:
    """What a launch checks before it trains: every group built and traced, the devices.

    Returns:
      The source's groups and the mesh the run axis is sharded over (None: one device).

    Raises:
      SweepError: a plug-in that does not build or trace; a device count JAX does not have.
    """
    return source.groups(), make_mesh(options.devices)


def train_source(source: RunSource, options: SweepOptions) -> Results:
    """Train every run of ``source`` as ``options`` say: the loop every kind of sweep shares.

    Returns:
      ``Results``, with the source's extra tables (a search's ``boundary``).

    Raises:
      SweepError, Interrupted: as ``run_sweep``.
    """
    groups, mesh = plan(source, options)
    primary = jax.process_index() == 0  # in a multi-host run, process 0 reports and writes
    with FolderLock(options.out) if options.out is not None and primary else contextlib.nullcontext():
        return Launch(source, options, groups, mesh, primary).train()


class Interrupted(Exception):
    """A sweep stopped by SIGINT/SIGTERM after saving a checkpoint."""

    def __init__(self, signum: int, checkpoint: Path | None):
        self.signum, self.checkpoint = signum, checkpoint
        super().__init__(f"stopped by signal {signum}")


class Session:
    """The host side of a sweep between rounds: records each round, reports progress, saves a
    checkpoint every ``checkpoint_every`` evaluations and on a stop signal."""

    def __init__(self, source: RunSource, recorder: Recorder, reporter: Callable | None,
                 checkpointer: SweepCheckpointer | None, checkpoint_every: int, group_meta: list[dict]):
        self.source, self.recorder, self.reporter = source, recorder, reporter
        self.mesh_size = 1  # devices of the group in progress (a checkpoint resumes on as many)
        self.checkpointer, self.checkpoint_every, self.group_meta = checkpointer, checkpoint_every, group_meta
        self.saves = max(checkpointer.steps(), default=-1) + 1 if checkpointer is not None else 0
        self.evals_since_save = 0
        self.stop_signal: list[int] = []  # filled by the signal handler

    def on_round(self, g: int, round_: Round, state: GroupState) -> None:
        self.recorder.record(round_)
        if self.reporter:
            self.reporter(dict(step=round_.step, runs=len(self.recorder.runs), **self.recorder.counts(),
                               run_steps=round_.run_steps, seconds=round_.seconds, last=round_.last,
                               **self.recorder.work()), group=g)
        if self.checkpointer is None:
            return
        self.evals_since_save += round_.evals
        if self.stop_signal or self.evals_since_save >= self.checkpoint_every:
            self.save(g, state)
        if self.stop_signal:
            raise Stop

    def save(self, g: int, state: GroupState) -> None:
        self.checkpointer.save(self.saves, state.states, {**self.recorder.host_arrays(), "slots": state.slots},
                               dict(group=g, width=len(state.slots), next_run=state.next_run,
                                    run_steps=state.run_steps, base_width=state.base_width,
                                    runs_per_batch=state.runs_per_batch, group_meta=self.group_meta,
                                    devices=self.mesh_size, config=config_fingerprint(self.source.config),
                                    source=self.source.state()))
        self.saves += 1
        self.evals_since_save = 0


class Launch:
    """One launch of a run source, once its groups are built and its folder is locked: restores a
    checkpoint, trains the groups in turn, writes the results."""

    def __init__(self, source: RunSource, options: SweepOptions, groups: list[Group], mesh: Mesh | None,
                 primary: bool):
        self.source, self.options, self.groups, self.mesh, self.primary = source, options, groups, mesh, primary
        self.started, self.t_start = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
        self.recorder = Recorder(source, options.out if primary else None, options.sweep_text,
                                 options.write_every_s)
        self.tune_cache = options.tune_cache_file(jax.config.jax_compilation_cache_dir)
        self.used: dict = {}  # devices that trained, in order

    def train(self) -> Results:
        restored = self.restore()
        self.prepare_folder(restored)
        checkpointer = SweepCheckpointer(self.options.checkpoints) if self.options.checkpoints else None
        group_meta: list[dict] = restored.meta["group_meta"] if restored else []
        reporter = _reporter(self.options.progress, self.source, len(self.groups)) if self.primary else None
        session = Session(self.source, self.recorder, reporter, checkpointer, self.options.checkpoint_every,
                          group_meta)
        first = restored.meta["group"] if restored else 0
        try:
            for g in range(first, len(self.groups)):
                group_meta.append(self.train_group(g, session, restored if g == first else None))
        finally:
            if isinstance(reporter, ProgressLine):
                reporter.close()  # a stop or an error ends the terminal's line too
        return self.finish(group_meta, restored)

    def restore(self) -> Restored | None:
        """The newest readable checkpoint when resuming (refused if the settings changed); the
        source and the groups' queues continue from it."""
        options, checkpoints = self.options, self.options.checkpoints
        restored = None
        if options.resume and checkpoints.exists():
            checkpointer = SweepCheckpointer(checkpoints)
            checkpointer.check_config(self.source.config)
            groups = self.groups
            restored = checkpointer.restore(lambda meta: abstract_states(
                groups[meta["group"]].program, groups[meta["group"]].settings, meta["width"],
                _saved_mesh(meta, self.mesh)))
        if options.resume and restored is None:
            print(f"grokjax: --resume: no readable checkpoint in {checkpoints}; training the sweep from the start",
                  file=sys.stderr)
        if restored is not None:
            # the source first: a search's restored probes are runs the recorder's history names
            queues = self.source.restore(restored.meta.get("source", restored.meta.get("search", {})))
            self.recorder.load(restored.host)
            for group, run_ids in zip(self.groups, queues):
                if group.run_ids != run_ids:  # a source that added runs before the checkpoint
                    group.run_ids = run_ids
                    group.settings = run_settings([self.source.runs[i] for i in run_ids])
        return restored

    def prepare_folder(self, restored: Restored | None) -> None:
        """A fresh start refuses another sweep's results and clears old checkpoints."""
        out = self.options.out
        if out is None or not self.primary or restored is not None:
            return
        note = check_target(out, config_fingerprint(self.source.config), self.options.overwrite)
        if note:
            print(f"grokjax: {note}", file=sys.stderr)
        if (out / "checkpoints").exists():
            shutil.rmtree(out / "checkpoints")  # a fresh start: the old checkpoints no longer apply

    def layout(self, g: int, restored: Restored | None) -> tuple[Layout, GroupState | None, dict | None]:
        """Group ``g``'s layout: a checkpoint's, one chosen by measurement (one CPU device per
        core against one device), or the mesh asked for; with the state to resume, if any."""
        group, options = self.groups[g], self.options
        requested = self.source.runs[group.run_ids[0]].train.runs_per_batch
        base = Layout(self.mesh, requested, options.max_runs_per_chunk, options.repack,
                      compile_ahead=options.compile_ahead, tune_cache=self.tune_cache)
        if restored is not None:
            m = restored.meta
            state = GroupState(restored.state, restored.host["slots"], m["next_run"], m["run_steps"],
                               m["base_width"], m.get("runs_per_batch", 0))
            return (dataclasses.replace(base, mesh=_saved_mesh(m, self.mesh)), state,
                    dict(source="checkpoint", devices=m.get("devices")))
        if options.devices is None and auto_layout_available():
            n = min(len(group.run_ids), options.max_runs_per_chunk or len(group.run_ids))
            mesh, width, layout = choose_layout(group.program, group.settings, n, requested, self.tune_cache,
                                                run_steps=len(group.run_ids) * group.program.steps)
            tuned = (width, dict(source=layout["source"], run_steps_per_s=layout["run_steps_per_s"],
                                 tune_time_s=layout["tune_time_s"]))
            return dataclasses.replace(base, mesh=mesh, tuned=tuned), None, layout
        return base, None, None

    def train_group(self, g: int, session: Session, restored: Restored | None) -> dict:
        """Train group ``g`` (from ``restored`` when it is the checkpoint's); its ``meta.json`` entry."""
        group = self.groups[g]
        layout, state, how = self.layout(g, restored)
        session.mesh_size = layout.devices
        with _stop_on_signals(session.stop_signal, enabled=session.checkpointer is not None):
            try:
                stats = train_group(group.program, group.settings, group.run_ids,
                                    lambda round_, gs: session.on_round(g, round_, gs), layout,
                                    resume=state, extend=self._extender(g))
            except Stop:
                self.recorder.write(dict(complete=False))
                raise Interrupted(session.stop_signal[0], session.checkpointer.directory) from None
        self.used.update(dict.fromkeys(layout.mesh.devices.flat if layout.mesh is not None else jax.devices()[:1]))
        return _group_meta(stats, group, self.source.runs[group.run_ids[0]], how)

    def _extender(self, g: int):
        """The source's ``extend`` for group ``g`` as ``train_group`` takes it (ids and settings)."""
        def add(round_: Round, finished: np.ndarray):
            ids = self.source.extend(g, round_, finished)
            return (ids, run_settings([self.source.runs[i] for i in ids])) if ids else None
        return add

    def finish(self, group_meta: list[dict], restored: Restored | None) -> Results:
        table, curves = self.recorder.tables()
        meta = _meta(self.source.config, self.source.runs, group_meta, table,
                     list(self.used) or _devices(self.mesh), self.started, self.t_start,
                     restored.step if restored else None)
        extra_meta, tables = self.source.finish(table)
        meta.update(extra_meta)
        if self.options.out is not None and self.primary:
            write_results(self.options.out, table, curves, meta, self.options.sweep_text, extra=tables)
        return Results(table, curves, meta, tables.get(BOUNDARY_FILE))


def _group_meta(stats: GroupStats, group: Group, first: SweepConfig, layout: dict | None) -> dict:
    """A group's entry of ``meta.json``: its widths, devices, times and precision."""
    return dict(runs=len(group.run_ids), runs_per_batch=stats.runs_per_batch,
                runs_per_batch_choice=stats.runs_per_batch_choice, widths=stats.widths,
                vmap_widths=[vmap_width(w, stats.runs_per_batch, stats.devices) for w in stats.widths],
                devices=stats.devices, compile_time_s=round(stats.compile_time_s, 3),
                train_time_s=round(stats.train_time_s, 3), run_steps=stats.run_steps,
                slot_steps=stats.slot_steps, precision=first.train.precision,
                matmul_precision=group.program.matmul_precision, programs=stats.programs,
                **({"layout": layout} if layout is not None else {}))


def package_versions() -> dict[str, str]:
    """The Python version and the versions of grokjax and the libraries it runs on."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def default_cache_dir() -> Path:
    """Where compiled programs are kept by default: ``$XDG_CACHE_HOME/grokjax/jax``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "grokjax" / "jax"


def enable_compilation_cache(path: str | Path | None = None) -> Path:
    """Keep compiled programs on disk (default: ~/.cache/grokjax/jax), so the second launch of a
    sweep with the same shapes loads its program instead of compiling it."""
    path = Path(path) if path is not None else default_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path


def make_mesh(devices: int | None = None) -> Mesh | None:
    """A one-axis mesh over the first ``devices`` devices (default: all); None for one device.

    Raises:
      SweepError: a count JAX does not have, or a selection in a multi-host run.
    """
    available = jax.devices()
    n = len(available) if devices is None else devices
    if jax.process_count() > 1 and n != len(available):
        raise SweepError("--devices cannot select devices in a multi-host run: it uses every device of every host")
    if not 1 <= n <= len(available):
        raise SweepError(f"--devices must be between 1 and {len(available)} (the devices JAX sees), got {n}")
    return None if n == 1 else Mesh(np.array(available[:n]), (RUN_AXIS,))


def _reporter(progress: bool | Callable, source: RunSource, n_groups: int):
    if progress is True:
        return ProgressLine(max(r.train.steps for r in source.runs), n_groups,
                            open_ended=source.config.search is not None)
    if callable(progress):
        return lambda info, group: progress(info)
    return None


def _devices(mesh: Mesh | None) -> list:
    return list(mesh.devices.flat) if mesh is not None else jax.devices()[:1]


def _saved_mesh(meta: dict, mesh: Mesh | None) -> Mesh | None:
    """The layout a checkpointed group trained on (its device count), so that it resumes alike."""
    n = meta.get("devices")
    if n is None or n == (mesh.size if mesh is not None else 1):
        return mesh
    return make_mesh(n)


def auto_layout_available() -> bool:
    """Whether groups choose their layout: grokjax made one CPU device per core (a single process)."""
    return cores_as_devices() > 0 and jax.default_backend() == "cpu" and jax.process_count() == 1 \
        and len(jax.devices()) > 1


def _meta(config: SweepConfig, runs: list, group_meta: list[dict], table: pd.DataFrame, devices: list,
          started: datetime.datetime, t_start: float, resumed_from: int | None) -> dict:
    train_time = sum(g["train_time_s"] for g in group_meta)
    run_steps = sum(g["run_steps"] for g in group_meta)
    return dict(
        name=config.name,
        config=config_fingerprint(config),
        complete=True,
        resumed_from_checkpoint=resumed_from,
        started_at=started.isoformat(timespec="seconds"),
        runs=len(runs),
        groups=group_meta,
        compile_time_s=round(sum(g["compile_time_s"] for g in group_meta), 3),
        tune_time_s=round(sum(g.get("runs_per_batch_choice", {}).get("tune_time_s", 0.0) for g in group_meta), 3),
        train_time_s=round(train_time, 3),
        wall_time_s=round(time.perf_counter() - t_start, 3),
        run_steps=run_steps,
        run_steps_per_s=round(run_steps / max(train_time, 1e-9), 1),
        phases=table["phase"].value_counts().to_dict(),
        compilation_cache=jax.config.jax_compilation_cache_dir,
        backend=jax.default_backend(),
        devices=[str(d) for d in devices],
        processes=jax.process_count(),
        host=dict(machine=platform.machine(), processor=platform.processor(), cpus=_cpu_count()),
        versions=package_versions(),
    )


@contextlib.contextmanager
def _stop_on_signals(flag: list, enabled: bool):
    """While training, SIGINT and SIGTERM ask for a checkpoint and a clean stop after the round."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: flag.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
