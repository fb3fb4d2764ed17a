"""The vmap width of a group: how many runs one device computes at once, measured on a CPU.

On an accelerator a group takes the device's whole share of its runs. On a CPU the best width
depends on the model and the cache sizes: one full-batch run of a mid-sized table already fills
both cores of a small machine and vmapping many of them spills the caches, while tiny models
gain from batching. So the width is measured, remembered on disk, and recorded in meta.json.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from grokjax.program import Program, RunSettings, RunState, map_runs

_MEASURED: dict[str, dict[str, float]] = {}  # run-steps/s per vmap width, measured in this process


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
    candidates = sorted({1, min(8, per_device), min(per_device, 64)})
    device = jax.devices()[0]
    key = "|".join(map(str, (platform, device.device_kind, os.cpu_count(), jax.__version__, _version(),
                             program.cost_key)))
    disk = {}
    if cache_file is not None and Path(cache_file).exists():
        try:
            disk = json.loads(Path(cache_file).read_text())
        except (OSError, ValueError):
            disk = {}
    rates = {**disk.get(key, {}), **_MEASURED.get(key, {})}
    missing = [k for k in candidates if str(k) not in rates]
    t0 = time.perf_counter()
    if missing:
        state = jax.jit(program.init_run)(jax.tree.map(lambda v: v[0], settings))
        for k in missing:
            rates[str(k)] = round(_run_steps_per_s(program, settings, state, k, budget_s), 1)
        if cache_file is not None:
            try:
                Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
                fresh = json.loads(Path(cache_file).read_text()) if Path(cache_file).exists() else {}
                Path(cache_file).write_text(json.dumps({**fresh, key: rates}, indent=1))
            except (OSError, ValueError):
                pass  # a cache that cannot be written only costs the next launch a measurement
    _MEASURED[key] = rates
    # the working set is a multiple of the width: count the padding slots a width would add
    useful = {k: rates[str(k)] * per_device / (-(-per_device // k) * k) for k in candidates}
    best = max(useful.values())
    k = min(k for k in candidates if useful[k] >= 0.97 * best)
    if jax.process_count() > 1:  # every process must compile the same program: process 0 decides
        from jax.experimental import multihost_utils

        k = int(multihost_utils.broadcast_one_to_all(np.int32(k)))
    return k, dict(source="measured" if missing else "measured earlier",
                   run_steps_per_s={str(c): rates[str(c)] for c in candidates},
                   tune_time_s=round(time.perf_counter() - t0, 3))


def _version() -> str:
    try:
        return importlib.metadata.version("grokjax")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "source"


def _run_steps_per_s(program: Program, settings: RunSettings, state: RunState, k: int, budget_s: float) -> float:
    """Run-steps per second of a jitted step over ``k`` runs at vmap width ``k`` (the group's
    settings; the state, split and rows of its first run, which do not change the cost)."""
    n = len(settings.seed)
    hp = jax.tree.map(lambda v: v[np.arange(k) % n], settings)
    states = jax.tree.map(lambda x: jnp.broadcast_to(x, (k, *x.shape)), state)
    mask = jnp.arange(program.task.size) < program.train_rows
    rows = None if program.batch_size else jnp.arange(program.train_rows)
    labels = jnp.asarray(program.task.labels)  # a run's noisy labels are drawn once per period, not per step

    def step(states, hp):  # the steps of k runs, mapped as the grid maps them
        return map_runs(lambda s, h: program.train_step(s, h, mask, rows, labels), (states, hp), k, k)

    train = jax.jit(lambda s, h, n: jax.lax.fori_loop(0, n, lambda _, s: step(s, h), s))
    jax.block_until_ready(train(states, hp, 1))  # compiles
    t0 = time.perf_counter()
    jax.block_until_ready(train(states, hp, 1))
    n = int(np.clip(budget_s / max(time.perf_counter() - t0, 1e-6), 1, 50))
    t0 = time.perf_counter()
    jax.block_until_ready(train(states, hp, n))
    return k * n / (time.perf_counter() - t0)


