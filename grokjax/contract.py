"""The contract test every plug-in passes, built-in or a user's: ``check_plugins``.

It runs a plug-in through the engine's own path (sweep validation, tracing, the grid): the
program initializes, one step gives finite values, and a run trained inside a grid follows the
same curve as the run trained alone. Call it from your own tests::

    from grokjax import check_plugins
    check_plugins(task="mypkg.tasks:cyclic", model=my_model_fn, task_settings=dict(n=12))
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from grokjax.experiment import build_program
from grokjax.sweep import sweep_from_dict


def check_plugins(task: str | Callable = "add", model: str | Callable = "mlp", loss: str | Callable = "cross_entropy",
                  optimizer: str | Callable = "adamw", *, task_settings: dict[str, Any] | None = None,
                  model_settings: dict[str, Any] | None = None, optimizer_settings: dict[str, Any] | None = None,
                  data_fraction: float = 0.5, lr: float = 1e-3, steps: int = 4, seeds: int = 3,
                  atol: float = 3e-3) -> dict:
    """Check plug-ins against the engine's contract; raises ``SweepError`` for bad settings or
    shapes and ``AssertionError`` naming what failed. Returns one grid run's final metrics.

    Args:
      task, model, loss, optimizer: names (built-in or ``package.module:attribute``) or callables.
      task_settings, model_settings, optimizer_settings: their keyword arguments.
      data_fraction, lr: the engine's settings for the check.
      steps: steps each run trains (evaluated every step).
      seeds: runs in the grid (one vmap of all of them), each compared with the run alone.
      atol: tolerance of "follows the same curve" (batched kernels round differently).
    """
    from grokjax.run import run_sweep

    raw = dict(name="contract", task=dict(name=task, data_fraction=data_fraction, **(task_settings or {})),
               model=dict(name=model, **(model_settings or {})),
               optimizer=dict(name=optimizer, lr=lr, **(optimizer_settings or {})),
               train=dict(steps=steps, eval_every=1, loss=loss, runs_per_batch=seeds),
               events=dict(stop_early=False), grid=dict(seed=list(range(seeds))))
    config = sweep_from_dict(raw)
    build_program(config)  # traces init, step, outputs and losses: a shape or type error names its plug-in here
    # the grid's own results say whether the first step and evaluation were finite: no program of their own
    result = run_sweep(config, progress=False, tune_cache=None)
    runs, grid = result.runs, result.curves
    assert not (runs.diverged & (runs.diverged_step == 1)).any(), \
        "one training step from the initial parameters was not finite (loss or update is NaN or inf)"
    metrics = grid[grid.step == 1].select_dtypes("number").drop(columns=["run_id", "step"])
    assert np.isfinite(metrics.to_numpy(float)).all(), f"evaluation is not finite: {metrics.iloc[0].to_dict()}"
    # runs_per_batch = 1 computes each run by itself, unbatched, one after another: the run alone
    alone = run_sweep(config.replace(runs_per_batch=1), progress=False, tune_cache=None).curves
    for column in ("train_loss", "test_loss", "param_norm"):
        a, b = alone[column].to_numpy(), grid[column].to_numpy()
        bad = ~np.isclose(a, b, rtol=1e-3, atol=atol)
        assert not bad.any(), (f"run {grid['run_id'][bad].iloc[0]} in a grid of {seeds} differs from the run alone "
                               f"in {column}: {b[bad][:3]} vs {a[bad][:3]}")
    last = grid[grid.run_id == 0].iloc[-1]
    return {k: v for k, v in last.items() if k not in ("run_id", "step") and isinstance(v, (int, float, np.number))}
