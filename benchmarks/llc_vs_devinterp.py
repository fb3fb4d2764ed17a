"""grokjax's LLC against devinterp's ``estimate_learning_coeff`` on the same parameters and data,
and what LLC estimation at a cadence adds to a sweep's time.

One run of the MLP on (x + y) mod p is trained by grokjax; its parameters at initialization, after
memorization (train accuracy >= 99 %, test accuracy < 50 %) and after grokking (test accuracy
>= 99 %) go to both estimators with the same step size, localization, n beta, batch size, chains
and draws. devinterp runs a PyTorch copy of the MLP (weights copied) on a DataLoader of the same
training split, through ``estimate_learning_coeff_with_summary`` (``estimate_learning_coeff``
plus the per-chain values) with its default sampler (``SGLD``). Needs the ``llc`` extra.

The two estimate the same quantity; read from devinterp 1.3.2's source, the conventions are:

- the update is the same: ``w -= eps / 2 (n beta grad L_batch(w) + gamma (w - w*))``, then
  ``w += sqrt(eps) N(0, 1)``: noise of variance ``eps`` (``noise_level`` 1), no weight decay;
  ``L_batch`` is the batch's mean loss and ``nbeta`` multiplies its gradient (no ``n / m``
  factor beyond it);
- a draw's loss is the batch loss at ``w`` *before* that step (the first draw is at ``w*``), and
  ``lambda_hat = nbeta (mean over draws - init_loss)`` per chain, divided by nothing else;
- ``nbeta`` is passed explicitly to both (``B / log B``, devinterp's ``default_nbeta``);
- aligned here: ``init_loss``. devinterp's default is the mean loss over ``chains`` batches;
  grokjax uses ``L_n(w*)`` on the whole training split, which this script passes to devinterp;
- aligned here: the spread. devinterp's ``llc/std`` is torch's ``std`` (ddof 1), grokjax's
  ``llc_std`` ddof 0; the table shows both at ddof 0 (devinterp's from its per-chain values);
- left as they are: batches. devinterp cycles a shuffled DataLoader (``drop_last``, a new
  permutation per epoch), grokjax draws ``B`` distinct examples of the split afresh at every
  step: each batch is a uniform draw without replacement either way;
- left as they are: a diverged chain (estimate not finite or above ``d``) is dropped by grokjax
  and flagged (``llc_diverged``); devinterp raises on a NaN loss. The settings here diverge none.

Then, in this one process, the cost: ``sweeps/llc_cpu.toml``'s runs for ``--cost-steps`` steps
with the LLC off and at the file's cadence (``--every-evaluation``: also at every evaluation):
compile, train and wall seconds, and their ratios to off; and a check that the LLC off leaves
the program as it was: the period's lowered program with ``llc_every = 0`` is the same text
whatever the other ``llc_*`` settings, with no branch.

    python benchmarks/llc_vs_devinterp.py [--p 23] [--chains 8] [--draws 200] [--cost-steps 200]
        [--every-evaluation] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import time
import warnings

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
    """grokjax's estimate at ``params``: (mean, std over chains (ddof 0), L_n(w*) on the split)."""
    inputs, labels = jnp.asarray(program.task.inputs), jnp.asarray(program.task.labels)

    def batch_loss(p, key):
        idx, w = draw_batch(key, mask, cfg.batch_size)
        return weighted_mean(program.loss(program.apply(p, inputs[idx]), labels[idx]), w.astype(jnp.float32))

    init_loss = weighted_mean(program.loss(program.apply(params, inputs), labels), mask.astype(jnp.float32))
    fn = jax.jit(lambda p, l0: estimate(cfg, llc_key(seed, 0), p, batch_loss, l0, eps, gamma, nbeta))
    out = fn(params, init_loss)
    assert float(out["llc_diverged"]) == 0, "a grokjax chain diverged: the comparison needs other settings"
    return float(out["llc"]), float(out["llc_std"]), float(init_loss)


def devinterp_llc(program, params, mask, cfg: LLCConfig, eps, gamma, nbeta, init_loss, seed=0):
    """devinterp's estimate at ``params`` on a PyTorch copy: (mean, std over chains (ddof 0))."""
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

    with warnings.catch_warnings():  # devinterp's advice on burn-in, seeds and deprecations, every call
        warnings.simplefilter("ignore")
        out = estimate_learning_coeff_with_summary(
            TorchMLP(params), loader, evaluate=evaluate, sampling_method=SGLD,
            optimizer_kwargs=dict(lr=eps, localization=gamma, nbeta=nbeta), num_draws=cfg.draws,
            num_chains=cfg.chains, num_burnin_steps=cfg.burnin, init_loss=init_loss, seed=seed, verbose=False)
    per_chain = np.array([out[f"llc-chain/{i}"] for i in range(cfg.chains)])
    return float(per_chain.mean()), float(per_chain.std())


def cost(config: grokjax.SweepConfig, every: int) -> dict:
    """One sweep with the LLC at every ``every``-th evaluation (0: off): its seconds."""
    results = grokjax.run_sweep(config.replace(llc_every=every), progress=False, tune_cache=None)
    meta = results.meta
    return dict(every=every, compile_s=meta["compile_time_s"], train_s=meta["train_time_s"],
                wall_s=meta["wall_time_s"])


