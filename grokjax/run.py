"""Running a whole sweep: group the grid by static settings, train each group, write results."""

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
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh
import pandas as pd

from grokjax.checkpoint import SweepCheckpointer, config_fingerprint
from grokjax.experiment import build_program, run_settings
from grokjax.folder import FolderLock, check_target
from grokjax.program import RUN_AXIS, Program, RunSettings, vmap_width
from grokjax.results import Results, concat_parts, curves_table, runs_table, write_results
from grokjax.scheduler import GroupState, Round, Stop, abstract_states, train_group
from grokjax.search import BoundarySearch, search_groups
from grokjax.width import choose_layout, cores_as_devices
from grokjax.sweep import SweepConfig, SweepError

_PACKAGES = ("grokjax", "jax", "jaxlib", "flax", "optax", "numpy", "pandas", "pyarrow")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def default_cache_dir() -> Path:
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
    """A one-axis mesh over the first ``devices`` devices (default: all); None for one device."""
    available = jax.devices()
    n = len(available) if devices is None else devices
    if jax.process_count() > 1 and n != len(available):
        raise SweepError("--devices cannot select devices in a multi-host run: it uses every device of every host")
    if not 1 <= n <= len(available):
        raise SweepError(f"--devices must be between 1 and {len(available)} (the devices JAX sees), got {n}")
    return None if n == 1 else Mesh(np.array(available[:n]), (RUN_AXIS,))


def group_runs(runs: list[SweepConfig]) -> list[list[int]]:
    """Run ids grouped by static settings (one compiled program each), in first-seen order."""
    groups: dict[tuple, list[int]] = {}
    for i, run in enumerate(runs):
        groups.setdefault(run.static_key(), []).append(i)
    return list(groups.values())


class ProgressLine:
    """One status line on stderr: rewritten in place on a terminal, a new line every few
    seconds otherwise (logs of batch jobs)."""

    def __init__(self, total_steps: int, n_groups: int, stream=sys.stderr, every_s: float = 5.0):
        self.total, self.n_groups, self.stream, self.every_s = total_steps, n_groups, stream, every_s
        self.tty = stream.isatty()
        self.last = -float("inf")

    def __call__(self, info: dict, group: int = 0) -> None:
        now = time.perf_counter()
        final = info.get("last", False)
        if not self.tty and not final and now - self.last < self.every_s:
            return
        self.last = now
        rate = info["run_steps"] / max(info["seconds"], 1e-9)
        prefix = f"group {group + 1}/{self.n_groups} " if self.n_groups > 1 else ""
        line = (f"{prefix}step {info['step']:>{len(str(self.total))}}/{self.total} | "
                f"memorized {info['memorized']}/{info['runs']} | grokked {info['grokked']}/{info['runs']} | "
                f"diverged {info['diverged']} | done {info['done']} | {rate:,.0f} run-steps/s")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


