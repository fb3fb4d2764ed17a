"""Command line: ``grokjax run FILE`` trains a sweep, ``search FILE`` finds its phase boundary with
few runs, ``plot DIR``, ``summary DIR`` and ``report DIR`` read results, ``export DIR --wandb
PROJECT`` copies them to W&B, ``bench`` measures throughput, ``info`` lists tasks, settings and
devices."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path

import jax
import pandas as pd

from grokjax.analysis import METRICS, summary_table
from grokjax.cli_share import add_share_commands
from grokjax.options import SweepOptions
from grokjax.overrides import describe as describe_overrides
from grokjax.plots import FORMATS, default_axes, has_progress_measures, plot_results, progress_figure
from grokjax.results import load_results, saved_grid, saved_search
from grokjax.run import Interrupted, enable_compilation_cache, plan, train_source
from grokjax.search import SearchSource, lattice
from grokjax.sources import GridSource
from grokjax.sweep import SweepError, load_sweep, sweep_text
from grokjax.width import use_cores_as_devices

EXIT_BAD_INPUT = 2
# run --help and search --help say it, as the README does: naming a callable is the way in for
# users' plug-ins, so a sweep file is trusted like a script; reading results never runs one
SWEEP_FILE_IS_CODE = ("A sweep file is code: its task, model, optimizer and loss may name importable callables "
                      "(package.module:attribute), which run, search, --dry-run and info FILE import and call. Run "
                      "sweep files you trust, as you would a script. --resume continues a results folder with the "
                      "sweep file you pass, never the folder's copy; plot and summary read a results folder as "
                      "data and import nothing it names.")


def _run(args) -> int:
    search = args.command == "search"
    try:
        config = load_sweep(args.file, args.set)
        source = _source(args.file, config, search)
        options = SweepOptions(out=Path(args.out) if args.out else Path("results") / config.name,
                               progress=not args.quiet, sweep_text=sweep_text(args.file, args.set),
                               devices=args.devices, max_runs_per_chunk=args.max_runs_per_chunk,
                               checkpoint_every=args.checkpoint_every, resume=args.resume, overwrite=args.overwrite)
    except SweepError as e:
        return _fail(str(e))
    if args.dry_run:
        return _dry_run(source, options, args.set)
    if args.coordinator or args.distributed:
        # one process per host; JAX reads SLURM and its own environment variables for the rest
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    if not args.no_cache:
        enable_compilation_cache(args.cache_dir)
    print(f"grokjax: {_describe(source)}, writing to {options.out}", file=sys.stderr)
    try:
        results = train_source(source, options)
    except SweepError as e:
        return _fail(str(e))
    except Interrupted as e:
        print(f"\ngrokjax: stopped by signal {e.signum}; checkpoint in {e.checkpoint}. Continue with: "
              f"grokjax {args.command} {shlex.join([args.file, *_set_flags(args.set)])} --out {options.out} --resume",
              file=sys.stderr)
        return 128 + e.signum
    if jax.process_index() != 0:
        return 0  # process 0 reports and writes for every host
    _report(config, results, options.out, args.quiet)
    return 0


def _set_flags(overrides: list[str]) -> list[str]:
    return [word for o in overrides for word in ("--set", o)]


def _source(file: str, config, search: bool):
    """The run source a command trains: the boundary search for ``search``, else the grid (each
    refuses a file meant for the other)."""
    try:
        return SearchSource(config) if search else GridSource(config)
    except SweepError as e:
        raise SweepError(f"{file}: {e}") from None


def _describe(source) -> str:
    """One line naming what a launch trains."""
    config = source.config
    n_cells = len(config.runs())
    axes = ", ".join(f"{k} x{len(v)}" for k, v in config.grid) or "no grid axes"
    if isinstance(source, SearchSource):
        spec = config.search
        return (f"search '{config.name}': critical {spec.axis} in [{spec.low:g}, {spec.high:g}] "
                f"({len(lattice(spec))} values, {spec.scale} scale) for {n_cells} cell{'s' if n_cells > 1 else ''} "
                f"({axes}), {len(spec.seeds)} seeds per probe")
    return f"sweep '{config.name}': {n_cells} runs ({axes})"


def _report(config, results, out: Path, quiet: bool) -> None:
    """What a finished launch prints: its phases and times, where its files are, its figures and
    summary (a search: its boundary table)."""
    meta, runs, search = results.meta, results.runs, results.boundary is not None
    phases = ", ".join(f"{n} {phase}" for phase, n in meta["phases"].items())
    print(f"grokjax: {len(runs)} runs in {meta['wall_time_s']:.1f} s (compile {meta['compile_time_s']:.1f} s, "
          f"{meta['run_steps_per_s']:,.0f} run-steps/s): {phases}", file=sys.stderr)
    tables = "runs.parquet, curves.parquet, meta.json" + (", boundary.parquet" if search else "")
    print(f"grokjax: results in {out}/ ({tables})", file=sys.stderr)
    axes = _search_axes(config) if search else default_axes(config.grid)
    figures = plot_results(results, out / "figures", *(axes or (None, None)), search=_search_info(config))
    print(f"grokjax: figures in {out / 'figures'}/ ({', '.join(f.name for f in figures)})", file=sys.stderr)
    if search:
        print(_boundary_text(results.boundary))
    elif not quiet:
        axes = axes or (next((k for k, v in config.grid if k != "seed" and len(v) > 1), "seed"), None)
        print(_summary(runs, *axes))


def _dry_run(source, options: SweepOptions, overrides: list[str]) -> int:
    """Check everything a launch checks (plug-ins built and traced, devices) and print the plan;
    train and write nothing. Building the plug-ins imports and calls them: a sweep file is code."""
    try:
        groups, _ = plan(source, options)
    except SweepError as e:
        return _fail(str(e))
    config, n, n_cells = source.config, len(groups), len(source.config.runs())
    axes = ", ".join(f"{k} x{len(v)}" for k, v in config.grid) or "no grid axes"
    what = (f"a search for the critical {config.search.axis} over {len(lattice(config.search))} values in {n_cells} "
            f"cell{'s' if n_cells != 1 else ''} ({axes})" if isinstance(source, SearchSource)
            else f"{n_cells} runs ({axes})")
    changed = f" (with {describe_overrides(overrides)})" if overrides else ""
    print(f"grokjax: sweep '{config.name}'{changed} is valid: {what} in {n} program{'s' if n != 1 else ''}; "
          f"nothing trained (--dry-run)")
    return 0


def _search_axes(config) -> tuple[str, str] | None:
    """A search's phase diagrams: its axis against its first by axis."""
    spec = config.search
    return (spec.axis, spec.by[0]) if spec.by else None


