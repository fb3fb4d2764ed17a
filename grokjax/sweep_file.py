"""Loading a sweep: a TOML file or a dict -> a validated ``SweepConfig``.

Each section is checked against its schema (``schema``) and a plug-in's keys against its
signature (``plugins``); the grid's axes are converted to their settings' types; then the checks
that involve several settings run over every group of the grid (``_check_consistency``), and the
``[search]`` section last (``search_section``), since it reads the grid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from grokjax.errors import SweepError
from grokjax.overrides import Overrides, apply_overrides, describe, overridden_text
from grokjax.plugins import (
    build_task,
    call_factory,
    check_settings,
    convert_setting,
    name_of,
    parameters_of,
    resolve,
    settings_of,
    takes_any_keyword,
)
from grokjax.schema import FIELDS, PLUGIN_SECTIONS, SECTIONS, check_keys, convert_field, engine_fields, suggest
from grokjax.search_section import search_section
from grokjax.sweep_config import SweepConfig, grid_axis

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MAX_RUNS = 10**6  # runs of one sweep file: each is a row of host tables
TOP_LEVEL_KEYS = ("name", "description", "grid", *SECTIONS, "search")


def load_sweep(path: str | Path, overrides: Overrides | None = None) -> SweepConfig:
    """Read and validate a sweep file, with settings changed as the command line's ``--set`` does.

    Plug-ins named by import path (``module:attribute``) may live beside the file: its folder is
    on the Python path while the file loads (every plug-in it names is imported then), not after.

    Args:
      path: the TOML file; its stem is the sweep's name unless it sets ``name``.
      overrides: ``KEY=VALUE`` strings (``["optimizer.lr=3e-3", "grid.seed=[0,1,2]"]``, values
        read as TOML) or a dict of key -> value, applied to the file's data before it is
        validated (``grokjax.overrides``); ``sweep_text(path, overrides)`` is the file to save.

    Returns:
      The validated ``SweepConfig``.

    Raises:
      SweepError: the file is missing, not TOML, or a setting is wrong (the message names it).

    Example:
      >>> config = load_sweep("sweeps/quickstart.toml")
      >>> len(config.runs()), config.replace(steps=600).train.steps
      (45, 600)
      >>> load_sweep("sweeps/quickstart.toml", ["optimizer.lr=3e-3", "grid.seed=[0]"]).optimizer.lr
      0.003
    """
    raw = _merged(path, overrides)
    where = f"{path} with {describe(overrides)}" if overrides else str(path)
    try:
        with _on_python_path(str(Path(path).resolve().parent)):
            return sweep_from_dict(raw)
    except SweepError as e:
        raise SweepError(f"{where}: {e}") from None


def sweep_text(path: str | Path, overrides: Overrides | None = None) -> str:
    """The sweep file a launch saves as its results folder's ``sweep.toml``: the file's own text,
    or with overrides the merged settings written back as TOML (``overrides.overridden_text``), so
    that running or resuming from the copy reproduces the launch.

    Args:
      path, overrides: as for ``load_sweep``.

    Returns:
      The text.

    Raises:
      SweepError: as ``load_sweep`` for an unreadable file or a malformed override.
    """
    if not overrides:
        return Path(path).read_text()
    return overridden_text(_merged(path, overrides), overrides, Path(path).name)


def _merged(path: str | Path, overrides: Overrides | None) -> dict[str, Any]:
    """The file's data with its overrides, its ``name`` set (default: the file's stem)."""
    if not isinstance(path, (str, Path)):
        raise SweepError(f"load_sweep needs a file path, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file not found: {path}")
    raw = read_sweep_file(path)
    try:
        raw = apply_overrides(raw, overrides)
    except SweepError as e:
        raise SweepError(f"{path}: {e}") from None
    if not any(key in raw for key in (*SECTIONS, "grid")):
        raise SweepError(f"{path}: the sweep file sets nothing (no [task], [model], [optimizer], [train], [events] "
                         f"or [grid]); say what to train, e.g. [task] name = \"add\" "
                         f"(grokjax info lists every setting)")
    return {"name": path.stem, **raw}


@contextlib.contextmanager
def _on_python_path(folder: str) -> Iterator[None]:
    """``folder`` first on ``sys.path`` inside the block. The modules imported from it stay in
    ``sys.modules``, where later look-ups of the same plug-ins find them."""
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


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
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8-sig"))
    except tomllib.TOMLDecodeError as e:
        raise SweepError(f"{path}: TOML syntax error: {e}") from None
    except UnicodeDecodeError:
        raise SweepError(f"{path}: not a text (UTF-8) TOML file") from None
    except OSError as e:
        raise SweepError(f"{path}: cannot be read ({e.strerror or e})") from None
    return raw


def sweep_from_dict(raw: dict[str, Any]) -> SweepConfig:
    """Validate a parsed sweep (a TOML file's dict) into a ``SweepConfig``.

    Args:
      raw: sections as nested dicts, as ``tomllib`` parses a sweep file. From Python, a
        plug-in's ``name`` (and ``train.loss``) may also be the callable itself.

    Returns:
      The validated ``SweepConfig``.

    Raises:
      SweepError: a setting is unknown or wrong, or settings disagree (the message names them).

    Example:
      >>> config = sweep_from_dict({"task": {"name": "add", "p": 23}, "grid": {"seed": [0, 1]}})
      >>> len(config.runs())
      2
    """
    if not isinstance(raw, dict):
        raise SweepError(f"a sweep is a table of sections, got {type(raw).__name__}")
    check_keys(raw, TOP_LEVEL_KEYS, "top level")
    name = raw.get("name", "sweep")
    if not isinstance(name, str) or not name or any(c in name for c in "/\\\0") or name.startswith("."):
        raise SweepError(f"name must be a non-empty string usable as a folder name, got {name!r}")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise SweepError(f"description must be a string, got {description!r}")
    sections = {section: _section(section, cls, raw.get(section, {})) for section, cls in SECTIONS.items()}
    config = SweepConfig(name=name, description=description, **sections)
    config = dataclasses.replace(config, grid=_grid(config, raw.get("grid", {})))
    _check_consistency(config)
    if "search" in raw:
        config = dataclasses.replace(config, search=search_section(config, raw["search"]))
    return config


def _section(section: str, cls, table) -> Any:
    """One section: the engine's fields typed and bounded, a plug-in's settings checked against
    its signature."""
    if not isinstance(table, dict):
        raise SweepError(f"[{section}] must be a table, got {table!r}")
    fields = {f.name: f for f in engine_fields(cls)}
    if section == "train" and "loss" in table:
        table = dict(table, loss=name_of("loss", table["loss"]))
    if section not in PLUGIN_SECTIONS:
        check_keys(table, list(fields), f"[{section}]")
        part = cls(**{k: convert_field(f"{section}.{k}", fields[k], v) for k, v in table.items()})
        if section == "train":
            resolve("loss", part.loss)
        return part
    plugin_name = name_of(section, table.get("name", fields["name"].default))
    fn = resolve(section, plugin_name)
    params = settings_of(section, fn)
    for key in table:
        if key not in fields and key not in params and not takes_any_keyword(fn):
            allowed = list(params) + [k for k in fields if k != "name"]
            raise SweepError(f"unknown key {key!r} in [{section}]{suggest(key, allowed)}; {section} "
                             f"'{plugin_name}' takes: {', '.join(params) or 'no settings'}; engine settings: "
                             f"{', '.join(k for k in fields if k != 'name')}")
    engine = {k: convert_field(f"{section}.{k}", fields[k], v) for k, v in table.items()
              if k in fields and k != "name"}
    settings = check_settings(section, plugin_name, fn, {k: v for k, v in table.items() if k not in fields},
                              f"[{section}]")
    return cls(name=plugin_name, settings=tuple(settings.items()), **engine)


def _grid(config: SweepConfig, grid_raw) -> tuple[tuple[str, tuple], ...]:
    """``[grid]``: each axis by the name it is stored under, its values converted, in file order."""
    if not isinstance(grid_raw, dict):
        raise SweepError(f"[grid] must be a table of setting = [values], got {grid_raw!r}")
    grid = []
    for key, values in flatten(grid_raw):
        short = grid_axis(config, key)
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
    n_runs = math.prod(len(v) for _, v in grid)
    if n_runs > MAX_RUNS:
        raise SweepError(f"the grid has {n_runs:,} runs ({' x '.join(str(len(v)) for _, v in grid)}); at most "
                         f"{MAX_RUNS:,} per sweep file: split it into several")
    return tuple(grid)


def _convert_axis(config: SweepConfig, key: str, value):
    if key in FIELDS:
        section, f = FIELDS[key]
        value = convert_field(f"grid.{key}", f, value)
        return name_of(section, value) if f.name == "name" and section in PLUGIN_SECTIONS else value
    section, name = config.locate(key)
    param = settings_of(section, resolve(section, getattr(config, section).name)).get(name)
    return convert_setting(f"grid.{key}", param, value)


def flatten(table: dict, prefix: str = ""):
    """TOML turns ``optimizer.lr = [...]`` into a nested table; walk it back to dotted keys."""
    for key, value in table.items():
        if isinstance(value, dict):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _check_consistency(config: SweepConfig) -> None:
    """Checks that involve several settings, over every group of the grid: each plug-in is built
    once with its settings (a factory refuses bad values), the task's table exists, shapes agree."""
    _check_one_precision_mode(config)
    static_axes = [(k, v) for k, v in config.grid if k not in config.per_run_keys()]
    for combo in itertools.product(*(v for _, v in static_axes)):
        group = config.replace(**{k: x for (k, _), x in zip(static_axes, combo)})
        _check_group(config, group)


def _check_one_precision_mode(config: SweepConfig) -> None:
    precisions = set(dict(config.grid).get("precision", (config.train.precision,)))
    if "float64" in precisions and len(precisions) > 1:  # see experiment.use_precision_mode
        raise SweepError(f"grid.precision mixes float64 with {', '.join(sorted(precisions - {'float64'}))}: "
                         f"float64 needs JAX's 64-bit mode, which holds for the whole process and changes "
                         f"the other precisions' programs; sweep float64 in a sweep file of its own")


def _check_group(config: SweepConfig, c: SweepConfig) -> None:
    """One group ``c`` of ``config``'s grid: its plug-ins built with its settings."""
    for section in PLUGIN_SECTIONS:  # a name axis: its settings must suit every name
        part = getattr(c, section)
        check_settings(section, part.name, resolve(section, part.name), dict(part.settings), f"[{section}]")
    t, m, tr = c.task, c.model, c.train
    task = build_task(t.name, t.settings)
    if tr.eval_every > tr.steps or tr.steps % tr.eval_every:
        raise SweepError(f"train.steps ({tr.steps}) must be a multiple of train.eval_every ({tr.eval_every})")
    if tr.llc_every and (tr.steps // tr.eval_every) % tr.llc_every:
        raise SweepError(f"train.llc_every ({tr.llc_every}) must divide the {tr.steps // tr.eval_every} evaluations "
                         f"of a run (train.steps / train.eval_every), so that the last one has an estimate")
    if tr.llc_every and tr.llc_batch_size > task.size:
        raise SweepError(f"train.llc_batch_size ({tr.llc_batch_size}) exceeds the {task.size} examples of task "
                         f"'{t.name}'")
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
                call_factory("optimizer", o.name, optimizer_fn, learning_rate=o.lr, **{**dict(o.settings), name: v})
