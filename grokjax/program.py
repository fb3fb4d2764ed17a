"""The per-run program: one run's init, step and evaluation period, and the grid map over runs.

Everything is written for *one* run (``Program.init_run``, ``train_step``, ``train_period``) and
mapped over the run axis by ``make_grid_period``: ``lax.map`` over batches of ``runs_per_batch``
runs, each batch a ``vmap``, each device its own slice of the runs (``shard_map``).

A ``Program`` is the static part of a group of runs (the task's table, the model, loss and
optimizer functions, the budget): one compiled program each. ``RunSettings`` is the per-run
part: a pytree of scalars for one run, of arrays ``[R]`` for a group. Nothing that differs
between runs is Python control flow. A run that is done or diverged is frozen by a mask inside
its own lane, so it cannot touch its neighbours.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from grokjax.interventions import wrap
from grokjax.llc import LLCConfig, llc_key, maybe_estimate
from grokjax.measures import Batch, compute
from grokjax.metrics import EventRule, Events, evaluate, update_events, weighted_mean
from grokjax.models import init_params
from grokjax.optim import lr_schedule, make_optimizer
from grokjax.schema import PER_RUN_DTYPES
from grokjax.tasks import Task

RUN_AXIS = "runs"

# Independent random streams of a run, all derived from its seed alone.
_SPLIT, _INIT, _BATCH, _NOISE = 0, 1, 2, 3


def _run_settings_class() -> type:
    """``RunSettings`` from the schema: one field per setting marked ``per_run`` (in schema
    order), and ``optimizer``, the optimizer factory's float keyword arguments by name."""
    fields = {k: jax.Array for k in PER_RUN_DTYPES} | {"optimizer": dict[str, jax.Array]}
    doc = ("What differs between the runs of a group: scalars for one run, arrays [R] for a group. Its fields are "
           f"the schema's per-run settings ({', '.join(PER_RUN_DTYPES)}: int32 or float32, as schema.PER_RUN_DTYPES "
           "says) and ``optimizer``, a dict of the optimizer factory's float keyword arguments.")
    return struct.dataclass(type("RunSettings", (), {"__annotations__": fields, "__doc__": doc,
                                                      "__module__": __name__, "__qualname__": "RunSettings"}))


RunSettings = _run_settings_class()


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


def noisy_labels(seed, label_noise, train_mask: jax.Array, labels: jax.Array, n_classes: int) -> jax.Array:
    """The labels one run trains on: ``round(label_noise * n_train)`` of its training rows, drawn
    from its seed, get a class other than their own (uniformly); test rows keep theirs."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed), _NOISE)
    pick, shift = jax.random.split(key)
    order = jnp.argsort(jnp.where(train_mask, jax.random.uniform(pick, train_mask.shape), 2.0))
    rank = jnp.zeros(train_mask.shape, jnp.int32).at[order].set(jnp.arange(train_mask.shape[0], dtype=jnp.int32))
    n_noisy = jnp.round(label_noise * jnp.sum(train_mask)).astype(jnp.int32)
    offset = jax.random.randint(shift, labels.shape, 1, max(n_classes, 2))
    return jnp.where(train_mask & (rank < n_noisy), (labels + offset) % n_classes, labels)


def train_size(data_fraction: float, n: int) -> int:
    """Rows in a run's training split, as ``split_mask`` counts them (on the host)."""
    return int(np.clip(np.round(np.float32(data_fraction) * np.float32(n)), 1, n - 1))