def _search_info(config) -> dict | None:
    spec = config.search
    return dict(axis=spec.axis, by=list(spec.by), criterion=spec.criterion) if spec is not None else None


def _boundary_text(boundary: pd.DataFrame) -> str:
    """The boundary table as printed: one row per cell."""
    def num(v):
        return "-" if pd.isna(v) else f"{v:g}"

    table = boundary.drop(columns=["probed_values", "direction"], errors="ignore").copy()
    for column in ("critical_value", "low", "high", "ci_low", "ci_high"):
        table[column] = [num(v) for v in table[column]]
    return table.to_string(index=False)


def _summary(runs, x: str, y: str | None) -> str:
    """Per cell: runs, share grokked, median grok step with interquartile range, majority phase."""
    return summary_table(runs, x, y).to_string(index=False)


def _axes_of(path: Path, runs) -> tuple[str | None, str | None]:
    """Default axes of a results folder: from its saved sweep file's grid (a search: its axis
    against its first by axis), else from the columns that vary; (None, None) for a sweep over
    seeds only. The sweep file is read as data: opening results never runs the code it names."""
    search = saved_search(path, runs)
    if search is not None:
        axes = (search["axis"], search["by"][0]) if search["by"] else None
    else:
        axes = default_axes(saved_grid(path, runs))
    return axes or (None, None)


def _load(path: str):
    path = Path(path)
    try:
        return path, load_results(path)
    except (FileNotFoundError, SweepError) as e:
        raise _BadInput(str(e)) from None


class _BadInput(Exception):
    pass


def _plot(args) -> int:
    path, results = _load(args.dir)
    x, y = _axes_of(path, results.runs)
    x, y = args.x or x, args.y or y
    if (x is None) != (y is None):
        return _fail("name both axes: --x AXIS --y AXIS (or neither, for learning curves only)")
    out = Path(args.out) if args.out else path / "figures"
    if args.progress or args.cell:
        return _progress_plot(args, path, results, out, x, y)
    try:
        named = dataclasses.replace(results, meta={"name": path.name, **results.meta})
        figures = plot_results(named, out, x, y, args.metric, args.facet, args.format,
                               search=saved_search(path, results.runs))
    except ValueError as e:
        return _fail(str(e))
    partial = "" if results.meta.get("complete", True) else " (sweep still running: partial results)"
    print(f"grokjax: {len(figures)} figures in {out}/{partial}: {', '.join(f.name for f in figures)}")
    return 0


