import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from grokjax import models
from grokjax.models import MLP, Transformer, count_params, mlp, transformer
from grokjax.tasks import make_task

# Jitted: one compilation per model instead of one per operation run eagerly (each eager operation
# of a new shape is a program of its own: most of this module's time before). Same numbers.
init_params = jax.jit(models.init_params, static_argnums=0)


@functools.partial(jax.jit, static_argnums=0)
def apply(model, params, inputs):
    return model.apply({"params": params}, inputs)


PAIR = jnp.zeros((1, 2), jnp.int32)  # a sample input: two operand tokens


def test_nanda_transformer_parameter_count():
    # Nanda et al. 2023: 1 layer, d=128, 4 heads of 32, d_mlp=512, no LayerNorm, vocab p+1 = 114
    # embedded, 3 positions, no attention biases, MLP with biases; their unembedding also covers
    # "=" (226,816 parameters), ours the p classes only.
    model = Transformer(113, 113, n_layers=1, d_model=128, n_heads=4, d_mlp=512, layer_norm=False)
    params = init_params(model, jax.random.PRNGKey(0), 1.0, PAIR)
    expected = 114 * 128 + 3 * 128 + 4 * 128 * 128 + (128 * 512 + 512) + (512 * 128 + 128) + 128 * 113
    assert expected == 226_816 - 128
    assert count_params(params) == expected


def test_power_transformer_builds_with_layer_norm():
    model = Transformer(97, 97, n_layers=2, d_model=128, n_heads=4, d_mlp=512, layer_norm=True)
    params = init_params(model, jax.random.PRNGKey(0), 1.0, PAIR)
    logits = apply(model, params, jnp.zeros((5, 2), jnp.int32))
    assert logits.shape == (5, 97)
    assert "layer_1_ln_attn" in params and "ln_final" in params


@pytest.mark.parametrize("k", [2, 3, 5])
def test_transformer_last_position_shortcut_matches_full_causal_model(k):
    """Reading only the last position in the last layer must give the textbook model's logits,
    for any number of input tokens."""
    model = Transformer(11, 11, n_layers=2, d_model=16, n_heads=2, d_mlp=32, layer_norm=True)
    tokens = jax.random.randint(jax.random.PRNGKey(2), (7, k), 0, 11)
    params = init_params(model, jax.random.PRNGKey(1), 1.0, tokens[:1])
    full = jax.jit(lambda p, t: _reference_transformer(p, t, n_layers=2, n_heads=2))(params, tokens)
    np.testing.assert_allclose(apply(model, params, tokens), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_layers,layer_norm,k,op", [(1, False, 2, False), (1, True, 3, False), (2, False, 3, False),
                                                      (2, True, 2, False), (3, True, 2, False), (2, True, 2, True),
                                                      (1, False, 3, True), (2, "normed", 2, True)])
def test_transformer_token_tables_match_textbook_model_and_its_gradients(n_layers, layer_norm, k, op):
    """Keys, values, queries and scores tabulated per vocabulary entry (first layer, "=", position
    0 through every layer, the operator token), then gathered per example: the same logits and
    parameter gradients as computing everything per example and position."""
    normed, layer_norm = layer_norm == "normed", bool(layer_norm)
    model = Transformer(7, 5, n_layers=n_layers, d_model=8, n_heads=2, d_mlp=16, layer_norm=layer_norm,
                        operator_token=op, normed_residual=normed)
    tokens = jax.random.randint(jax.random.PRNGKey(n_layers + k), (13, k), 0, 7)
    labels = jax.random.randint(jax.random.PRNGKey(4), (13,), 0, 5)
    params = init_params(model, jax.random.PRNGKey(1), 1.0, tokens[:1])

    def loss(fn):
        return lambda p: optax.softmax_cross_entropy_with_integer_labels(fn(p), labels).mean()

    def both(p):  # jitted: a few compilations instead of one per operation
        def ref_fn(p):
            return _reference_transformer(p, tokens, n_layers, 2, n_symbols=7, op=op, normed=normed)

        logits = model.apply({"params": p}, tokens), ref_fn(p)
        return logits, jax.value_and_grad(loss(lambda p: model.apply({"params": p}, tokens)))(p), \
            jax.value_and_grad(loss(ref_fn))(p)

    (logits, ref_logits), ours, ref = jax.jit(both)(params)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5)
    for g, g_ref in zip(jax.tree.leaves(ours[1]), jax.tree.leaves(ref[1])):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-6)