def off_program_text(config: grokjax.SweepConfig) -> str:
    """The lowered period of ``config``'s first group (one run) as text."""
    program = build_program(config)
    settings = one_run(run_settings([config]))
    state = jax.eval_shape(program.init_run, settings)
    return jax.jit(lambda s, h: program.train_period(s, h, 5)).lower(state, settings).as_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--p", type=int, default=23)
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epsilon", type=float, default=1e-4)
    parser.add_argument("--gamma", type=float, default=100.0)
    parser.add_argument("--cost-steps", type=int, default=200, help="steps of the cost's sweeps")
    parser.add_argument("--every-evaluation", action="store_true",
                        help="the cost with an estimate at every evaluation too")
    parser.add_argument("--out", default="llc_vs_devinterp.md", help="the tables as markdown")
    args = parser.parse_args()
    lines = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    import torch
    say(f"# grokjax LLC vs devinterp {importlib.metadata.version('devinterp')} (torch {torch.__version__}); "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {jax.devices()[0].device_kind}, "
        f"jax {jax.__version__}, {datetime.date.today()}")
    config = grokjax.sweep_from_dict(dict(
        name="llc_vs_devinterp", task=dict(name="add", p=args.p, data_fraction=0.6),
        model=dict(name="mlp", embed_dim=32, width=128), optimizer=dict(lr=1e-2, weight_decay=1.0),
        train=dict(steps=3000, eval_every=20, progress_measures=False, runs_per_batch=1)))
    cfg = LLCConfig(every=1, chains=args.chains, draws=args.draws, batch_size=args.batch_size)
    nbeta = default_nbeta(args.batch_size)
    say(f"\np={args.p}, 60 % data, MLP 32/128, seed 0; eps={args.epsilon:g}, gamma={args.gamma:g}, "
        f"nbeta={nbeta:.3f} (B / log B), B={args.batch_size}, chains={args.chains}, draws={args.draws}, no burn-in\n")
    program, mask, found = train_checkpoints(config)
    say("| checkpoint | step | L_n(w*) | grokjax LLC ± std | devinterp LLC ± std | |diff| / combined std |")
    say("|---|---|---|---|---|---|")
    t0 = time.perf_counter()
    for name, (step, params) in found.items():
        g, g_std, l0 = grokjax_llc(program, params, mask, cfg, args.epsilon, args.gamma, nbeta)
        d, d_std = devinterp_llc(program, params, mask, cfg, args.epsilon, args.gamma, nbeta, l0)
        spread = np.hypot(g_std, d_std)
        say(f"| {name} | {step} | {l0:.3g} | {g:.3g} ± {g_std:.2g} | {d:.3g} ± {d_std:.2g} | "
            f"{abs(g - d) / spread if spread > 0 else float('nan'):.2f} |")
    say(f"\n({time.perf_counter() - t0:.0f} s for the estimates; std: chain to chain, ddof 0; combined: "
        f"sqrt(std_grokjax^2 + std_devinterp^2))")

    sweep = grokjax.load_sweep(os.path.join(os.path.dirname(__file__), "..", "sweeps", "llc_cpu.toml"))
    sweep = sweep.replace(steps=args.cost_steps, runs_per_batch=4)  # the measured width, not measured again
    n_evals = args.cost_steps // sweep.train.eval_every
    base = sweep.runs()[0].replace(llc_every=0)
    off_text = off_program_text(base)
    same = off_text == off_program_text(base.replace(llc_chains=16, llc_draws=7, llc_batch_size=8, llc_epsilon=0.5,
                                                     llc_gamma=1.0))
    branchless = "stablehlo.case" not in off_text
    say(f"\nLLC off leaves the program alone: the same lowered period whatever the llc_* settings: {same}; "
        f"no branch in it: {branchless}")
    t0 = time.perf_counter()
    rows = [cost(sweep, every) for every in (0, sweep.train.llc_every, 1)[:3 if args.every_evaluation else 2]]
    off = rows[0]
    say(f"\nCost: sweeps/llc_cpu.toml ({len(sweep.runs())} runs, {sweep.train.llc_chains} chains x "
        f"{sweep.train.llc_draws} draws) for {args.cost_steps} steps, {n_evals} evaluations, 4 runs vmapped, "
        f"persistent cache off ({time.perf_counter() - t0:.0f} s in all)\n")
    say("| llc_every | estimates per run | compile s | train s | wall s | compile / off | train / off | wall / off |")
    say("|---|---|---|---|---|---|---|---|")
    for r in rows:
        say(f"| {r['every'] or 'off'} | {n_evals // r['every'] if r['every'] else 0} | {r['compile_s']:.1f} | "
            f"{r['train_s']:.1f} | {r['wall_s']:.1f} | {r['compile_s'] / off['compile_s']:.2f} | "
            f"{r['train_s'] / off['train_s']:.2f} | {r['wall_s'] / off['wall_s']:.2f} |")
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
