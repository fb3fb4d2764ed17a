"""Property test: any sweep file and command line is either accepted or refused with one
``grokjax: error:`` line and exit code 2; nothing else escapes (no traceback, no other code)."""

import contextlib
import io
import json
import math
import re
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grokjax.cli import main

KEYS = {
    "task": ["name", "p", "data_fraction", "n", "k", "examples", "table_seed", "q"],
    "model": ["name", "init_scale", "width", "embed_dim", "depth", "activation", "d_model", "n_heads", "layer_norm"],
    "optimizer": ["name", "lr", "weight_decay", "beta1", "momentum", "b1", "warmup_steps", "schedule", "decay_steps"],
    "train": ["steps", "eval_every", "batch_size", "seed", "runs_per_batch", "loss", "precision"],
    "events": ["memorize_threshold", "grok_threshold", "patience", "grok_gap", "stop_early"],
}
NAMES = ["add", "div", "s5_mul", "sparse_parity", "mlp", "transformer", "adamw", "sgd", "lion", "adam", "mse",
         "cross_entropy", "cosine", "bfloat16", "nowhere:thing", "math:pi", "os:getcwd", "relu", "ádd", ""]
BASE = {"task": {"name": "add", "p": 7}, "model": {"width": 8, "embed_dim": 4},
        "train": {"steps": 4, "eval_every": 2}}

scalars = st.one_of(
    st.integers(-(2**70), 2**70), st.integers(-3, 130),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(-2.0, 2.0),
    st.booleans(), st.sampled_from(NAMES), st.text(max_size=8))
values = st.one_of(scalars, st.lists(scalars, max_size=4), st.dictionaries(st.text(max_size=4), scalars, max_size=2))
any_key = st.one_of(st.sampled_from([k for keys in KEYS.values() for k in keys]), st.text(max_size=12))


@st.composite
def sweep_files(draw):
    raw = json.loads(json.dumps(BASE)) if draw(st.booleans()) else {}
    for _ in range(draw(st.integers(0, 4))):  # settings of known sections, some of them wrong
        section = draw(st.sampled_from(list(KEYS) + ["tusk", "grid"]))
        table = raw.setdefault(section, {})
        if not isinstance(table, dict):
            continue
        if section == "grid":
            table[draw(any_key)] = draw(st.one_of(st.lists(scalars, max_size=3), scalars))
        else:
            table[draw(st.one_of(st.sampled_from(KEYS.get(section, ["name"])), any_key))] = draw(values)
    if draw(st.integers(0, 9)) == 0:  # a section that is not a table, a top-level stray key
        raw[draw(st.sampled_from(list(KEYS)))] = draw(scalars)
    if draw(st.integers(0, 9)) == 0:
        raw[draw(st.text(max_size=6))] = draw(scalars)
    return raw


def to_toml(raw: dict) -> str:
    def key(k):
        return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
        if isinstance(v, (int, str)):
            return json.dumps(v) if isinstance(v, str) else str(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return "{" + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + "}"

    top = [f"{key(k)} = {value(v)}" for k, v in raw.items() if not isinstance(v, dict)]
    tables = [f"[{key(k)}]\n" + "\n".join(f"{key(a)} = {value(b)}" for a, b in v.items())
              for k, v in raw.items() if isinstance(v, dict)]
    return "\n".join(top + tables) + "\n"


flags = st.lists(st.one_of(
    st.tuples(st.sampled_from(["--devices", "--max-runs-per-chunk", "--checkpoint-every"]),
              st.one_of(st.integers(-5, 20), st.integers(2**40, 2**70), st.text(max_size=3))),
    st.tuples(st.sampled_from(["--resume", "--overwrite", "--quiet", "--bogus"]), st.none())), max_size=2)

EXAMPLES = 1000


def check_command_line(folder, raw: dict, extra: list, seen: Counter) -> None:
    """One generated sweep file and command line: accepted (a valid dry run) or refused cleanly."""
    path = folder / "s.toml"
    path.write_text(to_toml(raw), encoding="utf-8")
    argv = ["run", str(path), "--dry-run", "--no-cache", "--out", str(folder / "out")]
    for flag, arg in extra:
        argv += [flag] if arg is None else [flag, str(arg)]
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse refuses unknown flags and non-integers this way
            code = e.code
    message = err.getvalue().strip()
    assert "Traceback" not in message
    if code == 0:
        seen["accepted"] += 1
        assert "is valid" in out.getvalue()
    else:
        seen["refused"] += 1
        assert code == 2, (code, message)
        last = message.splitlines()[-1]
        assert last.startswith("grokjax: error: ") or ": error: " in last, message
    assert not (folder / "out").exists()  # a dry run writes nothing, a refusal neither


@pytest.mark.slow
def test_every_sweep_file_and_command_line_is_accepted_or_refused_cleanly(tmp_path_factory):
    seen = Counter()  # counted here, so the count holds whatever else runs in this process

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(raw=sweep_files(), extra=flags)
    def check(raw, extra):
        check_command_line(tmp_path_factory.mktemp("fuzz"), raw, extra, seen)

    check()
    print(f"\nfuzz: {sum(seen.values())} sweep files and command lines, {seen['accepted']} accepted, "
          f"{seen['refused']} refused")
    assert sum(seen.values()) >= EXAMPLES and seen["accepted"] and seen["refused"]