def test_transformer_under_vmap_over_runs_and_highest_precision():
    model = Transformer(7, 7, n_layers=2, d_model=8, n_heads=2, d_mlp=16, layer_norm=True)
    tokens = jax.random.randint(jax.random.PRNGKey(0), (3, 5, 2), 0, 7)  # a batch per run
    runs = jax.tree.map(lambda *w: jnp.stack(w), *(init_params(model, jax.random.PRNGKey(r), 1.0, PAIR)
                                                   for r in range(3)))
    with jax.default_matmul_precision("highest"):
        batched = jax.jit(jax.vmap(lambda p, t: model.apply({"params": p}, t)))(runs, tokens)
    ref = jax.jit(jax.vmap(lambda p, t: _reference_transformer(p, t, 2, 2, n_symbols=7)))(runs, tokens)
    np.testing.assert_allclose(batched, ref, rtol=1e-5, atol=1e-5)


def test_transformer_initialization_is_that_of_earlier_releases():
    # flax draws each parameter's key in creation order; values from the per-example model (same key)
    params = init_params(Transformer(7, 7, n_layers=2, d_model=8, n_heads=2, d_mlp=16, layer_norm=True),
                         jax.random.PRNGKey(0), 1.0, PAIR)
    np.testing.assert_allclose(
        [params["embed"][0, 0], params["pos_embed"][1, 0], params["layer_0_wq"][0, 0, 0], params["layer_1_wo"][0, 0, 0],
         params["layer_1_mlp_in"]["kernel"][0, 0], params["unembed"][0, 0]],
        [0.026920437812805176, -0.14860238134860992, 0.4601757228374481, 0.05562085285782814, 0.47196415066719055,
         -0.4939092695713043], rtol=1e-6)


def _reference_transformer(params, tokens, n_layers, n_heads, n_symbols=11, op=False, normed=False):
    """The textbook model: every position of every layer per example, batched per-head matmuls;
    ``op``: the operator token (id n_symbols + 1) between each two operands; ``normed``: the
    residual continues from the attention's LayerNorm (Grokfast's Block)."""
    def ln(x, p):
        if p is None:  # layer_norm=False
            return x
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / jnp.sqrt(var + 1e-6) * p["scale"] + p["bias"]

    columns = []
    for t in range(tokens.shape[1]):
        if t and op:
            columns.append(jnp.full((tokens.shape[0], 1), n_symbols + 1))
        columns.append(tokens[:, t:t + 1])
    seq = jnp.concatenate([*columns, jnp.full((tokens.shape[0], 1), n_symbols)], 1)
    x = params["embed"][seq] + params["pos_embed"]
    mask = jnp.tril(jnp.ones((seq.shape[1], seq.shape[1]), bool))
    for layer in range(n_layers):
        pre = f"layer_{layer}_"
        a = ln(x, params.get(pre + "ln_attn"))
        x = a if normed else x
        q, k, v = (jnp.einsum("btd,dhk->bthk", a, params[pre + w]) for w in ("wq", "wk", "wv"))
        s = jnp.einsum("bshk,bthk->bhst", q, k) / jnp.sqrt(q.shape[-1])
        att = jax.nn.softmax(jnp.where(mask, s, -jnp.inf), -1)
        x = x + jnp.einsum("bshk,hkd->bsd", jnp.einsum("bhst,bthk->bshk", att, v), params[pre + "wo"])
        m = ln(x, params.get(pre + "ln_mlp"))
        m = jax.nn.relu(m @ params[pre + "mlp_in"]["kernel"] + params[pre + "mlp_in"]["bias"])
        x = x + m @ params[pre + "mlp_out"]["kernel"] + params[pre + "mlp_out"]["bias"]
    return ln(x[:, -1], params.get("ln_final")) @ params["unembed"]


@pytest.mark.parametrize("k", [1, 2, 4])
def test_mlp_per_token_tables_match_dense_over_concatenated_embeddings(k):
    model = MLP(13, 13, embed_dim=8, width=16, depth=2)
    tokens = jax.random.randint(jax.random.PRNGKey(3), (9, k), 0, 13)
    params = init_params(model, jax.random.PRNGKey(0), 1.0, tokens[:1])
    e = params["embed"][tokens].reshape(9, 8 * k)  # [t_1 emb, ..., t_k emb]
    dense = params["hidden_0_kernel"].transpose(1, 0, 2).reshape(8 * k, 16)  # [embed, position, width] -> [ke, w]
    h = jax.nn.relu(e @ dense + params["hidden_0_bias"])
    h = jax.nn.relu(h @ params["hidden_1"]["kernel"] + params["hidden_1"]["bias"])
    ref = h @ params["readout"]["kernel"] + params["readout"]["bias"]
    np.testing.assert_allclose(apply(model, params, tokens), ref, rtol=1e-5, atol=1e-5)


