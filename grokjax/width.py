"""The vmap width of a group (how many runs one device computes at once) and, on a CPU, its
device layout, both measured.

On an accelerator a group takes the device's whole share of its runs. On a CPU the best width
depends on the model and the cache sizes: one full-batch run of a mid-sized table already fills
both cores of a small machine and vmapping many of them spills the caches, while tiny models
gain from batching. Likewise small steps run faster as one device per core, several runs side by
side, while large steps gain more from one device whose matmuls use every core. So both are
measured, remembered on disk, and recorded in meta.json.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from grokjax.program import RUN_AXIS, Program, RunSettings, RunState, over_runs

_MEASURED: dict[str, dict[str, float]] = {}  # run-steps/s per vmap width, measured in this process


@dataclasses.dataclass(frozen=True)
class _CoreDevices:
    count: int = 0  # the CPU devices grokjax made for this process, one per core (0: none)


_made = _CoreDevices()  # replaced once, by use_cores_as_devices


def use_cores_as_devices() -> int:
    """Make one CPU device per core (``jax_num_cpu_devices``), so that a group can run several
    runs side by side, one per core, when that measures faster than one device using every core.

    Only before JAX's backends start, and only where nothing else chose the count (``XLA_FLAGS``'s
    ``--xla_force_host_platform_device_count``, ``JAX_NUM_CPU_DEVICES``, an earlier
    ``jax.config.update``).

    Returns:
      The devices made (0: none); ``cores_as_devices`` tells later whether it made them.
    """
    global _made
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if (cores < 2 or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
            or jax.config.jax_num_cpu_devices != -1):
        return 0
    try:
        jax.config.update("jax_num_cpu_devices", cores)
    except RuntimeError:  # JAX raises it once its backends have started: the devices are set
        return 0
    _made = _CoreDevices(cores)
    return cores


def cores_as_devices() -> int:
    """The CPU devices ``use_cores_as_devices`` made for this process, one per core (0: it made
    none, and the devices are as the user or JAX chose them)."""
    return _made.count if _made.count and jax.config.jax_num_cpu_devices == _made.count else 0


PAYS = 0.1  # measure more widths while they cost at most this share of the group's projected training


def tune_runs_per_batch(program: Program, settings: RunSettings, per_device: int, requested: int = 0,
                        cache_file: str | os.PathLike | None = None, budget_s: float = 0.15,
                        run_steps: int | None = None) -> tuple[int, dict]:
    """The vmap width of a group, and how it was chosen (recorded in meta.json).

    An explicit ``requested`` width (``train.runs_per_batch``) wins; an accelerator takes the
    device's whole share. On a CPU the best width depends on the model and the cache sizes (one
    full-batch run of a mid-sized table fills both cores, while tiny models gain from batching),
    so it is measured (see ``choose_layout`` for how, and when measuring stops): widths 1, 8 and
    the device's share (at most 64), each as a jitted step of the group's runs mapped as the grid
    maps them, timed for about ``budget_s``; the best run-steps per second, discounted by the
    padding slots the width adds to the working set, wins (the smaller width within 3 %).

    Args:
      program, settings: the group.
      per_device: runs one device trains at once.
      requested: the width asked for (0: measure).
      cache_file: keeps measured rates, keyed by machine, versions and program, so a later
        launch measures only widths it has not seen.
      budget_s: seconds each width is timed for.
      run_steps: the group's training (runs times steps): measuring stops once it would not pay
        (None: every width is measured unless a narrower one ran faster).

    Returns:
      The width and meta.json's record of the choice.
    """
    if requested:
        return min(requested, per_device), dict(source="config")
    platform = jax.default_backend()
    if platform != "cpu" or per_device == 1:
        return per_device, dict(source="device share" if platform != "cpu" else "one run per device")
    t0 = time.perf_counter()
    found = _measure(program, settings, per_device, [(None, _candidates(per_device))], cache_file, budget_s,
                     run_steps)
    best = max(found.useful.values())
    k = min(k for (_, k), rate in found.useful.items() if rate >= 0.97 * best)
    if jax.process_count() > 1:  # every process must compile the same program: process 0 decides
        from jax.experimental import multihost_utils

        k = int(multihost_utils.broadcast_one_to_all(np.int32(k)))
    return k, dict(source="measured" if found.fresh else "measured earlier",
                   run_steps_per_s=found.rates["1 device"], **found.skipped_record("1 device"),
                   tune_time_s=round(time.perf_counter() - t0, 3))


def choose_layout(program: Program, settings: RunSettings, n_runs: int, requested: int = 0,
                  cache_file: str | os.PathLike | None = None, budget_s: float = 0.15,
                  run_steps: int | None = None) -> tuple[Mesh | None, int, dict]:
    """A CPU group's device layout and vmap width, measured: one device whose matmuls use every
    core, or every CPU device (one per core, see ``use_cores_as_devices``), each at its own best
    width (``tune_runs_per_batch``'s candidates, or ``requested``).

    Measuring a width compiles a step program (about as long as the group's own programs take),
    so it is spent where it can pay: every CPU device first, then one device; on each, widths
    from narrow to wide, stopping at the first that runs slower than the one before (wider only
    spills the caches further); and, given ``run_steps``, no width is measured once its cost
    (the last width's) would pass ``PAYS`` of the group's training projected at the best rate so
    far. A short sweep thus measures one layout and width, a long one all of them; widths
    measured earlier (the cache file) cost nothing and always count.

    Args:
      program, settings: the group.
      n_runs: runs trained at once.
      requested: the vmap width asked for (0: measure).
      cache_file, budget_s: as for ``tune_runs_per_batch``.
      run_steps: the group's training (runs times steps); None: no budget.

    Returns:
      The mesh (None for one device), the width and how they were chosen (meta.json's
      ``layout``: ``devices``, ``run_steps_per_s`` of each layout and width measured,
      ``not_measured`` with why, ``source``, ``tune_time_s``).
    """
    t0 = time.perf_counter()
    layouts = []
    for mesh in (Mesh(np.array(jax.devices()), (RUN_AXIS,)), None):
        share = -(-n_runs // _size(mesh))
        layouts.append((mesh, [min(requested, share)] if requested else _candidates(share)))
    found = _measure(program, settings, n_runs, layouts, cache_file, budget_s, run_steps)
    best = max(found.useful.values())
    n_dev, k = min(key for key, rate in found.useful.items() if rate >= 0.97 * best)  # fewer devices, narrower
    mesh = next(m for m, _ in layouts if _size(m) == n_dev)
    return mesh, k, dict(
        source=("measured" if found.fresh else "measured earlier") if not requested else "measured (width from config)",
        devices=n_dev, run_steps_per_s=found.rates, **found.skipped_record(),
        tune_time_s=round(time.perf_counter() - t0, 3))


def _candidates(per_device: int) -> list[int]:
    return sorted({1, min(8, per_device), min(per_device, 64)})


@dataclasses.dataclass
class _Found:
    """What ``_measure`` learnt: run-steps/s by layout name and width, the useful rate of each
    (devices, width) (padding slots discounted), widths left out and why, and whether anything
    was timed now."""

    rates: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    useful: dict[tuple[int, int], float] = dataclasses.field(default_factory=dict)
    skipped: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    fresh: bool = False

    def skipped_record(self, name: str | None = None) -> dict:
        left = self.skipped if name is None else self.skipped.get(name)
        return dict(not_measured=left) if left else {}


def _measure(program: Program, settings: RunSettings, n_runs: int, layouts: list[tuple[Mesh | None, list[int]]],
             cache_file: str | os.PathLike | None, budget_s: float, run_steps: int | None) -> _Found:
    """The rates of each layout's widths, in order, from this process, the disk cache, or timed
    now (then cached); a layout stops widening at the first width slower than the one before, and
    with ``run_steps`` nothing more is timed once it would not pay (see ``choose_layout``)."""
    found, disk = _Found(), _read(cache_file)
    known = {key: {**disk.get(key, {}), **_MEASURED.get(key, {})} for key in _keys(program, layouts)}
    # what timing one width cost (kept with the rates), so a later launch weighs the widths left alike
    state, spent, cost = None, 0.0, max((rates.get("cost_s", 0.0) for rates in known.values()), default=0.0)
    for mesh, widths in layouts:
        n_dev = _size(mesh)
        name, key = f"{n_dev} device{'s' if n_dev > 1 else ''}", _key(program, n_dev)
        rates, got, left = known[key], {}, {}
        for i, k in enumerate(widths):
            best = max(found.useful.values(), default=0.0)
            if str(k) not in rates:
                if best and run_steps is not None and spent + cost > PAYS * run_steps / best:
                    left[str(k)] = "would not pay"
                    continue
                if state is None:
                    state = _step_state(program, settings)
                t0 = time.perf_counter()
                rates[str(k)] = round(_run_steps_per_s(program, settings, state, k, budget_s, mesh), 1)
                cost = time.perf_counter() - t0
                spent, found.fresh, rates["cost_s"] = spent + cost, True, round(cost, 3)
            got[str(k)] = rates[str(k)]
            found.useful[(n_dev, k)] = rates[str(k)] * n_runs / (-(-n_runs // (k * n_dev)) * k * n_dev)
            if i and got[str(k)] < got.get(str(widths[i - 1]), 0.0):  # wider only spills the caches further
                left.update({str(w): f"width {k} ran slower than {widths[i - 1]}" for w in widths[i + 1:]})
                break
        _MEASURED[key] = rates
        if got:
            found.rates[name] = got
        if left:
            found.skipped[name] = left
    if found.fresh:
        _write(cache_file, known)
    return found


def _key(program: Program, n_dev: int) -> str:
    """A layout's rates are keyed by machine, versions and program (what a step costs)."""
    device = jax.devices()[0]
    return "|".join(map(str, (jax.default_backend(), device.device_kind, os.cpu_count(), jax.__version__, _version(),
                             program.cost_key) + ((f"devices={n_dev}",) if n_dev > 1 else ())))


def _keys(program: Program, layouts: list) -> list[str]:
    return [_key(program, _size(mesh)) for mesh, _ in layouts]


def _size(mesh: Mesh | None) -> int:
    return 1 if mesh is None else mesh.size


def _read(cache_file: str | os.PathLike | None) -> dict:
    if cache_file is None or not Path(cache_file).exists():
        return {}
    try:
        return json.loads(Path(cache_file).read_text())
    except (OSError, ValueError):
        return {}


def _write(cache_file: str | os.PathLike | None, rates: dict) -> None:
    if cache_file is None:
        return
    try:
        Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
        Path(cache_file).write_text(json.dumps({**_read(cache_file), **rates}, indent=1))
    except OSError:
        pass  # a cache that cannot be written only costs the next launch a measurement


def _step_state(program: Program, settings: RunSettings) -> RunState:
    """One run's state to time steps from: zeros of its shapes. A step costs the same whatever the
    values (no branch depends on them), and zeros need no program of their own (a run's init
    would compile one: about a second)."""
    shapes = jax.eval_shape(program.init_run, jax.tree.map(lambda v: np.asarray(v)[0], settings))
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def _version() -> str:
    try:
        return importlib.metadata.version("grokjax")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "source"


def _run_steps_per_s(program: Program, settings: RunSettings, state: RunState, k: int, budget_s: float,
                     mesh: Mesh | None = None) -> float:
    """Run-steps per second of a jitted step over ``k`` runs per device at vmap width ``k``, on
    one device or each device of ``mesh`` (the group's settings; the state, split and rows of its
    first run, which do not change the cost)."""
    n, runs = len(settings.seed), k * _size(mesh)
    place = (lambda x: jax.device_put(x, NamedSharding(mesh, P(RUN_AXIS)))) if mesh is not None else jnp.asarray
    hp = jax.tree.map(lambda v: place(np.asarray(v)[np.arange(runs) % n]), settings)
    states = jax.tree.map(lambda x: place(np.broadcast_to(np.asarray(x), (runs, *x.shape))), state)
    mask = jnp.arange(program.task.size) < program.train_rows
    rows = None if program.batch_size else jnp.arange(program.train_rows)
    labels = jnp.asarray(program.task.labels)  # a run's noisy labels are drawn once per period, not per step

    step = over_runs(lambda s, h: program.train_step(s, h, mask, rows, labels), runs, k, mesh)  # as the grid maps

    train = jax.jit(lambda s, h, n: jax.lax.fori_loop(0, n, lambda _, s: step(s, h), s))
    jax.block_until_ready(train(states, hp, 1))  # compiles
    t0 = time.perf_counter()
    jax.block_until_ready(train(states, hp, 1))
    n = int(np.clip(budget_s / max(time.perf_counter() - t0, 1e-6), 1, 50))
    t0 = time.perf_counter()
    jax.block_until_ready(train(states, hp, n))
    return runs * n / (time.perf_counter() - t0)


