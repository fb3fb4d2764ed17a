import jax
import numpy as np

import grokjax
from grokjax.compiling import Compiler, compile_programs
from grokjax.experiment import build_program, run_settings
from grokjax.scheduler import GroupTrainer


def trainer_of(sweep, n=4):
    runs = sweep(grid=dict(seed=list(range(n)))).runs()
    return GroupTrainer(build_program(runs[0], runs), run_settings(runs), None, 2, 2)


def test_a_compiled_pair_trains_as_the_jitted_grid_does(sweep):
    trainer = trainer_of(sweep)
    settings = trainer.slot_settings(np.arange(4))
    compiled = compile_programs(trainer.program, 4, 2, 2, None, settings)
    record = compiled.record
    assert {k: record[k] for k in ("width", "vmap_width", "devices", "background")} == dict(
        width=4, vmap_width=2, devices=1, background=False)
    assert record["lower_s"] > 0 and record["compile_s"] > 0 and isinstance(record["cached"], bool)
    from grokjax.program import make_grid_init, make_grid_period

    want = make_grid_period(trainer.program, 4, 2, 2)(make_grid_init(trainer.program, 4, 2)(settings), settings)
    got = compiled.period(compiled.init(settings), settings)
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_the_second_compilation_of_a_program_comes_from_the_persistent_cache(sweep):
    # the test session keeps a persistent cache (conftest.py): a fresh compiler finds the program
    trainer = trainer_of(sweep, 6)
    settings = trainer.slot_settings(np.arange(6))
    compile_programs(trainer.program, 6, 3, 2, None, settings)
    assert compile_programs(trainer.program, 6, 3, 2, None, settings).record["cached"]


def test_a_prefetched_width_is_ready_without_waiting_and_estimates_cost_nothing(sweep):
    trainer = trainer_of(sweep)
    compiler = trainer.compiler
    assert compiler.estimate_s(4) == 0.0  # nothing compiled yet: nothing to go by
    compiler.get(4)
    assert compiler.estimate_s(2) > 0  # what this group's compilation took
    compiler.prefetch(2)
    assert compiler.estimate_s(2) == 0.0  # asked for: costs nothing more
    compiler.jobs[2].result()  # the background thread finishes
    assert compiler.ready(2) and not compiler.pending()
    waited = compiler.waited_s
    compiler.get(2)
    assert compiler.waited_s - waited < 0.05
    records = {r["width"]: r for r in compiler.records()}
    assert records[2]["background"] and not records[4]["background"] and "waited_s" in records[2]
    compiler.close()


def test_meta_lists_every_program_a_group_compiled(sweep):
    config = sweep(train=dict(steps=20, eval_every=10, runs_per_batch=8), grid=dict(lr=[1e-2, 1e20], seed=[0, 1, 2, 3]))
    results = grokjax.run_sweep(config, progress=False, repack="always")
    group = results.meta["groups"][0]
    assert [p["width"] for p in group["programs"]] == group["widths"] == [8, 4]
    assert all(p["compile_s"] >= 0 and p["lower_s"] > 0 and "cached" in p for p in group["programs"])


def test_compiler_errors_surface_where_the_programs_are_needed():
    def broken(width):
        raise ValueError(f"no program of width {width}")

    compiler = Compiler(broken)
    compiler.prefetch(3)
    try:
        compiler.get(3)
    except ValueError as e:
        assert "width 3" in str(e)
    else:
        raise AssertionError("the background error was lost")
    compiler.close()
