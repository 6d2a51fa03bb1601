"""CQL: the penalty and the TD target against hand-computed values, and the conservative behaviour."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from offrl.agents import cql
from offrl.networks import sample_tanh_gaussian, tanh_gaussian_log_prob


def _lse(*xs: float) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


@pytest.mark.parametrize("jit", [False, True])
def test_cql_penalty_matches_hand_computation(jit):
    # One critic, one sample per proposal, two states, |A| = 2 (uniform log-density 2 log 0.5).
    q_data = jnp.array([[1.0, 2.0]])
    q_random = jnp.array([[[0.5, -1.0]]])
    q_policy = jnp.array([[[1.5, 0.0]]])
    q_next = jnp.array([[[0.2, 3.0]]])
    log_pi = jnp.array([[-1.0, -2.0]])
    log_pi_next = jnp.array([[0.5, -0.5]])
    f = jax.jit(cql.cql_penalty, static_argnums=6) if jit else cql.cql_penalty
    got = np.asarray(f(q_data, q_random, q_policy, q_next, log_pi, log_pi_next, 2))
    log_u = 2 * math.log(0.5)
    want_0 = _lse(0.5 - log_u, 1.5 + 1.0, 0.2 - 0.5) - 1.0
    want_1 = _lse(-1.0 - log_u, 0.0 + 2.0, 3.0 + 0.5) - 2.0
    np.testing.assert_allclose(got, [[want_0, want_1]], rtol=1e-6)


def test_td_target_hand_computed_and_timeouts_bootstrap():
    r = jnp.array([0.0, 1.0, 0.0])
    terminal = jnp.array([0.0, 1.0, 0.0])  # the third is a timeout: it must still bootstrap
    next_q = jnp.array([0.5, 0.7, 2.0])
    got = np.asarray(cql.td_target(r, terminal, next_q, 0.9))
    np.testing.assert_allclose(got, [0.45, 1.0, 1.8], rtol=1e-6)


def test_tanh_gaussian_log_prob_agrees_with_sampler():
    key = jax.random.PRNGKey(0)
    mean = jnp.array([[0.3, -0.2]])
    log_std = jnp.array([[-1.0, -0.5]])
    a, logp = sample_tanh_gaussian(key, mean, log_std, num_samples=5)
    np.testing.assert_allclose(tanh_gaussian_log_prob(a, mean, log_std), logp, rtol=1e-4, atol=1e-4)


def test_critic_terms_td_error_is_squared_bellman_error():
    # Zero-initialised critic -> Q = 0 and target network = 0: td_error = r^2 exactly.
    config = cql.CQLConfig(critic_hidden_dims=(4,), actor_hidden_dims=(4,), num_action_samples=2)
    state = cql.init(config, 3, 2, jax.random.PRNGKey(0))
    zeros = jax.tree.map(jnp.zeros_like, state.critic_params)
    batch = {
        "observations": jnp.ones((4, 3)),
        "actions": jnp.zeros((4, 2)),
        "rewards": jnp.array([0.0, 1.0, 0.5, 2.0]),
        "terminals": jnp.array([0.0, 1.0, 0.0, 1.0]),
        "next_observations": jnp.ones((4, 3)),
        "mc_returns": jnp.zeros(4),  # Cal-QL's floor at 0 = Q: the plain CQL(H) regularizer
    }
    loss, parts = cql.critic_terms(zeros, zeros, state.actor_params, state.log_temperature, batch,
                                   jax.random.PRNGKey(1), config)
    np.testing.assert_allclose(parts["td_error"], [0.0, 1.0, 0.25, 4.0], rtol=1e-6)
    np.testing.assert_allclose(parts["q_data"], 0.0)
    # With Q = 0 everywhere the regularizer is logsumexp of minus the log-densities of the 3n samples.
    assert np.all(np.asarray(parts["cql_regularizer"]) > 0)
    # loss = sum over 2 critics of (mean td + alpha * mean regularizer)
    want = 2 * (np.mean([0, 1, 0.25, 4.0]) + config.alpha * float(np.mean(parts["cql_regularizer"])))
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def _bandit_data(n: int = 512, seed: int = 0):
    """A one-step bandit: dataset actions near a* = (0.5, -0.5), reward 1 - |a - a*|^2, every step terminal."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, 2)).astype(np.float32)
    act = np.clip(np.array([0.5, -0.5]) + 0.1 * rng.normal(size=(n, 2)), -1, 1).astype(np.float32)
    rew = (1.0 - np.sum((act - np.array([0.5, -0.5])) ** 2, axis=1)).astype(np.float32)
    return {
        "observations": jnp.asarray(obs),
        "actions": jnp.asarray(act),
        "rewards": jnp.asarray(rew),
        "terminals": jnp.ones(n, jnp.float32),
        "next_observations": jnp.asarray(obs),
        "mc_returns": jnp.asarray(rew),  # one-step episodes: the return is the reward
    }


