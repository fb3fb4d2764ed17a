"""The scheduler: a group's runs through a working set of slots, on one or many devices.

A group is runs that share one ``Program``. The scheduler chooses how many runs a device maps
at once (the vmap width, measured on a CPU), how many it trains at once (what fits in memory),
places them on the devices, refills a finished run's slot from the queue, repacks the survivors
into smaller buckets as the queue empties, and hands each host round trip to a callback that
records, reports and checkpoints. Runs are independent, so none of this changes any result.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from grokjax.compiling import Compiled, Compiler, compile_programs
from grokjax.memory import ceil_div, chunk_width, fit_vmap_width
from grokjax.program import RUN_AXIS, Program, RunSettings, RunState, make_grid_init, select_tree
from grokjax.width import tune_runs_per_batch


def evals_per_call(n_evals: int, target: int = 25, multiple: int = 1) -> int:
    """Evaluations per host round trip: a divisor of ``n_evals`` giving about ``target`` round
    trips, so progress updates often and the program is compiled once; a multiple of ``multiple``
    (the LLC's cadence, a divisor of ``n_evals``), so every period's cadence is every run's."""
    want = max(1, math.ceil(n_evals / target))
    return min(d for d in range(want, n_evals + 1) if n_evals % d == 0 and d % multiple == 0)


def put_runs(x: np.ndarray, sharding: NamedSharding | None) -> jax.Array:
    """A host array (the same on every process) onto the devices, its run axis sharded."""
    if sharding is None:
        return jax.device_put(x)
    # from a callback, so that each process places only the shards of its own devices
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def to_host(tree):
    """Device arrays -> numpy, gathering the shards of every process of a multi-host run."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, jax.device_get(tree))
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def bucket_sizes(width: int, unit: int, floor: int = 1) -> list[int]:
    """Working-set sizes a group shrinks through as its runs finish: width, width/2, width/4,
    ... down to ``floor`` (the devices: each keeps an equal share), in multiples of ``unit`` (the
    vmap width times the devices) while at least ``unit``, so finished runs stop costing compute
    at the price of one compilation per bucket reached (cached on disk). Below ``unit`` a bucket
    also narrows the vmap width: on an accelerator, where the vmap width is each device's whole
    share, that is the only way a bucket can shrink at all."""
    sizes = [width]
    while sizes[-1] > floor:
        half = ceil_div(sizes[-1], 2)
        step = unit if half >= unit else floor
        smaller = ceil_div(half, step) * step
        if smaller >= sizes[-1]:
            break
        sizes.append(smaller)
    return sizes


def abstract_states(program: Program, settings: RunSettings, width: int, mesh: Mesh | None = None):
    """Shapes, dtypes and shardings of a working set of ``width`` runs (a checkpoint's target);
    they do not depend on the vmap width. ``settings``: the group's (its structure is used)."""
    hp = jax.tree.map(lambda v: np.resize(v, (width,)), settings)
    shapes = jax.eval_shape(make_grid_init(program, width, width, mesh), hp)
    sharding = NamedSharding(mesh, P(RUN_AXIS)) if mesh is not None else \
        jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)


@dataclasses.dataclass
class Round:
    """What one host round trip brings back from a group (real runs only, no padding)."""

    run_ids: np.ndarray  # [r] global run ids
    metrics: dict[str, np.ndarray]  # [r, evals]: CURVE_METRICS, step, recorded
    events: dict[str, np.ndarray]  # [r]: Events fields after this round
    step: int  # the furthest step any run of the group has reached
    run_steps: int  # steps trained so far in this group, summed over runs
    seconds: float  # training time of the group so far
    evals: int  # evaluations per run in this round
    last: bool = False  # the group's final round


@dataclasses.dataclass
class GroupState:
    """Everything needed to continue a group: the working set and the queue of runs."""

    states: RunState  # [width] on device
    slots: np.ndarray  # [width] index into the group's runs, -1 for padding
    next_run: int  # runs[next_run:] have not started
    run_steps: int = 0
    base_width: int = 0  # the group's first width: the buckets it shrinks through derive from it
    runs_per_batch: int = 0  # the group's vmap width, kept so that a resumed group computes alike


@dataclasses.dataclass
class GroupStats:
    runs_per_batch: int
    widths: list[int]  # working-set sizes used, in order (chunking and repacking)
    devices: int
    compile_time_s: float
    train_time_s: float
    run_steps: int  # steps actually trained, summed over runs
    slot_steps: int  # steps computed, padding and frozen runs included
    runs_per_batch_choice: dict = dataclasses.field(default_factory=dict)  # how the width was chosen
    programs: list[dict] = dataclasses.field(default_factory=list)  # every program compiled (compiling.Compiled)


class Stop(Exception):
    """Raised by an ``on_round`` callback to stop a group after the round it was given."""


class GroupTrainer:
    """Trains every run of one group in a working set of slots; see ``train_group``."""

    def __init__(self, program: Program, settings: RunSettings, mesh: Mesh | None, runs_per_batch: int,
                 evals_per_round: int):
        self.program, self.settings, self.mesh = program, settings, mesh
        self.runs_per_batch, self.evals_per_round = runs_per_batch, evals_per_round
        self.sharding = NamedSharding(mesh, P(RUN_AXIS)) if mesh is not None else None
        self.devices = mesh.size if mesh is not None else 1
        self.compiler = Compiler(self._compile)

    def _compile(self, width: int) -> Compiled:
        # lowered against placed settings, so the programs expect the shardings they will get
        return compile_programs(self.program, width, self.runs_per_batch, self.evals_per_round, self.mesh,
                                self.slot_settings(np.full(width, -1)))

    @property
    def compile_time(self) -> float:
        """Seconds this group's rounds waited on compilation (a program compiled ahead costs none)."""
        return self.compiler.waited_s

    def programs(self, width: int):
        """The compiled init and period of a working set of ``width`` slots."""
        compiled = self.compiler.get(width)
        return compiled.init, compiled.period

    def place(self, tree):
        return jax.tree.map(lambda x: put_runs(np.asarray(x), self.sharding), tree)

    def slot_settings(self, slots: np.ndarray) -> RunSettings:
        """Settings of each slot, placed; padding slots (-1) repeat run 0's and never train."""
        return self.place(jax.tree.map(lambda v: v[np.maximum(slots, 0)], self.settings))

    def start(self, states: RunState | None, slots: np.ndarray, fresh: np.ndarray) -> RunState:
        """Initialize the slots marked ``fresh`` (new runs or padding), keep the others."""
        init, _ = self.programs(len(slots))
        new = init(self.slot_settings(slots))
        new = new.replace(step=jnp.where(self.place(slots < 0), self.program.steps, new.step))
        return new if states is None else select_tree(self.place(fresh), new, states)

    def resize(self, group: GroupState, keep: np.ndarray, size: int) -> GroupState:
        """The runs in slots ``keep`` moved into a working set of ``size`` slots, the rest padding."""
        slots = np.full(size, -1)
        slots[:len(keep)] = group.slots[keep]
        fresh = to_host(self.start(None, slots, np.ones(size, bool)))
        old = to_host(group.states)
        moved = jax.tree.map(lambda new, was: np.concatenate([was[keep], new[len(keep):]]), fresh, old)
        return GroupState(self.place(moved), slots, group.next_run, group.run_steps, group.base_width,
                          group.runs_per_batch)

    def round(self, group: GroupState) -> tuple[RunState, dict, dict, np.ndarray, np.ndarray]:
        """One host round trip: train the working set ``evals_per_round`` evaluations; returns the
        new states, metrics [slots, evals], events, steps and which slots finished."""
        _, period = self.programs(len(group.slots))
        before = to_host(group.states.step)
        states, metrics = period(group.states, self.slot_settings(group.slots))
        metrics, events, step = to_host((metrics, states.events, states.step))
        events = {f.name: np.asarray(getattr(events, f.name)) for f in dataclasses.fields(events)}
        finished = (step >= self.program.steps) | events["diverged"] | (events["done"] & self.program.rule.stop_early)
        group.run_steps += int((step - before)[group.slots >= 0].sum())
        return states, metrics, events, step, finished


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a group's runs are laid out and scheduled (nothing here changes a result).

    Attributes:
      mesh: the devices sharing the run axis (None: one device).
      runs_per_batch: the vmap width asked for (0: chosen by ``tune_runs_per_batch``).
      max_runs_per_chunk: cap on the runs trained at once (None: what fits in memory).
      repack: shrink the working set as runs finish, when the compute saved pays for the
        program a smaller set needs (False keeps its width).
      compile_ahead: compile the smaller set's programs in a background thread while the current
        one trains (False: compile when needed, the round waiting; "auto": see ``compiles_ahead``).
      tune_cache: file keeping measured vmap widths (None: measure each time).
      tuned: the vmap width and how it was chosen, when the caller measured it (``choose_layout``).
    """

    mesh: Mesh | None = None
    runs_per_batch: int = 0
    max_runs_per_chunk: int | None = None
    repack: bool = True
    compile_ahead: bool | str = "auto"
    tune_cache: str | os.PathLike | None = None
    tuned: tuple[int, dict] | None = None

    @property
    def devices(self) -> int:
        return self.mesh.size if self.mesh is not None else 1


Extend = Callable[[Round, np.ndarray], "tuple[list[int], RunSettings] | None"]


def compiles_ahead(layout: Layout, runs_per_batch: int) -> bool:
    """Whether a group compiles its smaller working sets in a background thread.

    ``compile_ahead="auto"``: yes on an accelerator, whose host cores are free while it trains;
    on a CPU only at vmap width 1, where a step is many small kernels, one run after another,
    that leave the cores room. A wider vmap's kernels keep every core busy, and a background
    compilation slows each round it overlaps, so there the round that shrinks waits for it
    (``benchmarks/repack.py``; the measurements are on the benchmarks page).
    """
    if layout.compile_ahead != "auto":
        return bool(layout.compile_ahead)
    return jax.default_backend() != "cpu" or runs_per_batch == 1


def group_vmap_width(program: Program, settings: RunSettings, n_runs: int, layout: Layout,
                     resume: GroupState | None = None) -> tuple[int, dict]:
    """The vmap width of a group and how it was chosen: a checkpoint's, the caller's measurement,
    the config's, or measured here; a width chosen here is halved until it fits the device. It
    never exceeds one device's share of the working set."""
    if resume is not None and resume.runs_per_batch:
        return resume.runs_per_batch, dict(source="checkpoint")
    if layout.tuned is not None:
        per_batch, choice = layout.tuned
    else:
        per_device = ceil_div(min(n_runs, layout.max_runs_per_chunk or n_runs), layout.devices)
        per_batch, choice = tune_runs_per_batch(program, settings, per_device, layout.runs_per_batch,
                                                layout.tune_cache, run_steps=n_runs * program.steps)
    if choice.get("source") not in ("config", "checkpoint"):
        fitted = fit_vmap_width(program, settings, per_batch)
        if fitted < per_batch:
            per_batch, choice = fitted, dict(choice, memory_capped_from=per_batch)
    return per_batch, choice


class GroupQueue:
    """A group's working set and its queue of runs between rounds: refills finished slots from
    the queue, takes runs added while training, repacks the survivors into smaller buckets once
    the queue is empty, and grows back through the buckets when new runs arrive."""

    def __init__(self, trainer: GroupTrainer, run_ids: list[int], group: GroupState, repack: bool,
                 extend: Extend | None, compile_ahead: bool = False):
        self.trainer, self.run_ids, self.group, self.repack, self.extend = trainer, run_ids, group, repack, extend
        self.compile_ahead = compile_ahead
        self.first_width = group.base_width or len(group.slots)
        self.unit = trainer.runs_per_batch * trainer.devices
        self.widths, self.slot_steps = [len(group.slots)], 0
        self.step = np.zeros(len(group.slots), np.int64)  # each slot's steps after the last round
        self.slot_step_s = 0.0  # seconds one slot-step took in the last round (compilation excluded)

    def buckets(self) -> list[int]:
        return bucket_sizes(self.first_width, self.unit, self.trainer.devices)

    def round(self, t0: float) -> tuple[Round, np.ndarray, np.ndarray]:
        """Train one round; returns it (real runs only), which slots finished and which are real."""
        group, trainer = self.group, self.trainer
        t, waited = time.perf_counter(), trainer.compile_time
        states, metrics, events, step, finished = trainer.round(group)
        real = group.slots >= 0
        slot_steps = len(group.slots) * trainer.evals_per_round * trainer.program.eval_every
        self.slot_step_s = (time.perf_counter() - t - (trainer.compile_time - waited)) / slot_steps
        self.slot_steps += slot_steps
        self.step = step
        group.states = states
        round_ = Round(np.asarray(self.run_ids)[group.slots[real]], {key: v[real] for key, v in metrics.items()},
                       {key: v[real] for key, v in events.items()}, int(step[real].max(initial=0)),
                       group.run_steps, time.perf_counter() - t0, trainer.evals_per_round)
        return round_, finished, real

    def take_new_runs(self, round_: Round, finished: np.ndarray) -> None:
        added = self.extend(round_, finished) if self.extend is not None else None
        if added:
            self.run_ids += added[0]
            self.trainer.settings = jax.tree.map(lambda a, b: np.concatenate([a, b]), self.trainer.settings, added[1])

    def schedule(self, finished: np.ndarray, real: np.ndarray) -> bool:
        """Fill free slots from the queue, or shrink to the survivors; False once every run is done."""
        free = np.nonzero(finished | ~real)[0]
        queued = len(self.run_ids) - self.group.next_run
        if self.repack and queued > len(free) and len(self.group.slots) < self.first_width:  # grow back
            alive = np.nonzero(real & ~finished)[0]
            size = next(b for b in reversed(self.buckets()) if b >= min(len(alive) + queued, self.first_width))
            self.group = self.trainer.resize(self.group, alive, size)
            self.widths.append(size)
            free = np.nonzero(self.group.slots < 0)[0]
        n_new = min(len(free), len(self.run_ids) - self.group.next_run)
        if n_new:
            self._refill(free[:n_new])
            return True
        alive = np.nonzero(real & ~finished)[0]
        if len(alive) == 0:
            return False
        if self.repack:
            self._repack(alive, finished, real)
        return True

    def _repack(self, alive: np.ndarray, finished: np.ndarray, real: np.ndarray) -> None:
        """Shrink to the survivors once it pays: into a smaller set already compiled, or into the
        smallest that holds them when the compute it saves exceeds compiling it (ahead of time
        when ``compile_ahead``: the set is taken once its programs are ready). ``repack =
        "always"``: into the ladder's next bucket as soon as the survivors fit, whatever it costs."""
        compiler, current = self.trainer.compiler, len(self.group.slots)
        if self.repack == "always":
            smaller = [b for b in self.buckets() if b >= len(alive)][-1]
            if smaller < current:
                self._shrink(alive, finished, real, smaller)
            return
        ready = [w for w in compiler.jobs if len(alive) <= w < current and compiler.ready(w)]
        if ready:
            self._shrink(alive, finished, real, min(ready))
            return
        size = self.survivor_size(len(alive))
        if size >= current or not self.pays(current, size, alive):
            return
        if not self.compile_ahead:
            self._shrink(alive, finished, real, size)
        elif not compiler.pending():
            compiler.prefetch(size)

    def survivor_size(self, n_alive: int) -> int:
        """The smallest working set that holds ``n_alive`` runs: a multiple of the vmap width
        times the devices while at least that many remain, else of the devices alone (each
        device keeps an equal share; the vmap width narrows)."""
        devices = self.trainer.devices
        unit = self.unit if n_alive >= self.unit else devices
        return max(devices, ceil_div(n_alive, unit) * unit)

    def pays(self, current: int, size: int, alive: np.ndarray) -> bool:
        """Whether shrinking from ``current`` to ``size`` slots saves more seconds over the
        survivors' remaining budget (the last round's speed) than its programs cost to compile
        (this group's compilations so far; nothing once compiled)."""
        remaining = self.trainer.program.steps - int(self.step[alive].min())
        saved = (current - size) * remaining * self.slot_step_s
        return saved > self.trainer.compiler.estimate_s(size)

    def _refill(self, free: np.ndarray) -> None:
        group = self.group
        slots, fresh = group.slots.copy(), np.zeros(len(group.slots), bool)
        slots[free] = np.arange(group.next_run, group.next_run + len(free))
        fresh[free] = True
        self.group = GroupState(self.trainer.start(group.states, slots, fresh), slots, group.next_run + len(free),
                                group.run_steps, self.first_width, self.trainer.runs_per_batch)

    def _shrink(self, alive: np.ndarray, finished: np.ndarray, real: np.ndarray, size: int) -> None:
        group = self.group
        keep = np.concatenate([alive, np.nonzero(~real | finished)[0]])[:size]
        slots = np.where(np.isin(np.arange(len(group.slots)), alive), group.slots, -1)[keep]
        moved = jax.tree.map(lambda x: x[keep], to_host(group.states))
        self.group = GroupState(self.trainer.place(moved), slots, group.next_run, group.run_steps, self.first_width,
                                self.trainer.runs_per_batch)
        self.widths.append(size)


def train_group(program: Program, settings: RunSettings, run_ids: list[int],
                on_round: Callable[[Round, GroupState], None], layout: Layout | None = None, *,
                resume: GroupState | None = None, extend: Extend | None = None) -> GroupStats:
    """Train every run of one group.

    A finished run's slot takes the next run of the queue; once the queue is empty and few runs
    are left, the survivors are repacked into a smaller bucket (unless ``layout.repack`` is
    False). The host only places runs, hands each round to ``on_round`` and stops when every run
    is finished.

    Args:
      program: the group's static part.
      settings: the group's per-run settings, arrays [R].
      run_ids: their global ids (results and rounds name runs by these).
      on_round: called after each round with it and the ``GroupState`` (may checkpoint it, or
        raise ``Stop``).
      layout: devices, vmap width, chunking, repacking (default: one device, all measured).
      resume: a checkpointed ``GroupState`` to continue.
      extend: ``extend(round, finished)`` after each round may append runs to the queue (their
        global ids and settings; same program, no recompilation); a group that had shrunk grows
        back through its buckets to take them (an adaptive search).

    Returns:
      The group's ``GroupStats``.
    """
    layout = layout or Layout()
    per_batch, choice = group_vmap_width(program, settings, len(run_ids), layout, resume)
    per_round = evals_per_call(program.steps // program.eval_every, multiple=max(program.llc.every, 1))
    trainer = GroupTrainer(program, settings, layout.mesh, per_batch, per_round)
    if resume is None:
        width = chunk_width(program, settings, per_batch, layout.devices, layout.max_runs_per_chunk)
        slots = np.where(np.arange(width) < len(run_ids), np.arange(width), -1)
        resume = GroupState(trainer.start(None, slots, np.ones(width, bool)), slots, int(min(width, len(run_ids))), 0,
                            width, per_batch)
    repack, ahead = layout.repack, compiles_ahead(layout, per_batch)
    if jax.process_count() > 1 and repack is True:  # every process must shrink alike: no decision by timing
        repack, ahead = "always", False
    queue = GroupQueue(trainer, list(run_ids), resume, repack, extend, ahead)
    t0, compiled_before = time.perf_counter(), trainer.compile_time
    while True:
        round_, finished, real = queue.round(t0)
        queue.take_new_runs(round_, finished[real])
        round_.last = not queue.schedule(finished, real)
        on_round(round_, queue.group)
        if round_.last:
            break
    # buckets compiled on the way do not count as training
    train_time = time.perf_counter() - t0 - (trainer.compile_time - compiled_before)
    trainer.compiler.close()
    return GroupStats(per_batch, queue.widths, layout.devices, trainer.compile_time, train_time,
                      queue.group.run_steps, queue.slot_steps, choice, trainer.compiler.records())
