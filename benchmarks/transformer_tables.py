"""The transformer with per-token tables against the per-example model it replaced (commit
892b816), side by side in one process: same parameters, same logits, then milliseconds per
jitted training step (value and gradient of the mean cross-entropy) and per forward pass over
the whole table, alternated round by round. Medians and minima of wall time, and medians of the
process's CPU time (steadier when other jobs share the cores).

    python benchmarks/transformer_tables.py [W3] [W4] [rounds=7] [runs=R]

``runs=R`` vmaps R runs (own parameters and rows each), as the grid does. Needs the git history.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import grokjax.models
from grokjax.models import Transformer, init_params

BEFORE = "892b816"  # the last commit with the per-example transformer
WORKLOADS = {"W3": dict(p=97, n_layers=2, layer_norm=True, batch=512),  # Power et al.
             "W4": dict(p=113, n_layers=1, layer_norm=False, batch=int(0.3 * 113 * 113))}  # Nanda et al.


def old_transformer():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    src = subprocess.run(["git", "-C", root, "show", f"{BEFORE}:grokjax/models.py"], check=True,
                         capture_output=True, text=True).stdout
    path = os.path.join(tempfile.mkdtemp(), "models_before.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("models_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["models_before"] = module  # dataclasses (flax modules) look their module up
    spec.loader.exec_module(module)
    return module.Transformer


def main(argv):
    opts = dict(a.split("=") for a in argv if "=" in a)
    rounds, runs = int(opts.get("rounds", 7)), int(opts.get("runs", 0))
    names = [a for a in argv if a in WORKLOADS] or list(WORKLOADS)
    print(f"{jax.devices()[0].device_kind}, {os.cpu_count()} cores, jax {jax.__version__}, "
          f"{time.strftime('%Y-%m-%d')}, {runs or 1} run(s); after = {grokjax.models.__file__}")
    Old = old_transformer()
    for name in names:
        w, p = WORKLOADS[name], WORKLOADS[name]["p"]
        kw = dict(n_layers=w["n_layers"], d_model=128, n_heads=4, d_mlp=512, layer_norm=w["layer_norm"])
        models = {"before": Old(p, p, **kw), "after": Transformer(p, p, **kw)}
        a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
        table = jnp.asarray(np.stack([a.ravel(), b.ravel()], 1), jnp.int32)
        labels = (table[:, 0] + table[:, 1]) % p
        seeds = range(max(runs, 1))
        params = [init_params(models["before"], jax.random.PRNGKey(r), 1.0, table[:1]) for r in seeds]
        idx = [jax.random.permutation(jax.random.PRNGKey(r), len(table))[: w["batch"]] for r in seeds]
        if runs:
            params, idx = jax.tree.map(lambda *x: jnp.stack(x), *params), jnp.stack(idx)
        else:
            params, idx = params[0], idx[0]
        x, y = table[idx], labels[idx]
        fns = {}
        with jax.default_matmul_precision("highest"):
            for key, m in models.items():
                def loss(pr, x, y, m=m):
                    return optax.softmax_cross_entropy_with_integer_labels(m.apply({"params": pr}, x), y).mean()

                def forward(pr, m=m):
                    return m.apply({"params": pr}, table)

                if runs:
                    loss = (lambda f: lambda pr, x, y: jax.vmap(f)(pr, x, y).sum())(loss)
                    forward = jax.vmap(forward)
                t0 = time.perf_counter()
                step = jax.jit(jax.value_and_grad(loss)).lower(params, x, y).compile()
                t1 = time.perf_counter()
                fwd = jax.jit(forward).lower(params).compile()
                print(f"{name} {key}: compile step {t1 - t0:.1f} s, table forward {time.perf_counter() - t1:.1f} s")
                fns[key] = (lambda step=step: step(params, x, y), lambda fwd=fwd: fwd(params))
            ref = fns["before"][1]()
            err = float(jnp.abs(fns["after"][1]() - ref).max() / jnp.abs(ref).max())
            print(f"{name}: max |logits after - before| / max |logits| = {err:.1e}")
            wall = {(k, what): [] for k in fns for what in (0, 1)}
            cpu = {(k, what): [] for k in fns for what in (0, 1)}
            for _ in range(rounds):
                for k, pair in fns.items():
                    for what, fn in enumerate(pair):
                        jax.block_until_ready(fn())
                        n = 10 if (name, what) == ("W3", 0) else 4
                        t0, c0 = time.perf_counter(), time.process_time()
                        for _ in range(n):
                            out = fn()
                        jax.block_until_ready(out)
                        wall[k, what].append((time.perf_counter() - t0) / n * 1e3)
                        cpu[k, what].append((time.process_time() - c0) / n * 1e3)
        for what, label in enumerate(("fwd+bwd", "table forward")):
            cells = []
            for stat, data, f in (("wall median", wall, statistics.median), ("wall min", wall, min),
                                  ("cpu median", cpu, statistics.median)):
                before, after = f(data["before", what]), f(data["after", what])
                cells.append(f"{stat} {before:.1f} -> {after:.1f} ms ({before / after:.2f}x)")
            print(f"{name} {label}: " + "; ".join(cells))


if __name__ == "__main__":
    main(sys.argv[1:])
