"""The probabilistic dynamics ensemble of MOPO/COMBO (offrl/networks/dynamics.py): the soft clamp, the NLL, MOPO's
penalty and the elites against hand computation; rollout steps use elites only; the ensemble learns a known linear
system, its mean and its noise."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from offrl.networks import dynamics as dyn


def _softplus(x):
    return math.log1p(math.exp(x))


def test_soft_clamp_nll_penalty_and_elites_by_hand():
    inner = 0.5 - _softplus(0.5 - 0.0)
    expected = -10.0 + _softplus(inner + 10.0)
    assert float(dyn.soft_clamp_log_var(jnp.array(0.0), jnp.array(-10.0), jnp.array(0.5))) == pytest.approx(expected, rel=1e-5)
    assert float(dyn.soft_clamp_log_var(jnp.array(100.0), jnp.array(-10.0), jnp.array(0.5))) == pytest.approx(0.5, abs=1e-3)
    assert float(dyn.soft_clamp_log_var(jnp.array(-100.0), jnp.array(-10.0), jnp.array(0.5))) == pytest.approx(-10.0, abs=1e-3)
    # (2 - 0)^2 / 1 + log 1 = 4; with sigma^2 = e: 4 / e + 1.
    nll = dyn.gaussian_nll(jnp.zeros((1, 2, 1)), jnp.array([[[0.0], [1.0]]]), jnp.full((1, 2, 1), 2.0))
    np.testing.assert_allclose(nll, [[4.0, 4.0 / math.e + 1.0]], rtol=1e-6)
    # Member 0: variances (1, 4), standard deviations (1, 2) -> ||sigma||_2 = sqrt(1 + 4); member 1: (2, 2) ->
    # sqrt(4) = 2. MOPO's code takes the larger norm of the standard deviations (tianheyu927/mopo, fake_env.py).
    log_var = jnp.log(jnp.array([[[1.0, 4.0]], [[2.0, 2.0]]]))
    assert float(dyn.mopo_penalty(log_var)[0]) == pytest.approx(math.sqrt(5.0), rel=1e-6)
    assert float(dyn.penalised_reward(jnp.array([1.0]), log_var, 0.5)[0]) == pytest.approx(1 - 0.5 * math.sqrt(5))
    assert dyn.elites(jnp.array([0.3, 0.1, 0.5, 0.2]), 2).tolist() == [1, 3]


def test_a_rollout_step_samples_from_the_elites_only():
    b = 2000
    obs = jnp.zeros((b, 1))
    mean = jnp.stack([jnp.full((b, 2), float(i + 1)) for i in range(3)])  # member i predicts +i+1 (and r = i+1)
    log_var = jnp.full((3, b, 2), -30.0)  # no noise
    nxt, r = dyn.sample_step(jax.random.PRNGKey(0), mean, log_var, jnp.array([0, 2]), obs)
    assert set(np.unique(np.round(np.asarray(nxt[:, 0]), 4))) == {1.0, 3.0}
    np.testing.assert_allclose(nxt[:, 0], r, atol=1e-4)
    assert 0.4 < float((nxt[:, 0] > 2).mean()) < 0.6


def test_the_ensemble_learns_a_known_linear_system_and_its_noise():
    rng = np.random.default_rng(0)
    n, obs_dim, act_dim, noise = 6000, 3, 2, 0.05
    A = np.array([[0.9, 0.1, 0.0], [0.0, 0.8, 0.2], [0.1, 0.0, 0.95]])
    B = np.array([[0.5, 0.0], [0.0, 0.3], [0.2, 0.2]])
    c = np.array([1.0, -0.5, 0.25])
    s = rng.normal(size=(n, obs_dim))
    a = rng.uniform(-1, 1, size=(n, act_dim))
    s_next = s @ A.T + a @ B.T + noise * rng.normal(size=(n, obs_dim))
    r = s @ c + noise * rng.normal(size=n)
    targets = np.concatenate([s_next - s, r[:, None]], axis=1).astype(np.float32)
    s, a, targets = jnp.asarray(s, jnp.float32), jnp.asarray(a, jnp.float32), jnp.asarray(targets)
    train, held = slice(0, 5000), slice(5000, None)
    model = dyn.GaussianEnsemble(num_members=3, out_dim=obs_dim + 1, hidden_dims=(64, 64))
    params = model.init(jax.random.PRNGKey(0), s[:1], a[:1])
    opt = optax.adam(1e-3)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, idx):
        (_, parts), grads = jax.value_and_grad(dyn.ensemble_loss, has_aux=True)(
            params, model, s[train][idx], a[train][idx], targets[train][idx])
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, parts

    for k in range(3000):
        idx = jax.random.randint(jax.random.PRNGKey(k), (256,), 0, 5000)
        params, opt_state, parts = step(params, opt_state, idx)
    _, held_parts = dyn.ensemble_loss(params, model, s[held], a[held], targets[held])
    best = dyn.elites(held_parts["mse"], 2)
    # Every member fits the mean to near the noise floor (noise variance 0.0025; targets' variance ~ 0.3) ...
    assert float(held_parts["mse"].max()) < 4 * noise**2
    # ... and the learned standard deviation is the true noise, within 30%.
    _, log_var = model.apply(params, s[held], a[held])
    sigma = float(jnp.exp(0.5 * log_var[best]).mean())
    assert sigma == pytest.approx(noise, rel=0.3)
