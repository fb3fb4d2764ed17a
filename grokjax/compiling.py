"""A group's compiled programs: built ahead of time, measured, and beside training.

Each working-set size a group trains at needs its own pair of programs (the init and the
period of ``program.make_grid_period``). Compiling one costs seconds, often more than the
compute a smaller working set saves, so compilation is a budget like compute: every program is
recorded (meta.json's ``programs``: its width, devices, lowering and compiling seconds, whether
the persistent cache held it, whether a round waited for it), and a size the group is about to
need can be compiled in a background thread while the current one trains (``prefetch``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Callable

import jax
from jax.sharding import Mesh

from grokjax.program import Program, RunSettings, make_grid_init, make_grid_period, vmap_width

_THREAD = threading.local()  # persistent-cache hits of the compilations running in this thread


def _count_cache_hit(event: str, **_) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _THREAD.hits = getattr(_THREAD, "hits", 0) + 1


jax.monitoring.register_event_listener(_count_cache_hit)


@dataclasses.dataclass(frozen=True)
class Compiled:
    """The executables of one working-set size and how they were made.

    Attributes:
      init: ``settings [width] -> states``.
      period: ``(states, settings) -> (states, metrics)``, states donated.
      record: meta.json's entry (see ``compile_programs``).
    """

    init: Callable
    period: Callable
    record: dict


def compile_programs(program: Program, width: int, runs_per_batch: int, evals_per_round: int,
                     mesh: Mesh | None, settings: RunSettings) -> Compiled:
    """Lower and compile a working set's init and period.

    Args:
      program: the group's static part.
      width: slots in the working set.
      runs_per_batch: the group's vmap width (a smaller working set narrows it).
      evals_per_round: evaluations per call of the period.
      mesh: the devices (None: one).
      settings: placed per-slot settings [width]: the programs expect their shardings.

    Returns:
      The executables and their record: ``width``, ``vmap_width``, ``devices``, ``lower_s`` and
      ``compile_s`` (init and period together), ``cached`` (every executable came from the
      persistent compilation cache), ``background`` (False here; see ``Compiler``).
    """
    hits, t0 = getattr(_THREAD, "hits", 0), time.perf_counter()
    init_lowered = make_grid_init(program, width, runs_per_batch, mesh).lower(settings)
    t1 = time.perf_counter()
    init = init_lowered.compile()
    t2 = time.perf_counter()
    period_lowered = make_grid_period(program, width, runs_per_batch, evals_per_round, mesh).lower(
        init.out_info, settings)
    t3 = time.perf_counter()
    period = period_lowered.compile()
    t4 = time.perf_counter()
    devices = mesh.size if mesh is not None else 1
    record = dict(width=width, vmap_width=vmap_width(width, runs_per_batch, devices), devices=devices,
                  lower_s=round(t1 - t0 + t3 - t2, 3), compile_s=round(t2 - t1 + t4 - t3, 3),
                  cached=getattr(_THREAD, "hits", 0) - hits >= 2, background=False)
    return Compiled(init, period, record)


class Compiler:
    """The compiled programs of one group, by working-set size, made on demand or in advance.

    ``get`` returns a size's programs, compiling them now if nobody asked before; ``prefetch``
    starts compiling a size in a background thread (XLA releases Python's lock while it
    compiles), so that the round that needs it later finds it ready. ``waited_s`` is what the
    group's rounds spent waiting on compilation: the part of the budget on the critical path.
    """

    def __init__(self, build: Callable[[int], Compiled]):
        self.build = build
        self.jobs: dict[int, concurrent.futures.Future] = {}
        self.waited_s = 0.0
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None

    def prefetch(self, width: int) -> None:
        """Start compiling ``width``'s programs beside training, unless already asked for."""
        if width in self.jobs:
            return
        if self.pool is None:
            self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="grokjax-compile")

        def build() -> Compiled:
            done = self.build(width)
            return dataclasses.replace(done, record=dict(done.record, background=True))

        self.jobs[width] = self.pool.submit(build)

    def pending(self) -> bool:
        """A compilation is running or queued in the background."""
        return any(not job.done() for job in self.jobs.values())

    def estimate_s(self, width: int) -> float:
        """What ``width``'s programs would cost to compile: nothing once asked for; else what this
        group's compilations took (those that missed the persistent cache, if any did)."""
        if width in self.jobs:
            return 0.0
        done = self.records()
        slow = [r for r in done if not r["cached"]] or done
        return max((r["lower_s"] + r["compile_s"] for r in slow), default=0.0)

    def ready(self, width: int) -> bool:
        """``width``'s programs exist: a round that needs them waits for nothing."""
        return width in self.jobs and self.jobs[width].done()

    def get(self, width: int) -> Compiled:
        """``width``'s programs, compiled now (or waited for) if not yet ready.

        Raises:
          whatever compiling raised (a background compilation's error surfaces here).
        """
        t0 = time.perf_counter()
        if width not in self.jobs:
            future: concurrent.futures.Future = concurrent.futures.Future()
            future.set_result(self.build(width))
            self.jobs[width] = future
        done = self.jobs[width].result()
        waited = time.perf_counter() - t0
        self.waited_s += waited
        if "waited_s" not in done.record:  # the first round that needed it
            done.record["waited_s"] = round(waited, 3)
        return done

    def records(self) -> list[dict]:
        """Every program compiled so far, in the order asked for (a prefetch nobody used yet
        shows ``waited_s`` absent)."""
        return [job.result().record for job in self.jobs.values() if job.done() and job.exception() is None]

    def close(self) -> None:
        """Stop the background thread (the group has trained: nothing more is needed)."""
        if self.pool is not None:  # one still compiling finishes on its own and is never used
            self.pool.shutdown(wait=False, cancel_futures=True)
