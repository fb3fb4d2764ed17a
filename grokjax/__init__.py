"""grokjax: train whole grids of small grokking models as one compiled JAX program."""

from grokjax import analysis
from grokjax.results import Results, load_results
from grokjax.run import run_sweep
from grokjax.sweep import SweepConfig, SweepError, load_sweep, sweep_from_dict
from grokjax.tasks import TASK_NAMES, make_task

__all__ = ["SweepConfig", "SweepError", "load_sweep", "sweep_from_dict", "run_sweep", "load_results", "Results",
           "make_task", "TASK_NAMES", "analysis"]
