"""Sweep files (TOML) -> validated frozen dataclasses -> the grid of runs.

A sweep file has the sections ``[task] [model] [optimizer] [train] [events]`` and a ``[grid]``
whose keys are setting names (``data_fraction`` or ``task.data_fraction``) mapped to lists; the
grid is their Cartesian product. A ``[search]`` section (``grokjax search``) seeks the critical
value of one per-run setting per cell of that grid instead of training a dense axis of it.

Each of ``[task] [model] [optimizer]`` names a plug-in (``name``: a built-in, or an import path
``package.module:attribute``; see ``plugins``); its other keys are either the engine's own
settings of that section (below) or the plug-in's keyword arguments, validated against its
signature. Settings that are per run become arrays along the run axis (one compiled program for
all their values): the engine's fields marked ``per_run`` and every float setting of the
optimizer. Every other setting that is a grid axis (``p``, ``width``, ``steps``, a task's name)
changes the program, so each of its values is its own group, compiled once.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import sys
from pathlib import Path
from typing import Any, ClassVar

from grokjax.errors import SweepError
from grokjax.interventions import GROKFAST, GROKFAST_LAMB
from grokjax.optim import SCHEDULES
from grokjax.plugins import (BUILTINS, build_task, call_factory, check_settings, convert_setting, name_of,
                             parameters_of, resolve, scalar_defaults, settings_of, takes_any_keyword)
from grokjax.tasks import describe_tasks

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

INT32_MAX = 2**31 - 1  # step counters, seeds and indices are int32 inside the program
MAX_RUNS = 10**6  # runs of one sweep file: each is a row of host tables


def _field(default, doc, *, ge=None, gt=None, le=None, lt=None, choices=None, per_run=False):
    meta = dict(doc=doc, ge=ge, gt=gt, le=le, lt=lt, choices=choices, per_run=per_run)
    return dataclasses.field(default=default, metadata=meta)


Settings = tuple  # ((key, value), ...): a plug-in's keyword arguments, in file order


class _PluginSection:
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
        """A setting with its 'depends on another setting' default filled in."""
        value = getattr(self, key)
        if key == "grokfast_lamb" and value < 0:
            return GROKFAST_LAMB[self.grokfast]
        return value


@dataclasses.dataclass(frozen=True)
class TrainConfig:
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


@dataclasses.dataclass(frozen=True)
class EventsConfig:
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
MAX_LATTICE = 100_000  # values a search axis may be split into


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
TOP_LEVEL_KEYS = ("name", "description", "grid", *SECTIONS, "search")


def _engine_fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.name != "settings"]


# The engine's own settings by short name (unique across sections); a plug-in's name is called
# by its section ("task", "model", "optimizer"), so that it too can be a grid axis.
FIELDS: dict[str, tuple[str, dataclasses.Field]] = {
    (f.name if f.name != "name" else section): (section, f)
    for section, cls in SECTIONS.items() for f in _engine_fields(cls)
}
PER_RUN_FIELDS: tuple[str, ...] = tuple(k for k, (_, f) in FIELDS.items() if f.metadata["per_run"])


def _axis_key(key: str) -> str:
    """``optimizer.lr`` -> ``lr``; ``task.name`` -> ``task``; plug-in keys are kept as given."""
    section, _, rest = key.partition(".")
    if rest == "name" and section in PLUGIN_SECTIONS:
        return section
    if rest and rest in FIELDS and FIELDS[rest][0] == section:
        return rest
    return key


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
    search: SearchConfig | None = None  # [search]: grokjax search, not grokjax run

    def plugin_keys(self) -> dict[str, tuple[str, str]]:
        """Every plug-in setting of this config's plug-ins: name -> (section, key). A setting is
        called by its key where that is unambiguous, else (and always also) ``section.key``."""
        owners: dict[str, list[str]] = {}
        for section in PLUGIN_SECTIONS:
            part = getattr(self, section)
            keys = set(settings_of(section, resolve(section, part.name))) | {k for k, _ in part.settings}
            for key in keys:
                owners.setdefault(key, []).append(section)
        out = {}
        for key, sections in owners.items():
            for section in sections:
                out[f"{section}.{key}"] = (section, key)
            if len(sections) == 1 and key not in FIELDS:
                out[key] = (sections[0], key)
        return out

    def locate(self, key: str) -> tuple[str, str]:
        """(section, field or plug-in key) of a setting called by short or dotted name."""
        short = _axis_key(key)
        if short in FIELDS:
            section, f = FIELDS[short]
            return section, f.name
        plugin = self.plugin_keys()
        if short in plugin:
            return plugin[short]
        section, _, rest = key.partition(".")
        if section in PLUGIN_SECTIONS and rest and takes_any_keyword(resolve(section, getattr(self, section).name)):
            return section, rest
        if short in {k.split(".", 1)[1] for k in plugin if "." in k}:
            owners = [k for k in plugin if k.endswith("." + short)]
            raise SweepError(f"setting {key!r} is ambiguous; say which: {', '.join(owners)}")
        allowed = sorted(set(FIELDS) | set(plugin))
        hint = f" (did you mean '{close[0]}'?)" if (close := difflib.get_close_matches(short, allowed, 1, 0.5)) else ""
        raise SweepError(f"unknown setting {key!r}{hint}; settings: {', '.join(allowed)}")

    def get(self, key: str):
        section, name = self.locate(key)
        return getattr(getattr(self, section), name)

    def replace(self, **values) -> "SweepConfig":
        """A copy with settings replaced by name: ``cfg.replace(lr=1e-2, steps=100)`` (dotted names
        too: ``cfg.replace(**{"task.p": 13})``); values are checked as a sweep file's are."""
        by_section: dict[str, dict] = {}
        for key, value in values.items():
            section, name = self.locate(key)
            by_section.setdefault(section, {})[name] = value
        sections = {}
        for section, kv in by_section.items():
            part, cls = getattr(self, section), SECTIONS[section]
            fields = {f.name: f for f in _engine_fields(cls)}
            engine = {k: _convert(f"{section}.{k}", fields[k], v) for k, v in kv.items() if k in fields}
            if section in PLUGIN_SECTIONS and "name" in engine:
                engine["name"] = name_of(section, engine["name"])
                resolve(section, engine["name"])
            if section in PLUGIN_SECTIONS:
                settings = dict(part.settings)
                params = settings_of(section, resolve(section, engine.get("name", part.name)))
                settings.update({k: convert_setting(f"{section}.{k}", params.get(k), v)
                                 for k, v in kv.items() if k not in fields})
                engine["settings"] = tuple(settings.items())
            sections[section] = dataclasses.replace(part, **engine)
        return dataclasses.replace(self, **sections)

    @property
    def grok_gap(self) -> int:
        gap = self.events.grok_gap
        return gap if gap >= 0 else max(self.train.eval_every, self.train.steps // 100)

    def runs(self) -> list["SweepConfig"]:
        """One config per run of the grid, in Cartesian-product order (run_id = position)."""
        keys = [k for k, _ in self.grid]
        combos = itertools.product(*(values for _, values in self.grid))
        return [self.replace(**dict(zip(keys, combo))) for combo in combos]

    def optimizer_per_run(self) -> dict[str, float]:
        """The optimizer's float settings: per-run arrays, traced inside the program."""
        return {k: v for k, v in self.optimizer.settings if isinstance(v, float)}

    def per_run_keys(self) -> tuple[str, ...]:
        """Settings that are arrays along the run axis (the engine's and the optimizer's floats)."""
        plugin = self.plugin_keys()
        names = [k if k in plugin else f"optimizer.{k}" for k in self.optimizer_per_run()]
        return PER_RUN_FIELDS + tuple(names)

    def static_key(self) -> tuple:
        """Everything that is not a per-run array: runs with equal keys share one program."""
        engine = tuple((k, self.get(k)) for k in FIELDS if k not in PER_RUN_FIELDS)
        plugins = tuple((s, tuple(sorted((k, v) for k, v in getattr(self, s).settings
                                         if not (s == "optimizer" and isinstance(v, float)))))
                        for s in PLUGIN_SECTIONS)
        return engine + plugins + (("optimizer per run", tuple(sorted(self.optimizer_per_run()))),)

    def columns(self) -> dict[str, Any]:
        """This run's settings as a results row: the plug-ins' names, the engine's per-run
        settings, then every plug-in setting (set or default) by its short name."""
        out = {"task": self.task.name, "model": self.model.name, "optimizer": self.optimizer.name,
               "loss": self.train.loss}
        out.update({k: self.get(k) for k in PER_RUN_FIELDS})
        out["grokfast_lamb"] = self.optimizer.resolved("grokfast_lamb")
        plugin = self.plugin_keys()
        for section in PLUGIN_SECTIONS:
            part = getattr(self, section)
            values = {**scalar_defaults(section, resolve(section, part.name)), **dict(part.settings)}
            for key, value in values.items():
                column = key if key in plugin else f"{section}.{key}"
                out.setdefault(column, value)
        return out

    def flat(self) -> dict[str, Any]:
        """Every setting that decides results, by dotted name (checkpoints compare these)."""
        out = {}
        for section in SECTIONS:
            part = getattr(self, section)
            out.update({f"{section}.{f.name}": getattr(part, f.name) for f in _engine_fields(type(part))})
            out.update({f"{section}.{k}": v for k, v in getattr(part, "settings", ())})
        out.update({f"grid.{k}": list(v) for k, v in self.grid})
        if self.search is not None:
            out.update({f"search.{f.name}": getattr(self.search, f.name) for f in dataclasses.fields(SearchConfig)})
        return out


# ---------------------------------------------------------------------------------------------
# Loading and validation


def load_sweep(path: str | Path) -> SweepConfig:
    """Read and validate a sweep file; raises ``SweepError`` naming the bad field. The file's
    folder joins the Python path, so that plug-ins beside it import by name."""
    if not isinstance(path, (str, Path)):
        raise SweepError(f"load_sweep needs a file path, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file not found: {path}")
    raw = read_sweep_file(path)
    if not any(key in raw for key in (*SECTIONS, "grid")):
        raise SweepError(f"{path}: the sweep file sets nothing (no [task], [model], [optimizer], [train], [events] "
                         f"or [grid]); say what to train, e.g. [task] name = \"add\" (grokjax info lists every setting)")
    raw.setdefault("name", path.stem)
    folder = str(path.resolve().parent)  # plug-ins named by import path may live beside the sweep file
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        return sweep_from_dict(raw)
    except SweepError as e:
        raise SweepError(f"{path}: {e}") from None


def read_sweep_file(path: Path) -> dict[str, Any]:
    """A sweep file as plain TOML data: parsed only, so nothing it names is imported or called
    (readers of a results folder use this; ``load_sweep`` validates on top of it).

    Args:
        path: the TOML file.
    Returns:
        The parsed tables, as ``tomllib`` gives them.
    Raises:
        SweepError: the file cannot be read, is not UTF-8 text, or is not valid TOML.
    """
    try:
        # utf-8-sig: Windows editors may save a byte-order mark, which TOML itself refuses; text
        # mode, so that any line ending reads as one
        raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except tomllib.TOMLDecodeError as e:
        raise SweepError(f"{path}: TOML syntax error: {e}") from None
    except UnicodeDecodeError:
        raise SweepError(f"{path}: not a text (UTF-8) TOML file") from None
    except OSError as e:
        raise SweepError(f"{path}: cannot be read ({e.strerror or e})") from None
    return raw


def sweep_from_dict(raw: dict[str, Any]) -> SweepConfig:
    """Validate a parsed sweep (the TOML's dict) into a ``SweepConfig``. From Python, a plug-in's
    ``name`` (and ``train.loss``) may also be the callable itself."""
    if not isinstance(raw, dict):
        raise SweepError(f"a sweep is a table of sections, got {type(raw).__name__}")
    _check_keys(raw, TOP_LEVEL_KEYS, "top level")
    name = raw.get("name", "sweep")
    if not isinstance(name, str) or not name or any(c in name for c in "/\\\0") or name.startswith("."):
        raise SweepError(f"name must be a non-empty string usable as a folder name, got {name!r}")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise SweepError(f"description must be a string, got {description!r}")
    sections = {section: _section(section, cls, raw.get(section, {})) for section, cls in SECTIONS.items()}
    config = SweepConfig(name=name, description=description, **sections)
    grid_raw = raw.get("grid", {})
    if not isinstance(grid_raw, dict):
        raise SweepError(f"[grid] must be a table of setting = [values], got {grid_raw!r}")
    grid = []
    for key, values in _flatten(grid_raw):
        short = _grid_axis(config, key)
        if not isinstance(values, list):
            raise SweepError(f"grid.{short} must be a list of values, got {values!r}")
        if not values:
            raise SweepError(f"grid.{short} is empty; give at least one value")
        converted = tuple(_convert_axis(config, short, v) for v in values)
        if len(set(map(repr, converted))) != len(converted):
            raise SweepError(f"grid.{short} has duplicate values: {list(values)}")
        if short in dict(grid):
            raise SweepError(f"grid.{short} is given twice")
        grid.append((short, converted))
    config = dataclasses.replace(config, grid=tuple(grid))
    n_runs = math.prod(len(v) for _, v in grid)
    if n_runs > MAX_RUNS:
        raise SweepError(f"the grid has {n_runs:,} runs ({' x '.join(str(len(v)) for _, v in grid)}); at most "
                         f"{MAX_RUNS:,} per sweep file: split it into several")
    _check_consistency(config)
    if "search" in raw:
        config = dataclasses.replace(config, search=_search_section(config, raw["search"]))
    return config


def _search_section(config: SweepConfig, table) -> SearchConfig:
    """``[search]`` checked against the sweep: a per-run numeric axis that is not a grid axis, a
    range inside the setting's bounds, ``by`` axes that are the grid's."""
    if not isinstance(table, dict):
        raise SweepError(f"[search] must be a table, got {table!r}")
    fields = {f.name: f for f in dataclasses.fields(SearchConfig)}
    _check_keys(table, list(fields), "[search]")
    for key in ("axis", "low", "high", "resolution"):
        if key not in table:
            raise SweepError(f"[search] needs {key} (keys: axis, low, high, resolution; optional: by, seeds, "
                             f"criterion, direction, scale, probes)")
    axis = table["axis"]
    if not isinstance(axis, str):
        raise SweepError(f"search.axis must be a setting name, got {axis!r}")
    try:
        short = _grid_axis(config, axis)
    except SweepError as e:
        raise SweepError(f"search.axis: {e}") from None
    if short in dict(config.grid):
        raise SweepError(f"search.axis = {axis!r} is also a [grid] axis; the search chooses its values "
                         f"(remove grid.{short})")
    if "seed" in dict(config.grid):
        raise SweepError("[grid] has a seed axis; a search's seeds are search.seeds (a count or a list)")
    value = config.get(short)
    low, high = (_convert(f"search.{k}", fields[k], table[k]) for k in ("low", "high"))
    trial = config
    if isinstance(value, float):  # an optimizer's float joins the per-run settings once it is set
        for key, v in (("low", low), ("high", high)):
            try:
                trial = config.replace(**{short: v})
            except SweepError as e:
                raise SweepError(f"search.{key}: {e}") from None
    if not isinstance(value, float) or short not in trial.per_run_keys():
        floats = [k for k in config.per_run_keys() if isinstance(config.get(k), float)]
        what = ("is not numeric" if isinstance(value, bool) or not isinstance(value, (int, float)) else
                "takes integers" if short in config.per_run_keys() else
                "changes the compiled program (one program per value)")
        raise SweepError(f"search.axis = {axis!r} {what}; the search probes a per-run float setting: "
                         f"{', '.join(floats)} or a float setting of the optimizer (weight_decay, ...)")
    if low >= high:
        raise SweepError(f"search.low ({low}) must be smaller than search.high ({high})")
    engine = {k: _convert(f"search.{k}", fields[k], table[k]) for k in ("resolution", "criterion", "direction",
                                                                        "scale", "probes") if k in table}
    scale = engine.get("scale", "auto")
    if scale == "auto":
        scale = "log" if low > 0 and high / low >= 10 else "linear"
    resolution = engine["resolution"]
    if scale == "log":
        if low <= 0:
            raise SweepError(f"search.scale = 'log' needs search.low > 0, got {low}")
        if resolution <= 1:
            raise SweepError(f"search.resolution = {resolution}: on a log scale (high / low >= 10, or scale = "
                             f"'log') the resolution is the largest ratio between the bracket's ends, > 1 "
                             f"(e.g. 1.25); or set scale = 'linear'")
        if resolution > high / low:
            raise SweepError(f"search.resolution ({resolution}) is larger than the range's ratio high / low "
                             f"({high / low:g})")
        n = math.log(high / low) / math.log(resolution)
    else:
        if resolution > high - low:
            raise SweepError(f"search.resolution ({resolution}) is larger than the range high - low "
                             f"({high - low:g})")
        n = (high - low) / resolution
    if n > MAX_LATTICE:
        raise SweepError(f"search.resolution = {resolution} splits the range into {n:,.0f} values; at most "
                         f"{MAX_LATTICE:,}")
    grid_axes = [k for k, _ in config.grid]
    by = table.get("by", grid_axes)
    if isinstance(by, str):
        by = [by]
    if not isinstance(by, list) or not all(isinstance(b, str) for b in by):
        raise SweepError(f"search.by must be a list of [grid] axes, got {by!r}")
    by = [_grid_axis(config, b) if b not in grid_axes else b for b in by]
    for b in by:
        if b not in grid_axes:
            raise SweepError(f"search.by: {b!r} is not a [grid] axis; give its values in [grid] "
                             f"(grid axes: {', '.join(grid_axes) or 'none'})")
    if len(set(by)) != len(by):
        raise SweepError(f"search.by names an axis twice: {by}")
    for k in grid_axes:
        if k not in by:
            raise SweepError(f"grid.{k} is not in search.by: every [grid] axis needs a boundary of its own "
                             f"(add it to search.by, or give it a single value outside [grid])")
    seeds = table.get("seeds", fields["seeds"].default)
    if isinstance(seeds, bool) or not isinstance(seeds, (int, list)):
        raise SweepError(f"search.seeds must be a count or a list of seeds, got {seeds!r}")
    if isinstance(seeds, int):
        if not 1 <= seeds <= 1000:
            raise SweepError(f"search.seeds must be between 1 and 1000, got {seeds}")
        seeds = list(range(config.train.seed, config.train.seed + seeds))
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= INT32_MAX
                            for s in seeds):
        raise SweepError(f"search.seeds must be a count or a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"search.seeds has duplicates: {seeds}")
    return SearchConfig(axis=short, low=low, high=high, by=tuple(by), seeds=tuple(seeds), scale=scale,
                        **{k: v for k, v in engine.items() if k != "scale"})


def _section(section: str, cls, table) -> Any:
    """One section: the engine's fields typed and bounded, a plug-in's settings checked against
    its signature."""
    if not isinstance(table, dict):
        raise SweepError(f"[{section}] must be a table, got {table!r}")
    fields = {f.name: f for f in _engine_fields(cls)}
    if section == "train" and "loss" in table:
        table = dict(table, loss=name_of("loss", table["loss"]))
    if section not in PLUGIN_SECTIONS:
        _check_keys(table, list(fields), f"[{section}]")
        part = cls(**{k: _convert(f"{section}.{k}", fields[k], v) for k, v in table.items()})
        if section == "train":
            resolve("loss", part.loss)
        return part
    plugin_name = name_of(section, table.get("name", fields["name"].default))
    fn = resolve(section, plugin_name)
    params = settings_of(section, fn)
    for key in table:
        if key not in fields and key not in params and not takes_any_keyword(fn):
            allowed = list(params) + [k for k in fields if k != "name"]
            raise SweepError(f"unknown key {key!r} in [{section}]{_suggest(key, allowed)}; {section} "
                             f"'{plugin_name}' takes: {', '.join(params) or 'no settings'}; engine settings: "
                             f"{', '.join(k for k in fields if k != 'name')}")
    engine = {k: _convert(f"{section}.{k}", fields[k], v) for k, v in table.items() if k in fields and k != "name"}
    settings = check_settings(section, plugin_name, fn, {k: v for k, v in table.items() if k not in fields},
                              f"[{section}]")
    return cls(name=plugin_name, settings=tuple(settings.items()), **engine)


def _grid_axis(config: SweepConfig, key: str) -> str:
    """The name a grid key is stored under: short where unambiguous, else ``section.key``."""
    short = _axis_key(key)
    if short in FIELDS:
        if FIELDS[short][0] == "events" or short in ("runs_per_batch",):
            raise SweepError(f"grid.{key}: [events] settings and runs_per_batch cannot be grid axes")
        if "." in key and key.split(".", 1)[0] != FIELDS[short][0]:
            raise SweepError(f"unknown grid axis {key!r}: '{short}' is a setting of [{FIELDS[short][0]}]")
        return short
    try:
        section, name = config.locate(key)
    except SweepError as e:
        raise SweepError(f"unknown grid axis {key!r}: {e}") from None
    return name if config.plugin_keys().get(name) == (section, name) else f"{section}.{name}"


def _convert_axis(config: SweepConfig, key: str, value):
    if key in FIELDS:
        section, f = FIELDS[key]
        value = _convert(f"grid.{key}", f, value)
        return name_of(section, value) if f.name == "name" and section in PLUGIN_SECTIONS else value
    section, name = config.locate(key)
    param = settings_of(section, resolve(section, getattr(config, section).name)).get(name)
    return convert_setting(f"grid.{key}", param, value)


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
    close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_keys(table: dict, allowed, where: str) -> None:
    for key in table:
        if key not in allowed:
            raise SweepError(f"unknown key {key!r} in {where}{_suggest(key, allowed)}; allowed: {', '.join(allowed)}")


def _convert(where: str, f: dataclasses.Field, value):
    """Type-check one value against an engine field, with bounds and choices."""
    kind, m = f.type, f.metadata
    if f.name == "name" or f.name == "loss":  # a plug-in: a name, or from Python the callable itself
        if not isinstance(value, str) and not callable(value):
            raise SweepError(f"{where} must be a string, got {value!r}")
        return value
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
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            raise SweepError(f"{where} must be an integer, got {value!r}")
        value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise SweepError(f"{where} must be finite, got {value!r}")
    bounds = [("ge", ">=", m["ge"] is None or value >= m["ge"]),
              ("gt", ">", m["gt"] is None or value > m["gt"]),
              ("le", "<=", m["le"] is None or value <= m["le"]),
              ("lt", "<", m["lt"] is None or value < m["lt"])]
    if not all(ok for _, _, ok in bounds):
        allowed = " and ".join(f"{sym} {m[b]}" for b, sym, _ in bounds if m[b] is not None)
        raise SweepError(f"{where} must be {allowed}, got {value!r}")
    return value


def _check_consistency(config: SweepConfig) -> None:
    """Checks that involve several settings, over every group of the grid: each plug-in is built
    once with its settings (a factory refuses bad values), the task's table exists, shapes agree."""
    static_axes = [(k, v) for k, v in config.grid if k not in config.per_run_keys()]
    for combo in itertools.product(*(v for _, v in static_axes)):
        c = config.replace(**{k: x for (k, _), x in zip(static_axes, combo)})
        for section in PLUGIN_SECTIONS:  # a name axis: its settings must suit every name
            part = getattr(c, section)
            check_settings(section, part.name, resolve(section, part.name), dict(part.settings), f"[{section}]")
        t, m, tr = c.task, c.model, c.train
        task = build_task(t.name, t.settings)
        if tr.eval_every > tr.steps or tr.steps % tr.eval_every:
            raise SweepError(f"train.steps ({tr.steps}) must be a multiple of train.eval_every ({tr.eval_every})")
        if tr.batch_size > task.size:
            raise SweepError(f"train.batch_size ({tr.batch_size}) exceeds the {task.size} examples of task "
                             f"'{t.name}'; use 0 for full batch")
        model_fn = resolve("model", m.name)
        call_factory("model", m.name, model_fn, task.n_symbols, task.n_classes, **dict(m.settings))
        if tr.precision in ("bfloat16", "float64") and not {"dtype", "param_dtype"} <= set(parameters_of(model_fn)):
            raise SweepError(f"train.precision = {tr.precision!r} needs a model factory that takes dtype and "
                             f"param_dtype keywords; model '{m.name}' does not")
        if task.regression and tr.loss in ("cross_entropy", "stablemax"):
            raise SweepError(f"train.loss = {tr.loss!r} needs class labels; task '{t.name}' has float "
                             f"targets: use 'mse' or a loss of your own")
        noise = [t.label_noise, *dict(config.grid).get("label_noise", ())]
        if task.regression and max(noise) > 0:
            raise SweepError(f"task.label_noise needs class labels; task '{t.name}' has float targets")
        # a per-run optimizer axis: build the optimizer with each of its values, so that a
        # factory refuses bad ones before training
        o = c.optimizer
        optimizer_fn = resolve("optimizer", o.name)
        call_factory("optimizer", o.name, optimizer_fn, learning_rate=o.lr, **dict(o.settings))
        for key, values in config.grid:
            section, name = config.locate(key)
            if section == "optimizer" and key in c.per_run_keys() and name not in FIELDS:
                for v in values:
                    call_factory("optimizer", o.name, optimizer_fn, learning_rate=o.lr,
                                 **{**dict(o.settings), name: v})


def describe_settings() -> list[dict]:
    """One row per setting (section, key, default, allowed, doc): the engine's own, then the
    built-in plug-ins' keyword arguments (which built-ins take each); for README and info."""
    rows = []
    for section, cls in SECTIONS.items():
        for f in _engine_fields(cls):
            m = f.metadata
            allowed = ", ".join(m["choices"]) if m["choices"] else " and ".join(
                f"{s} {m[b]}" for b, s in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if m[b] is not None)
            rows.append(dict(section=section, key=f.name, default=f.default, allowed=allowed or f.type,
                             per_run=m["per_run"], doc=m["doc"]))
    for f in dataclasses.fields(SearchConfig):
        m = f.metadata
        allowed = ", ".join(m["choices"]) if m["choices"] else {"axis": "a per-run float setting",
                                                               "by": "list of grid axes",
                                                               "seeds": "int or list of ints"}.get(f.name, "float")
        rows.append(dict(section="search", key=f.name, default=f.default, allowed=allowed, per_run=False,
                         doc=m["doc"]))
    for section in PLUGIN_SECTIONS:
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
            rows.append(row)
    return rows


__all__ = ["SweepConfig", "SearchConfig", "SweepError", "load_sweep", "read_sweep_file", "sweep_from_dict",
           "describe_settings", "describe_tasks"]
