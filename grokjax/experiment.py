"""From a validated sweep to what the engine runs: a ``Program`` per group (the static part) and
``RunSettings`` arrays (the per-run part). The only module that turns a ``SweepConfig`` into
engine data; the engine itself never reads the sweep format.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from grokjax.errors import SweepError
from grokjax.llc import LLCConfig
from grokjax.measures import measure_names
from grokjax.metrics import EventRule
from grokjax.models import MATMUL_PRECISION, PRECISIONS
from grokjax.plugins import SETTING_OF, build_task, call_factory, resolve
from grokjax.program import Program, RunSettings, train_size
from grokjax.schema import FIELDS, PER_RUN_DTYPES
from grokjax.sweep_config import SweepConfig


def build_program(config: SweepConfig, runs: list[SweepConfig] | None = None, check: bool = True) -> Program:
    """The program of ``config``'s group; ``runs`` (default: just ``config``) sets how many rows a
    full-batch step gathers. With ``check``, the plug-ins are traced once (see ``check_program``)."""
    t, m, o, tr, ev = config.task, config.model, config.optimizer, config.train, config.events
    task = build_task(t.name, t.settings)
    use_precision_mode(tr.precision)
    model_fn = resolve("model", m.name)
    precision = {}
    if tr.precision in ("bfloat16", "float64"):
        precision = dict(zip(("dtype", "param_dtype"), PRECISIONS[tr.precision]))
    model = call_factory("model", m.name, model_fn, task.n_symbols, task.n_classes, **dict(m.settings), **precision)
    rows = max(train_size(r.task.data_fraction, task.size) for r in (runs or [config]))
    cost = tuple(kv for kv in config.static_key()  # what a step costs depends on neither of these
                 if kv[0] not in ("steps", "eval_every") and FIELDS.get(kv[0], ("",))[0] != "events")
    group = runs or [config]
    fixed_norm = any(r.optimizer.fixed_norm > 0 for r in group)  # else the group leaves the constraint out
    label_noise = any(r.task.label_noise > 0 for r in group)
    program = Program(
        task=task, model=model, loss=resolve("loss", tr.loss), optimizer=resolve("optimizer", o.name),
        optimizer_static=tuple((k, v) for k, v in o.settings if not isinstance(v, float)),
        schedule=o.schedule, steps=tr.steps, eval_every=tr.eval_every, batch_size=tr.batch_size,
        rule=EventRule(ev.memorize_threshold, ev.grok_threshold, ev.patience, ev.stop_early),
        train_rows=rows, cost_key=repr((rows, cost, fixed_norm, label_noise)), grokfast=o.grokfast,
        grokfast_window=o.grokfast_window, orthograd=o.orthograd, fixed_norm=fixed_norm, label_noise=label_noise,
        measures=tuple((n, resolve("measure", n)) for n in measure_names(tr.progress_measures, tr.measures)),
        matmul_precision=MATMUL_PRECISION[tr.precision],
        llc=LLCConfig(tr.llc_every, tr.llc_chains, tr.llc_draws, tr.llc_burnin, tr.llc_batch_size))
    if check:
        check_program(program, run_settings([config]), config)
    return program


def run_settings(runs: list[SweepConfig]) -> RunSettings:
    """The per-run settings of a group as arrays ``[R]``.

    Args:
      runs: the group's runs, in slot order.

    Returns:
      ``RunSettings``: each field of the schema marked ``per_run`` in its ``PER_RUN_DTYPES``
      dtype (int32 or float32, as the program uses it, defaults resolved), and the optimizer's
      float settings (float32) as ``optimizer``.
    """
    values = [r.per_run_values() for r in runs]
    engine = {k: np.array([v[k] for v in values], dtype) for k, dtype in PER_RUN_DTYPES.items()}
    optimizer = {k: np.array([r.optimizer_per_run()[k] for r in runs], np.float32) for k in runs[0].optimizer_per_run()}
    return RunSettings(**engine, optimizer=optimizer)


def use_precision_mode(precision: str) -> None:
    """Set JAX up for a program of ``train.precision = precision``, or refuse.

    float64 needs JAX's 64-bit mode, and JAX holds that mode for the whole process: arrays made
    outside a program (states, checkpoints, the host's selections) follow it too. So a float64
    program turns it on for the process, and a program of another precision refuses to build
    once it is on: its random draws and defaults would be 64-bit, other numbers than the same
    sweep gives in a fresh process.

    Args:
      precision: one of ``schema.TrainConfig.precision``'s choices.

    Raises:
      SweepError: a 32-bit program in a process whose 64-bit mode is on.
    """
    if precision == "float64":
        if not jax.config.jax_enable_x64:
            jax.config.update("jax_enable_x64", True)
    elif jax.config.jax_enable_x64:
        raise SweepError(f"train.precision = {precision!r}, but JAX's 64-bit mode is on in this process (a float64 "
                         f"sweep ran before, or jax_enable_x64 was set), which would change this program's numbers; "
                         f"run it in another process, or use train.precision = 'float64'")


def one_run(settings: RunSettings, i: int = 0) -> RunSettings:
    """Run ``i``'s settings out of a group's arrays."""
    return jax.tree.map(lambda v: v[i], settings)


def check_program(program: Program, settings: RunSettings, config: SweepConfig | None = None) -> None:
    """Trace one run's init, step and evaluation (no compilation, no FLOPs) and check what the
    plug-ins return: the model's outputs ``[B, n_classes]``, the loss's per-example values. A
    plug-in that raises while traced is reported with its name and the original message."""
    task = program.task
    names = dict(task=config.task.name, model=config.model.name, loss=config.train.loss,
                 optimizer=config.optimizer.name) if config is not None else {}
    one = one_run(settings)
    inputs = jnp.asarray(task.inputs[:2])
    try:
        params = jax.eval_shape(lambda s: program.init_run(s).params, one)
    except Exception as e:  # noqa: BLE001 - report which plug-in failed and why
        raise _traced_error("model or optimizer", names, ("model", "optimizer"), e) from None
    try:
        outputs = jax.eval_shape(program.apply, params, inputs)
    except Exception as e:  # noqa: BLE001
        raise _traced_error("model", names, ("model",), e) from None
    expected = (2, task.n_classes)
    if not hasattr(outputs, "shape") or tuple(outputs.shape) != expected:
        got = getattr(outputs, "shape", type(outputs).__name__)
        raise SweepError(f"model.name = {names.get('model', '?')!r} maps inputs {tuple(inputs.shape)} to outputs "
                         f"{got}; expected [B, n_classes] = {list(expected)} for task '{task.name}'")
    labels = jnp.asarray(task.labels[:2])
    try:
        losses = jax.eval_shape(program.loss, outputs, labels)
    except Exception as e:  # noqa: BLE001
        raise _traced_error("loss", names, ("loss",), e) from None
    if not hasattr(losses, "shape") or tuple(losses.shape) != (2,):
        got = getattr(losses, "shape", type(losses).__name__)
        raise SweepError(f"train.loss = {names.get('loss', '?')!r} returned shape {got} for a batch of 2; expected "
                         f"per-example losses [B] = [2]")
    try:
        state = jax.eval_shape(program.init_run, one)
        mask = jax.ShapeDtypeStruct((task.size,), jnp.bool_)
        jax.eval_shape(lambda s, h, m: program.train_step(s, h, m), state, one, mask)
    except Exception as e:  # noqa: BLE001
        raise _traced_error("training step", names, ("optimizer", "loss", "model"), e) from None
    jax.eval_shape(program.evaluate, params, mask)  # a measure breaking its contract says so (SweepError)


def _traced_error(what: str, names: dict, kinds: tuple[str, ...], error: Exception) -> SweepError:
    where = "; ".join(f"{SETTING_OF[k]} = {names[k]!r}" for k in kinds if k in names)
    hint = ""
    if isinstance(error, jax.errors.ConcretizationTypeError) or "Tracer" in type(error).__name__:
        hint = (" (a plug-in branched in Python on a traced value: per-run settings are arrays inside the program; "
                "make the setting an integer or a boolean to keep it static)")
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return SweepError(f"the {what} raised while being traced ({where}): {type(error).__name__}: {message}{hint}")

