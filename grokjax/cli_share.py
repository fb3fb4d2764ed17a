"""The command line's sharing commands: ``report DIR`` (one HTML page) and ``export DIR --wandb
PROJECT`` (W&B runs). Both read a results folder as data; their libraries (plotly, wandb) are
optional extras, imported when the command runs."""

from __future__ import annotations

import argparse
import sys

from grokjax.errors import SweepError

EXIT_BAD_INPUT = 2


def _fail(message: str) -> int:
    """As the rest of the command line: one line on stderr, exit code 2."""
    print(f"grokjax: error: {' '.join(message.splitlines())}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _report(args) -> int:
    from grokjax.report import write_report

    try:
        out = write_report(args.dir, args.out)
    except (FileNotFoundError, SweepError) as e:
        return _fail(str(e))
    print(f"grokjax: report in {out} ({out.stat().st_size / 1e6:.1f} MB, opens offline)")
    return 0


def _export(args) -> int:
    from grokjax.export import export_wandb

    try:
        note = export_wandb(args.dir, args.wandb, entity=args.entity, offline=args.offline)
    except (FileNotFoundError, SweepError) as e:
        return _fail(str(e))
    print(f"grokjax: {note}")
    return 0


def add_share_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``report`` and ``export`` to the command line's subcommands."""
    report = sub.add_parser("report", help="one self-contained HTML page of a results folder: settings, summary, "
                                           "figures, an interactive phase diagram")
    report.add_argument("dir", help="results folder")
    report.add_argument("--out", help="the HTML file (default: DIR/report.html; a file a report did not write is "
                                      "never replaced)")
    report.set_defaults(func=_report)
    export = sub.add_parser("export", help="copy a results folder to W&B: one run per grid run, grouped by cell")
    export.add_argument("dir", help="results folder")
    export.add_argument("--wandb", required=True, metavar="PROJECT", help="the W&B project (extra: grokjax[wandb])")
    export.add_argument("--entity", help="the W&B entity (default: yours)")
    export.add_argument("--offline", action="store_true",
                        help="write offline runs only (as WANDB_MODE=offline), for `wandb sync` later")
    export.set_defaults(func=_export)