def test_init_scale_multiplies_every_weight():
    model = MLP(7, 7, embed_dim=4, width=8)
    a = init_params(model, jax.random.PRNGKey(0), 1.0, PAIR)
    b = init_params(model, jax.random.PRNGKey(0), 8.0, PAIR)
    for wa, wb in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(wb, 8.0 * wa, rtol=1e-6)


@pytest.mark.parametrize("activation", ["relu", "gelu", "square"])
def test_mlp_activations_and_depth(activation):
    model = MLP(5, 5, embed_dim=4, width=8, depth=3, activation=activation)
    params = init_params(model, jax.random.PRNGKey(0), 1.0, PAIR)
    assert apply(model, params, jnp.zeros((2, 2), jnp.int32)).shape == (2, 5)
    assert {"hidden_1", "hidden_2", "readout"} <= set(params)


def test_tiny_transformer_fits_its_training_set():
    task = make_task("add", 11)
    model = Transformer(11, 11, n_layers=1, d_model=32, n_heads=2, d_mlp=64)
    params = init_params(model, jax.random.PRNGKey(0), 1.0, PAIR)
    tx = optax.adam(1e-2)
    inputs, labels = jnp.asarray(task.inputs[::2]), jnp.asarray(task.labels[::2])

    def loss_fn(p):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, inputs), labels).mean()

    @jax.jit
    def train(params):
        def step(carry, _):
            p, s = carry
            g = jax.grad(loss_fn)(p)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(step, (params, tx.init(params)), None, length=300)[0][0]

    params = train(params)
    correct = int((apply(model, params, inputs).argmax(-1) == labels).sum())
    assert correct == len(labels)


@pytest.mark.parametrize("model", [MLP(13, 13, embed_dim=16, width=32),
                                   Transformer(13, 13, n_layers=2, d_model=16, n_heads=2, d_mlp=32, layer_norm=True)])
def test_bfloat16_computes_in_bf16_with_float32_parameters(model):
    tokens = jax.random.randint(jax.random.PRNGKey(3), (9, 2), 0, 13)
    params = init_params(model, jax.random.PRNGKey(0), 1.0, PAIR)
    low = model.clone(dtype=jnp.bfloat16)
    low_params = init_params(low, jax.random.PRNGKey(0), 1.0, PAIR)
    assert all(w.dtype == jnp.float32 for w in jax.tree.leaves(low_params))
    logits = apply(low, params, tokens)
    assert logits.dtype == jnp.bfloat16
    np.testing.assert_allclose(logits.astype(np.float32), apply(model, params, tokens), atol=0.1)


def test_mlp_reads_float_features():
    model = mlp(64, 10, width=32)
    x = jax.random.uniform(jax.random.PRNGKey(0), (5, 64))
    params = init_params(model, jax.random.PRNGKey(1), 1.0, x[:1])
    assert apply(model, params, x).shape == (5, 10) and "embed" not in params


def test_factories_refuse_bad_settings_by_name():
    with pytest.raises(ValueError, match="activation = 'swish' is not one of relu"):
        mlp(5, 5, activation="swish")
    with pytest.raises(ValueError, match=r"d_model \(30\) must be a multiple of n_heads \(4\)"):
        transformer(5, 5, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="width must be >= 1"):
        mlp(5, 5, width=0)


def test_mlp_initialization_is_that_of_earlier_releases():
    # flax draws each parameter's key in creation order: reordering parameters changes every
    # run's numbers. These values come from grokjax 0.1 (same key, same model).
    params = init_params(MLP(7, 7, embed_dim=4, width=8), jax.random.PRNGKey(0), 1.0, PAIR)
    np.testing.assert_allclose([params["embed"][0, 0], params["hidden_0_kernel"][0, 0, 0],
                                params["readout"]["kernel"][0, 0]],
                               [0.07614249736070633, 0.21275277435779572, -0.397393137216568], rtol=1e-6)