class Recorder:
    """Collects each round's curves and events; writes the results folder, also part-way
    (at most every ``write_every_s``) so a running sweep can be inspected and plotted."""

    def __init__(self, config: SweepConfig, runs: list[SweepConfig], out: Path | None, sweep_text: str | None,
                 write_every_s: float = 30.0, annotate: Callable[[pd.DataFrame], pd.DataFrame] | None = None):
        self.config, self.runs, self.out, self.sweep_text = config, runs, out, sweep_text
        self.write_every_s, self.annotate = write_every_s, annotate
        self.curve_parts: list[dict] = []
        self.events: dict[int, dict] = {}  # run_id -> latest events
        self.last_write = time.perf_counter()
        self.started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    def record(self, round_: Round) -> None:
        keep = round_.metrics["recorded"]
        ids = np.broadcast_to(round_.run_ids[:, None], keep.shape)
        part = {key: value[keep] for key, value in round_.metrics.items() if key != "recorded"}
        part["run_id"] = ids[keep]
        self.curve_parts.append(part)
        for i, run_id in enumerate(round_.run_ids):
            self.events[int(run_id)] = {key: value[i] for key, value in round_.events.items()}
        if self.out is not None and time.perf_counter() - self.last_write > self.write_every_s:
            self.write(dict(complete=False))

    def host_arrays(self) -> dict[str, np.ndarray]:
        """Curves and events so far as flat arrays (a checkpoint's host item)."""
        out = {f"curve/{c}": v for c, v in concat_parts(self.curve_parts).items()} if self.curve_parts else {}
        ids = sorted(self.events)
        out["events/run_id"] = np.array(ids, dtype=np.int64)
        for key in (self.events[ids[0]] if ids else {}):
            out[f"events/{key}"] = np.array([self.events[i][key] for i in ids])
        return out

    def load(self, host: dict[str, np.ndarray]) -> None:
        curves = {k.split("/", 1)[1]: v for k, v in host.items() if k.startswith("curve/")}
        self.curve_parts = [curves] if len(curves.get("run_id", ())) else []
        fields = [k.split("/", 1)[1] for k in host if k.startswith("events/") and k != "events/run_id"]
        self.events = {int(r): {f: host[f"events/{f}"][i] for f in fields}
                       for i, r in enumerate(host.get("events/run_id", []))}

    def counts(self) -> dict[str, int]:
        """Runs memorized, grokked, diverged and finished so far, over the whole sweep."""
        ev = self.events.values()
        return dict(memorized=sum(e["memorize_step"] >= 0 for e in ev), grokked=sum(e["grok_step"] >= 0 for e in ev),
                    diverged=sum(bool(e["diverged"]) for e in ev), done=sum(bool(e["done"] | e["diverged"]) for e in ev))

    def tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        curves = curves_table(self.curve_parts)
        ids = sorted(self.events)
        events = {key: np.array([self.events[i][key] for i in ids]) for key in self.events[ids[0]]} if ids else {}
        table = runs_table(self.config, ids, [self.runs[i] for i in ids], events, curves) if ids else None
        if table is not None and self.annotate is not None:
            table = self.annotate(table)
        return table, curves

    def write(self, meta: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
        table, curves = self.tables()
        if self.out is not None and table is not None:
            write_results(self.out, table, curves, dict(name=self.config.name, config=config_fingerprint(self.config),
                                                        runs=len(self.runs), started_at=self.started, **meta),
                          self.sweep_text)
        self.last_write = time.perf_counter()
        return table, curves


class Interrupted(Exception):
    """A sweep stopped by SIGINT/SIGTERM after saving a checkpoint."""

    def __init__(self, signum: int, checkpoint: Path | None):
        self.signum, self.checkpoint = signum, checkpoint
        super().__init__(f"stopped by signal {signum}")


@dataclasses.dataclass
class Group:
    """Runs that share one program: their global ids, the program and their settings [R]."""

    run_ids: list[int]
    program: Program
    settings: RunSettings
    extend: Callable | None = None  # adds runs to the group's queue as it trains (a search)


class Session:
    """The host side of a sweep between rounds: records each round, reports progress, saves a
    checkpoint every ``checkpoint_every`` evaluations and on a stop signal."""

    def __init__(self, config: SweepConfig, recorder: Recorder, reporter: Callable | None,
                 checkpointer: SweepCheckpointer | None, checkpoint_every: int, group_meta: list[dict],
                 search=None):
        self.config, self.recorder, self.reporter, self.search = config, recorder, reporter, search
        self.mesh_size = 1  # devices of the group in progress (a checkpoint resumes on as many)
        self.checkpointer, self.checkpoint_every, self.group_meta = checkpointer, checkpoint_every, group_meta
        self.saves = max(checkpointer.steps(), default=-1) + 1 if checkpointer is not None else 0
        self.evals_since_save = 0
        self.stop_signal: list[int] = []  # filled by the signal handler

    def on_round(self, g: int, round_: Round, state: GroupState) -> None:
        self.recorder.record(round_)
        if self.reporter:
            self.reporter(dict(step=round_.step, runs=len(self.recorder.runs), **self.recorder.counts(),
                               run_steps=round_.run_steps, seconds=round_.seconds, last=round_.last), group=g)
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
                                    devices=self.mesh_size,
                                    config=config_fingerprint(self.config),
                                    **({"search": self.search.state()} if self.search is not None else {})))
        self.saves += 1
        self.evals_since_save = 0


