"""Critic regularizers (issue: remedies): each changes the CQL loss by the hand-computed amount; srank."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import chain_arrays, tiny_train_config

from offrl.agents import cql
from offrl.data import make_dataset, save_dataset
from offrl.training import run_dir as rd
from offrl.training.train import train

BASE = cql.CQLConfig(critic_hidden_dims=(8, 8), actor_hidden_dims=(8,), num_action_samples=2)


def _batch(b=6, seed=0):
    r = np.random.default_rng(seed)
    return {"observations": jnp.asarray(r.normal(size=(b, 3)), jnp.float32),
            "actions": jnp.asarray(r.uniform(-1, 1, (b, 2)), jnp.float32),
            "rewards": jnp.asarray(r.integers(0, 2, b), jnp.float32), "terminals": jnp.zeros(b),
            "next_observations": jnp.asarray(r.normal(size=(b, 3)), jnp.float32),
            "mc_returns": jnp.asarray(r.uniform(0, 1, b), jnp.float32)}


def _loss(config, state=None, train=True):
    state = state or cql.init(config, 3, 2, jax.random.PRNGKey(0))
    return cql.critic_terms(state.critic_params, state.target_critic_params, state.actor_params,
                            state.log_temperature, _batch(), jax.random.PRNGKey(4), config, train=train)


def _kernels(params):
    return [w for p, w in jax.tree_util.tree_leaves_with_path(params) if p[-1].key == "kernel"]


@pytest.mark.parametrize("name, coef", [("l2_coef", 0.3), ("l1_coef", 0.05)])
def test_weight_penalties_add_exactly_their_term(name, coef):
    state = cql.init(BASE, 3, 2, jax.random.PRNGKey(0))
    plain, _ = _loss(BASE, state)
    pen, parts = _loss(dataclasses.replace(BASE, **{name: coef}), state)
    ks = _kernels(state.critic_params)
    want = sum(float(jnp.sum(w**2)) for w in ks) if name == "l2_coef" else sum(float(jnp.sum(jnp.abs(w))) for w in ks)
    assert float(pen - plain) == pytest.approx(coef * want, rel=1e-5)
    assert float(parts[name.replace("_coef", "_weights")][0]) == pytest.approx(want, rel=1e-5)


def test_dr3_adds_the_feature_dot_product_of_consecutive_states():
    state = cql.init(BASE, 3, 2, jax.random.PRNGKey(0))
    config = dataclasses.replace(BASE, dr3_coef=0.1)
    plain, _ = _loss(BASE, state)
    reg, parts = _loss(config, state)
    # by hand: the next action is the one critic_terms samples for the target
    critic, actor = cql._networks(config, 2)
    batch = _batch()
    k_next = jax.random.split(jax.random.PRNGKey(4), 4)[0]
    from offrl.networks import sample_tanh_gaussian

    m, ls = actor.apply(state.actor_params, batch["next_observations"])
    a_next, _ = sample_tanh_gaussian(k_next, m, ls)
    _, aux = critic.apply(state.critic_params, batch["observations"], batch["actions"], return_aux=True)
    _, aux_n = critic.apply(state.critic_params, batch["next_observations"], a_next, return_aux=True)
    dot = jnp.sum(aux["features"] * aux_n["features"], axis=-1)  # (C, B)
    assert float(reg - plain) == pytest.approx(0.1 * float(jnp.sum(dot.mean(axis=-1))), rel=1e-4)
    np.testing.assert_allclose(parts["dr3_dot"], dot.mean(axis=0), rtol=1e-5)


def test_vib_adds_beta_times_kl_and_with_beta_zero_deterministic_is_a_plain_critic():
    vib = dataclasses.replace(BASE, vib_dim=4, vib_beta=0.0)
    state = cql.init(vib, 3, 2, jax.random.PRNGKey(0))
    loss0, parts0 = _loss(vib, state)
    loss1, parts1 = _loss(dataclasses.replace(vib, vib_beta=0.2), state)
    assert float(loss1 - loss0) == pytest.approx(0.2 * 2 * float(parts0["vib_kl"].mean()), rel=1e-5)
    assert np.all(np.asarray(parts0["vib_kl"]) >= 0)
    # beta = 0 and a deterministic bottleneck (z = mu): nothing but the TD and CQL terms remain
    loss_d, parts_d = _loss(vib, state, train=False)
    plain = 2 * (float(parts_d["td_error"].mean()) + vib.alpha * float(parts_d["cql_regularizer"].mean()))
    assert float(loss_d) == pytest.approx(plain, rel=1e-5)


def test_dropout_is_active_in_training_only():
    drop = dataclasses.replace(BASE, critic_dropout=0.5)
    state = cql.init(BASE, 3, 2, jax.random.PRNGKey(0))  # dropout adds no parameters
    _, det = _loss(drop, state, train=False)
    _, ref = _loss(BASE, state, train=False)
    np.testing.assert_allclose(det["q_data"], ref["q_data"], rtol=1e-6)
    _, noisy = _loss(drop, state, train=True)
    assert not np.allclose(noisy["q_data"], ref["q_data"])


def test_srank_of_known_matrices():
    r = np.random.default_rng(0)
    low_rank = r.normal(size=(200, 3)) @ r.normal(size=(3, 32))
    assert int(cql.srank(jnp.asarray(low_rank))) <= 3
    assert int(cql.srank(jnp.eye(16))) == 16


def test_training_with_every_regularizer_logs_their_metrics(tmp_path):
    data = save_dataset(tmp_path / "d.h5", make_dataset(chain_arrays(episodes=10)))
    agent = cql.CQLConfig(critic_hidden_dims=(16, 16), actor_hidden_dims=(16,), num_action_samples=2,
                          bc_steps=20, critic_dropout=0.1, critic_layer_norm=True, vib_dim=4, dr3_coef=1e-3,
                          l2_coef=1e-4)
    out = train(tiny_train_config(data, tmp_path / "run", steps=80, agent=agent))
    rec = rd.read_metrics(out)[-1]
    for k in ("vib_kl", "dr3_dot", "l2_weights", "srank", "heldout/vib_kl", "train/dr3_dot"):
        assert np.isfinite(rec[k]), k
    assert 1 <= rec["srank"] <= 16


def test_runs_written_before_the_vib_weight_was_renamed_still_load():
    from offrl.agents import config_from_dict

    # config.json of older runs called CQL's VIB weight "beta"; it is "vib_beta" now (BRAC keeps its beta).
    assert config_from_dict("cql", {"beta": 0.5, "vib_dim": 16}).vib_beta == 0.5
    # Fields a config.json predates take the value its run trained with (issue 43 changed BEAR's and DQN's).
    assert config_from_dict("bear", {"kernel": "laplacian"}).behaviour_tau == 1.0
    assert config_from_dict("bear", {"behaviour_tau": 0.005}).behaviour_tau == 0.005
    old = config_from_dict("dqn", {"variant": "dqn", "encoder": "auto"})
    assert (old.variant, old.encoder) == ("double_dqn", "mlp")
    assert config_from_dict("dqn", {"variant": "rem"}).variant == "rem"
    new = config_from_dict("dqn", {"variant": "dqn", "encoder": "auto", "grid_shape": [10, 10, 4]})
    assert (new.variant, new.encoder, new.grid_shape) == ("dqn", "auto", (10, 10, 4))
    assert config_from_dict("brac", {"beta": 2.0}).beta == 2.0
