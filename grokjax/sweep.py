"""Sweep files (TOML) -> validated frozen dataclasses -> the grid of runs.

A sweep file has the sections ``[task] [model] [optimizer] [train] [events]`` and a ``[grid]``
whose keys are setting names (``data_fraction`` or ``task.data_fraction``) mapped to lists; the
grid is their Cartesian product. Settings marked ``per_run`` become arrays along the run axis
(one compiled program for all their values); other numeric settings that are grid axes (``p``,
``width``, ``steps``, ...) change shapes, so each of their combinations is its own group, compiled
once. Every field's metadata (bounds, choices, doc) drives validation and ``grokjax info``.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import sys
from pathlib import Path
from typing import Any

from grokjax.models import ACTIVATIONS, MODEL_NAMES
from grokjax.optim import OPTIMIZER_HPARAMS, OPTIMIZER_NAMES
from grokjax.tasks import TASK_NAMES, describe_tasks, is_prime, make_task, task_needs_prime

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class SweepError(ValueError):
    """Bad sweep input; the message names the field and what is allowed."""


def _field(default, doc, *, ge=None, gt=None, le=None, lt=None, choices=None, per_run=False, models=None,
           optimizers=None):
    meta = dict(doc=doc, ge=ge, gt=gt, le=le, lt=lt, choices=choices, per_run=per_run, models=models,
                optimizers=optimizers)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    name: str = _field("add", "operation (see the task table)", choices=TASK_NAMES)
    p: int = _field(97, "modulus; prime for div and div_or_sub; ignored by s5_* tasks", ge=2)
    data_fraction: float = _field(0.5, "fraction of the table used for training", gt=0.0, lt=1.0, per_run=True)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str = _field("mlp", "mlp or transformer", choices=MODEL_NAMES)
    activation: str = _field("relu", "hidden activation", choices=tuple(ACTIVATIONS))
    init_scale: float = _field(1.0, "multiplies every initial weight (Omnigrok's alpha)", gt=0.0, per_run=True)
    embed_dim: int = _field(128, "MLP: embedding size of each operand", ge=1, models=("mlp",))
    width: int = _field(512, "MLP: hidden width", ge=1, models=("mlp",))
    depth: int = _field(1, "MLP: number of hidden layers", ge=1, models=("mlp",))
    n_layers: int = _field(1, "transformer: layers", ge=1, le=8, models=("transformer",))
    d_model: int = _field(128, "transformer: residual width", ge=1, models=("transformer",))
    n_heads: int = _field(4, "transformer: attention heads (divides d_model)", ge=1, models=("transformer",))
    d_mlp: int = _field(512, "transformer: MLP width", ge=1, models=("transformer",))
    layer_norm: bool = _field(False, "transformer: pre-LayerNorm in each block", models=("transformer",))


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: str = _field("adamw", "adamw or sgd (with momentum)", choices=OPTIMIZER_NAMES)
    lr: float = _field(1e-3, "learning rate", gt=0.0, per_run=True)
    weight_decay: float = _field(1.0, "decoupled decay: w -= lr * weight_decay * w", ge=0.0, per_run=True)
    warmup_steps: int = _field(0, "linear learning-rate warm-up steps", ge=0, per_run=True)
    beta1: float = _field(0.9, "AdamW first-moment decay", ge=0.0, lt=1.0, per_run=True, optimizers=("adamw",))
    beta2: float = _field(0.98, "AdamW second-moment decay", ge=0.0, lt=1.0, per_run=True, optimizers=("adamw",))
    eps: float = _field(1e-8, "AdamW epsilon", gt=0.0, per_run=True, optimizers=("adamw",))
    momentum: float = _field(0.9, "SGD momentum", ge=0.0, lt=1.0, per_run=True, optimizers=("sgd",))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = _field(1000, "training steps per run (the budget)", ge=1)
    eval_every: int = _field(10, "steps between evaluations; divides steps", ge=1)
    batch_size: int = _field(0, "0: full batch; else examples drawn per step from the run's train split", ge=0)
    seed: int = _field(0, "seeds the run's split, init and batches", ge=0, per_run=True)
    runs_per_batch: int = _field(0, "runs vmapped together inside the program; 0: measured on a CPU, "
                                    "the device's share on an accelerator", ge=0)
    loss: str = _field("cross_entropy", "training loss (computed in at least float32)", choices=("cross_entropy",))
    precision: str = _field("float32", "float32; bfloat16 matmuls (parameters and loss stay float32); "
                                       "float64 everywhere", choices=("float32", "bfloat16", "float64"))


@dataclasses.dataclass(frozen=True)
class EventsConfig:
    memorize_threshold: float = _field(0.99, "train accuracy that defines memorize_step", gt=0.0, le=1.0)
    grok_threshold: float = _field(0.99, "test accuracy that defines grok_step", gt=0.0, le=1.0)
    patience: int = _field(3, "evaluations test accuracy must hold the threshold before a run is done", ge=1)
    grok_gap: int = _field(-1, "grok_delay above which a run is 'grokking', not 'comprehension'; "
                               "-1: max(eval_every, steps // 100)", ge=-1)
    stop_early: bool = _field(True, "stop the sweep once every run is done or diverged")


SECTIONS: dict[str, type] = {
    "task": TaskConfig,
    "model": ModelConfig,
    "optimizer": OptimizerConfig,
    "train": TrainConfig,
    "events": EventsConfig,
}
TOP_LEVEL_KEYS = ("name", "description", "grid", *SECTIONS)

# Every setting by its short name (short names are unique across sections); the task's name is
# "task", so that it too can be a grid axis (``task.name = ["add", "div"]``).
FIELDS: dict[str, tuple[str, dataclasses.Field]] = {
    (f.name if f.name != "name" else "task"): (section, f)
    for section, cls in SECTIONS.items() for f in dataclasses.fields(cls) if f.name != "name" or section == "task"
}
PER_RUN_FIELDS: tuple[str, ...] = tuple(k for k, (_, f) in FIELDS.items() if f.metadata["per_run"])
# Settings a grid may sweep: per-run arrays, plus shape settings (each value its own group).
AXIS_FIELDS: tuple[str, ...] = tuple(k for k, (s, f) in FIELDS.items() if s != "events")


def _axis_key(key: str) -> str:
    """``optimizer.weight_decay`` -> ``weight_decay``; ``task.name`` -> ``task``."""
    return "task" if key in ("task", "task.name") else key.split(".", 1)[-1]


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    name: str = "sweep"
    description: str = ""
    task: TaskConfig = TaskConfig()
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    train: TrainConfig = TrainConfig()
    events: EventsConfig = EventsConfig()
    grid: tuple[tuple[str, tuple], ...] = ()  # ((setting, values), ...) in file order

    def get(self, key: str):
        section, f = FIELDS[key]
        return getattr(getattr(self, section), f.name)

    def replace(self, **values) -> "SweepConfig":
        """A copy with settings replaced by short name: ``cfg.replace(lr=1e-2, steps=100)``."""
        by_section: dict[str, dict] = {}
        for key, value in values.items():
            section, f = FIELDS[key]
            by_section.setdefault(section, {})[f.name] = value
        return dataclasses.replace(
            self, **{s: dataclasses.replace(getattr(self, s), **kv) for s, kv in by_section.items()}
        )

    @property
    def grok_gap(self) -> int:
        gap = self.events.grok_gap
        return gap if gap >= 0 else max(self.train.eval_every, self.train.steps // 100)

    def runs(self) -> list["SweepConfig"]:
        """One config per run of the grid, in Cartesian-product order (run_id = position)."""
        keys = [k for k, _ in self.grid]
        combos = itertools.product(*(values for _, values in self.grid))
        return [self.replace(**dict(zip(keys, combo))) for combo in combos]

    def static_key(self) -> tuple:
        """Everything that is not a per-run array: runs with equal keys share one program."""
        return tuple((k, self.get(k)) for k in FIELDS if k not in PER_RUN_FIELDS) + (
            ("model.name", self.model.name), ("optimizer.name", self.optimizer.name))


# ---------------------------------------------------------------------------------------------
# Loading and validation


def load_sweep(path: str | Path) -> SweepConfig:
    """Read and validate a sweep file; raises ``SweepError`` naming the bad field."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise SweepError(f"{path}: TOML syntax error: {e}") from None
    except UnicodeDecodeError:
        raise SweepError(f"{path}: not a text (UTF-8) TOML file") from None
    raw.setdefault("name", path.stem)
    try:
        return sweep_from_dict(raw)
    except SweepError as e:
        raise SweepError(f"{path}: {e}") from None


