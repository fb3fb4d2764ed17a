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

This module gathers the names of the modules that do this, by concern: ``schema`` (the sections,
their fields and the settings tables), ``sweep_config`` (``SweepConfig``: names, grid, groups),
``sweep_file`` (loading and validation), ``overrides`` (``--set``) and ``search_section`` (``[search]``).
"""

from __future__ import annotations

from grokjax.errors import SweepError
from grokjax.schema import (
                            CRITERIA,
                            DIRECTIONS,
                            FIELDS,
                            INT32_MAX,
                            PER_RUN_DTYPES,
                            PER_RUN_FIELDS,
                            PLUGIN_SECTIONS,
                            SCALES,
                            SECTIONS,
                            EventsConfig,
                            ModelConfig,
                            OptimizerConfig,
                            SearchConfig,
                            Settings,
                            TaskConfig,
                            TrainConfig,
                            describe_settings,
)
from grokjax.search_section import MAX_LATTICE
from grokjax.sweep_config import SweepConfig
from grokjax.sweep_file import MAX_RUNS, TOP_LEVEL_KEYS, load_sweep, read_sweep_file, sweep_from_dict, sweep_text
from grokjax.tasks import describe_tasks

__all__ = ["SweepConfig", "SearchConfig", "SweepError", "load_sweep", "read_sweep_file", "sweep_from_dict",
           "sweep_text", "describe_settings", "describe_tasks", "TaskConfig", "ModelConfig", "OptimizerConfig",
           "TrainConfig", "EventsConfig",
           "Settings", "SECTIONS", "PLUGIN_SECTIONS", "FIELDS", "PER_RUN_FIELDS", "PER_RUN_DTYPES", "INT32_MAX",
           "MAX_RUNS", "MAX_LATTICE", "TOP_LEVEL_KEYS", "CRITERIA", "DIRECTIONS", "SCALES"]
