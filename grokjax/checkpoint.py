"""Orbax checkpoints of a running sweep: the working set of the group in progress (parameters,
optimizer states, keys, steps, events), the host's curves and events so far, and where the
queue stands. Saves are synchronous and atomic (orbax writes a temporary folder, then renames);
the newest checkpoint that restores cleanly wins, so a truncated one falls back to its
predecessor."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orbax.checkpoint as ocp

from grokjax.errors import SweepError
from grokjax.schema import SECTIONS, SearchConfig, engine_fields
from grokjax.sweep_config import SweepConfig

ITEMS = ("state", "host", "meta")


def config_flat(config: SweepConfig) -> dict[str, Any]:
    """Every setting that decides results (not the name or description), by dotted name:
    ``section.key`` for the engine's fields and the plug-ins' settings, ``grid.<axis>``,
    ``search.<key>``."""
    out = {}
    for section in SECTIONS:
        part = getattr(config, section)
        out.update({f"{section}.{f.name}": getattr(part, f.name) for f in engine_fields(type(part))})
        out.update({f"{section}.{k}": v for k, v in getattr(part, "settings", ())})
    out.update({f"grid.{k}": list(v) for k, v in config.grid})
    if config.search is not None:
        out.update({f"search.{f.name}": getattr(config.search, f.name) for f in dataclasses.fields(SearchConfig)})
    return out


def config_fingerprint(config: SweepConfig) -> dict[str, Any]:
    """What a checkpoint compares with the sweep that resumes it.

    Args:
      config: the sweep.

    Returns:
      ``config_flat`` as JSON gives it back (tuples as lists), as meta.json stores it.
    """
    return json.loads(json.dumps(config_flat(config), default=list))


_UNNAMED = object()


def _default(key: str) -> Any:
    """The default of engine setting ``section.field`` as JSON gives it back (else a sentinel)."""
    section, _, name = key.partition(".")
    for f in engine_fields(SECTIONS[section]) if section in SECTIONS else ():
        if f.name == name and f.default is not dataclasses.MISSING:
            return json.loads(json.dumps(f.default, default=list))
    return _UNNAMED


def describe_changes(saved: dict, current: dict) -> list[str]:
    """The settings that differ between two fingerprints, as ``key: old -> new`` lines.

    A setting only one of them names counts as its default there: a checkpoint made before a
    grokjax version added a setting resumes when the sweep leaves it at that default.

    Args:
      saved: the fingerprint a checkpoint or results folder recorded.
      current: ``config_fingerprint`` of the sweep at hand.

    Returns:
      One line per changed setting, sorted by key (empty: the same sweep).
    """
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k, '(unset)')!r} -> {current.get(k, '(unset)')!r}"
            for k in keys if saved.get(k, _default(k)) != current.get(k, _default(k))]


@dataclasses.dataclass
class Restored:
    step: int  # checkpoint number
    meta: dict
    host: dict  # numpy arrays: curve columns, event columns, slots
    state: Any  # RunState pytree of the group in progress, placed like ``template``


class SweepCheckpointer:
    def __init__(self, directory: str | Path, max_to_keep: int = 3):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False,
                                               create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def save(self, step: int, state, host: dict[str, np.ndarray], meta: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), host=ocp.args.StandardSave(host), meta=ocp.args.JsonSave(meta)),
            force=True)
        self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        self.manager.reload()
        return sorted(self.manager.all_steps(), reverse=True)

    def restore_meta(self) -> tuple[int, dict] | None:
        """The newest checkpoint whose metadata reads back, with its number."""
        for step in self.steps():
            try:
                meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
                return step, dict(meta)
            except Exception:  # noqa: BLE001 - a partial or corrupt checkpoint: try the previous one
                continue
        return None

    def restore(self, template_for) -> Restored | None:
        """The newest checkpoint that restores completely. ``template_for(meta)`` gives the
        abstract state (shapes, dtypes, shardings) of the group in progress it describes."""
        for step in self.steps():
            try:
                meta = dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
                template = template_for(meta)
                items = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(template), host=ocp.args.StandardRestore()))
                host = {k: np.asarray(v) for k, v in items["host"].items()}
                return Restored(step, meta, host, items["state"])
            except Exception as e:  # noqa: BLE001 - fall back to the previous checkpoint
                print(f"grokjax: checkpoint {step} is unreadable ({type(e).__name__}); trying the previous one",
                      file=sys.stderr, flush=True)
                continue
        return None

    def check_config(self, config: SweepConfig) -> None:
        """Refuse to resume a sweep whose settings changed since its checkpoint."""
        found = self.restore_meta()
        if found is None:
            return
        changes = describe_changes(found[1]["config"], config_fingerprint(config))
        if changes:
            raise SweepError("the sweep's settings (its file and any --set overrides) changed since its checkpoint; "
                             "refusing to resume. Changed: " + "; ".join(changes) + ". Use another --out folder, or "
                             "restore the file and overrides (DIR/sweep.toml holds them as they ran).")

