"""A results folder's guards: no command overwrites results it did not make, and two processes
never write one folder at once.

- ``check_target``: a folder that holds another sweep's results is refused (say what is there and
  the ways on: ``--resume``, ``--overwrite``, another folder). The same sweep, launched again
  into its own folder, replaces its results: they are what this sweep makes.
- ``FolderLock``: a lock file naming host, process and start time; a lock left by a process that
  no longer runs on this host is stale and taken over.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
from pathlib import Path

from grokjax.checkpoint import describe_changes
from grokjax.errors import SweepError

LOCK_FILE = ".grokjax.lock"
_RESULT_FILES = ("runs.parquet", "curves.parquet", "meta.json")


def holds_results(out: Path) -> bool:
    return out.is_dir() and any((out / f).exists() for f in _RESULT_FILES)


def describe(out: Path) -> tuple[str, dict]:
    """What a results folder holds, in words, and its meta.json (empty if unreadable)."""
    try:
        meta = json.loads((out / "meta.json").read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError, UnicodeDecodeError):
        return "results whose meta.json is missing or unreadable", {}
    state = "complete" if meta.get("complete", True) else "incomplete"
    return (f"the results of sweep '{meta.get('name', '?')}' ({meta.get('runs', '?')} runs, started "
            f"{meta.get('started_at', '?')}, {state})"), meta


def check_target(out: Path, fingerprint: dict, overwrite: bool) -> str | None:
    """Refuse to write into a folder that holds another sweep's results; returns a note to show
    when the folder's results are replaced (the same sweep again, or ``overwrite``)."""
    if not holds_results(out):
        return None
    what, meta = describe(out)
    if overwrite:
        return f"--overwrite: replacing {what} in {out}"
    if isinstance(meta.get("config"), dict) and not describe_changes(meta["config"], fingerprint):
        return f"replacing {what} in {out}: the same sweep settings"
    raise SweepError(f"--out {out} holds {what}; refusing to overwrite them. Use --resume to continue that sweep "
                     f"(same sweep file), --overwrite to replace it, or another --out folder")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


class FolderLock:
    """``with FolderLock(out):`` holds ``out/.grokjax.lock`` while a sweep writes there."""

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_FILE
        self.held = False

    def __enter__(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = dict(host=socket.gethostname(), pid=os.getpid(),
                  since=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                other = self._read()
                if other.get("host") == me["host"] and isinstance(other.get("pid"), int) and not _alive(other["pid"]):
                    print(f"grokjax: taking over a stale lock of process {other['pid']} (no longer running) in "
                          f"{self.path.parent}", file=sys.stderr)
                    self.path.unlink(missing_ok=True)
                    continue
                holder = f"process {other.get('pid', '?')} on {other.get('host', '?')} since {other.get('since', '?')}"
                raise SweepError(f"{self.path.parent} is being written by another grokjax ({holder}); wait for it "
                                 f"or use another --out folder (if that process is gone, delete {self.path})") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise SweepError(f"could not take the lock {self.path}; delete it if no grokjax is running")

    def _read(self) -> dict:
        try:
            out = json.loads(self.path.read_text())
            return out if isinstance(out, dict) else {}
        except (OSError, ValueError):
            return {}

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
