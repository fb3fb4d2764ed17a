"""PyTorch baselines in the style of published grokking code: one model, one torch.optim.AdamW,
a Python training loop over full-batch (or mini-batch) steps on a masked table. The models
compute the same functions as grokjax's (MLP over two embeddings; decoder transformer over
[x, y, =] read at the last position) in their textbook form.

Optional: needs ``pip install -e .[bench]`` (torch). Used by ``grokjax bench``.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, n_symbols: int, embed_dim: int, width: int, depth: int = 1):
        super().__init__()
        self.embed = nn.Embedding(n_symbols, embed_dim)
        layers, fan_in = [], 2 * embed_dim
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width), nn.ReLU()]
            fan_in = width
        self.hidden = nn.Sequential(*layers)
        self.readout = nn.Linear(width, n_symbols)

    def forward(self, tokens):
        return self.readout(self.hidden(self.embed(tokens).flatten(1)))


class Block(nn.Module):
    def __init__(self, d: int, heads: int, d_mlp: int, layer_norm: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.mlp = nn.Sequential(nn.Linear(d, d_mlp), nn.ReLU(), nn.Linear(d_mlp, d))
        self.ln1 = nn.LayerNorm(d) if layer_norm else nn.Identity()
        self.ln2 = nn.LayerNorm(d) if layer_norm else nn.Identity()

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        z = nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                       is_causal=True)
        x = x + self.out(z.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    def __init__(self, n_symbols: int, n_layers: int, d_model: int, n_heads: int, d_mlp: int, layer_norm: bool):
        super().__init__()
        self.n_symbols = n_symbols
        self.embed = nn.Embedding(n_symbols + 1, d_model)
        self.pos = nn.Parameter(torch.randn(3, d_model) / math.sqrt(d_model))
        self.blocks = nn.Sequential(*[Block(d_model, n_heads, d_mlp, layer_norm) for _ in range(n_layers)])
        self.ln = nn.LayerNorm(d_model) if layer_norm else nn.Identity()
        self.unembed = nn.Linear(d_model, n_symbols, bias=False)

    def forward(self, tokens):
        eq = torch.full((tokens.shape[0], 1), self.n_symbols, dtype=tokens.dtype, device=tokens.device)
        x = self.embed(torch.cat([tokens, eq], 1)) + self.pos
        return self.unembed(self.ln(self.blocks(x)[:, -1]))


def build(model_cfg: dict, n_symbols: int) -> nn.Module:
    if model_cfg["name"] == "mlp":
        return MLP(n_symbols, model_cfg.get("embed_dim", 128), model_cfg.get("width", 512), model_cfg.get("depth", 1))
    return Transformer(n_symbols, model_cfg.get("n_layers", 1), model_cfg.get("d_model", 128),
                       model_cfg.get("n_heads", 4), model_cfg.get("d_mlp", 512), model_cfg.get("layer_norm", False))


def _split(labels, fraction: float, seed: int) -> torch.Tensor:
    """Train mask over the table: a seeded permutation's first ``fraction``."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(len(labels), dtype=torch.bool)
    mask[order[: int(fraction * len(labels))]] = True
    return mask


def _batches(xt, yt, batch_size: int, steps: int):
    """Full batch, or ``batch_size`` examples drawn with replacement each step."""
    for _ in range(steps):
        if batch_size:
            idx = torch.randint(len(yt), (batch_size,))
            yield xt[idx], yt[idx]
        else:
            yield xt, yt


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def evaluate(forward, x, y, mask, bf16: bool = False) -> tuple[float, float]:
    """Train and test accuracy on the whole table, read back to the host (as published code
    logs them)."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        correct = (forward(x).argmax(-1) == y).float()
    return correct[mask].mean().item(), correct[~mask].mean().item()


def train_loop(model_cfg: dict, inputs: np.ndarray, labels: np.ndarray, n_symbols: int, steps: int,
               batch_size: int = 0, lr: float = 1e-3, weight_decay: float = 1.0, fraction: float = 0.5,
               seed: int = 0, bf16: bool = False, eval_every: int = 0, betas=(0.9, 0.98),
               device: str = "cpu") -> dict:
    """One run, published-code style, evaluating on the whole table every ``eval_every`` steps.
    Returns the training seconds and the curve [(step, train_acc, test_acc)]."""
    torch.manual_seed(seed)
    model = build(model_cfg, n_symbols).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=betas)
    x, y = torch.as_tensor(inputs, dtype=torch.long), torch.as_tensor(labels, dtype=torch.long)
    mask = _split(y, fraction, seed)
    x, y, mask = x.to(device), y.to(device), mask.to(device)
    curve = []
    _sync(device)
    t0 = time.perf_counter()
    for step, (xb, yb) in enumerate(_batches(x[mask], y[mask], batch_size, steps), 1):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(model(xb).float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if eval_every and step % eval_every == 0:
            curve.append((step, *evaluate(model, x, y, mask, bf16)))
    _sync(device)
    return dict(seconds=time.perf_counter() - t0, curve=curve)


def train_ensemble(model_cfg: dict, inputs: np.ndarray, labels: np.ndarray, n_symbols: int, steps: int, runs: int,
                   batch_size: int = 0, lr: float = 1e-3, weight_decay: float = 1.0, fraction: float = 0.5,
                   eval_every: int = 0, device: str = "cpu") -> float:
    """``runs`` models stacked with torch.func and trained together (vmap of a functional call),
    evaluated together every ``eval_every`` steps. Every run here shares one split, which flatters
    this baseline. Returns seconds."""
    from torch.func import functional_call, grad_and_value, stack_module_state, vmap

    models = [build(model_cfg, n_symbols).to(device) for _ in range(runs)]
    params, buffers = stack_module_state(models)
    base = build(model_cfg, n_symbols).to("meta")
    x, y = torch.as_tensor(inputs, dtype=torch.long), torch.as_tensor(labels, dtype=torch.long)
    mask = _split(y, fraction, seed=0)
    x, y, mask = x.to(device), y.to(device), mask.to(device)

    def loss_fn(p, b, xb, yb):
        return nn.functional.cross_entropy(functional_call(base, (p, b), (xb,)), yb)

    step_fn = vmap(grad_and_value(loss_fn), in_dims=(0, 0, None, None))
    forward = vmap(lambda p, b, xb: functional_call(base, (p, b), (xb,)), in_dims=(0, 0, None))
    leaves = list(params.values())
    opt = torch.optim.AdamW(leaves, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    _sync(device)
    t0 = time.perf_counter()
    for step, (xb, yb) in enumerate(_batches(x[mask], y[mask], batch_size, steps), 1):
        grads, _ = step_fn(params, buffers, xb, yb)
        for name, leaf in params.items():
            leaf.grad = grads[name]
        opt.step()
        if eval_every and step % eval_every == 0:
            evaluate(lambda xs: forward(params, buffers, xs), x, y.expand(runs, -1), mask.expand(runs, -1))
    _sync(device)
    return time.perf_counter() - t0
