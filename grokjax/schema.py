"""The schema of a sweep file: each section a frozen dataclass whose fields are the engine's own
settings, with their defaults, bounds, choices, documentation and per-run marker, declared once.

Everything else reads these declarations: loading checks values against them
(``convert_field``), ``RunSettings`` takes its fields from the per-run markers
(``PER_RUN_FIELDS``, ``PER_RUN_DTYPES``), and ``describe_settings`` makes the settings tables of
``grokjax info`` and the documentation from them. A field marked ``per_run`` is an array along the
run axis inside the program (all its values share one compiled program); adding one is a field
here and the engine's use of it (``settings.<name>``).
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import ClassVar

import numpy as np

from grokjax.errors import SweepError
from grokjax.interventions import GROKFAST, GROKFAST_LAMB
from grokjax.llc import default_nbeta
from grokjax.optim import SCHEDULES
from grokjax.plugins import BUILTINS, convert_number, name_of, resolve, settings_of

INT32_MAX = 2**31 - 1  # step counters, seeds and indices are int32 inside the program


def _field(default, doc, *, ge=None, gt=None, le=None, lt=None, choices=None, per_run=False):
    meta = dict(doc=doc, ge=ge, gt=gt, le=le, lt=lt, choices=choices, per_run=per_run)
    return dataclasses.field(default=default, metadata=meta)


Settings = tuple  # ((key, value), ...): a plug-in's keyword arguments, in file order


class _Section:
    """What every section answers: a setting's value as the engine uses it."""

    def resolved(self, key: str):
        """The value of ``key`` as the engine uses it (here: as set; see OptimizerConfig)."""
        return getattr(self, key)


class _PluginSection(_Section):
    """A section that names a plug-in: its keyword arguments read like fields
    (``config.model.width``), the plug-in's own default where the sweep does not set one."""

    kind: ClassVar[str]

    def __getattr__(self, key: str):
        if key.startswith("_"):
            raise AttributeError(key)
        settings = dict(object.__getattribute__(self, "settings"))
        if key in settings:
            return settings[key]
        param = settings_of(self.kind, resolve(self.kind, self.name)).get(key)
        if param is not None and param.default is not param.empty:
            return param.default
        raise AttributeError(f"{self.kind} '{self.name}' has no setting '{key}'")


@dataclasses.dataclass(frozen=True)
class TaskConfig(_PluginSection):
    kind: ClassVar[str] = "task"
    name: str = _field("add", "the task: a built-in (see the task table) or package.module:attribute")
    data_fraction: float = _field(0.5, "fraction of the table used for training", gt=0.0, lt=1.0, per_run=True)
    label_noise: float = _field(0.0, "fraction of the training labels replaced by a wrong class drawn from the "
                                     "run's seed (Doshi et al.); test labels stay clean", ge=0.0, lt=1.0, per_run=True)
    settings: Settings = ()


@dataclasses.dataclass(frozen=True)
class ModelConfig(_PluginSection):
    kind: ClassVar[str] = "model"
    name: str = _field("mlp", "the model: mlp, transformer or package.module:attribute")
    init_scale: float = _field(1.0, "multiplies every initial weight (Omnigrok's alpha)", gt=0.0, per_run=True)
    settings: Settings = ()


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(_PluginSection):
    kind: ClassVar[str] = "optimizer"
    name: str = _field("adamw", "adamw or sgd (grokjax presets), any optax optimizer (lion, adam, ...) "
                                "or package.module:attribute")
    lr: float = _field(1e-3, "learning rate (the factory's learning_rate, through the schedule)", gt=0.0,
                       per_run=True)
    warmup_steps: int = _field(0, "linear learning-rate warm-up steps", ge=0, le=INT32_MAX, per_run=True)
    schedule: str = _field("constant", "after warm-up: constant, or a cosine or linear decay to 0",
                           choices=SCHEDULES)
    decay_steps: int = _field(0, "length of the decay after warm-up; 0: the rest of the budget", ge=0,
                              le=INT32_MAX, per_run=True)
    grokfast: str = _field("none", "Grokfast gradient filter before the optimizer (Lee et al. 2024): an EMA or "
                                   "the moving average of the last grokfast_window gradients", choices=GROKFAST)
    grokfast_alpha: float = _field(0.98, "Grokfast EMA decay", ge=0.0, lt=1.0, per_run=True)
    grokfast_lamb: float = _field(-1.0, "Grokfast amplification: g + lamb * filtered; -1: 2 for ema, 5 for ma",
                                  ge=-1.0, per_run=True)
    grokfast_window: int = _field(100, "Grokfast MA window (its state holds this many gradients per run)", ge=1,
                                  le=100_000)
    orthograd: bool = _field(False, "⊥Grad (Prieto et al. 2025): remove each tensor's gradient component along "
                                    "its weights, keep its norm, before the optimizer")
    fixed_norm: float = _field(0.0, "after each step rescale all parameters to this factor times their initial "
                                    "norm (Omnigrok); 0: off", ge=0.0, per_run=True)
    settings: Settings = ()

    def resolved(self, key: str):
        """A setting with its 'depends on another setting' default filled in.

        Args:
          key: a field or plug-in setting of this section.

        Returns:
          The value the engine uses: ``grokfast_lamb = -1`` becomes the filter's default.
        """
        value = getattr(self, key)
        if key == "grokfast_lamb" and value < 0:
            return GROKFAST_LAMB[self.grokfast]
        return value