def run_sweep(config: SweepConfig, out: str | Path | None = None, progress: bool | Callable = True,
              sweep_text: str | None = None, write_every_s: float = 30.0, devices: int | None = None,
              max_runs_per_chunk: int | None = None, checkpoint_every: int = 0, resume: bool = False,
              repack: bool = True, tune_cache: str | Path | None = "auto", overwrite: bool = False,
              search: bool = False, n_boot: int = 1000) -> Results:
    """Train every run of ``config``; with ``out``, write the results folder there (part-way
    results every ``write_every_s``, flagged ``complete: false`` in meta.json, then the final ones).

    ``progress``: True for a status line on stderr, False for none, or a callable receiving a
    dict (step, runs, memorized, grokked, diverged, done, run_steps, seconds, last) after each
    round trip; the counts cover the whole sweep so far.
    ``devices``: how many of the local devices share the run axis (default all);
    ``max_runs_per_chunk``: cap on the runs trained at once (default: what fits in memory);
    ``checkpoint_every``: evaluations between checkpoints in ``out/checkpoints`` (0: none); a
    checkpointed sweep also saves one and raises ``Interrupted`` on SIGINT or SIGTERM;
    ``resume``: continue from the newest readable checkpoint (refused if the settings changed);
    ``tune_cache``: file keeping the measured vmap widths (default: beside the persistent
    compilation cache when one is enabled; None: measure again each launch);
    ``overwrite``: replace the results of another sweep in ``out`` (refused otherwise; the same
    sweep launched again replaces its own results);
    ``search``: run the sweep's ``[search]`` instead of its grid (``grokjax.search``): the runs
    are the probes, ``Results.boundary`` the critical values (also ``out/boundary.parquet``),
    with ``n_boot`` bootstrap samples for their intervals.
    Every group's plug-ins are built and traced before anything trains or is written; ``out`` is
    locked while the sweep writes there (a second writer is refused).
    """
    if not isinstance(config, SweepConfig):
        raise SweepError(f"run_sweep needs a SweepConfig (from load_sweep or sweep_from_dict), got "
                         f"{type(config).__name__}")
    for name, value, low in (("devices", devices, 1), ("max_runs_per_chunk", max_runs_per_chunk, 1),
                             ("checkpoint_every", checkpoint_every, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise SweepError(f"{name} must be an integer >= {low}, got {value!r}")
    if not isinstance(out, (str, os.PathLike, type(None))):
        raise SweepError(f"out must be a folder path, got {type(out).__name__}")
    if tune_cache == "auto":
        cache_dir = jax.config.jax_compilation_cache_dir
        tune_cache = Path(cache_dir) / "grokjax_runs_per_batch.json" if cache_dir else None
    if (config.search is not None) != search:
        raise SweepError("this sweep file has a [search] section: run it with grokjax search (search_boundary)"
                         if not search else "the sweep file has no [search] section (axis, low, high, resolution)")
    started, t_start = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
    boundary_search = BoundarySearch(config) if search else None
    if boundary_search is not None:
        boundary_search.start()
        runs = boundary_search.runs
        groups = [Group(ids, program, run_settings([runs[i] for i in ids]), boundary_search.extend)
                  for program, ids in search_groups(boundary_search)]
    else:
        runs = config.runs()
        groups = [Group(ids, build_program(runs[ids[0]], [runs[i] for i in ids]),
                        run_settings([runs[i] for i in ids])) for ids in group_runs(runs)]
    primary = jax.process_index() == 0  # in a multi-host run, process 0 reports and writes
    out = Path(out) if out is not None else None
    if out is not None and out.exists() and not out.is_dir():
        raise SweepError(f"--out {out} exists and is not a folder")
    if resume and (out is None or checkpoint_every <= 0):
        raise SweepError("--resume needs a results folder with checkpoints (--out DIR and --checkpoint-every N > 0)")
    with FolderLock(out) if out is not None and primary else contextlib.nullcontext():
        return _train(config, runs, groups, out, primary, progress, sweep_text, write_every_s, devices,
                      max_runs_per_chunk, checkpoint_every, resume, overwrite, repack, tune_cache, started, t_start,
                      boundary_search, n_boot)


def _train(config, runs, groups, out, primary, progress, sweep_text, write_every_s, devices, max_runs_per_chunk,
           checkpoint_every, resume, overwrite, repack, tune_cache, started, t_start, search, n_boot) -> Results:
    """``run_sweep`` once its input is checked and the folder is locked."""
    recorder = Recorder(config, runs, out if primary else None, sweep_text, write_every_s,
                        search.probe_columns if search is not None else None)
    mesh = make_mesh(devices)
    checkpoints = out / "checkpoints" if out is not None and checkpoint_every > 0 else None
    restored = None
    if resume and checkpoints.exists():
        checkpointer = SweepCheckpointer(checkpoints)
        checkpointer.check_config(config)
        restored = checkpointer.restore(lambda meta: abstract_states(
            groups[meta["group"]].program, groups[meta["group"]].settings, meta["width"],
            _saved_mesh(meta, mesh)))
    if resume and restored is None:
        print(f"grokjax: --resume: no readable checkpoint in {checkpoints}; training the sweep from the start",
              file=sys.stderr)
    if out is not None and primary and restored is None:
        note = check_target(out, config_fingerprint(config), overwrite)  # another sweep's results: refused
        if note:
            print(f"grokjax: {note}", file=sys.stderr)
        if (out / "checkpoints").exists():
            shutil.rmtree(out / "checkpoints")  # a fresh start: the old checkpoints no longer apply
    checkpointer = SweepCheckpointer(checkpoints) if checkpoints is not None else None
    group_meta: list[dict] = restored.meta["group_meta"] if restored else []
    if restored:
        recorder.load(restored.host)
        if search is not None:  # the probes made before the checkpoint, and the queues they filled
            search.restore(restored.meta["search"])
            for g, group in enumerate(groups):
                group.run_ids = search.group_run_ids(g)
                group.settings = run_settings([runs[i] for i in group.run_ids])
    session = Session(config, recorder, _reporter(progress, runs, len(groups)) if primary else None,
                      checkpointer, checkpoint_every, group_meta, search)
    auto_layout = devices is None and auto_layout_available()
    used: dict = {}
    for g in range(restored.meta["group"] if restored else 0, len(groups)):
        group = groups[g]
        resume_state, group_mesh, tuned, layout = None, mesh, None, None
        requested = runs[group.run_ids[0]].train.runs_per_batch
        if restored and g == restored.meta["group"]:
            m = restored.meta
            resume_state = GroupState(restored.state, restored.host["slots"], m["next_run"], m["run_steps"],
                                      m["base_width"], m.get("runs_per_batch", 0))
            group_mesh, layout = _saved_mesh(m, mesh), dict(source="checkpoint", devices=m.get("devices"))
        elif auto_layout:  # one device per core, or one device using every core: measured per group
            n = min(len(group.run_ids), max_runs_per_chunk or len(group.run_ids))
            group_mesh, width, layout = choose_layout(group.program, group.settings, n, requested, tune_cache)
            tuned = (width, dict(source=layout["source"], run_steps_per_s=layout["run_steps_per_s"],
                                 tune_time_s=layout["tune_time_s"]))
        session.mesh_size = group_mesh.size if group_mesh is not None else 1
        with _stop_on_signals(session.stop_signal, enabled=checkpointer is not None):
            try:
                stats = train_group(group.program, group.settings, group.run_ids,
                                    lambda round_, state, g=g: session.on_round(g, round_, state), mesh=group_mesh,
                                    max_runs_per_chunk=max_runs_per_chunk, resume=resume_state, repack=repack,
                                    runs_per_batch=requested, tune_cache=tune_cache,
                                    extend=_extender(group.extend, runs), tuned=tuned)
            except Stop:
                recorder.write(dict(complete=False))
                raise Interrupted(session.stop_signal[0], checkpointer.directory) from None
        group_meta.append(dict(runs=len(group.run_ids), runs_per_batch=stats.runs_per_batch,
                               runs_per_batch_choice=stats.runs_per_batch_choice, widths=stats.widths,
                               vmap_widths=[vmap_width(w, stats.runs_per_batch, stats.devices) for w in stats.widths],
                               devices=stats.devices, compile_time_s=round(stats.compile_time_s, 3),
                               train_time_s=round(stats.train_time_s, 3), run_steps=stats.run_steps,
                               slot_steps=stats.slot_steps, precision=runs[group.run_ids[0]].train.precision,
                               matmul_precision=group.program.matmul_precision,
                               **({"layout": layout} if layout is not None else {})))
        used.update(dict.fromkeys(group_mesh.devices.flat if group_mesh is not None else jax.devices()[:1]))
    table, curves = recorder.tables()
    meta = _meta(config, runs, group_meta, table, list(used) or _devices(mesh), started, t_start,
                 restored.step if restored else None)
    boundary = None
    if search is not None:
        boundary = search.boundary(table, n_boot)
        meta["search"] = dict(axis=search.spec.axis, values=len(search.values), cells=len(search.cells),
                              probes=len(search.probes), statuses=boundary["status"].value_counts().to_dict())
    if out is not None and primary:
        write_results(out, table, curves, meta, sweep_text, boundary)
    return Results(table, curves, meta, boundary)


def _extender(extend: Callable | None, runs: list[SweepConfig]):
    """A search's ``extend`` (new run ids) as ``train_group`` takes it (ids and their settings)."""
    if extend is None:
        return None

    def add(round_: Round, finished: np.ndarray):
        ids = extend(round_, finished)
        return (ids, run_settings([runs[i] for i in ids])) if ids else None
    return add


def _reporter(progress: bool | Callable, runs: list[SweepConfig], n_groups: int):
    if progress is True:
        return ProgressLine(max(r.train.steps for r in runs), n_groups)
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
