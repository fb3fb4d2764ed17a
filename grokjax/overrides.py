"""Settings changed from the command line: ``--set optimizer.lr=3e-3 --set 'grid.seed=[0,1,2]'``.

An override is applied to the sweep file's plain TOML data before anything is validated, so a
value given on the command line is checked exactly as the same value in the file. Its key is a
TOML key (dotted: ``section.key``, ``grid.axis``); its value is a TOML value (``3e-3``,
``[0, 1, 2]``, ``true``, ``"add"``), and a bare word that is not one (``add``, ``lion``,
``my_plugins:task``) is taken as a string, as Hydra takes ``task.name=add``; quote a string that
reads as another TOML value (``'model.activation="inf"'``).

A launch with overrides saves the file as it ran (``to_toml`` of the merged data) as the results
folder's ``sweep.toml``: rerunning or resuming from that copy reproduces the run, and every reader
of a results folder reads it as it reads any sweep file.
"""

from __future__ import annotations

import copy
import datetime
import math
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from grokjax.errors import SweepError
from grokjax.schema import PLUGIN_SECTIONS
from grokjax.sweep_config import axis_key

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Overrides = Iterable[str] | Mapping[str, Any]
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")  # fullmatch: "$" would accept a trailing newline
_TOML_START = tuple("[{\"'")  # a value starting so is meant as TOML, never a bare word


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """One ``KEY=VALUE`` as its key path and its value.

    Args:
      text: ``optimizer.lr=3e-3``, ``grid.seed=[0,1,2]``, ``task.name=add``.

    Returns:
      (("optimizer", "lr"), 0.003): the key split at its dots, the value as TOML reads it (a bare
      word that is not TOML: the word as a string).

    Raises:
      SweepError: no ``=``, an empty or malformed key, or a value that starts as TOML but is not.
    """
    if not isinstance(text, str):
        raise SweepError(f"an override is a KEY=VALUE string, got {text!r}")
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key:
        raise SweepError(f"--set takes KEY=VALUE (e.g. optimizer.lr=3e-3), got {text!r}")
    path = key_path(key)
    if not value:
        raise SweepError(f"--set {key}= has no value; give one, e.g. {key}=1 or {key}='\"text\"'")
    try:
        return path, tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError as e:
        if value.startswith(_TOML_START) or any(c.isspace() for c in value):
            raise SweepError(f"--set {text}: {value!r} is not a TOML value ({e}); a list is [0, 1], a string "
                             f"\"text\"") from None
        return path, value


def key_path(key: str) -> tuple[str, ...]:
    """``optimizer.lr`` -> ("optimizer", "lr"), read as a TOML key (quoted parts allowed).

    Raises:
      SweepError: the key is not a TOML key.
    """
    try:
        table = tomllib.loads(f"{key} = 0")
    except tomllib.TOMLDecodeError:
        raise SweepError(f"--set {key}=...: {key!r} is not a setting's key; keys are dotted names, e.g. "
                         f"optimizer.lr or grid.seed") from None
    path = []
    while isinstance(table, dict):
        (name, table), = table.items()
        path.append(name)
    return tuple(path)


def apply_overrides(raw: dict, overrides: Overrides | None) -> dict:
    """A sweep file's data with overrides applied, in order (a later one wins).

    A value replaces what the file sets at its key (a list is replaced, not extended); tables on
    its way are made where missing. A ``grid`` axis replaces the file's axis of the same setting
    under either of its names (``grid.lr`` replaces ``grid.optimizer.lr``).

    Args:
      raw: the parsed sweep file (not modified).
      overrides: ``KEY=VALUE`` strings (the command line's ``--set``, values read as TOML), or a
        mapping of key -> Python value (used as given).

    Returns:
      A new dict; ``raw`` itself when there are no overrides.

    Raises:
      SweepError: a malformed override, or one whose key goes through a setting that is not a
        table (``task.p.x``).
    """
    if not overrides:
        return raw
    if isinstance(overrides, str):
        raise SweepError(f"overrides are a list of KEY=VALUE strings or a dict, got the string {overrides!r}")
    items = ([(key_path(k), v) for k, v in overrides.items()] if isinstance(overrides, Mapping)
             else [parse_override(o) for o in overrides])
    out = copy.deepcopy(raw)
    for path, value in items:
        axis = path[0] == "grid" and len(path) > 1
        table = out
        for depth, part in enumerate(path[:1] if axis else path[:-1]):
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise SweepError(f"--set {'.'.join(path)}: {'.'.join(path[:depth + 1])} is a value, not a table "
                                 f"of settings")
        if axis:
            out["grid"] = _set_axis(table, path[1:], value)
        else:
            table[path[-1]] = value
    return out