@dataclasses.dataclass(frozen=True)
class TrainConfig(_Section):
    steps: int = _field(1000, "training steps per run (the budget)", ge=1, le=2**30)
    eval_every: int = _field(10, "steps between evaluations; divides steps", ge=1, le=2**30)
    batch_size: int = _field(0, "0: full batch; else examples drawn per step from the run's train split", ge=0,
                             le=2**30)
    seed: int = _field(0, "seeds the run's split, init and batches", ge=0, le=INT32_MAX, per_run=True)
    runs_per_batch: int = _field(0, "runs vmapped together inside the program; 0: measured on a CPU, "
                                    "the device's share on an accelerator", ge=0, le=2**20)
    loss: str = _field("cross_entropy", "training loss: cross_entropy, stablemax, mse or package.module:attribute "
                                        "(computed in at least float32; recorded as train_loss/test_loss)")
    precision: str = _field("float32", "float32: true float32 matmuls on every backend; tensorfloat32: "
                                       "float32 with TF32 matmuls where the hardware has them (faster on "
                                       "NVIDIA GPUs); bfloat16 matmuls (parameters and loss stay float32); "
                                       "float64 everywhere",
                            choices=("float32", "tensorfloat32", "bfloat16", "float64"))
    progress_measures: bool = _field(True, "record the progress measures that apply (norm per parameter group, "
                                           "softmax collapse, Fourier spectrum, restricted/excluded loss)")
    measures: tuple = _field((), "more measures evaluations record: built-in (effective_rank, logits, norms, "
                                 "softmax_collapse, fourier) or package.module:attribute, "
                                 "fn(params, apply, task, batch) -> dict of scalars (grokjax.measures)")
    llc_every: int = _field(0, "estimate the local learning coefficient (grokjax.llc) at every llc_every-th "
                               "evaluation (curve columns llc, llc_std, llc_diverged); divides steps / eval_every; "
                               "0: off (no sampler in the program)", ge=0, le=2**20)
    llc_chains: int = _field(4, "SGLD chains per run and estimate", ge=1, le=1024)
    llc_draws: int = _field(100, "SGLD steps per chain whose losses the estimate averages", ge=1, le=10**6)
    llc_burnin: int = _field(0, "SGLD steps per chain before the draws (not averaged)", ge=0, le=10**6)
    llc_batch_size: int = _field(64, "training examples per SGLD step, drawn from the run's split", ge=1,
                                 le=2**30)
    llc_epsilon: float = _field(1e-3, "SGLD step size eps: w += eps / 2 (-nbeta grad - gamma (w - w*)) + N(0, eps)",
                                gt=0.0, per_run=True)
    llc_gamma: float = _field(100.0, "SGLD localization strength gamma toward the run's parameters w*", ge=0.0,
                              per_run=True)
    llc_nbeta: float = _field(0.0, "SGLD inverse temperature n beta; 0: llc_batch_size / log(llc_batch_size)",
                              ge=0.0, per_run=True)


    def resolved(self, key: str):
        """A setting with its 'depends on another setting' default filled in.

        Args:
          key: a field of this section.

        Returns:
          The value the engine uses: ``llc_nbeta = 0`` becomes ``B / log B`` of ``llc_batch_size``.
        """
        value = getattr(self, key)
        if key == "llc_nbeta" and value == 0:
            return default_nbeta(self.llc_batch_size)
        return value


