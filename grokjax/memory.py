"""What fits on a device: the bytes of one run's state and step, read off the program, and the
working set and vmap width they allow (an accelerator's share of the runs can exceed its memory).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from grokjax.errors import SweepError
from grokjax.program import Program, RunSettings


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def bytes_per_run(program: Program, settings: RunSettings, runs_per_batch: int) -> tuple[int, int]:
    """Estimated device bytes of one run's state (parameters, optimizer state, events) and of one
    vmapped batch's step: every intermediate array of one run's traced training step and of its
    evaluation on the whole table (an upper bound on what is live at once), times the width.
    Read off the program itself, whatever the model, loss or optimizer."""
    one = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape[1:], v.dtype), settings)
    shapes = jax.eval_shape(program.init_run, one)
    state = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))
    mask = jax.ShapeDtypeStruct((program.task.size,), jnp.bool_)
    step = jax.make_jaxpr(lambda s, h, m: program.train_step(s, h, m))(shapes, one, mask)
    evaluation = jax.make_jaxpr(program.evaluate)(shapes.params, mask)
    return int(state), (_intermediate_bytes(step.jaxpr) + _intermediate_bytes(evaluation.jaxpr)) * runs_per_batch


def _intermediate_bytes(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            aval = var.aval
            if hasattr(aval, "shape") and hasattr(aval, "dtype"):
                total += int(np.prod(aval.shape, dtype=np.int64)) * aval.dtype.itemsize
        for param in eqn.params.values():  # nested programs (jit, custom_jvp, ...) count too
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += _intermediate_bytes(inner)
    return total


def device_memory_bytes(device: jax.Device | None = None) -> int:
    """Memory of one device: an accelerator's own, or the host's physical memory for a CPU."""
    device = device or jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def chunk_width(program: Program, settings: RunSettings, runs_per_batch: int, n_devices: int = 1,
                max_runs: int | None = None, memory_fraction: float = 0.5) -> int:
    """How many runs a group trains at once (its working set): as many as fit ``memory_fraction``
    of one device's memory per device share, capped by ``max_runs``, and a multiple of
    ``runs_per_batch x n_devices``: every run then goes through the same vmap width, so its
    numbers do not depend on how the grid was chunked."""
    unit, n_runs = runs_per_batch * n_devices, len(settings.seed)
    state, step = bytes_per_run(program, settings, runs_per_batch)
    offered = memory_fraction * device_memory_bytes()
    budget = offered - step
    if budget < state and runs_per_batch > 1:  # say so before XLA fails to allocate
        raise SweepError(f"train.runs_per_batch = {runs_per_batch} runs vmapped together need about "
                         f"{(state + step) / 2**30:.1f} GiB (their parameters, optimizer states and one step's "
                         f"activations) and the device offers {offered / 2**30:.1f} GiB: set train.runs_per_batch "
                         f"lower (one run needs about {(state + step / runs_per_batch) / 2**30:.1f} GiB)")
    if budget < state:
        raise SweepError(f"one run needs about {(state + step) / 2**30:.1f} GiB (parameters, "
                         f"optimizer state and one step's activations) and the device offers "
                         f"{offered / 2**30:.1f} GiB: use a smaller model or task, a batch_size, or a device with "
                         f"more memory")
    fit = max(1, int(budget // max(state, 1))) * n_devices
    width = min(n_runs, fit, max_runs or n_runs)
    return max(unit, ceil_div(width, unit) * unit)


def fit_vmap_width(program: Program, settings: RunSettings, runs_per_batch: int,
                   memory_fraction: float = 0.5) -> int:
    """The vmap width halved until that many runs (states and one step's activations) fit
    ``memory_fraction`` of a device: an accelerator's width is its whole share of the runs, which
    for a large model can exceed its memory."""
    state, step = bytes_per_run(program, settings, 1)
    budget, k = memory_fraction * device_memory_bytes(), runs_per_batch
    while k > 1 and k * (state + step) > budget:
        k = ceil_div(k, 2)
    return k
