"""The contract test every plug-in passes, built-in or a user's: ``check_plugins``.

It runs a plug-in through the engine's own path (sweep validation, tracing, the grid): the
program initializes, one step gives finite values, and a run trained inside a grid follows the
same curve as the run trained alone. Call it from your own tests::

    from grokjax import check_plugins
    check_plugins(task="mypkg.tasks:cyclic", model=my_model_fn, task_settings=dict(n=12))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from grokjax.errors import SweepError
from grokjax.experiment import build_program
from grokjax.sweep import sweep_from_dict

CHECK_DEFAULTS = dict(data_fraction=0.5, lr=1e-3, steps=4, seeds=3, atol=3e-3)


def check_plugins(task: str | Callable = "add", model: str | Callable = "mlp", loss: str | Callable = "cross_entropy",
                  optimizer: str | Callable = "adamw", *, task_settings: dict[str, Any] | None = None,
                  model_settings: dict[str, Any] | None = None, optimizer_settings: dict[str, Any] | None = None,
                  **check: float) -> dict:
    """Check plug-ins against the engine's contract, through the engine's own path.

    Args:
      task, model, loss, optimizer: names (built-in or ``package.module:attribute``) or callables.
      task_settings, model_settings, optimizer_settings: their keyword arguments.
      **check: the check's own settings: ``data_fraction`` (0.5) and ``lr`` (1e-3) of its runs,
        ``steps`` each run trains, evaluated every step (4), ``seeds``: runs in the grid, one vmap
        of all of them, each compared with the run alone (3), ``atol``: tolerance of "follows
        the same curve" (3e-3: batched kernels round differently).

    Returns:
      The final metrics of grid run 0 (losses, accuracies, norms, progress measures).

    Raises:
      SweepError: bad settings or shapes, a plug-in that raises while traced, an unknown check
        setting.
      AssertionError: naming what failed: a first step that is not finite, an evaluation that is
        not finite, a run in the grid that differs from the run alone.

    Example:
      >>> grokjax.check_plugins(task="my_grokking:modular_sum", model="my_grokking:bag_mlp",
      ...                       task_settings=dict(p=11, k=2), model_settings=dict(width=32))
    """
    unknown = set(check) - set(CHECK_DEFAULTS)
    if unknown:
        raise SweepError(f"check_plugins: unknown setting {sorted(unknown)[0]!r}; settings: "
                         f"{', '.join(CHECK_DEFAULTS)}")
    c = {**CHECK_DEFAULTS, **check}
    data_fraction, lr, steps, seeds, atol = (c[k] for k in CHECK_DEFAULTS)
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