def _parse_cell(text: str | None) -> dict:
    """``"weight_decay=1,data_fraction=0.5"`` -> {setting: value}, numbers as numbers."""
    cell = {}
    for part in filter(None, (text or "").split(",")):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise _BadInput(f"--cell takes SETTING=VALUE pairs separated by commas, got {part!r}")
        try:
            cell[key.strip()] = float(value)
        except ValueError:
            cell[key.strip()] = value.strip()
    return cell


def _progress_plot(args, path: Path, results, out: Path, x, y) -> int:
    if not has_progress_measures(results.curves):
        return _fail(f"{path} has no progress measures (the sweep ran with train.progress_measures = false, "
                     f"or before grokjax recorded them)")
    try:
        figure = progress_figure(results.runs, results.curves, out / f"progress.{args.format}",
                                 _parse_cell(args.cell), x, y)
    except ValueError as e:
        return _fail(str(e))
    print(f"grokjax: {figure}")
    return 0


def _summary_command(args) -> int:
    path, results = _load(args.dir)
    x, y = _axes_of(path, results.runs)
    x, y = args.x or x or "seed", args.y or y
    for axis in (x, y):
        if axis and axis not in results.runs:
            return _fail(f"axis '{axis}' is not a column of runs.parquet")
    meta = results.meta
    state = "complete" if meta.get("complete", True) else "still running (partial results)"
    print(f"{meta.get('name', path.name)}: {len(results.runs)} runs, {state}")
    print(_summary(results.runs, x, y))
    if results.boundary is not None:
        print(f"\nboundary (critical {meta.get('search', {}).get('axis', 'value')} per cell):")
        print(_boundary_text(results.boundary))
    return 0


def _info(args) -> int:
    from grokjax.plugins import plugin_doc, resolve, settings_of
    from grokjax.run import package_versions
    from grokjax.sweep import describe_settings
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
    if args.file:
        try:
            config = load_sweep(args.file)
        except SweepError as e:
            return _fail(str(e))
        print(f"\nplug-ins of {args.file} (section.key = value or default; * = per-run array):")
        for kind in ("task", "model", "optimizer"):
            part = getattr(config, kind)
            print(f"  [{kind}] {part.name}: {plugin_doc(kind, part.name)}")
            values = {**{k: (None if p.default is p.empty else p.default)
                         for k, p in settings_of(kind, resolve(kind, part.name)).items()}, **dict(part.settings)}
            for key, value in values.items():
                star = "*" if kind == "optimizer" and isinstance(value, float) else " "
                print(f"   {star} {kind}.{key} = {value!r}")
        print(f"  train.loss = {config.train.loss}: {plugin_doc('loss', config.train.loss)}")
    print("\nany setting above but [events] and runs_per_batch may be a grid axis; a plug-in named by import path "
          "takes its own keyword arguments as settings")
    return 0


def _bench(args) -> int:
    from grokjax.bench import run_benchmarks

    for flag, values in (("--runs", args.runs or []), ("--steps", [args.steps] if args.steps else [])):
        if any(v < 1 for v in values):
            return _fail(f"{flag} must be >= 1")
    run_benchmarks(args.out, args.quick, args.workloads, args.runs, args.steps)
    print(f"grokjax: bench.json, bench.md and bench.png in {args.out}")
    return 0


