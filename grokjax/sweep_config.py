"""``SweepConfig``: a validated sweep, and what it answers about its settings and runs.

A setting is called by its short name (``lr``) or dotted (``optimizer.lr``, ``model.width``);
``locate`` finds it, ``get`` reads it, ``replace`` writes it checked as a sweep file's values
are. ``runs`` expands the grid (run_id = position in the Cartesian product) and ``static_key``
groups runs that share one compiled program: everything that is not a per-run array.
"""

from __future__ import annotations

import dataclasses
import itertools

from grokjax.errors import SweepError
from grokjax.plugins import convert_setting, name_of, resolve, settings_of, takes_any_keyword
from grokjax.schema import (
    FIELDS,
    PER_RUN_FIELDS,
    PLUGIN_SECTIONS,
    SECTIONS,
    EventsConfig,
    ModelConfig,
    OptimizerConfig,
    SearchConfig,
    TaskConfig,
    TrainConfig,
    convert_field,
    engine_fields,
    suggest,
)


def axis_key(key: str) -> str:
    """``optimizer.lr`` -> ``lr``; ``task.name`` -> ``task``; plug-in keys are kept as given."""
    section, _, rest = key.partition(".")
    if rest == "name" and section in PLUGIN_SECTIONS:
        return section
    if rest and rest in FIELDS and FIELDS[rest][0] == section:
        return rest
    return key


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A validated sweep: its sections (``schema``), its grid and, for ``grokjax search``, its
    ``[search]``. Built by ``load_sweep`` or ``sweep_from_dict``; every value has been checked."""

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
        """(section, field or plug-in key) of a setting called by short or dotted name.

        Raises:
          SweepError: no setting has that name, or several plug-ins take it (say which).
        """
        short = axis_key(key)
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
        raise SweepError(f"unknown setting {key!r}{suggest(short, allowed)}; settings: {', '.join(allowed)}")

    def get(self, key: str):
        """A setting's value by short or dotted name (a plug-in's default where unset)."""
        section, name = self.locate(key)
        return getattr(getattr(self, section), name)

    def replace(self, **values) -> SweepConfig:
        """A copy with settings replaced by name: ``cfg.replace(lr=1e-2, steps=100)`` (dotted names
        too: ``cfg.replace(**{"task.p": 13})``); values are checked as a sweep file's are."""
        by_section: dict[str, dict] = {}
        for key, value in values.items():
            section, name = self.locate(key)
            by_section.setdefault(section, {})[name] = value
        sections = {}
        for section, kv in by_section.items():
            part, cls = getattr(self, section), SECTIONS[section]
            fields = {f.name: f for f in engine_fields(cls)}
            engine = {k: convert_field(f"{section}.{k}", fields[k], v) for k, v in kv.items() if k in fields}
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

    def runs(self) -> list[SweepConfig]:
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

    def per_run_values(self) -> dict:
        """The engine's per-run settings of this run as the program uses them (defaults that
        depend on another setting resolved), by short name in ``PER_RUN_FIELDS`` order."""
        return {k: getattr(self, FIELDS[k][0]).resolved(FIELDS[k][1].name) for k in PER_RUN_FIELDS}

    def static_key(self) -> tuple:
        """Everything that is not a per-run array: runs with equal keys share one program."""
        engine = tuple((k, self.get(k)) for k in FIELDS if k not in PER_RUN_FIELDS)
        plugins = tuple((s, tuple(sorted((k, v) for k, v in getattr(self, s).settings
                                         if not (s == "optimizer" and isinstance(v, float)))))
                        for s in PLUGIN_SECTIONS)
        return engine + plugins + (("optimizer per run", tuple(sorted(self.optimizer_per_run()))),)


def grid_axis(config: SweepConfig, key: str) -> str:
    """The name a grid key is stored under: short where unambiguous, else ``section.key``.

    Raises:
      SweepError: the key names no setting, or one that cannot be a grid axis.
    """
    short = axis_key(key)
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
