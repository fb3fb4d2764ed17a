"""grokjax: train whole grids of small grokking models as one compiled JAX program."""

from grokjax import analysis
from grokjax.contract import check_plugins
from grokjax.errors import SweepError
from grokjax.plugins import register, register_loss, register_model, register_optimizer, register_task
from grokjax.results import Results, load_dataset, load_results
from grokjax.run import run_sweep
from grokjax.search import search_boundary
from grokjax.sweep import SweepConfig, load_sweep, sweep_from_dict
from grokjax.tasks import TASK_NAMES, Task, make_task

__all__ = ["SweepConfig", "SweepError", "load_sweep", "sweep_from_dict", "run_sweep", "search_boundary", "load_results",
           "load_dataset", "Results", "Task", "make_task", "TASK_NAMES", "analysis", "register", "register_task",
           "register_model", "register_loss", "register_optimizer", "check_plugins"]