# --- initialization conventions (model.init) and the operator token --------------------------
# Each convention's claim per parameter, written from the code it follows (torch.nn's
# reset_parameters; Nanda et al.'s transformers.py), not from grokjax.inits: ("normal", std),
# ("uniform", bound), ("truncated", std) (flax's LeCun normal: truncated at 2 / 0.8796 std,
# rescaled to the std), ("const", value).
D, D_MLP, H, N_SYMBOLS, EMBED, WIDTH = 64, 256, 4, 97, 32, 128
VOCAB = N_SYMBOLS + 2  # "=" and op


def _transformer_claims(init):
    rd, rm = 1 / np.sqrt(D), 1 / np.sqrt(D_MLP)
    if init == "torch":
        qkv = ("uniform", np.sqrt(6 / (D + 3 * D)))  # xavier_uniform_ over the packed [3d, d] in_proj
        claims = dict(embed=("normal", 1.0), pos_embed=("normal", 1.0), wq=qkv, wk=qkv, wv=qkv, wo=("uniform", rd),
                      mlp_in_kernel=("uniform", rd), mlp_in_bias=("uniform", rd), mlp_out_kernel=("uniform", rm),
                      mlp_out_bias=("uniform", rm), unembed=("uniform", rd))
    else:
        n = ("normal", rd)
        claims = dict(embed=n, pos_embed=n, wq=n, wk=n, wv=n, wo=n, mlp_in_bias=("const", 0.0),
                      mlp_out_bias=("const", 0.0), unembed=n)
        if init == "grokjax":  # flax Dense's defaults in the MLP
            claims.update(mlp_in_kernel=("truncated", rd), mlp_out_kernel=("truncated", rm))
        else:  # Nanda: W_out / sqrt(d_model) too, W_U / sqrt(d_vocab)
            claims.update(mlp_in_kernel=n, mlp_out_kernel=n, unembed=("normal", 1 / np.sqrt(VOCAB)))
    layer_norms = {f"ln_{where}_{w}": ("const", float(w == "scale")) for where in ("attn", "mlp", "final")
                   for w in ("scale", "bias")}
    return claims | layer_norms


def _flat_by_role(params):
    """``layer_1_mlp_in/kernel`` -> ``mlp_in_kernel``: every layer's parameters pooled by role."""
    out = {}
    for path, w in jax.tree_util.tree_flatten_with_path(params)[0]:
        role = re.sub(r"^layer_\d+_", "", "_".join(p.key for p in path))
        out.setdefault(role, []).append(np.asarray(w).ravel())
    return {role: np.concatenate(ws) for role, ws in out.items()}


def _assert_distribution(role, w, claim):
    kind, value = claim
    n = w.size
    if kind == "const":
        np.testing.assert_array_equal(w, value, err_msg=role)
        return
    std = value / np.sqrt(3) if kind == "uniform" else value
    # 6 standard errors: a fixed key makes the draw deterministic, the margin keeps it robust to keys
    assert abs(w.mean()) < 6 * std / np.sqrt(n), (role, w.mean())
    kurtosis = {"normal": 3.0, "uniform": 1.8, "truncated": 2.36}[kind]  # the sample variance's spread
    assert abs(w.var() / std**2 - 1) < 6 * np.sqrt((kurtosis - 1) / n), (role, w.std(), std)
    if kind == "uniform":
        assert np.abs(w).max() <= value and np.abs(w).max() > value * (1 - 20 / n), (role, np.abs(w).max())
    if kind == "truncated":
        assert np.abs(w).max() <= 2 * value / 0.87962566103423978 + 1e-6, role


@pytest.mark.parametrize("init", ["grokjax", "torch", "nanda"])
def test_each_transformer_init_draws_the_distribution_it_claims(init):
    model = transformer(N_SYMBOLS, N_SYMBOLS, n_layers=2, d_model=D, n_heads=H, d_mlp=D_MLP, layer_norm=True,
                        init=init, operator_token=True)
    params = _flat_by_role(init_params(model, jax.random.PRNGKey(0), 1.0, PAIR))
    claims = _transformer_claims(init)
    assert set(params) == set(claims)
    for role, claim in claims.items():
        _assert_distribution(role, params[role], claim)