def _axis_name(key: str) -> str:
    """A grid key's setting, whichever way it is written (``optimizer.lr``, ``lr``; ``task.p``, ``p``)."""
    short = axis_key(key)
    section, _, rest = short.partition(".")
    return rest if section in PLUGIN_SECTIONS and rest else short


def _set_axis(grid: dict, path: tuple[str, ...], value) -> dict:
    """``grid`` with the axis at ``path`` set to ``value``, in the place of the file's axis of the
    same setting (whichever name it has there; the grid's order is its runs' order), else last."""
    axes = list(_paths(grid))
    same = [i for i, (p, _) in enumerate(axes) if _axis_name(".".join(p)) == _axis_name(".".join(path))]
    if same:
        axes[same[0]] = (path, value)
        axes = [a for i, a in enumerate(axes) if i not in same[1:]]
    else:
        axes.append((path, value))
    out: dict = {}
    for p, v in axes:
        table = out
        for part in p[:-1]:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise SweepError(f"--set grid.{'.'.join(path)}: grid.{'.'.join(p[:-1])} is an axis, not a table")
        table[p[-1]] = v
    return out


def _paths(table: dict, prefix: tuple[str, ...] = ()):
    """A nested table's leaves as (key path, value), in order."""
    for key, value in table.items():
        if isinstance(value, dict) and value:
            yield from _paths(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def describe(overrides: Overrides | None) -> str:
    """Overrides as a command line shows them: ``--set a=1 --set b=2`` ("" for none)."""
    if not overrides:
        return ""
    items = [f"{k}={v!r}" for k, v in overrides.items()] if isinstance(overrides, Mapping) else list(overrides)
    return " ".join(f"--set {o}" for o in items)


# ---------------------------------------------------------------------------------------------
# Writing the merged data back as TOML: what tomllib parses (tables, arrays, strings, numbers,
# booleans, dates), nested tables as dotted keys within their section, as sweep files write grids.


def to_toml(data: Mapping[str, Any]) -> str:
    """TOML text that ``tomllib`` parses back to ``data``.

    Args:
      data: plain TOML data: top-level values, then one table per section; nested tables are
        written as dotted keys (``optimizer.lr = [...]`` inside ``[grid]``).

    Returns:
      The text, top-level values first, then each table as ``[section]``.

    Raises:
      SweepError: a value TOML cannot hold (None, an object).
    """
    lines = [f"{_key(k)} = {_value(v)}" for k, v in data.items() if not isinstance(v, Mapping)]
    for section, table in data.items():
        if isinstance(table, Mapping):
            lines += ["", f"[{_key(section)}]", *(f"{k} = {_value(v)}" for k, v in _dotted(table))]
    return "\n".join(lines).lstrip("\n") + "\n"


def _dotted(table: Mapping, prefix: str = ""):
    for key, value in table.items():
        if isinstance(value, Mapping) and value:
            yield from _dotted(value, f"{prefix}{_key(key)}.")
        else:
            yield f"{prefix}{_key(key)}", value


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    escapes = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
    return '"' + "".join(escapes.get(c, f"\\u{ord(c):04x}" if ord(c) < 32 or ord(c) == 127 else c)
                         for c in text) + '"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_value(v)}" for k, v in _dotted(value)) + "}"
    raise SweepError(f"cannot write {value!r} ({type(value).__name__}) into a sweep file: TOML holds tables, "
                     f"lists, strings, numbers, booleans and dates")


def overridden_text(raw: Mapping[str, Any], overrides: Overrides, source: str) -> str:
    """The sweep file a launch with overrides ran, as its results folder keeps it.

    Args:
      raw: the merged data (``apply_overrides`` of the file's), its ``name`` set.
      overrides: the overrides, named in the header.
      source: the original file's name.

    Returns:
      A header naming the file and the overrides, then ``to_toml(raw)``.
    """
    header = (f"# {source} with {describe(overrides)}, as grokjax ran it (written by grokjax: the original "
              f"file's comments and layout are not kept)\n")
    return header + to_toml(raw)


__all__ = ["apply_overrides", "parse_override", "key_path", "to_toml", "overridden_text", "describe"]