def test_calibrated_regularizer_by_hand():
    # Zero critics (Q = 0 everywhere): Cal-QL raises the policy samples' Q to the Monte-Carlo return m of the
    # state, the uniform samples stay at 0, so R = logsumexp([0 - log U] * n, [m - log pi] * n, [m - log pi'] * n).
    from offrl.networks import TanhGaussianActor

    n, act_dim = 2, 2
    config = cql.CQLConfig(critic_hidden_dims=(4,), actor_hidden_dims=(4,), num_action_samples=n)
    state = cql.init(config, 3, act_dim, jax.random.PRNGKey(0))
    zeros = jax.tree.map(jnp.zeros_like, state.critic_params)
    obs = jax.random.normal(jax.random.PRNGKey(2), (3, 3))
    m = jnp.array([0.0, 0.7, -0.4])
    batch = {"observations": obs, "actions": jnp.zeros((3, act_dim)), "rewards": jnp.zeros(3),
             "terminals": jnp.zeros(3), "next_observations": obs[::-1], "mc_returns": m}
    key = jax.random.PRNGKey(1)
    _, parts = cql.critic_terms(zeros, zeros, state.actor_params, state.log_temperature, batch, key, config)
    _, _, k_pi, k_pi_next = jax.random.split(key, 4)
    actor = TanhGaussianActor(config.actor_hidden_dims, act_dim=act_dim)
    _, log_pi = sample_tanh_gaussian(k_pi, *actor.apply(state.actor_params, obs), n)
    _, log_pi_next = sample_tanh_gaussian(k_pi_next, *actor.apply(state.actor_params, obs[::-1]), n)
    floor = np.maximum(0.0, np.asarray(m))  # max(Q = 0, m)
    terms = np.concatenate([np.full((n, 3), -act_dim * np.log(0.5)), floor - np.asarray(log_pi),
                            floor - np.asarray(log_pi_next)])
    want = np.log(np.exp(terms).sum(axis=0))
    np.testing.assert_allclose(parts["cql_regularizer"], want, rtol=1e-5)
    plain = dataclasses.replace(config, calibrated=False)
    _, parts0 = cql.critic_terms(zeros, zeros, state.actor_params, state.log_temperature,
                                 {k: v for k, v in batch.items() if k != "mc_returns"}, key, plain)
    # Where m <= 0 = Q the floor is inactive: both regularizers agree there, and differ where m > 0.
    np.testing.assert_allclose(np.asarray(parts0["cql_regularizer"])[[0, 2]], want[[0, 2]], rtol=1e-5)
    assert float(parts["cql_regularizer"][1]) > float(parts0["cql_regularizer"][1]) + 0.1


def _train_bandit(alpha: float, steps: int = 600):
    from offrl.training.train import make_train_chunk

    config = cql.CQLConfig(alpha=alpha, critic_hidden_dims=(64, 64), actor_hidden_dims=(64, 64),
                           num_action_samples=4, bc_steps=100, critic_lr=1e-3)
    data = _bandit_data()
    state = cql.init(config, 2, 2, jax.random.PRNGKey(0))
    state, _ = make_train_chunk("cql", config, 128, steps)(state, data, jax.random.PRNGKey(1))
    critic, _ = cql._networks(config, 2)
    obs = data["observations"][:256]
    q_data = critic.apply(state.critic_params, obs, data["actions"][:256]).mean()
    # Out-of-distribution actions: the far corners of the action box, never in the data.
    ood = jnp.array([[-1.0, 1.0], [1.0, 1.0], [-1.0, -1.0]])
    q_ood = jnp.stack([critic.apply(state.critic_params, obs, jnp.broadcast_to(a, (256, 2))).mean()
                       for a in ood])
    return float(q_data), np.asarray(q_ood)


