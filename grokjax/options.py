"""What a launch of a sweep needs beyond its config: one frozen, validated options object.

The command line builds it from its flags, ``run_sweep`` and ``search_boundary`` from their
keywords; the loop (``grokjax.run``) reads it and nothing else. Every check of these values lives
here, so the command line only parses.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Union

from grokjax.errors import SweepError

Progress = Union[bool, Callable[[dict], None]]  # noqa: UP007 - an alias evaluated at import on 3.10


@dataclasses.dataclass(frozen=True)
class SweepOptions:
    """How to train a sweep: where to write, on which devices, how to chunk and checkpoint.

    Attributes:
      out: results folder (None: return the tables without writing them).
      progress: True for a status line on stderr, False for none, or a callable receiving a dict
        (step, runs, memorized, grokked, diverged, done, run_steps, seconds, last,
        run_steps_budget, run_steps_left) after each round trip; the counts and the budget (the
        run-steps of the runs so far, and what of it the unfinished runs have left) cover the
        whole sweep so far, run_steps and seconds the group in progress.
      sweep_text: the sweep file's text, saved as ``out/sweep.toml``.
      write_every_s: seconds between part-way writes of the results folder.
      devices: how many local devices share the run axis (None: all).
      max_runs_per_chunk: cap on the runs trained at once (None: what fits in memory).
      checkpoint_every: evaluations between checkpoints in ``out/checkpoints`` (0: none).
      resume: continue from the newest readable checkpoint (refused if the settings changed).
      repack: shrink the working set to its survivors as runs finish, when the compute saved
        exceeds compiling the smaller set's programs (True); "always": into the next of a
        halving ladder of sizes as soon as the survivors fit, whatever it costs (the scheduler's
        mechanics, for tests and benchmarks); False keeps its width.
      compile_ahead: compile a smaller working set's programs in a background thread while the
        current one trains, and shrink once they are ready (False: the round waits for them;
        "auto": on an accelerator, and on a CPU at vmap width 1; see
        ``scheduler.compiles_ahead``).
      tune_cache: file keeping the measured vmap widths ("auto": beside the persistent
        compilation cache when one is enabled; None: measure again each launch).
      overwrite: replace the results of another sweep in ``out``.
    """

    out: Path | None = None
    progress: Progress = True
    sweep_text: str | None = None
    write_every_s: float = 30.0
    devices: int | None = None
    max_runs_per_chunk: int | None = None
    checkpoint_every: int = 0
    resume: bool = False
    repack: bool | str = True
    compile_ahead: bool | str = "auto"
    tune_cache: Path | str | None = "auto"
    overwrite: bool = False

    def __post_init__(self):
        for name, low in (("devices", 1), ("max_runs_per_chunk", 1), ("checkpoint_every", 0)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                flag = "--" + name.replace("_", "-")
                raise SweepError(f"{name} must be an integer >= {low} ({flag}), got {value!r}")
        if self.checkpoint_every is None:
            raise SweepError("checkpoint_every must be an integer >= 0, got None")
        if not isinstance(self.out, (str, os.PathLike, type(None))):
            raise SweepError(f"out must be a folder path, got {type(self.out).__name__}")
        if self.out is not None:
            object.__setattr__(self, "out", Path(self.out))
            if self.out.exists() and not self.out.is_dir():
                raise SweepError(f"--out {self.out} exists and is not a folder")
        if not (isinstance(self.progress, bool) or callable(self.progress)):
            raise SweepError(f"progress must be True, False or a callable, got {self.progress!r}")
        if not isinstance(self.write_every_s, (int, float)) or isinstance(self.write_every_s, bool) \
                or not self.write_every_s >= 0:
            raise SweepError(f"write_every_s must be a number of seconds >= 0, got {self.write_every_s!r}")
        if self.repack not in (True, False, "always") or isinstance(self.repack, int) and \
                not isinstance(self.repack, bool):
            raise SweepError(f"repack must be true, false or 'always', got {self.repack!r}")
        for name in ("resume", "overwrite"):
            if not isinstance(getattr(self, name), bool):
                raise SweepError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not (isinstance(self.compile_ahead, bool) or self.compile_ahead == "auto"):
            raise SweepError(f"compile_ahead must be true, false or 'auto', got {self.compile_ahead!r}")
        if self.resume and (self.out is None or self.checkpoint_every <= 0):
            raise SweepError("--resume needs a results folder with checkpoints "
                             "(--out DIR and --checkpoint-every N > 0)")

    @property
    def checkpoints(self) -> Path | None:
        """The checkpoint folder, when this launch checkpoints."""
        return self.out / "checkpoints" if self.out is not None and self.checkpoint_every > 0 else None

    def tune_cache_file(self, compilation_cache_dir: str | None) -> Path | None:
        """The measured-widths file: ``tune_cache``, or beside the compilation cache for "auto"."""
        if self.tune_cache == "auto":
            return Path(compilation_cache_dir) / "grokjax_runs_per_batch.json" if compilation_cache_dir else None
        return Path(self.tune_cache) if self.tune_cache is not None else None


def options_from(kwargs: dict, **given) -> SweepOptions:
    """``SweepOptions`` from keyword arguments, an unknown name refused with the allowed ones.

    Args:
      kwargs: the caller's extra keywords (``run_sweep(config, devices=2)``).
      **given: the caller's named parameters (out, progress, sweep_text, ...).

    Returns:
      The validated options.

    Raises:
      SweepError: for an unknown option or a bad value.
    """
    allowed = [f.name for f in dataclasses.fields(SweepOptions)]
    for key in kwargs:
        if key not in allowed:
            raise SweepError(f"unknown option {key!r}; options: {', '.join(allowed)}")
    return SweepOptions(**given, **kwargs)
