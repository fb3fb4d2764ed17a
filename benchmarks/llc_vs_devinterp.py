"""grokjax's LLC against devinterp's ``estimate_learning_coeff`` on the same parameters and data,
and what LLC estimation at a cadence adds to a sweep's time.

One run of the MLP on (x + y) mod p is trained by grokjax; its parameters at initialization, after
memorization (train accuracy >= 99 %, test accuracy < 50 %) and after grokking (test accuracy
>= 99 %) go to both estimators with the same step size, localization, n beta, batch size, chains,
draws and ``L_n(w*)`` (the loss on the whole training split). devinterp runs a PyTorch copy of the
MLP (weights copied) on a DataLoader of the same training split. Needs the ``llc`` extra
(devinterp 1.3 and torch). Then, in this one process, a small sweep with the LLC off and on.

    python benchmarks/llc_vs_devinterp.py [--p 23] [--chains 4] [--draws 200]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import grokjax
from grokjax.experiment import build_program, one_run, run_settings
from grokjax.llc import LLCConfig, default_nbeta, estimate, llc_key
from grokjax.metrics import weighted_mean
from grokjax.program import draw_batch, split_mask


def train_checkpoints(config: grokjax.SweepConfig):
    """Parameters of one run at init, after memorizing and after grokking, its mask and labels."""
    program = build_program(config)
    settings = one_run(run_settings([config]))
    state = jax.jit(program.init_run)(settings)
    period = jax.jit(lambda s: program.train_period(s, settings, 1))
    mask = split_mask(settings.seed, settings.data_fraction, program.task.size)
    found = {"init": (0, state.params)}
    for _ in range(config.train.steps // config.train.eval_every):
        state, m = period(state)
        step, train_acc, test_acc = int(m["step"][0]), float(m["train_acc"][0]), float(m["test_acc"][0])
        if "memorized" not in found and train_acc >= 0.99 and test_acc < 0.5:
            found["memorized"] = (step, state.params)
        if test_acc >= 0.99:
            found["grokked"] = (step, state.params)
            break
    return program, mask, found


def grokjax_llc(program, params, mask, cfg: LLCConfig, eps, gamma, nbeta, seed=0):
    inputs, labels = jnp.asarray(program.task.inputs), jnp.asarray(program.task.labels)

    def batch_loss(p, key):
        idx, w = draw_batch(key, mask, cfg.batch_size)
        return weighted_mean(program.loss(program.apply(p, inputs[idx]), labels[idx]), w.astype(jnp.float32))

    init_loss = weighted_mean(program.loss(program.apply(params, inputs), labels), mask.astype(jnp.float32))
    fn = jax.jit(lambda p, l0: estimate(cfg, llc_key(seed, 0), p, batch_loss, l0, eps, gamma, nbeta))
    out = fn(params, init_loss)
    return float(out["llc"]), float(out["llc_std"]), float(init_loss)


def devinterp_llc(program, params, mask, cfg: LLCConfig, eps, gamma, nbeta, init_loss, seed=0):
    import torch
    from devinterp.optim.sgld import SGLD
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    from torch.utils.data import DataLoader, TensorDataset

    class TorchMLP(torch.nn.Module):  # grokjax's MLP: embeddings through a [d, k, w] kernel, ReLU, read-out
        def __init__(self, p):
            super().__init__()
            t = {k: torch.tensor(np.asarray(v)) for k, v in p.items() if k != "readout"}
            self.embed, self.w1, self.b1 = (torch.nn.Parameter(t[k]) for k in ("embed", "hidden_0_kernel",
                                                                                  "hidden_0_bias"))
            self.w2 = torch.nn.Parameter(torch.tensor(np.asarray(p["readout"]["kernel"])))
            self.b2 = torch.nn.Parameter(torch.tensor(np.asarray(p["readout"]["bias"])))

        def forward(self, x):
            tables = torch.einsum("vd,dkw->vkw", self.embed, self.w1)
            h = sum(tables[x[:, i], i] for i in range(x.shape[1])) + self.b1
            return torch.relu(h) @ self.w2 + self.b2

    torch.manual_seed(seed)
    keep = np.asarray(mask)
    data = TensorDataset(torch.tensor(program.task.inputs[keep], dtype=torch.long),
                         torch.tensor(program.task.labels[keep], dtype=torch.long))
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, drop_last=True)

    def evaluate(model, batch):
        return torch.nn.functional.cross_entropy(model(batch[0]), batch[1]), {}

    out = estimate_learning_coeff_with_summary(
        TorchMLP(params), loader, evaluate=evaluate, sampling_method=SGLD,
        optimizer_kwargs=dict(lr=eps, localization=gamma, nbeta=nbeta), num_draws=cfg.draws,
        num_chains=cfg.chains, num_burnin_steps=cfg.burnin, init_loss=init_loss, seed=seed, verbose=False)
    return float(out["llc/mean"]), float(out["llc/std"])


def cost(config: grokjax.SweepConfig, every: int) -> dict:
    results = grokjax.run_sweep(config.replace(llc_every=every), progress=False, tune_cache=None)
    meta = results.meta
    return dict(every=every, compile_s=meta["compile_time_s"], train_s=meta["train_time_s"],
                wall_s=meta["wall_time_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--p", type=int, default=23)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epsilon", type=float, default=1e-4)
    parser.add_argument("--gamma", type=float, default=100.0)
    parser.add_argument("--cost-runs", type=int, default=8)
    args = parser.parse_args()
    print(f"# grokjax LLC vs devinterp; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{jax.devices()[0].device_kind}, {datetime.date.today()}")
    config = grokjax.sweep_from_dict(dict(
        name="llc_vs_devinterp", task=dict(name="add", p=args.p, data_fraction=0.6),
        model=dict(name="mlp", embed_dim=32, width=128), optimizer=dict(lr=1e-2, weight_decay=1.0),
        train=dict(steps=3000, eval_every=20, progress_measures=False, runs_per_batch=1)))
    cfg = LLCConfig(every=1, chains=args.chains, draws=args.draws, batch_size=args.batch_size)
    nbeta = default_nbeta(args.batch_size)
    print(f"# p={args.p}, MLP 32/128, eps={args.epsilon}, gamma={args.gamma}, nbeta={nbeta:.3f} (B / log B), "
          f"B={args.batch_size}, chains={args.chains}, draws={args.draws}")
    program, mask, found = train_checkpoints(config)
    print("| checkpoint | step | L_n(w*) | grokjax LLC (std) | devinterp LLC (std) | |diff| / spread |")
    print("|---|---|---|---|---|---|")
    for name, (step, params) in found.items():
        g, g_std, l0 = grokjax_llc(program, params, mask, cfg, args.epsilon, args.gamma, nbeta)
        d, d_std = devinterp_llc(program, params, mask, cfg, args.epsilon, args.gamma, nbeta, l0)
        spread = np.hypot(g_std, d_std) or 1e-12
        print(f"| {name} | {step} | {l0:.4f} | {g:.2f} ({g_std:.2f}) | {d:.2f} ({d_std:.2f}) | "
              f"{abs(g - d) / spread:.2f} |")
    grid = dataclasses.replace(config.replace(steps=500, stop_early=False, llc_chains=args.chains,
                                              llc_draws=args.draws, llc_batch_size=args.batch_size,
                                              runs_per_batch=0),
                               grid=(("seed", tuple(range(args.cost_runs))),))
    t0 = time.perf_counter()
    rows = [cost(grid, 0), cost(grid, 5), cost(grid, 1)]
    print(f"\n# cost: {args.cost_runs} runs x 500 steps, 25 evaluations; LLC every k-th evaluation "
          f"({time.perf_counter() - t0:.0f} s in all)")
    print("| llc_every | estimates per run | compile s | train s | wall s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['every'] or 'off'} | {25 // r['every'] if r['every'] else 0} | {r['compile_s']:.1f} | "
              f"{r['train_s']:.1f} | {r['wall_s']:.1f} |")


if __name__ == "__main__":
    main()
