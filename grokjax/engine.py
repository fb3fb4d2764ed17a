"""The grid engine: every run of a group trained by one jitted program.

Everything is written for *one* run (``init_run``, ``train_step``, ``train_period``) and mapped
over the run axis by ``make_grid_period``: ``lax.map`` over batches of ``runs_per_batch`` runs,
each batch a ``vmap``. Per-run settings (seed, data fraction, lr, weight decay, ...) arrive as
arrays in ``hp``; nothing that differs between runs is Python control flow. A run that is done
or diverged is frozen by a mask inside its own lane, so it cannot touch its neighbours.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from grokjax.metrics import LOSSES, Events, evaluate, update_events
from grokjax.models import build_model, init_params
from grokjax.optim import make_optimizer
from grokjax.sweep import FIELDS, PER_RUN_FIELDS, SweepConfig
from grokjax.tasks import Task, make_task

RUN_AXIS = "runs"

# Independent random streams of a run, all derived from its seed alone.
_SPLIT, _INIT, _BATCH = 0, 1, 2


@struct.dataclass
class RunState:
    params: Any
    opt_state: Any
    key: jax.Array  # mini-batch sampling stream
    step: jax.Array  # int32: steps this run has trained
    events: Events


def split_mask(seed, data_fraction, n: int) -> jax.Array:
    """Train mask [n] of one run. The order depends on the seed only, so for one seed the
    training sets of growing fractions are nested."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed), _SPLIT)
    order = jax.random.permutation(key, n)
    n_train = jnp.clip(jnp.round(data_fraction * n), 1, n - 1).astype(jnp.int32)
    rank = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    return rank < n_train


def draw_batch(key, train_mask: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """``batch_size`` distinct indices from the run's train split (Gumbel top-k, a fixed shape
    whatever the split's size) and their weights: 0 for the filler drawn when the split is
    smaller than the batch."""
    scores = jnp.where(train_mask, jax.random.gumbel(key, train_mask.shape), -jnp.inf)
    idx = jax.lax.top_k(scores, batch_size)[1]
    return idx, train_mask[idx]


@dataclasses.dataclass(frozen=True)
class Program:
    """The static part of a group of runs: shapes, architecture, budget."""

    config: SweepConfig
    task: Task
    model: nn.Module
    train_rows: int  # full batch: rows a step computes, the largest training split of the group

    @classmethod
    def build(cls, config: SweepConfig, runs: list[SweepConfig] | None = None) -> "Program":
        """The program of ``config``'s group; ``runs`` (default: just ``config``) sets how many
        rows a full-batch step gathers."""
        task = make_task(config.task.name, config.task.p)
        if config.train.precision == "float64" and not jax.config.jax_enable_x64:
            jax.config.update("jax_enable_x64", True)  # float64 arrays need JAX's 64-bit mode
        fractions = np.array([r.task.data_fraction for r in (runs or [config])], np.float32)
        rows = int(np.clip(np.round(fractions * np.float32(task.size)), 1, task.size - 1).max())  # as split_mask
        model = build_model(config.model, task.n_symbols, task.n_symbols, config.train.precision)
        return cls(config, task, model, rows)

    def apply(self, params, tokens):
        return self.model.apply({"params": params}, tokens)

    def init_run(self, hp: dict) -> RunState:
        key = jax.random.PRNGKey(hp["seed"])
        params = init_params(self.model, jax.random.fold_in(key, _INIT), hp["init_scale"])
        opt_state = make_optimizer(self.config.optimizer.name, hp).init(params)
        return RunState(params, opt_state, jax.random.fold_in(key, _BATCH), jnp.array(0, jnp.int32),
                        Events.initial())

    def train_rows_of(self, train_mask: jax.Array) -> jax.Array:
        """Indices of the run's training examples first, ``train_rows`` of them: a full-batch
        step computes only these (the rest of a shorter split weighs 0), not the whole table."""
        return jnp.argsort(~train_mask, stable=True)[: self.train_rows]

    def train_step(self, state: RunState, hp: dict, train_mask: jax.Array, rows: jax.Array | None = None) -> RunState:
        inputs, labels = jnp.asarray(self.task.inputs), jnp.asarray(self.task.labels)
        batch_size = self.config.train.batch_size
        key, sub = jax.random.split(state.key)
        if batch_size:
            idx, weights = draw_batch(sub, train_mask, batch_size)
        else:
            idx = self.train_rows_of(train_mask) if rows is None else rows
            weights = train_mask[idx]
        inputs, labels, weights = inputs[idx], labels[idx], weights.astype(jnp.float32)

        def loss_fn(params):
            per_example = LOSSES[self.config.train.loss](self.apply(params, inputs), labels)
            return jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1.0)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        tx = make_optimizer(self.config.optimizer.name, hp)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(updates))
        active = self.is_active(state)
        keep = active & finite
        new = state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state, key=key,
                            step=state.step + 1)
        state = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, state)
        diverged = active & ~finite
        return state.replace(events=state.events.replace(
            diverged=state.events.diverged | diverged,
            diverged_step=jnp.where(diverged, state.step + 1, state.events.diverged_step)))

    def is_active(self, state: RunState) -> jax.Array:
        """Still training: within its budget, not diverged, and (when stopping early) not done."""
        e = state.events
        active = ~e.diverged & (state.step < self.config.train.steps)
        return active & ~e.done if self.config.events.stop_early else active

    def train_period(self, state: RunState, hp: dict, n_evals: int):
        """``n_evals`` times: ``eval_every`` steps, then an evaluation on the full table.
        Returns the new state and per-evaluation metrics [n_evals] (``recorded`` marks the
        evaluations of a run that was still training)."""
        cfg = self.config
        train_mask = split_mask(hp["seed"], hp["data_fraction"], self.task.size)
        rows = None if cfg.train.batch_size else self.train_rows_of(train_mask)
        inputs, labels = jnp.asarray(self.task.inputs), jnp.asarray(self.task.labels)

        def block(state, _):
            was_active = self.is_active(state)
            state = jax.lax.fori_loop(0, cfg.train.eval_every,
                                      lambda _, s: self.train_step(s, hp, train_mask, rows), state)
            metrics = evaluate(self.apply(state.params, inputs), labels, train_mask, state.params)
            events = update_events(state.events, metrics, state.step, was_active,
                                   memorize_threshold=cfg.events.memorize_threshold,
                                   grok_threshold=cfg.events.grok_threshold, patience=cfg.events.patience)
            return state.replace(events=events), dict(metrics, step=state.step, recorded=was_active)

        return jax.lax.scan(block, state, None, length=n_evals)