def draw_batch(key, train_mask: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """``batch_size`` distinct indices from the run's train split (Gumbel top-k, a fixed shape
    whatever the split's size) and their weights: 0 for the filler drawn when the split is
    smaller than the batch."""
    scores = jnp.where(train_mask, jax.random.gumbel(key, train_mask.shape), -jnp.inf)
    idx = jax.lax.top_k(scores, batch_size)[1]
    return idx, train_mask[idx]


@dataclasses.dataclass(frozen=True, eq=False)
class Program:
    """The static part of a group of runs: data, functions, shapes, budget.

    Attributes:
      task: the whole table every run of the group splits by its own mask.
      model: a flax module mapping inputs [B, ...] to outputs [B, task.n_classes].
      loss: ``fn(outputs, labels) -> [B]``, also what evaluations record.
      optimizer: ``fn(learning_rate, **settings) -> optax.GradientTransformation``.
      optimizer_static: its settings that are not per run (booleans, integers, strings).
      schedule: the learning-rate schedule after warm-up (``optim.SCHEDULES``).
      steps, eval_every, batch_size: the budget, evaluation cadence, 0 for full batch.
      rule: thresholds that define the events and when a run is done.
      train_rows: rows a full-batch step computes: the largest training split of the group.
      cost_key: what a step's cost depends on (keys the measured vmap widths).
      grokfast, grokfast_window, orthograd: the gradient filters (``interventions.wrap``).
      fixed_norm, label_noise: some run of the group uses them (else they are left out).
      measures: the measures evaluations record: ``(name, fn)`` pairs (``grokjax.measures``).
      llc: local learning coefficient estimation (``grokjax.llc``); ``every = 0``: none.
      matmul_precision: of every matmul of the model and the measures (``models.MATMUL_PRECISION``):
        set per matmul at trace time, so the compiled program carries it on any backend.
    """

    task: Task
    model: nn.Module
    loss: Callable
    optimizer: Callable[..., optax.GradientTransformation]
    optimizer_static: tuple = ()
    schedule: str = "constant"
    steps: int = 1000
    eval_every: int = 10
    batch_size: int = 0
    rule: EventRule = EventRule()
    train_rows: int = 1
    cost_key: str = ""
    grokfast: str = "none"
    grokfast_window: int = 100
    orthograd: bool = False
    fixed_norm: bool = False
    label_noise: bool = False
    measures: tuple = ()
    llc: LLCConfig = LLCConfig()
    matmul_precision: str = "highest"

    def apply(self, params, inputs):
        with jax.default_matmul_precision(self.matmul_precision):  # the backward pass inherits it
            return self.model.apply({"params": params}, inputs)

    def tx(self, settings: RunSettings) -> optax.GradientTransformation:
        schedule = lr_schedule(settings.lr, settings.warmup_steps, settings.decay_steps, self.schedule, self.steps)
        base = make_optimizer(self.optimizer, dict(self.optimizer_static), settings.optimizer, schedule)
        return wrap(base, self.grokfast, settings.grokfast_alpha, settings.grokfast_lamb, self.grokfast_window,
                    self.orthograd, settings.fixed_norm, self.fixed_norm)

    def init_run(self, settings: RunSettings) -> RunState:
        key = jax.random.PRNGKey(settings.seed)
        params = init_params(self.model, jax.random.fold_in(key, _INIT), settings.init_scale,
                             jnp.asarray(self.task.inputs[:1]))
        opt_state = self.tx(settings).init(params)
        return RunState(params, opt_state, jax.random.fold_in(key, _BATCH), jnp.array(0, jnp.int32),
                        Events.initial())

    def train_rows_of(self, train_mask: jax.Array) -> jax.Array:
        """Indices of the run's training examples first, ``train_rows`` of them: a full-batch
        step computes only these (the rest of a shorter split weighs 0), not the whole table."""
        return jnp.argsort(~train_mask, stable=True)[: self.train_rows]

    def run_labels(self, settings: RunSettings, train_mask: jax.Array) -> jax.Array:
        """The labels the run trains on (its label noise applied)."""
        labels = jnp.asarray(self.task.labels)
        if not self.label_noise:
            return labels
        return noisy_labels(settings.seed, settings.label_noise, train_mask, labels, self.task.n_classes)

    def train_step(self, state: RunState, settings: RunSettings, train_mask: jax.Array,
                   rows: jax.Array | None = None, labels: jax.Array | None = None) -> RunState:
        inputs = jnp.asarray(self.task.inputs)
        labels = self.run_labels(settings, train_mask) if labels is None else labels
        key, sub = jax.random.split(state.key)
        if self.batch_size:
            idx, weights = draw_batch(sub, train_mask, self.batch_size)
        else:
            idx = self.train_rows_of(train_mask) if rows is None else rows
            weights = train_mask[idx]
        inputs, labels, weights = inputs[idx], labels[idx], weights.astype(jnp.float32)

        def loss_fn(params):
            return weighted_mean(self.loss(self.apply(params, inputs), labels), weights)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = self.tx(settings).update(grads, state.opt_state, state.params)
        finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(updates))
        active = self.is_active(state)
        new = state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state, key=key,
                            step=state.step + 1)
        state = select_tree(active & finite, new, state)
        diverged = active & ~finite
        return state.replace(events=state.events.replace(
            diverged=state.events.diverged | diverged,
            diverged_step=jnp.where(diverged, state.step + 1, state.events.diverged_step)))

    def is_active(self, state: RunState) -> jax.Array:
        """Still training: within its budget, not diverged, and (when stopping early) not done."""
        e = state.events
        active = ~e.diverged & (state.step < self.steps)
        return active & ~e.done if self.rule.stop_early else active

    def evaluate(self, params, train_mask: jax.Array, labels: jax.Array | None = None) -> dict[str, jax.Array]:
        """Metrics of one run on the whole table, split by its mask (see ``metrics.evaluate``),
        and its progress measures. ``labels``: the run's (noisy training labels), default the task's."""
        outputs = self.apply(params, jnp.asarray(self.task.inputs))
        clean = jnp.asarray(self.task.labels)
        labels = clean if labels is None else labels
        metrics = evaluate(outputs, labels, train_mask, params, self.loss, self.task.regression, self.task.tolerance)
        batch = Batch(jnp.asarray(self.task.inputs), outputs, labels, clean, train_mask, self.loss)
        with jax.default_matmul_precision(self.matmul_precision):
            return dict(metrics, **compute(self.measures, params, self.apply, self.task, batch))

    def train_period(self, state: RunState, settings: RunSettings, n_evals: int):
        """``n_evals`` times: ``eval_every`` steps, then an evaluation on the full table.
        Returns the new state and per-evaluation metrics [n_evals] (``recorded`` marks the
        evaluations of a run that was still training)."""
        train_mask = split_mask(settings.seed, settings.data_fraction, self.task.size)
        rows = None if self.batch_size else self.train_rows_of(train_mask)
        labels = self.run_labels(settings, train_mask)

        def block(state, index):
            was_active = self.is_active(state)
            state = jax.lax.fori_loop(0, self.eval_every,
                                      lambda _, s: self.train_step(s, settings, train_mask, rows, labels), state)
            metrics = self.evaluate(state.params, train_mask, labels)
            if self.llc.every:
                metrics.update(self.estimate_llc(state, settings, train_mask, labels, metrics["train_loss"], index))
            events = update_events(state.events, metrics, state.step, was_active, self.rule)
            return state.replace(events=events), dict(metrics, step=state.step, recorded=was_active)

        # the evaluation's index in the period is the same for every run (not batched): the LLC's
        # cadence is then a real branch under vmap (see llc.maybe_estimate)
        return jax.lax.scan(block, state, jnp.arange(n_evals) if self.llc.every else None, length=n_evals)

    def estimate_llc(self, state: RunState, settings: RunSettings, train_mask: jax.Array, labels: jax.Array,
                     init_loss: jax.Array, index: jax.Array) -> dict[str, jax.Array]:
        """The run's LLC at its parameters (``grokjax.llc``) when evaluation ``index`` of the period
        falls on the cadence, else NaNs. SGLD batches come from the run's split and labels."""
        inputs = jnp.asarray(self.task.inputs)

        def batch_loss(params, key):
            idx, weights = draw_batch(key, train_mask, self.llc.batch_size)
            return weighted_mean(self.loss(self.apply(params, inputs[idx]), labels[idx]), weights.astype(jnp.float32))

        return maybe_estimate(self.llc, index, key=llc_key(settings.seed, state.step), params_star=state.params,
                              batch_loss=batch_loss, init_loss=init_loss, epsilon=settings.llc_epsilon,
                              gamma=settings.llc_gamma, nbeta=settings.llc_nbeta)


