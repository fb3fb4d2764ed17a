"""The transformer reading ``[x, y, =]`` against ``[x, op, y, =]`` (``operator_token``): one more
position, but a constant row like ``=``'s, which stays a table of token 0 after the first
attention, so the per-example rows are as many as without it. Milliseconds per jitted training
step (value and gradient of the mean cross-entropy, a batch of 512) on Power et al.'s model
(p = 97, 2 layers, d_model 128, LayerNorm), alternated round by round; medians of wall and of the
process's CPU time (steadier when other jobs share the cores).

    python benchmarks/operator_token.py [rounds=7] [runs=R]
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import jax
import optax

from grokjax.models import init_params, transformer


def main(argv):
    opts = dict(a.split("=") for a in argv if "=" in a)
    rounds, runs = int(opts.get("rounds", 7)), int(opts.get("runs", 1))
    print(f"{jax.devices()[0].device_kind}, {os.cpu_count()} cores, jax {jax.__version__}, "
          f"{time.strftime('%Y-%m-%d')}, {runs} run(s)")
    p, batch = 97, 512
    x = jax.random.randint(jax.random.PRNGKey(0), (runs, batch, 2), 0, p)
    y = (x[..., 0] * x[..., 1]) % p
    steps = {}
    with jax.default_matmul_precision("highest"):
        for op in (False, True):
            model = transformer(p, p, n_layers=2, d_model=128, n_heads=4, d_mlp=512, layer_norm=True,
                                activation="gelu", operator_token=op)
            params = jax.vmap(lambda k, m=model: init_params(m, k, 1.0, x[0, :1]))(
                jax.random.split(jax.random.PRNGKey(1), runs))

            def loss(pr, xs, ys, m=model):
                return optax.softmax_cross_entropy_with_integer_labels(m.apply({"params": pr}, xs), ys).mean()

            step = jax.jit(jax.value_and_grad(lambda pr, xs, ys, loss=loss: jax.vmap(loss)(pr, xs, ys).sum()))
            jax.block_until_ready(step(params, x, y))
            steps[op] = lambda step=step, params=params: step(params, x, y)
    wall, cpu = {op: [] for op in steps}, {op: [] for op in steps}
    for _ in range(rounds):
        for op, fn in steps.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(10):
                out = fn()
            jax.block_until_ready(out)
            wall[op].append((time.perf_counter() - t0) * 100)  # ms per step
            cpu[op].append((time.process_time() - c0) * 100)
    for stat, data in (("wall median", wall), ("cpu median", cpu)):
        a, b = statistics.median(data[False]), statistics.median(data[True])
        print(f"fwd+bwd {stat}: [x, y, =] {a:.1f} ms, [x, op, y, =] {b:.1f} ms ({b / a:.2f}x)")


if __name__ == "__main__":
    main(sys.argv[1:])
