import grokjax
from grokjax.experiment import build_program, run_settings
from grokjax.width import tune_runs_per_batch


def test_vmap_width_is_measured_recorded_and_remembered(tmp_path, sweep, monkeypatch):
    import grokjax.width as width

    config = sweep(grid=dict(seed=list(range(12))))
    program, settings = build_program(config.runs()[0], config.runs()), run_settings(config.runs())
    cache = tmp_path / "widths.json"
    k, choice = tune_runs_per_batch(program, settings, 12, 0, cache)
    assert choice["source"] == "measured" and set(choice["run_steps_per_s"]) == {"1", "8", "12"}
    assert str(k) in choice["run_steps_per_s"] and all(r > 0 for r in choice["run_steps_per_s"].values())
    # 12 runs: width 8 pads the working set to 16 slots, so its rate counts 12 / 16
    useful = {int(w): r * (12 / (-(-12 // int(w)) * int(w))) for w, r in choice["run_steps_per_s"].items()}
    assert useful[k] >= 0.97 * max(useful.values())
    monkeypatch.setattr(width, "_MEASURED", {})  # a new process: the rates come from the file
    again, choice_again = tune_runs_per_batch(program, settings, 12, 0, cache)
    assert (again, choice_again["source"], choice_again["run_steps_per_s"]) == (k, "measured earlier",
                                                                                 choice["run_steps_per_s"])
    # another budget (steps) costs the same per step: nothing to measure; an explicit width wins
    assert tune_runs_per_batch(build_program(sweep(train=dict(steps=90)), config.runs()), settings, 12, 0,
                               cache)[1]["source"] == "measured earlier"
    assert tune_runs_per_batch(program, settings, 12, 4) == (4, dict(source="config"))
    meta = grokjax.run_sweep(config, progress=False).meta["groups"][0]
    assert meta["runs_per_batch"] == k and meta["runs_per_batch_choice"]["source"] == "measured earlier"
