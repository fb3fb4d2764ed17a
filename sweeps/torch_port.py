"""A user's plug-in for porting a PyTorch grokking configuration to grokjax (sweeps/torch_init_cpu.toml).

Like ``examples/my_grokking``, nothing here imports grokjax's internals: the factory follows the
optimizer contract ``fn(learning_rate, **settings) -> optax.GradientTransformation`` and is named
in a sweep file by import path (``torch_port:adam_l2``; grokjax puts the sweep file's folder on
the Python path).
"""

import optax


def adam_l2(learning_rate, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
            weight_decay: float = 0.0) -> optax.GradientTransformation:
    """``torch.optim.Adam(lr, betas=(beta1, beta2), eps, weight_decay)``: the decay is an L2 term
    coupled to the gradient, ``g + weight_decay * w``, *before* Adam's moments (unlike AdamW's
    decoupled ``lr * weight_decay * w``), so Adam's normalization divides it down wherever the
    gradient's second moment is large. A gradient filter in front of the optimizer (Grokfast)
    sees the gradient without the decay term, as ``gradfilter_ema`` does before ``step()``."""
    if isinstance(weight_decay, (int, float)) and weight_decay < 0:  # a number when the sweep is checked
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.scale_by_adam(b1=beta1, b2=beta2, eps=eps),
                       optax.scale_by_learning_rate(learning_rate))