def sweep_from_dict(raw: dict[str, Any]) -> SweepConfig:
    """Validate a parsed sweep (the TOML's dict) into a ``SweepConfig``."""
    _check_keys(raw, TOP_LEVEL_KEYS, "top level")
    name = raw.get("name", "sweep")
    if not isinstance(name, str) or not name or any(c in name for c in "/\\") or name.startswith("."):
        raise SweepError(f"name must be a non-empty string usable as a folder name, got {name!r}")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise SweepError(f"description must be a string, got {description!r}")
    sections = {}
    for section, cls in SECTIONS.items():
        table = raw.get(section, {})
        if not isinstance(table, dict):
            raise SweepError(f"[{section}] must be a table, got {table!r}")
        allowed = [f.name for f in dataclasses.fields(cls)]
        _check_keys(table, allowed, f"[{section}]")
        values = {k: _convert(f"{section}.{k}", _field_of(cls, k), v) for k, v in table.items()}
        sections[section] = cls(**values)
    grid_raw = raw.get("grid", {})
    if not isinstance(grid_raw, dict):
        raise SweepError(f"[grid] must be a table of setting = [values], got {grid_raw!r}")
    grid = []
    for key, values in _flatten(grid_raw):
        short = _axis_key(key)
        if short not in AXIS_FIELDS or ("." in key and key.split(".", 1)[0] != FIELDS[short][0]):
            allowed = sorted(AXIS_FIELDS)
            raise SweepError(f"unknown grid axis '{key}'{_suggest(short, allowed)}; grid axes: {', '.join(allowed)}")
        if not isinstance(values, list):
            raise SweepError(f"grid.{short} must be a list of values, got {values!r}")
        if not values:
            raise SweepError(f"grid.{short} is empty; give at least one value")
        section, f = FIELDS[short]
        converted = tuple(_convert(f"grid.{short}", f, v) for v in values)
        if len(set(converted)) != len(converted):
            raise SweepError(f"grid.{short} has duplicate values: {list(values)}")
        if short in dict(grid):
            raise SweepError(f"grid.{short} is given twice")
        grid.append((short, converted))
    config = SweepConfig(name=name, description=description, grid=tuple(grid), **sections)
    _check_consistency(config, raw)
    return config


