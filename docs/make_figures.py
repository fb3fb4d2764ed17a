"""Make the figures the README and the documentation show, from real runs.

    python docs/make_figures.py            # trains sweeps/quickstart.toml (minutes on a CPU) unless
                                           # results/quickstart already holds its finished results
    python docs/make_figures.py --results results/quickstart   # draw from an existing folder

The phase diagram is drawn by ``grokjax.plots`` from the results tables, the same code as
``grokjax plot``; nothing is drawn by hand. It is written to ``docs/assets/``, and a small
``docs/assets/quickstart_meta.json`` records the machine and date the run was made on (for the
caption in the documentation).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "docs" / "assets"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(ROOT / "results" / "quickstart"),
                        help="results folder of sweeps/quickstart.toml (trained when missing)")
    args = parser.parse_args(argv)
    results = Path(args.results)
    meta_path = results / "meta.json"
    if not meta_path.exists() or not json.loads(meta_path.read_text()).get("complete", False):
        subprocess.run([sys.executable, "-m", "grokjax", "run", str(ROOT / "sweeps" / "quickstart.toml"),
                        "--out", str(results), "--overwrite"], check=True)

    import grokjax
    from grokjax import plots

    res = grokjax.load_results(results)
    ASSETS.mkdir(parents=True, exist_ok=True)
    plots.phase_diagram(res.runs, ASSETS / "quickstart_phase_diagram.png", x="data_fraction", y="weight_decay")
    plots.learning_curves(res.runs, res.curves, ASSETS / "quickstart_learning_curves.png")
    plots.phase_map(res.runs, ASSETS / "quickstart_phase_map.png", x="data_fraction", y="weight_decay")
    plots.critical_fraction_plot(res.runs, ASSETS / "quickstart_critical_fraction.png", by="weight_decay")
    plots.progress_figure(res.runs, res.curves, ASSETS / "quickstart_progress.png")
    meta = res.meta
    keep = {k: meta.get(k) for k in ("started_at", "host", "backend", "devices", "train_time_s", "wall_time_s",
                                     "run_steps_per_s", "versions")}
    (ASSETS / "quickstart_meta.json").write_text(json.dumps(keep, indent=1, default=str) + "\n")
    for name in sorted(ASSETS.glob("quickstart_*")):
        print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