def select_tree(keep: jax.Array, new, old):
    """``new`` where ``keep`` else ``old``, leaf by leaf; ``keep`` is a scalar or has the leaves'
    leading (run) axis."""
    def pick(n, o):
        return jnp.where(jnp.reshape(keep, jnp.shape(keep) + (1,) * (n.ndim - jnp.ndim(keep))), n, o)

    return jax.tree.map(pick, new, old)


def map_runs(fn: Callable, xs, n_runs: int, runs_per_batch: int):
    """Apply a one-run ``fn`` over the leading run axis, ``runs_per_batch`` runs vmapped at a time."""
    if runs_per_batch == 1:  # one run at a time, unbatched: a width-1 vmap still adds a unit batch
        return jax.lax.map(lambda x: fn(*x), xs)  # dimension, which some CPU kernels handle slower
    if runs_per_batch >= n_runs:
        return jax.vmap(fn)(*xs)
    return jax.lax.map(lambda x: fn(*x), xs, batch_size=runs_per_batch)


def vmap_width(n_runs: int, runs_per_batch: int, n_devices: int = 1) -> int:
    """Runs vmapped together when ``n_runs`` are spread over ``n_devices``: a working set smaller
    than the vmap width narrows it."""
    return min(runs_per_batch, n_runs // n_devices)


def over_runs(fn: Callable, n_runs: int, runs_per_batch: int, mesh: Mesh | None):
    """``fn`` of one run mapped over ``n_runs``: each device of ``mesh`` takes its own slice of
    the run axis (shard_map) and maps over it ``runs_per_batch`` at a time."""
    n_devices = mesh.size if mesh is not None else 1
    n_local = n_runs // n_devices

    def local(*xs):
        return map_runs(fn, xs, n_local, vmap_width(n_runs, runs_per_batch, n_devices))

    if mesh is None:
        return local
    return jax.shard_map(local, mesh=mesh, in_specs=P(RUN_AXIS), out_specs=P(RUN_AXIS))


def make_grid_period(program: Program, n_runs: int, runs_per_batch: int, n_evals: int, mesh: Mesh | None = None):
    """The jitted grid step: ``(states, settings) -> (states, metrics [R, n_evals])``, states donated."""
    body = over_runs(lambda s, h: program.train_period(s, h, n_evals), n_runs, runs_per_batch, mesh)
    return jax.jit(body, donate_argnums=0)


def make_grid_init(program: Program, n_runs: int, runs_per_batch: int, mesh: Mesh | None = None):
    return jax.jit(over_runs(program.init_run, n_runs, runs_per_batch, mesh))