def _flatten(table: dict, prefix: str = ""):
    """TOML turns ``optimizer.lr = [...]`` into a nested table; walk it back to dotted keys."""
    for key, value in table.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _field_of(cls, key) -> dataclasses.Field:
    return {f.name: f for f in dataclasses.fields(cls)}[key]


def _suggest(key: str, allowed) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_keys(table: dict, allowed, where: str) -> None:
    for key in table:
        if key not in allowed:
            raise SweepError(f"unknown key '{key}' in {where}{_suggest(key, allowed)}; allowed: {', '.join(allowed)}")


def _convert(where: str, f: dataclasses.Field, value):
    """Type-check one value against its field, with bounds and choices."""
    kind, m = f.type, f.metadata
    if kind == "str":
        if not isinstance(value, str):
            raise SweepError(f"{where} must be a string, got {value!r}")
        if m["choices"] and value not in m["choices"]:
            raise SweepError(f"{where} = {value!r} is not allowed{_suggest(value, m['choices'])}; "
                             f"allowed: {', '.join(m['choices'])}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise SweepError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SweepError(f"{where} must be a number, got {value!r}")
    if kind == "int":
        if isinstance(value, float) and not value.is_integer():
            raise SweepError(f"{where} must be an integer, got {value!r}")
        value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise SweepError(f"{where} must be finite, got {value!r}")
    bounds = [("ge", ">=", value >= (m["ge"] if m["ge"] is not None else value)),
              ("gt", ">", m["gt"] is None or value > m["gt"]),
              ("le", "<=", value <= (m["le"] if m["le"] is not None else value)),
              ("lt", "<", m["lt"] is None or value < m["lt"])]
    if not all(ok for _, _, ok in bounds):
        allowed = " and ".join(f"{sym} {m[b]}" for b, sym, _ in bounds if m[b] is not None)
        raise SweepError(f"{where} must be {allowed}, got {value!r}")
    return value


def _check_consistency(config: SweepConfig, raw: dict) -> None:
    """Checks that involve several fields, over every group of the grid."""
    axes = dict(config.grid)
    model, optimizer = config.model.name, config.optimizer.name
    for key in list(raw.get("model", {})) + [k for k in axes if FIELDS[k][0] == "model"]:
        models = _field_of(ModelConfig, key).metadata["models"]
        if models and model not in models:
            raise SweepError(f"model.{key} is not a setting of model '{model}' (it belongs to {', '.join(models)})")
    for key in list(raw.get("optimizer", {})) + [k for k in axes if FIELDS[k][0] == "optimizer"]:
        opts = _field_of(OptimizerConfig, key).metadata["optimizers"]
        if opts and optimizer not in opts:
            raise SweepError(f"optimizer.{key} is not a setting of optimizer '{optimizer}' "
                             f"(it belongs to {', '.join(opts)}; '{optimizer}' takes "
                             f"{', '.join(OPTIMIZER_HPARAMS[optimizer])})")
    static_axes = [(k, v) for k, v in config.grid if k not in PER_RUN_FIELDS]
    for combo in itertools.product(*(v for _, v in static_axes)):
        c = config.replace(**{k: x for (k, _), x in zip(static_axes, combo)})
        t, m, tr = c.task, c.model, c.train
        if task_needs_prime(t.name) and not is_prime(t.p):
            raise SweepError(f"task.p = {t.p}: task '{t.name}' needs a prime p (it uses modular inverses)")
        if tr.eval_every > tr.steps or tr.steps % tr.eval_every:
            raise SweepError(f"train.steps ({tr.steps}) must be a multiple of train.eval_every ({tr.eval_every})")
        if m.name == "transformer" and m.d_model % m.n_heads:
            raise SweepError(f"model.d_model ({m.d_model}) must be a multiple of model.n_heads ({m.n_heads})")
        size = make_task(t.name, t.p).size
        if tr.batch_size > size:
            raise SweepError(f"train.batch_size ({tr.batch_size}) exceeds the {size} examples of task "
                             f"'{t.name}' with p={t.p}; use 0 for full batch")


def describe_settings() -> list[dict]:
    """One row per setting (section, key, default, allowed, doc): the reference for README and info."""
    rows = []
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            m = f.metadata
            allowed = ", ".join(m["choices"]) if m["choices"] else " and ".join(
                f"{s} {m[b]}" for b, s in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if m[b] is not None)
            rows.append(dict(section=section, key=f.name, default=f.default, allowed=allowed or f.type,
                             per_run=m["per_run"], doc=m["doc"]))
    return rows


__all__ = ["SweepConfig", "SweepError", "load_sweep", "sweep_from_dict", "describe_settings", "describe_tasks"]