@dataclasses.dataclass(frozen=True)
class EventsConfig(_Section):
    memorize_threshold: float = _field(0.99, "train accuracy that defines memorize_step", gt=0.0, le=1.0)
    grok_threshold: float = _field(0.99, "test accuracy that defines grok_step", gt=0.0, le=1.0)
    patience: int = _field(3, "evaluations test accuracy must hold the threshold before a run is done", ge=1,
                           le=2**20)
    grok_gap: int = _field(-1, "grok_delay above which a run is 'grokking', not 'comprehension'; "
                               "-1: max(eval_every, steps // 100)", ge=-1, le=2**30)
    stop_early: bool = _field(True, "stop the sweep once every run is done or diverged")


CRITERIA = ("grok", "memorize", "diverge")
DIRECTIONS = ("auto", "up", "down")
SCALES = ("auto", "linear", "log")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """``[search]``: the critical value of ``axis`` per cell of the ``by`` axes, on a lattice from
    ``low`` to ``high`` with steps of at most ``resolution`` (see grokjax.search)."""

    axis: str = _field("data_fraction", "the per-run setting whose critical value is sought (data_fraction, "
                                        "weight_decay, lr, init_scale, ...)")
    low: float = _field(0.1, "the smallest value probed")
    high: float = _field(0.9, "the largest value probed")
    resolution: float = _field(0.05, "stop when the bracket is this narrow (linear scale), or when its ends "
                                     "differ by at most this factor (log scale, > 1)", gt=0.0)
    by: tuple = _field((), "grid axes with one boundary per combination of their values; default: every "
                           "[grid] axis")
    seeds: tuple = _field(5, "runs per probed value: a count (seeds train.seed, train.seed + 1, ...) or a "
                             "list of seeds")
    criterion: str = _field("grok", "a probed value is in when more than half of its seeds grok (reach the "
                                    "grok threshold within the budget), memorize, or diverge", choices=CRITERIA)
    direction: str = _field("auto", "where the criterion holds: up (above the boundary, as for the data "
                                    "fraction), down (below), or auto (probe both ends first to find out)",
                            choices=DIRECTIONS)
    scale: str = _field("auto", "lattice spacing: linear, log, or auto (log when high / low >= 10)",
                        choices=SCALES)
    probes: int = _field(1, "values probed at once per cell and round: 1 is bisection; more split the "
                            "bracket into probes + 1 parts (fewer rounds, more runs)", ge=1, le=64)


SECTIONS: dict[str, type] = {
    "task": TaskConfig,
    "model": ModelConfig,
    "optimizer": OptimizerConfig,
    "train": TrainConfig,
    "events": EventsConfig,
}
PLUGIN_SECTIONS = ("task", "model", "optimizer")


def engine_fields(cls) -> list[dataclasses.Field]:
    """The engine's own fields of a section (not a plug-in's ``settings``)."""
    return [f for f in dataclasses.fields(cls) if f.name != "settings"]


# The engine's own settings by short name (unique across sections); a plug-in's name is called
# by its section ("task", "model", "optimizer"), so that it too can be a grid axis.
FIELDS: dict[str, tuple[str, dataclasses.Field]] = {
    (f.name if f.name != "name" else section): (section, f)
    for section, cls in SECTIONS.items() for f in engine_fields(cls)
}
PER_RUN_FIELDS: tuple[str, ...] = tuple(k for k, (_, f) in FIELDS.items() if f.metadata["per_run"])
# inside the program: int32 step counts and seeds (as jax.random takes them), float32 values
_ARRAY_DTYPES = {"int": np.int32, "float": np.float32}
PER_RUN_DTYPES: dict[str, type] = {k: _ARRAY_DTYPES[FIELDS[k][1].type] for k in PER_RUN_FIELDS}


