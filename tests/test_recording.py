"""The host's record of a training sweep: the progress line (rich on a terminal, plain lines in a
log) and the budget of run-steps still open, which its time left is estimated from."""

import io
import re
import types

import numpy as np
from conftest import make_sweep

from grokjax.recording import ProgressLine, Recorder
from grokjax.scheduler import Round


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _info(i: int, last: bool = False, **more) -> dict:
    return dict(step=20 * i, runs=4, memorized=i, grokked=i // 2, diverged=0, done=i, run_steps=80 * i,
                seconds=2.0 * i, last=last, run_steps_budget=400, run_steps_left=400 - 80 * i, **more)


def _feed(line: ProgressLine, clock: list, n: int = 5, group: int = 0) -> None:
    for i in range(1, n + 1):
        clock[0] += 2.0
        line(_info(i, last=i == n), group=group)


PLAIN = re.compile(r"^(group \d/\d )?step +\d+/100 \| memorized \d/4 \| grokked \d/4 \| diverged \d \| done \d/4 \| "
                   r"[\d,]+ run-steps/s \| left (-:--:--|\d+:\d\d:\d\d)$")


def test_a_log_gets_plain_lines_every_few_seconds_and_at_the_end():
    clock, stream = [0.0], io.StringIO()
    line = ProgressLine(100, 1, stream=stream, every_s=5.0, clock=lambda: clock[0])
    _feed(line, clock)
    lines = stream.getvalue().splitlines()
    assert all(PLAIN.match(x) for x in lines), lines
    # every 5 s of the 2 s rounds, and the last round always: rounds 1, 4 and 5 (the clock at 2, 8, 10)
    assert [x.split(" |")[0] for x in lines] == ["step  20/100", "step  80/100", "step 100/100"]
    assert lines[0].endswith("left -:--:--")  # one sample: no speed yet
    # 80 run-steps of budget per 2 s: at round 4, 80 left -> 2 s
    assert lines[1].endswith("40 run-steps/s | left 0:00:02") and "done 4/4" in lines[1]
    assert "\x1b" not in stream.getvalue() and "\r" not in stream.getvalue()


def test_groups_are_named_and_a_search_says_its_estimate_is_a_floor():
    clock, stream = [0.0], io.StringIO()
    line = ProgressLine(100, 2, stream=stream, every_s=0, open_ended=True, clock=lambda: clock[0])
    _feed(line, clock, 2, group=0)
    _feed(line, clock, 2, group=1)
    lines = stream.getvalue().splitlines()
    assert [x[:9] for x in lines] == ["group 1/2"] * 2 + ["group 2/2"] * 2
    assert all("| left >= " in x for x in lines)


def test_a_terminal_gets_one_line_redrawn_by_rich():
    clock, stream = [0.0], Terminal()
    line = ProgressLine(100, 1, stream=stream, clock=lambda: clock[0])
    _feed(line, clock)
    out = stream.getvalue()
    frames = [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", f) for f in out.split("\r")]
    assert "5/4 done, 2 grokked, 0 diverged · 40 run-steps/s" in frames[-1] and "left" in frames[-1]
    assert out.count("\n") == 1 and out.endswith("\n\x1b[?25h"), "one line, ended, the cursor shown again"
    line.close()  # idempotent: a stop after the end writes nothing
    assert stream.getvalue() == out


def test_closing_mid_sweep_ends_the_line():
    clock, stream = [0.0], Terminal()
    line = ProgressLine(100, 1, stream=stream, clock=lambda: clock[0])
    for i in (1, 2, 3):  # no last round: a stop signal or an error mid-group
        clock[0] += 2.0
        line(_info(i), group=0)
    assert "\n" not in stream.getvalue()
    line.close()
    assert stream.getvalue().endswith("\n\x1b[?25h")


def _round(run_ids, steps, recorded, done, diverged) -> Round:
    n, evals = len(run_ids), len(steps[0])
    metrics = {"step": np.array(steps), "recorded": np.array(recorded, bool), "train_loss": np.zeros((n, evals))}
    events = dict(memorize_step=np.full(n, -1), grok_step=np.full(n, -1), diverged=np.array(diverged),
                  diverged_step=np.full(n, -1), done=np.array(done))
    return Round(np.array(run_ids), metrics, events, step=max(map(max, steps)), run_steps=0, seconds=1.0, evals=evals)


def test_the_open_budget_counts_the_steps_unfinished_runs_have_left():
    config = make_sweep(train=dict(steps=60, eval_every=10), grid=dict(seed=[0, 1, 2, 3]))
    source = types.SimpleNamespace(config=config, runs=config.runs(), annotate=lambda t: t)
    recorder = Recorder(source, None, None)
    assert recorder.work() == dict(run_steps_budget=240, run_steps_left=240)
    # run 0 done (stops early), run 1 at step 20, run 2 diverged at 10; run 3 has not started
    recorder.record(_round([0, 1, 2], [[10, 20], [10, 20], [10, 0]], [[1, 1], [1, 1], [1, 0]],
                           [True, False, False], [False, False, True]))
    assert recorder.work() == dict(run_steps_budget=240, run_steps_left=40 + 60)
    # a checkpoint's host arrays restore the same budget
    again = Recorder(source, None, None)
    again.load(recorder.host_arrays())
    assert again.work() == recorder.work()
    # without stopping early a done run trains on
    late = make_sweep(train=dict(steps=60, eval_every=10), events=dict(stop_early=False), grid=dict(seed=[0]))
    recorder = Recorder(types.SimpleNamespace(config=late, runs=late.runs(), annotate=lambda t: t), None, None)
    recorder.record(_round([0], [[10, 20]], [[1, 1]], [True], [False]))
    assert recorder.work()["run_steps_left"] == 40
