"""The grid engine: every run of a group trained by one jitted program.

Everything is written for *one* run (``init_run``, ``train_step``, ``train_period``) and mapped
over the run axis by ``make_grid_period``: ``lax.map`` over batches of ``runs_per_batch`` runs,
each batch a ``vmap``. Per-run settings (seed, data fraction, lr, weight decay, ...) arrive as
arrays in ``hp``; nothing that differs between runs is Python control flow. A run that is done
or diverged is frozen by a mask inside its own lane, so it cannot touch its neighbours.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from grokjax.metrics import Events, cross_entropy, evaluate, update_events
from grokjax.models import build_model, init_params
from grokjax.optim import make_optimizer
from grokjax.sweep import PER_RUN_FIELDS, SweepConfig
from grokjax.tasks import Task, make_task

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

    @classmethod
    def build(cls, config: SweepConfig) -> "Program":
        task = make_task(config.task.name, config.task.p)
        return cls(config, task, build_model(config.model, task.n_symbols, task.n_symbols))

    def apply(self, params, tokens):
        return self.model.apply({"params": params}, tokens)

    def init_run(self, hp: dict) -> RunState:
        key = jax.random.PRNGKey(hp["seed"])
        params = init_params(self.model, jax.random.fold_in(key, _INIT), hp["init_scale"])
        opt_state = make_optimizer(self.config.optimizer.name, hp).init(params)
        return RunState(params, opt_state, jax.random.fold_in(key, _BATCH), jnp.array(0, jnp.int32),
                        Events.initial())

    def train_step(self, state: RunState, hp: dict, train_mask: jax.Array) -> RunState:
        inputs, labels = jnp.asarray(self.task.inputs), jnp.asarray(self.task.labels)
        batch_size = self.config.train.batch_size
        key, sub = jax.random.split(state.key)
        if batch_size:
            idx, weights = draw_batch(sub, train_mask, batch_size)
            inputs, labels = inputs[idx], labels[idx]
        else:
            weights = train_mask
        weights = weights.astype(jnp.float32)

        def loss_fn(params):
            per_example = cross_entropy(self.apply(params, inputs), labels)
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
        e = state.events
        return ~e.done & ~e.diverged & (state.step < self.config.train.steps)

    def train_period(self, state: RunState, hp: dict, n_evals: int):
        """``n_evals`` times: ``eval_every`` steps, then an evaluation on the full table.
        Returns the new state and per-evaluation metrics [n_evals] (``recorded`` marks the
        evaluations of a run that was still training)."""
        cfg = self.config
        train_mask = split_mask(hp["seed"], hp["data_fraction"], self.task.size)
        inputs, labels = jnp.asarray(self.task.inputs), jnp.asarray(self.task.labels)

        def block(state, _):
            was_active = self.is_active(state)
            state = jax.lax.fori_loop(0, cfg.train.eval_every, lambda _, s: self.train_step(s, hp, train_mask),
                                      state)
            metrics = evaluate(self.apply(state.params, inputs), labels, train_mask, state.params)
            events = update_events(state.events, metrics, state.step, was_active,
                                   memorize_threshold=cfg.events.memorize_threshold,
                                   grok_threshold=cfg.events.grok_threshold, patience=cfg.events.patience)
            return state.replace(events=events), dict(metrics, step=state.step, recorded=was_active)

        return jax.lax.scan(block, state, None, length=n_evals)


def map_runs(fn: Callable, xs, n_runs: int, runs_per_batch: int):
    """Apply a one-run ``fn`` over the leading run axis, ``runs_per_batch`` runs vmapped at a time."""
    if runs_per_batch >= n_runs:
        return jax.vmap(fn)(*xs)
    return jax.lax.map(lambda x: fn(*x), xs, batch_size=runs_per_batch)


def make_grid_period(program: Program, n_runs: int, runs_per_batch: int, n_evals: int):
    """The jitted grid step: ``(states, hp) -> (states, metrics [R, n_evals])``, states donated."""

    def grid_period(states, hp):
        return map_runs(lambda s, h: program.train_period(s, h, n_evals), (states, hp), n_runs, runs_per_batch)

    return jax.jit(grid_period, donate_argnums=0)


def make_grid_init(program: Program, n_runs: int, runs_per_batch: int):
    return jax.jit(lambda hp: map_runs(program.init_run, (hp,), n_runs, runs_per_batch))


def hp_arrays(runs: list[SweepConfig]) -> dict[str, jax.Array]:
    """The per-run settings of a group as arrays [R] (float32, seeds and step counts int32)."""
    out = {}
    for key in PER_RUN_FIELDS:
        values = [r.get(key) for r in runs]
        dtype = np.int32 if isinstance(values[0], int) else np.float32
        out[key] = jnp.asarray(np.array(values, dtype=dtype))
    return out


def choose_runs_per_batch(config: SweepConfig, n_runs: int, platform: str | None = None) -> int:
    """How many runs to vmap together. Accelerators take the whole group. On a CPU one full-batch
    run of a mid-sized table already fills the cores and a wide vmap spills the caches
    (DESIGN.md), so the width is sized to keep one batch's activations near the L2 cache."""
    if config.train.runs_per_batch:
        return min(config.train.runs_per_batch, n_runs)
    platform = platform or jax.default_backend()
    if platform != "cpu":
        return n_runs
    task = make_task(config.task.name, config.task.p)
    rows = config.train.batch_size or task.size
    m = config.model
    width = m.width if m.name == "mlp" else 3 * max(m.d_mlp, m.d_model)
    bytes_per_run = rows * width * 4
    return int(max(1, min(n_runs, (2 << 20) // max(bytes_per_run, 1))))


def evals_per_call(n_evals: int, target: int = 25) -> int:
    """Evaluations per host round trip: a divisor of ``n_evals`` giving about ``target`` round
    trips, so progress updates often and the program is compiled once."""
    want = max(1, math.ceil(n_evals / target))
    return min(d for d in range(want, n_evals + 1) if n_evals % d == 0)


@dataclasses.dataclass
class Round:
    """What one host round trip brings back from a group."""

    run_ids: np.ndarray  # [R] global run ids
    metrics: dict[str, np.ndarray]  # [R, evals]: CURVE_METRICS, step, recorded
    events: dict[str, np.ndarray]  # [R]: Events fields after this round
    step: int  # steps the group has been trained for
    run_steps: int  # steps trained so far, summed over runs
    seconds: float  # training time so far


@dataclasses.dataclass
class GroupStats:
    runs_per_batch: int
    compile_time_s: float
    train_time_s: float
    run_steps: int


def train_group(program: Program, runs: list[SweepConfig], run_ids: list[int],
                on_round: Callable[[Round], None]) -> GroupStats:
    """Train every run of one group (same static config) with one compiled program. The host
    only hands each round's metrics to ``on_round`` and stops once every run is done or diverged."""
    cfg = program.config
    n_runs = len(runs)
    k = choose_runs_per_batch(cfg, n_runs)
    n_evals = cfg.train.steps // cfg.train.eval_every
    per_call = evals_per_call(n_evals)
    hp = hp_arrays(runs)

    t0 = time.perf_counter()
    states = make_grid_init(program, n_runs, k)(hp)
    period = make_grid_period(program, n_runs, k, per_call).lower(states, hp).compile()
    compile_time = time.perf_counter() - t0

    run_steps = 0
    t0 = time.perf_counter()
    for call in range(n_evals // per_call):
        before = int(np.asarray(states.step).sum())
        states, metrics = period(states, hp)
        metrics, events = jax.device_get((metrics, states.events))
        run_steps += int(np.asarray(states.step).sum()) - before
        events = {f.name: np.asarray(getattr(events, f.name)) for f in dataclasses.fields(events)}
        on_round(Round(np.asarray(run_ids), metrics, events, (call + 1) * per_call * cfg.train.eval_every,
                       run_steps, time.perf_counter() - t0))
        if cfg.events.stop_early and (events["done"] | events["diverged"]).all():
            break
    return GroupStats(k, compile_time, time.perf_counter() - t0, run_steps)