def suggest(key: str, allowed) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``allowed`` to ``key``, or ``""``."""
    close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_keys(table: dict, allowed, where: str) -> None:
    """Refuse a key of ``table`` that is not in ``allowed``.

    Raises:
      SweepError: naming the key, the closest allowed one and all of them.
    """
    for key in table:
        if key not in allowed:
            raise SweepError(f"unknown key {key!r} in {where}{suggest(key, allowed)}; allowed: {', '.join(allowed)}")


def convert_field(where: str, f: dataclasses.Field, value):
    """One value checked against a schema field: its type, bounds and choices.

    Args:
      where: the setting as the user wrote it (``train.steps``), for messages.
      f: the field of a section dataclass.
      value: the value from a sweep file or from Python.

    Returns:
      The value in the field's type (an integral float becomes an int, an int a float).

    Raises:
      SweepError: the value has the wrong type, is out of bounds or not one of the choices.
    """
    kind, m = f.type, f.metadata
    if f.name == "measures":
        return _measure_names(where, value)
    if f.name == "name" or f.name == "loss":  # a plug-in: a name, or from Python the callable itself
        if not isinstance(value, str) and not callable(value):
            raise SweepError(f"{where} must be a string, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise SweepError(f"{where} must be a string, got {value!r}")
        if m["choices"] and value not in m["choices"]:
            raise SweepError(f"{where} = {value!r} is not allowed{suggest(value, m['choices'])}; "
                             f"allowed: {', '.join(m['choices'])}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise SweepError(f"{where} must be true or false, got {value!r}")
        return value
    return _check_bounds(where, m, convert_number(where, kind, value))


def _measure_names(where: str, value) -> tuple[str, ...]:
    """``train.measures``: a list of measure names (or, from Python, callables), each resolved."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise SweepError(f"{where} must be a list of measure names, got {value!r}")
    names = tuple(name_of("measure", v) if callable(v) else v for v in value)
    for name in names:
        if not isinstance(name, str):
            raise SweepError(f"{where} must be a list of measure names (strings), got {name!r}")
        resolve("measure", name)
    if len(set(names)) != len(names):
        raise SweepError(f"{where} names a measure twice: {list(names)}")
    return names


def _check_bounds(where: str, m, value):
    bounds = [("ge", ">=", m["ge"] is None or value >= m["ge"]),
              ("gt", ">", m["gt"] is None or value > m["gt"]),
              ("le", "<=", m["le"] is None or value <= m["le"]),
              ("lt", "<", m["lt"] is None or value < m["lt"])]
    if not all(ok for _, _, ok in bounds):
        raise SweepError(f"{where} must be {_allowed_range(m)}, got {value!r}")
    return value


def _allowed_range(m) -> str:
    return " and ".join(f"{s} {m[b]}" for b, s in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
                        if m[b] is not None)


def describe_settings() -> list[dict]:
    """The settings tables of ``grokjax info`` and the documentation, from the schema.

    Returns:
      One row per setting, dicts of ``section, key, default, allowed, per_run, doc``: the
      engine's own, the ``[search]`` section's, then the built-in plug-ins' keyword arguments
      (``doc`` names the built-ins that take each).
    """
    return _engine_rows() + _search_rows() + [row for section in PLUGIN_SECTIONS for row in _plugin_rows(section)]


def _engine_rows() -> list[dict]:
    rows = []
    for section, cls in SECTIONS.items():
        for f in engine_fields(cls):
            m = f.metadata
            allowed = ", ".join(m["choices"]) if m["choices"] else _allowed_range(m)
            rows.append(dict(section=section, key=f.name, default=f.default, allowed=allowed or f.type,
                             per_run=m["per_run"], doc=m["doc"]))
    return rows


def _search_rows() -> list[dict]:
    kinds = {"axis": "a per-run float setting", "by": "list of grid axes", "seeds": "int or list of ints"}
    rows = []
    for f in dataclasses.fields(SearchConfig):
        m = f.metadata
        allowed = ", ".join(m["choices"]) if m["choices"] else kinds.get(f.name, "float")
        rows.append(dict(section="search", key=f.name, default=f.default, allowed=allowed, per_run=False,
                         doc=m["doc"]))
    return rows


def _plugin_rows(section: str) -> list[dict]:
    seen: dict[str, dict] = {}
    for name in BUILTINS[section]:
        for key, param in settings_of(section, resolve(section, name)).items():
            default = None if param.default is param.empty else param.default
            row = seen.setdefault(key, dict(section=section, key=key, default=default,
                                            allowed=type(default).__name__ if default is not None else "any",
                                            per_run=section == "optimizer" and isinstance(default, float),
                                            doc=[]))
            row["doc"].append(name)
    for row in seen.values():
        row["doc"] = "setting of " + ", ".join(row["doc"])
    return list(seen.values())
