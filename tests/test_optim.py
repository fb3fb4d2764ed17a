import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from grokjax.optim import adamw, lr_schedule, make_optimizer, sgd


def test_schedules_warm_up_then_decay():
    steps = np.arange(0, 120)
    const = np.asarray(lr_schedule(1.0, 10, 0, "constant", 110)(steps))
    np.testing.assert_allclose(const[:10], (np.arange(10) + 1) / 10)
    assert (const[9:] == 1.0).all()
    cos = np.asarray(lr_schedule(2.0, 10, 0, "cosine", 110)(steps))  # decays over the other 100 steps
    np.testing.assert_allclose(cos[[10, 60, 110]], [2.0, 1.0, 0.0], atol=1e-6)
    lin = np.asarray(lr_schedule(1.0, 0, 40, "linear", 110)(steps))  # decay_steps given: 0 after 40 steps
    np.testing.assert_allclose(lin[[0, 20, 40, 100]], [1.0, 0.5, 0.0, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="constant, cosine, linear"):
        lr_schedule(1.0, 0, 0, "exponential", 10)


def test_schedule_settings_are_per_run_arrays():
    lrs = jax.vmap(lambda w, d: lr_schedule(1.0, w, d, "linear", 100)(20))(jnp.array([0, 40]), jnp.array([40, 0]))
    np.testing.assert_allclose(lrs, [0.5, 21 / 40], rtol=1e-6)


def test_presets_are_optax_compositions():
    params = {"w": jnp.array([1.0, -2.0])}
    grads = {"w": jnp.array([0.3, 0.1])}
    ours = adamw(1e-2, beta1=0.8, beta2=0.9, eps=1e-6, weight_decay=0.5)
    ref = optax.adamw(1e-2, b1=0.8, b2=0.9, eps=1e-6, weight_decay=0.5)
    for tx in (ours, ref):
        u, _ = tx.update(grads, tx.init(params), params)
        np.testing.assert_allclose(u["w"], ref.update(grads, ref.init(params), params)[0]["w"])
    # SGD: the decay joins the gradient before momentum (torch.optim.SGD)
    tx = sgd(0.1, momentum=0.5, weight_decay=0.2)
    u, state = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(u["w"], -0.1 * (grads["w"] + 0.2 * params["w"]), rtol=1e-6)
    with pytest.raises(ValueError, match="beta1 must be >= 0 and < 1"):
        adamw(1e-3, beta1=1.0)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        sgd(1e-3, weight_decay=-1.0)


def test_any_optax_factory_with_traced_hyperparameters_vmaps():
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.array([0.5, -0.5, 1.0])}

    def update(b1, lr):
        tx = make_optimizer(optax.lion, {}, {"b1": b1}, lambda count: lr)
        return tx.update(grads, tx.init(params), params)[0]["w"]

    got = jax.vmap(update)(jnp.array([0.0, 0.9]), jnp.array([1e-2, 1e-3]))
    for i, (b1, lr) in enumerate([(0.0, 1e-2), (0.9, 1e-3)]):
        tx = optax.lion(lr, b1=b1)
        np.testing.assert_allclose(got[i], tx.update(grads, tx.init(params), params)[0]["w"], rtol=1e-6)