def map_runs(fn: Callable, xs, n_runs: int, runs_per_batch: int):
    """Apply a one-run ``fn`` over the leading run axis, ``runs_per_batch`` runs vmapped at a time."""
    if runs_per_batch == 1:  # one run at a time, unbatched: a width-1 vmap still adds a unit batch
        return jax.lax.map(lambda x: fn(*x), xs)  # dimension, which some CPU kernels handle slower
    if runs_per_batch >= n_runs:
        return jax.vmap(fn)(*xs)
    return jax.lax.map(lambda x: fn(*x), xs, batch_size=runs_per_batch)


def _over_runs(fn: Callable, n_runs: int, runs_per_batch: int, mesh: Mesh | None):
    """``fn`` of one run mapped over ``n_runs``: each device of ``mesh`` takes its own slice of
    the run axis (shard_map) and maps over it ``runs_per_batch`` at a time."""
    n_local = n_runs // (mesh.size if mesh is not None else 1)

    def local(*xs):
        return map_runs(fn, xs, n_local, min(runs_per_batch, n_local))

    if mesh is None:
        return local
    return jax.shard_map(local, mesh=mesh, in_specs=P(RUN_AXIS), out_specs=P(RUN_AXIS))


def make_grid_period(program: Program, n_runs: int, runs_per_batch: int, n_evals: int, mesh: Mesh | None = None):
    """The jitted grid step: ``(states, hp) -> (states, metrics [R, n_evals])``, states donated."""
    body = _over_runs(lambda s, h: program.train_period(s, h, n_evals), n_runs, runs_per_batch, mesh)
    return jax.jit(body, donate_argnums=0)


def make_grid_init(program: Program, n_runs: int, runs_per_batch: int, mesh: Mesh | None = None):
    return jax.jit(_over_runs(program.init_run, n_runs, runs_per_batch, mesh))


