"""Command line: ``grokjax run FILE`` trains a sweep; ``grokjax info`` lists tasks, settings, devices."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


def _run(args) -> int:
    from grokjax.plots import default_axes, phase_diagram
    from grokjax.run import run_sweep
    from grokjax.sweep import SweepError, load_sweep

    try:
        config = load_sweep(args.file)
    except SweepError as e:
        return _fail(str(e))
    out = Path(args.out) if args.out else Path("results") / config.name
    if out.exists() and not out.is_dir():
        return _fail(f"--out {out} exists and is not a folder")
    n_runs = len(config.runs())
    axes = ", ".join(f"{k} x{len(v)}" for k, v in config.grid) or "no grid axes"
    print(f"grokjax: sweep '{config.name}': {n_runs} runs ({axes}), writing to {out}", file=sys.stderr)
    results = run_sweep(config, out=out, progress=not args.quiet, sweep_text=Path(args.file).read_text())
    meta, runs = results.meta, results.runs
    phases = ", ".join(f"{n} {phase}" for phase, n in meta["phases"].items())
    print(f"grokjax: {n_runs} runs in {meta['wall_time_s']:.1f} s (compile {meta['compile_time_s']:.1f} s, "
          f"{meta['run_steps_per_s']:,.0f} run-steps/s): {phases}", file=sys.stderr)
    print(f"grokjax: results in {out}/ (runs.parquet, curves.parquet, meta.json)", file=sys.stderr)
    axes = default_axes(config.grid)
    if axes:
        figure = phase_diagram(runs, out / "figures" / "phase_diagram.png", *axes,
                               title=f"{config.name}: median steps to 99 % test accuracy")
        print(f"grokjax: phase diagram in {figure}", file=sys.stderr)
    if not args.quiet:
        print(_summary(config, runs))
    return 0


def _summary(config, runs) -> str:
    """Median grok step over the remaining axes, per value of the first two grid axes."""
    axes = [k for k, v in config.grid if k != "seed" and len(v) > 1][:2]
    if not axes:
        return runs[["run_id", "memorize_step", "grok_step", "phase", "final_test_acc"]].to_string(index=False)
    if len(axes) == 1:
        table = runs.groupby(axes[0])["grok_step"].median()
    else:
        table = runs.pivot_table(index=axes[0], columns=axes[1], values="grok_step", aggfunc="median", dropna=False)
    return f"median grok_step over the other axes (NaN: none grokked within the budget):\n{table.to_string()}"


def _info(args) -> int:
    import jax

    from grokjax.run import package_versions
    from grokjax.sweep import AXIS_FIELDS, describe_settings
    from grokjax.tasks import describe_tasks

    print("versions: " + ", ".join(f"{k} {v}" for k, v in package_versions().items()))
    print(f"backend: {jax.default_backend()}; devices: {', '.join(str(d) for d in jax.devices())}")
    print("\ntasks:")
    for name, formula in describe_tasks().items():
        print(f"  {name:12s} {formula}")
    print("\nsettings (section.key = default; allowed; * = per-run array):")
    for row in describe_settings():
        star = "*" if row["per_run"] else " "
        print(f" {star} {row['section']}.{row['key']} = {row['default']!r}; {row['allowed']}; {row['doc']}")
    print(f"\ngrid axes: {', '.join(AXIS_FIELDS)}")
    return 0


def _fail(message: str) -> int:
    print(f"grokjax: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grokjax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train every run of a sweep file and write a results folder")
    run.add_argument("file", help="sweep file (TOML)")
    run.add_argument("--out", help="results folder (default: results/<sweep name>)")
    run.add_argument("--quiet", action="store_true", help="no progress line or summary")
    run.set_defaults(func=_run)
    info = sub.add_parser("info", help="versions, devices, tasks and every sweep setting")
    info.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("grokjax: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