def _fail(message: str) -> int:
    message = " ".join(message.splitlines())  # one line, whatever a file name or value holds
    print(f"grokjax: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _training_options(parser: argparse.ArgumentParser, what: str) -> None:
    """The options ``run`` and ``search`` share."""
    parser.add_argument("--out", help="results folder (default: results/<sweep name>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a setting of the file, validated as the file's own (repeatable): "
                             "--set optimizer.lr=3e-3 --set 'grid.seed=[0,1,2]'; VALUE is TOML, a bare word a "
                             "string; saved in DIR/sweep.toml")
    parser.add_argument("--quiet", action="store_true", help="no progress line or summary")
    parser.add_argument("--devices", type=int, help="devices sharing the run axis (default: all local devices; "
                                                    "on a CPU, each group measures one device against one per core)")
    parser.add_argument("--max-runs-per-chunk", type=int, help="cap on runs trained at once (default: what fits)")
    parser.add_argument("--checkpoint-every", type=int, default=50, metavar="EVALS",
                        help="evaluations between checkpoints in DIR/checkpoints (default 50; 0: none)")
    parser.add_argument("--resume", action="store_true", help=f"continue a stopped {what} from its newest checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results of another sweep in --out (refused without it)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the sweep file and its plug-ins (imported and built, as a run does), print the "
                             "plan, train and write nothing")
    parser.add_argument("--cache-dir", help="persistent compilation cache (default: ~/.cache/grokjax/jax)")
    parser.add_argument("--no-cache", action="store_true", help="compile without the persistent cache")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grokjax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train every run of a sweep file and write a results folder",
                         description="Train every run of a sweep file and write a results folder.",
                         epilog=SWEEP_FILE_IS_CODE)
    run.add_argument("file", help="sweep file (TOML)")
    _training_options(run, "sweep")
    run.add_argument("--distributed", action="store_true",
                     help="one process per host under jax.distributed (addresses from SLURM or JAX's variables)")
    run.add_argument("--coordinator", metavar="HOST:PORT", help="multi-host: the coordinator's address")
    run.add_argument("--num-processes", type=int, help="multi-host: number of processes")
    run.add_argument("--process-id", type=int, help="multi-host: this process's id (0 writes the results)")
    run.set_defaults(func=_run)
    search = sub.add_parser("search", help="find the critical value of a setting per cell ([search] section) "
                                           "with few runs, inside one running program",
                            description="Find the critical value of a setting per cell of a sweep file's grid "
                                        "([search] section) with few runs, inside one running program.",
                            epilog=SWEEP_FILE_IS_CODE)
    search.add_argument("file", help="sweep file (TOML) with a [search] section")
    _training_options(search, "search")
    search.set_defaults(func=_run, coordinator=None, distributed=False, num_processes=None, process_id=None)
    plot = sub.add_parser("plot", help="figures of a results folder (finished or still running)")
    plot.add_argument("dir", help="results folder")
    plot.add_argument("--x", help="horizontal axis (default: data_fraction, or the grid's first axis)")
    plot.add_argument("--y", help="vertical axis (default: weight_decay, or the grid's second axis)")
    plot.add_argument("--facet", help="one panel per value of this axis; other axes are aggregated")
    plot.add_argument("--metric", default="grok_step", metavar="METRIC",
                      help=f"value of the heatmap: {', '.join(METRICS)} or any final_<measure> column "
                           f"(final_llc, ...) (default: grok_step)")
    plot.add_argument("--format", default="png", choices=FORMATS)
    plot.add_argument("--out", help="folder for the figures (default: DIR/figures)")
    plot.add_argument("--progress", action="store_true",
                      help="only progress.png: the progress measures of one cell against step")
    plot.add_argument("--cell", metavar="SETTING=VALUE,...",
                      help="the cell --progress draws (default: the one where grokking is most common)")
    plot.set_defaults(func=_plot)
    summary = sub.add_parser("summary", help="a table per cell: runs, share grokked, grok step, phase")
    summary.add_argument("dir", help="results folder")
    summary.add_argument("--x", help="first axis (default as for plot)")
    summary.add_argument("--y", help="second axis (default as for plot)")
    summary.set_defaults(func=_summary_command)
    add_share_commands(sub)  # report, export
    bench = sub.add_parser("bench", help="throughput of the grid against per-run loops (JAX, PyTorch)")
    bench.add_argument("--out", default=".", help="folder for bench.json, bench.md and bench.png (default: .)")
    bench.add_argument("--quick", action="store_true", help="small sizes (minutes on a CPU)")
    bench.add_argument("--workloads", nargs="+", choices=["W1", "W2", "W3", "W4"], help="default: all")
    bench.add_argument("--runs", type=int, nargs="+",
                       help="grid sizes (default: 1 16 64 256 1024; quick: 1 16, and 256 for W1)")
    bench.add_argument("--steps", type=int, help="steps timed per run (default 50; quick: W1 50, W2 and W3 20, W4 10)")
    bench.set_defaults(func=_bench)
    info = sub.add_parser("info", help="versions, devices, tasks and every sweep setting")
    info.add_argument("file", nargs="?", help="a sweep file: also list the settings of its plug-ins (imported and "
                                              "built, as a run does)")
    info.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line. Launched as a command (``argv`` None) on a machine without an accelerator,
    it first makes one CPU device per core (``width.use_cores_as_devices``) so that each group can
    measure whether its runs go faster side by side, one per core; a call from Python with
    ``argv`` keeps the process's devices as they are."""
    if argv is None:
        use_cores_as_devices()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _BadInput as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        print("grokjax: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head or less, closed early
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - nothing more can be written
        return 0


if __name__ == "__main__":
    sys.exit(main())