def hp_arrays(runs: list[SweepConfig]) -> dict[str, np.ndarray]:
    """The per-run settings of a group as arrays [R] (float32, seeds and step counts int32)."""
    out = {}
    for key in PER_RUN_FIELDS:
        values = [r.get(key) for r in runs]
        dtype = np.int32 if isinstance(values[0], int) else np.float32
        out[key] = np.array(values, dtype=dtype)
    return out


_MEASURED: dict[str, dict[str, float]] = {}  # run-steps/s per vmap width, measured in this process


def tune_runs_per_batch(program: Program, runs: list[SweepConfig], per_device: int,
                        cache_file: str | os.PathLike | None = None, budget_s: float = 0.15) -> tuple[int, dict]:
    """The vmap width of a group, and how it was chosen (recorded in meta.json).

    An explicit ``train.runs_per_batch`` wins; an accelerator takes the device's whole share. On a
    CPU the best width depends on the model and the cache sizes (DESIGN.md), so it is measured:
    widths 1, 8 and the device's share (at most 64), each as a jitted step of the group's first
    runs mapped as the grid maps them, timed for about ``budget_s``; the best run-steps per
    second, discounted by the padding slots the width adds to the working set, wins (the smaller
    width within 3 %). Rates are kept for the process and, with ``cache_file``, on disk, keyed by
    machine, versions and program, so a later launch measures only widths it has not seen."""
    cfg = program.config
    if cfg.train.runs_per_batch:
        return min(cfg.train.runs_per_batch, per_device), dict(source="config")
    platform = jax.default_backend()
    if platform != "cpu" or per_device == 1:
        return per_device, dict(source="device share" if platform != "cpu" else "one run per device")
    candidates = sorted({1, min(8, per_device), min(per_device, 64)})
    device = jax.devices()[0]
    cost = tuple(kv for kv in cfg.static_key()  # what a step costs depends on neither of these
                 if kv[0] not in ("steps", "eval_every") and FIELDS.get(kv[0], ("",))[0] != "events")
    key = "|".join(map(str, (platform, device.device_kind, os.cpu_count(), jax.__version__, _version(),
                             program.train_rows, cost)))
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
        state = jax.jit(program.init_run)(jax.tree.map(lambda v: v[0], hp_arrays(runs[:1])))
        for k in missing:
            rates[str(k)] = round(_run_steps_per_s(program, runs, state, k, budget_s), 1)
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


def _run_steps_per_s(program: Program, runs: list[SweepConfig], state: RunState, k: int, budget_s: float) -> float:
    """Run-steps per second of a jitted step over ``k`` runs at vmap width ``k`` (the group's
    settings; the state, split and rows of its first run, which do not change the cost)."""
    hp = hp_arrays([runs[i % len(runs)] for i in range(k)])
    states = jax.tree.map(lambda x: jnp.broadcast_to(x, (k, *x.shape)), state)
    mask = jnp.arange(program.task.size) < program.train_rows
    rows = None if program.config.train.batch_size else jnp.arange(program.train_rows)

    def step(states, hp):  # the steps of k runs, mapped as the grid maps them
        return map_runs(lambda s, h: program.train_step(s, h, mask, rows), (states, hp), k, k)

    train = jax.jit(lambda s, h, n: jax.lax.fori_loop(0, n, lambda _, s: step(s, h), s))
    jax.block_until_ready(train(states, hp, 1))  # compiles
    t0 = time.perf_counter()
    jax.block_until_ready(train(states, hp, 1))
    n = int(np.clip(budget_s / max(time.perf_counter() - t0, 1e-6), 1, 50))
    t0 = time.perf_counter()
    jax.block_until_ready(train(states, hp, n))
    return k * n / (time.perf_counter() - t0)


def evals_per_call(n_evals: int, target: int = 25) -> int:
    """Evaluations per host round trip: a divisor of ``n_evals`` giving about ``target`` round
    trips, so progress updates often and the program is compiled once."""
    want = max(1, math.ceil(n_evals / target))
    return min(d for d in range(want, n_evals + 1) if n_evals % d == 0)


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


