"""The ``[search]`` section of a sweep file (``grokjax search``), checked against the sweep: a
per-run float setting that is not a grid axis, a range inside the setting's bounds, a lattice of
at most ``MAX_LATTICE`` values, ``by`` axes that are the grid's, and the seeds. Its fields are
``schema.SearchConfig``; ``search`` runs it."""

from __future__ import annotations

import dataclasses
import math

from grokjax.errors import SweepError
from grokjax.schema import INT32_MAX, SearchConfig, check_keys, convert_field
from grokjax.sweep_config import SweepConfig, grid_axis

MAX_LATTICE = 100_000  # values a search axis may be split into
_OPTIONAL = ("resolution", "criterion", "direction", "scale", "probes")


def search_section(config: SweepConfig, table) -> SearchConfig:
    """``[search]`` as a ``SearchConfig``, checked against ``config`` (the rest of the sweep).

    Args:
      config: the sweep without its search, grid included.
      table: the ``[search]`` table as parsed.

    Returns:
      The search with ``scale`` resolved (``auto`` -> linear or log), ``by`` as grid axes and
      ``seeds`` as a tuple of seeds.

    Raises:
      SweepError: naming the key that is missing, wrong, or disagrees with the grid.
    """
    if not isinstance(table, dict):
        raise SweepError(f"[search] must be a table, got {table!r}")
    fields = {f.name: f for f in dataclasses.fields(SearchConfig)}
    check_keys(table, list(fields), "[search]")
    for key in ("axis", "low", "high", "resolution"):
        if key not in table:
            raise SweepError(f"[search] needs {key} (keys: axis, low, high, resolution; optional: by, seeds, "
                             f"criterion, direction, scale, probes)")
    short = _axis(config, table["axis"])
    low, high = _range(config, short, table["axis"], *(convert_field(f"search.{k}", fields[k], table[k])
                                                       for k in ("low", "high")))
    engine = {k: convert_field(f"search.{k}", fields[k], table[k]) for k in _OPTIONAL if k in table}
    scale = _scale(engine.get("scale", "auto"), low, high)
    _check_lattice(scale, engine["resolution"], low, high)
    by = _by(config, table)
    seeds = _seeds(config, table.get("seeds", fields["seeds"].default))
    return SearchConfig(axis=short, low=low, high=high, by=by, seeds=seeds, scale=scale,
                        **{k: v for k, v in engine.items() if k != "scale"})


def _axis(config: SweepConfig, axis) -> str:
    """The searched setting's stored name: not a grid axis, and no seed axis beside it."""
    if not isinstance(axis, str):
        raise SweepError(f"search.axis must be a setting name, got {axis!r}")
    try:
        short = grid_axis(config, axis)
    except SweepError as e:
        raise SweepError(f"search.axis: {e}") from None
    if short in dict(config.grid):
        raise SweepError(f"search.axis = {axis!r} is also a [grid] axis; the search chooses its values "
                         f"(remove grid.{short})")
    if "seed" in dict(config.grid):
        raise SweepError("[grid] has a seed axis; a search's seeds are search.seeds (a count or a list)")
    return short


def _range(config: SweepConfig, short: str, axis: str, low: float, high: float) -> tuple[float, float]:
    """``low`` and ``high`` of a per-run float setting, each a valid value of it."""
    value = config.get(short)
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
    return low, high


def _scale(scale: str, low: float, high: float) -> str:
    if scale == "auto":
        return "log" if low > 0 and high / low >= 10 else "linear"
    return scale


def _check_lattice(scale: str, resolution: float, low: float, high: float) -> None:
    """The resolution suits the scale and splits the range into at most ``MAX_LATTICE`` values."""
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


def _by(config: SweepConfig, table: dict) -> tuple[str, ...]:
    """``search.by``: every grid axis, each once (default: the grid's axes in file order)."""
    grid_axes = [k for k, _ in config.grid]
    by = table.get("by", grid_axes)
    if isinstance(by, str):
        by = [by]
    if not isinstance(by, list) or not all(isinstance(b, str) for b in by):
        raise SweepError(f"search.by must be a list of [grid] axes, got {by!r}")
    by = [grid_axis(config, b) if b not in grid_axes else b for b in by]
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
    return tuple(by)


def _seeds(config: SweepConfig, seeds) -> tuple[int, ...]:
    """``search.seeds``: a count (from ``train.seed`` on) or a list of distinct seeds."""
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
    return tuple(seeds)