@pytest.mark.parametrize("init", ["grokjax", "torch"])
def test_each_mlp_init_draws_the_distribution_it_claims(init):
    model = mlp(N_SYMBOLS, N_SYMBOLS, embed_dim=EMBED, width=WIDTH, depth=2, init=init)
    params = {"/".join(p.key for p in path): np.asarray(w).ravel()
              for path, w in jax.tree_util.tree_flatten_with_path(init_params(model, jax.random.PRNGKey(0), 1.0,
                                                                              PAIR))[0]}
    first, rest = 1 / np.sqrt(2 * EMBED), 1 / np.sqrt(WIDTH)  # fan-in: two concatenated embeddings, then width
    if init == "torch":
        claims = {"hidden_0_kernel": ("uniform", first), "hidden_0_bias": ("uniform", first)}
        claims |= {f"{layer}/{w}": ("uniform", rest) for layer in ("hidden_1", "readout") for w in ("kernel", "bias")}
    else:
        claims = {"hidden_0_kernel": ("normal", first), "hidden_0_bias": ("const", 0.0)}
        claims |= {f"{layer}/kernel": ("truncated", rest) for layer in ("hidden_1", "readout")}
        claims |= {f"{layer}/bias": ("const", 0.0) for layer in ("hidden_1", "readout")}
    claims["embed"] = ("normal", 1.0)
    assert set(params) == set(claims)
    for role, claim in claims.items():
        _assert_distribution(role, params[role], claim)


@pytest.mark.parametrize("init", ["torch", "nanda"])
def test_init_scale_multiplies_each_convention(init):
    model = transformer(7, 7, d_model=8, n_heads=2, d_mlp=16, init=init)
    a, b = (init_params(model, jax.random.PRNGKey(0), scale, PAIR) for scale in (1.0, 4.0))
    for wa, wb in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(wb, 4.0 * wa, rtol=1e-6)


def test_operator_token_is_one_more_vocabulary_entry_and_position():
    model = transformer(97, 97, d_model=16, n_heads=2, d_mlp=32, operator_token=True)
    params = init_params(model, jax.random.PRNGKey(0), 1.0, PAIR)
    assert params["embed"].shape == (99, 16) and params["pos_embed"].shape == (4, 16)  # [x, op, y, =]
    tokens = jax.random.randint(jax.random.PRNGKey(1), (5, 2), 0, 97)
    moved = dict(params, embed=params["embed"].at[98].add(1.0))  # only op's row: it is read
    assert not np.allclose(apply(model, params, tokens), apply(model, moved, tokens))


def test_a_bad_init_names_model_init_and_the_allowed_values():
    from grokjax import SweepError, sweep_from_dict

    with pytest.raises(SweepError, match="model.init = 'xavier' is not one of grokjax, torch, nanda"):
        sweep_from_dict({"task": {"name": "add", "p": 7}, "model": {"name": "transformer", "init": "xavier"}})
    with pytest.raises(SweepError, match="model.init = 'nanda' is not one of grokjax, torch$"):
        sweep_from_dict({"task": {"name": "add", "p": 7}, "model": {"name": "mlp", "init": "nanda"}})
    config = sweep_from_dict({"task": {"name": "add", "p": 7}, "model": {"name": "transformer"},
                              "grid": {"init": ["grokjax", "torch"], "operator_token": [False, True]}})
    assert len({run.static_key() for run in config.runs()}) == 4  # one program per convention and input form


@pytest.mark.slow
def test_torch_init_matches_pytorchs_own_modules():
    """The ``torch`` convention against the modules themselves (``pip install 'grokjax[bench]'``):
    each parameter's standard deviation and bound as PyTorch draws it."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    attn, mlp_in, mlp_out = torch.nn.MultiheadAttention(D, H), torch.nn.Linear(D, D_MLP), torch.nn.Linear(D_MLP, D)
    theirs = dict(embed=torch.nn.Embedding(VOCAB, D).weight, wq=attn.in_proj_weight, wo=attn.out_proj.weight,
                  mlp_in_kernel=mlp_in.weight, mlp_in_bias=mlp_in.bias, mlp_out_kernel=mlp_out.weight,
                  unembed=torch.nn.Linear(D, N_SYMBOLS, bias=False).weight)
    model = transformer(N_SYMBOLS, N_SYMBOLS, n_layers=2, d_model=D, n_heads=H, d_mlp=D_MLP, layer_norm=True,
                        init="torch", operator_token=True)
    ours = _flat_by_role(init_params(model, jax.random.PRNGKey(0), 1.0, PAIR))
    for role, w in theirs.items():
        w = w.detach().numpy().ravel()
        np.testing.assert_allclose(ours[role].std(), w.std(), rtol=12 / np.sqrt(min(w.size, ours[role].size)),
                                   err_msg=role)
        if role != "embed":
            np.testing.assert_allclose(np.abs(ours[role]).max(), np.abs(w).max(), rtol=0.05, err_msg=role)