def bytes_per_run(program: Program, runs_per_batch: int) -> tuple[int, int]:
    """Estimated device bytes of one run's state (parameters, optimizer state, events) and of one
    vmapped batch's step (activations kept for the backward pass, per run)."""
    shapes = jax.eval_shape(program.init_run, {k: jax.ShapeDtypeStruct((), v.dtype)
                                               for k, v in hp_arrays([program.config]).items()})
    state = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))
    cfg, task = program.config, program.task
    rows = cfg.train.batch_size or program.train_rows
    m = cfg.model
    per_row = (2 * m.width * m.depth + task.n_symbols) if m.name == "mlp" else \
        (3 * (4 * m.d_model + m.d_mlp) * m.n_layers + task.n_symbols)
    # full-table evaluation and the train mask live beside the step's activations
    activations = 4 * (rows * per_row * 3 + task.size * (task.n_symbols + 2))
    return int(state), int(activations) * runs_per_batch


def device_memory_bytes(device: jax.Device | None = None) -> int:
    """Memory of one device: an accelerator's own, or the host's physical memory for a CPU."""
    device = device or jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def chunk_width(program: Program, n_runs: int, runs_per_batch: int, n_devices: int = 1,
                max_runs: int | None = None, memory_fraction: float = 0.5) -> int:
    """How many runs a group trains at once (its working set): as many as fit ``memory_fraction``
    of one device's memory per device share, capped by ``max_runs``, and a multiple of
    ``runs_per_batch x n_devices``: every run then goes through the same vmap width, so its
    numbers do not depend on how the grid was chunked."""
    unit = runs_per_batch * n_devices
    state, step = bytes_per_run(program, runs_per_batch)
    budget = memory_fraction * device_memory_bytes() - step
    fit = max(1, int(budget // max(state, 1))) * n_devices
    width = min(n_runs, fit, max_runs or n_runs)
    return max(unit, -(-width // unit) * unit)


def bucket_sizes(width: int, unit: int) -> list[int]:
    """Working-set sizes a group shrinks through as its runs finish: width, width/2, width/4,
    ... (multiples of ``unit``), so finished runs stop costing compute at the price of one
    compilation per bucket reached (cached on disk)."""
    sizes = [width]
    while sizes[-1] > unit:
        smaller = -(-(sizes[-1] // 2) // unit) * unit
        if smaller >= sizes[-1]:
            break
        sizes.append(smaller)
    return sizes


def abstract_states(program: Program, width: int, mesh: Mesh | None = None):
    """Shapes, dtypes and shardings of a working set of ``width`` runs (a checkpoint's target);
    they do not depend on the vmap width."""
    hp = hp_arrays([program.config] * width)
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


class Stop(Exception):
    """Raised by an ``on_round`` callback to stop a group after the round it was given."""


def train_group(program: Program, runs: list[SweepConfig], run_ids: list[int],
                on_round: Callable[[Round, GroupState], None], *, mesh: Mesh | None = None,
                max_runs_per_chunk: int | None = None, resume: GroupState | None = None,
                repack: bool = True, tune_cache: str | os.PathLike | None = None) -> GroupStats:
    """Train every run of one group (same static config) in a working set of ``width`` slots.

    A finished run's slot takes the next run of the queue; once the queue is empty and few runs
    are left, the survivors are repacked into a smaller bucket (``repack=False`` keeps the width,
    for benchmarks). Runs are independent, so neither changes any result. The host only places
    runs, hands each round to ``on_round`` (which may checkpoint the ``GroupState`` or raise
    ``Stop``) and stops when every run is finished.
    """
    cfg = program.config
    n_dev = mesh.size if mesh is not None else 1
    # the vmap width never exceeds one device's share of the working set
    per_device = -(-min(len(runs), max_runs_per_chunk or len(runs)) // n_dev)
    if resume is not None and resume.runs_per_batch:
        k, choice = resume.runs_per_batch, dict(source="checkpoint")
    else:
        k, choice = tune_runs_per_batch(program, runs, per_device, tune_cache)
    width = chunk_width(program, len(runs), k, n_dev, max_runs_per_chunk)
    n_evals = cfg.train.steps // cfg.train.eval_every
    per_call = evals_per_call(n_evals)
    round_steps = per_call * cfg.train.eval_every
    hp_all = hp_arrays(runs)
    sharding = NamedSharding(mesh, P(RUN_AXIS)) if mesh is not None else None
    compiled: dict[int, tuple] = {}
    compile_time = 0.0

    def programs(w: int):
        nonlocal compile_time
        if w not in compiled:
            t0 = time.perf_counter()
            init = make_grid_init(program, w, k, mesh)
            hp = place(slot_hp(np.full(w, -1)))
            # lower against placed arrays, so the program expects the shardings it will get
            period = make_grid_period(program, w, k, per_call, mesh).lower(init(hp), hp).compile()
            compiled[w] = (init, period)
            compile_time += time.perf_counter() - t0
        return compiled[w]

    def place(tree):
        return jax.tree.map(lambda x: put_runs(np.asarray(x), sharding), tree)

    def slot_hp(slots: np.ndarray) -> dict[str, np.ndarray]:
        # padding slots repeat run 0's settings; they start with a spent budget and never train
        return {key: value[np.maximum(slots, 0)] for key, value in hp_all.items()}

    def start(states, slots: np.ndarray, fresh: np.ndarray):
        """Initialize the slots marked ``fresh`` (new runs or padding), keep the others."""
        init, _ = programs(len(slots))
        new = init(place(slot_hp(slots)))
        new = new.replace(step=jnp.where(place(slots < 0), cfg.train.steps, new.step))
        if states is None:
            return new
        mask = place(fresh)
        return jax.tree.map(lambda n, o: jnp.where(mask.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, states)

    if resume is None:
        slots = np.arange(width)
        slots = np.where(slots < len(runs), slots, -1)
        gs = GroupState(start(None, slots, np.ones(width, bool)), slots, int(min(width, len(runs))), 0, width, k)
    else:
        gs = resume
    widths = [len(gs.slots)]
    base = gs.base_width or len(gs.slots)
    slot_steps = 0
    t0, compiled_before = time.perf_counter(), compile_time
    while True:
        _, period = programs(len(gs.slots))
        hp = place(slot_hp(gs.slots))
        before = to_host(gs.states.step)
        states, metrics = period(gs.states, hp)
        metrics, events, step = to_host((metrics, states.events, states.step))
        real = gs.slots >= 0
        gs.run_steps += int((step - before)[real].sum())
        slot_steps += len(gs.slots) * round_steps
        events = {f.name: np.asarray(getattr(events, f.name)) for f in dataclasses.fields(events)}
        finished = (step >= cfg.train.steps) | events["diverged"] | (events["done"] & cfg.events.stop_early)
        gs.states = states
        # refill finished slots from the queue, or repack the survivors into a smaller bucket
        free = np.nonzero(finished | ~real)[0]
        n_new = min(len(free), len(runs) - gs.next_run)
        round_ = Round(np.asarray(run_ids)[gs.slots[real]], {key: v[real] for key, v in metrics.items()},
                       {key: v[real] for key, v in events.items()}, int(step[real].max(initial=0)),
                       gs.run_steps, time.perf_counter() - t0, per_call)
        if n_new:
            slots = gs.slots.copy()
            fresh = np.zeros(len(slots), bool)
            slots[free[:n_new]] = np.arange(gs.next_run, gs.next_run + n_new)
            fresh[free[:n_new]] = True
            gs = GroupState(start(gs.states, slots, fresh), slots, gs.next_run + n_new, gs.run_steps, base, k)
        else:
            alive = np.nonzero(real & ~finished)[0]
            if len(alive) == 0:
                round_.last = True
                on_round(round_, gs)
                break
            smaller = [b for b in bucket_sizes(base, k * n_dev) if b >= len(alive)][-1]
            if repack and smaller < len(gs.slots):
                keep = np.concatenate([alive, np.nonzero(~real | finished)[0]])[:smaller]
                slots = np.where(np.isin(np.arange(len(gs.slots)), alive), gs.slots, -1)[keep]
                moved = jax.tree.map(lambda x: x[keep], to_host(gs.states))
                gs = GroupState(place(moved), slots, gs.next_run, gs.run_steps, base, k)
                widths.append(smaller)
        on_round(round_, gs)
    train_time = time.perf_counter() - t0 - (compile_time - compiled_before)  # buckets compiled on the way
    return GroupStats(k, widths, n_dev, compile_time, train_time, gs.run_steps, slot_steps, choice)