def test_cql_bandit_pushes_ood_q_below_dataset_q():
    q_data, q_ood = _train_bandit(alpha=1.0)
    assert np.isfinite(q_data)
    assert np.all(q_ood < q_data - 0.5), (q_data, q_ood)
    # The penalty is what does it: without it the gap between dataset and OOD Q is much smaller.
    q_data0, q_ood0 = _train_bandit(alpha=0.0)
    assert (q_data - q_ood.max()) > 2 * (q_data0 - q_ood0.max()), (q_data, q_ood, q_data0, q_ood0)


def test_update_is_deterministic_and_jittable():
    config = cql.CQLConfig(critic_hidden_dims=(8,), actor_hidden_dims=(8,), num_action_samples=2, bc_steps=1)
    data = _bandit_data(64)
    batch = jax.tree.map(lambda x: x[:16], data)
    state = cql.init(config, 2, 2, jax.random.PRNGKey(0))
    upd = jax.jit(cql.update, static_argnames="config")
    s1, m1 = upd(state, batch, jax.random.PRNGKey(3), config=config)
    s2, m2 = upd(state, batch, jax.random.PRNGKey(3), config=config)
    s3, m3 = cql.update(state, batch, jax.random.PRNGKey(3), config)
    assert int(s1.step) == 1
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2), strict=True):
        np.testing.assert_array_equal(a, b)
    for k in m1:
        np.testing.assert_allclose(m1[k], m3[k], rtol=1e-4, atol=1e-5)
    # the soft target update moved the target by tau towards the new critic
    p0 = jax.tree.leaves(state.target_critic_params)[0]
    c1 = jax.tree.leaves(s1.critic_params)[0]
    np.testing.assert_allclose(jax.tree.leaves(s1.target_critic_params)[0], p0 + config.tau * (c1 - p0), rtol=1e-5,
                               atol=1e-7)


@pytest.mark.parametrize("gap, direction", [(100.0, -1), (-100.0, +1)])
def test_lagrange_multiplier_moves_towards_the_target_gap(gap, direction):
    # alpha * R far below the gap -> alpha' shrinks (log alpha' < 0); far above -> it grows.
    config = cql.CQLConfig(critic_hidden_dims=(8,), actor_hidden_dims=(8,), num_action_samples=2, bc_steps=0,
                           lagrange=True, target_action_gap=gap)
    data = _bandit_data(64)
    batch = jax.tree.map(lambda x: x[:16], data)
    state = cql.init(config, 2, 2, jax.random.PRNGKey(0))
    new, metrics = cql.update(state, batch, jax.random.PRNGKey(3), config)
    assert float(metrics["alpha_prime"]) == pytest.approx(1.0)  # exp(0) at the first step
    assert np.sign(float(new.log_alpha_prime)) == direction
    # the critic loss carries alpha' * (alpha * R - gap), summed over the two critics
    loss, parts = cql.critic_terms(state.critic_params, state.target_critic_params, state.actor_params,
                                   state.log_temperature, batch, jax.random.PRNGKey(5), config, 2.0)
    want = 2 * float(parts["td_error"].mean()) + 2.0 * 2 * (config.alpha * float(parts["cql_regularizer"].mean())
                                                           - gap)
    assert float(loss) == pytest.approx(want, rel=1e-4)


def test_without_lagrange_the_multiplier_stays_one():
    config = cql.CQLConfig(critic_hidden_dims=(8,), actor_hidden_dims=(8,), num_action_samples=2)
    state = cql.init(config, 2, 2, jax.random.PRNGKey(0))
    new, metrics = cql.update(state, jax.tree.map(lambda x: x[:16], _bandit_data(64)), jax.random.PRNGKey(3),
                              config)
    assert "alpha_prime" not in metrics and float(new.log_alpha_prime) == 0.0
    assert float(cql.alpha_prime_of(new, config)) == 1.0
