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


def tune_runs_per_batch(program: Program, settings: RunSettings, per_device: int, requested: int = 0,
                        cache_file: str | os.PathLike | None = None, budget_s: float = 0.15) -> tuple[int, dict]:
    """The vmap width of a group, and how it was chosen (recorded in meta.json).

    An explicit ``requested`` width (``train.runs_per_batch``) wins; an accelerator takes the
    device's whole share. On a CPU the best width depends on the model and the cache sizes (one
    full-batch run of a mid-sized table fills both cores, while tiny models gain from batching),
    so it is measured:
    widths 1, 8 and the device's share (at most 64), each as a jitted step of the group's first
    runs mapped as the grid maps them, timed for about ``budget_s``; the best run-steps per
    second, discounted by the padding slots the width adds to the working set, wins (the smaller
    width within 3 %). Rates are kept for the process and, with ``cache_file``, on disk, keyed by
    machine, versions and program, so a later launch measures only widths it has not seen."""
    if requested:
        return min(requested, per_device), dict(source="config")
    platform = jax.default_backend()
    if platform != "cpu" or per_device == 1:
        return per_device, dict(source="device share" if platform != "cpu" else "one run per device")
    candidates = _candidates(per_device)
    t0 = time.perf_counter()
    rates, measured = _rates(program, settings, candidates, None, cache_file, budget_s)
    # the working set is a multiple of the width: count the padding slots a width would add
    useful = {k: rates[str(k)] * per_device / (-(-per_device // k) * k) for k in candidates}
    best = max(useful.values())
    k = min(k for k in candidates if useful[k] >= 0.97 * best)
    if jax.process_count() > 1:  # every process must compile the same program: process 0 decides
        from jax.experimental import multihost_utils

        k = int(multihost_utils.broadcast_one_to_all(np.int32(k)))
    return k, dict(source="measured" if measured else "measured earlier",
                   run_steps_per_s={str(c): rates[str(c)] for c in candidates},
                   tune_time_s=round(time.perf_counter() - t0, 3))


def choose_layout(program: Program, settings: RunSettings, n_runs: int, requested: int = 0,
                  cache_file: str | os.PathLike | None = None, budget_s: float = 0.15
                  ) -> tuple[Mesh | None, int, dict]:
    """A CPU group's device layout and vmap width, measured: one device whose matmuls use every
    core, or every CPU device (one per core, see ``use_cores_as_devices``), each at its own best
    width (``tune_runs_per_batch``'s candidates, or ``requested``). Returns the mesh (None for
    one device), the width and how they were chosen (meta.json's ``layout``)."""
    devices = jax.devices()
    t0 = time.perf_counter()
    options, rates_of, fresh = {}, {}, False
    for mesh in (None, Mesh(np.array(devices), (RUN_AXIS,))):
        n_dev = 1 if mesh is None else mesh.size
        share = -(-n_runs // n_dev)
        candidates = [min(requested, share)] if requested else _candidates(share)
        rates, measured = _rates(program, settings, candidates, mesh, cache_file, budget_s)
        fresh |= measured
        name = f"{n_dev} device{'s' if n_dev > 1 else ''}"
        rates_of[name] = {str(k): rates[str(k)] for k in candidates}
        for k in candidates:  # padding slots count against a width, as for the vmap width alone
            options[(n_dev, k)] = (mesh, rates[str(k)] * n_runs / (-(-n_runs // (k * n_dev)) * k * n_dev))
    best = max(rate for _, rate in options.values())
    n_dev, k = min(key for key, (_, rate) in options.items() if rate >= 0.97 * best)  # fewer devices, narrower
    return options[(n_dev, k)][0], k, dict(
        source=("measured" if fresh else "measured earlier") if not requested else "measured (width from config)",
        devices=n_dev, run_steps_per_s=rates_of, tune_time_s=round(time.perf_counter() - t0, 3))


def _candidates(per_device: int) -> list[int]:
    return sorted({1, min(8, per_device), min(per_device, 64)})


def _rates(program: Program, settings: RunSettings, widths: list[int], mesh: Mesh | None,
           cache_file: str | os.PathLike | None, budget_s: float) -> tuple[dict[str, float], bool]:
    """Run-steps per second of each width on a layout: from this process, the disk cache, or
    measured now (then cached); and whether anything was measured."""
    device = jax.devices()[0]
    n_dev = 1 if mesh is None else mesh.size
    key = "|".join(map(str, (jax.default_backend(), device.device_kind, os.cpu_count(), jax.__version__, _version(),
                             program.cost_key) + ((f"devices={n_dev}",) if n_dev > 1 else ())))
    disk = {}
    if cache_file is not None and Path(cache_file).exists():
        try:
            disk = json.loads(Path(cache_file).read_text())
        except (OSError, ValueError):
            disk = {}
    rates = {**disk.get(key, {}), **_MEASURED.get(key, {})}
    missing = [k for k in widths if str(k) not in rates]
    if missing:
        state = jax.jit(program.init_run)(jax.tree.map(lambda v: v[0], settings))
        for k in missing:
            rates[str(k)] = round(_run_steps_per_s(program, settings, state, k, budget_s, mesh), 1)
        if cache_file is not None:
            try:
                Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
                fresh = json.loads(Path(cache_file).read_text()) if Path(cache_file).exists() else {}
                Path(cache_file).write_text(json.dumps({**fresh, key: rates}, indent=1))
            except (OSError, ValueError):
                pass  # a cache that cannot be written only costs the next launch a measurement
    _MEASURED[key] = rates
    return rates, bool(missing)


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
    n, runs = len(settings.seed), k * (mesh.size if mesh is not None else 1)
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


