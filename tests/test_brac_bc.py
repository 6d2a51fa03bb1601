"""BC and BRAC: losses against hand-computed values, pi_beta's log-likelihood, and an end-to-end run."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import chain_arrays

from offrl.agents import bc, brac
from offrl.cli import main
from offrl.data import make_dataset, save_dataset
from offrl.networks import sample_tanh_gaussian, tanh_gaussian_log_prob
from offrl.training import run_dir as rd
from offrl.training.train import make_train_chunk


def test_tanh_gaussian_log_likelihood_of_a_known_gaussian():
    mu, sigma, a = 0.2, 0.5, 0.3
    u = math.atanh(a)
    want = -0.5 * ((u - mu) / sigma) ** 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi) - math.log(1 - a * a)
    got = float(tanh_gaussian_log_prob(jnp.array([a]), jnp.array([mu]), jnp.array([math.log(sigma)])))
    assert got == pytest.approx(want, rel=1e-5)
    # and it is a density on (-1, 1): it integrates to 1
    grid = np.linspace(-1 + 1e-6, 1 - 1e-6, 200_001)
    dens = np.exp(np.asarray(tanh_gaussian_log_prob(jnp.asarray(grid)[:, None], jnp.array([mu]),
                                                    jnp.array([math.log(sigma)]))))
    assert np.trapezoid(dens, grid) == pytest.approx(1.0, abs=1e-3)


def _zero_state(config, obs_dim=3, act_dim=2):
    """All networks output 0: Q = 0, and pi = pi_beta = tanh(N(0, 1))."""
    state = brac.init(config, obs_dim, act_dim, jax.random.PRNGKey(0))
    z = lambda t: jax.tree.map(jnp.zeros_like, t)  # noqa: E731
    return state.replace(critic_params=z(state.critic_params), target_critic_params=z(state.critic_params),
                         actor_params=z(state.actor_params), behavior_params=z(state.behavior_params))


def _batch():
    return {"observations": jnp.ones((4, 3)), "actions": jnp.zeros((4, 2)),
            "rewards": jnp.array([0.0, 1.0, 0.5, 2.0]), "terminals": jnp.array([0.0, 1.0, 0.0, 0.0]),
            "next_observations": jnp.ones((4, 3))}


@pytest.mark.parametrize("beta, penalty", [(1.0, "value"), (2.5, "value"), (2.5, "policy")])
def test_brac_target_and_losses_match_hand_computation(beta, penalty):
    config = brac.BRACConfig(beta=beta, penalty=penalty, critic_hidden_dims=(4,), actor_hidden_dims=(4,),
                             behavior_hidden_dims=(4,))
    state = _zero_state(config)
    batch, key = _batch(), jax.random.PRNGKey(7)
    _, parts = brac.critic_terms(state.critic_params, state, batch, key, config)
    # the target's next action, drawn exactly as critic_terms draws it; temperature = 1, Q = 0, pi_beta = pi
    k_next, _ = jax.random.split(key)
    _, log_pi_next = sample_tanh_gaussian(k_next, jnp.zeros((4, 2)), jnp.zeros((4, 2)))
    penalty_term = beta * np.asarray(log_pi_next) if penalty == "value" else 0.0
    next_v = 0.0 - 1.0 * np.asarray(log_pi_next) + penalty_term
    want_target = np.array([0.0, 1.0, 0.5, 2.0]) + 0.99 * np.array([1, 0, 1, 1]) * next_v
    np.testing.assert_allclose(parts["target_q"], want_target, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(parts["td_error"], want_target**2, rtol=1e-5, atol=1e-6)
    # pi = pi_beta, so the KL estimate log pi - log pi_beta is 0 on every sample
    np.testing.assert_allclose(parts["kl_estimate"], 0.0, atol=1e-5)
    # actor loss = E[temperature log pi - beta log pi_beta - Q] = (1 - beta) E[log pi] at the same sample
    loss, aux = brac.actor_loss(state.actor_params, state, batch, key, config)
    _, log_pi = sample_tanh_gaussian(key, jnp.zeros((4, 2)), jnp.zeros((4, 2)))
    assert float(loss) == pytest.approx((1 - beta) * float(log_pi.mean()), rel=1e-5, abs=1e-6)


def test_bc_maximises_the_likelihood_of_dataset_actions():
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(512, 3)).astype(np.float32)
    act = np.tanh(obs[:, :2] * 0.8).astype(np.float32)  # a deterministic function of the state
    data = {"observations": jnp.asarray(obs), "actions": jnp.asarray(act), "rewards": jnp.zeros(512),
            "terminals": jnp.zeros(512), "next_observations": jnp.asarray(obs)}
    config = bc.BCConfig(actor_hidden_dims=(32, 32), actor_lr=1e-3)
    state = bc.init(config, 3, 2, jax.random.PRNGKey(0))
    before = bc.evaluate(state, data, jax.random.PRNGKey(0), config)
    state, _ = make_train_chunk("bc", config, 64, 1500)(state, data, jax.random.PRNGKey(1))
    after = bc.evaluate(state, data, jax.random.PRNGKey(0), config)
    assert float(after["log_likelihood"].mean()) > float(before["log_likelihood"].mean()) + 2.0
    assert float(after["action_mse"].mean()) < 0.02


TINY = ["--checkpoint-every", "40", "--chunk-steps", "20", "--batch-size", "32", "--no-progress"]


def test_bc_then_brac_end_to_end_through_diagnose_and_report(tmp_path, capsys):
    data = save_dataset(tmp_path / "d.h5", make_dataset(chain_arrays(episodes=10), {"task": "toy"}))
    bc_run, brac_run = tmp_path / "bc", tmp_path / "brac"
    assert main(["train", "--algo", "bc", "--dataset", str(data), "--out", str(bc_run), "--steps", "160",
                 "--bc.actor-hidden-dims", "16", "16", *TINY]) == 0
    assert main(["diagnose", str(bc_run)]) == 0
    capsys.readouterr()
    bc_diag = json.loads((bc_run / "diagnosis.json").read_text())
    assert bc_diag["evidence"]["metric"] == "heldout/log_likelihood"
    assert "heldout/log_likelihood" in rd.read_metrics(bc_run)[-1]
    # BRAC without a behaviour run, or with a CQL run as one, is refused with the fix
    assert main(["train", "--algo", "brac", "--dataset", str(data), "--out", str(tmp_path / "x"), *TINY]) == 1
    assert "--behavior-run" in capsys.readouterr().err
    assert main(["train", "--algo", "brac", "--dataset", str(data), "--out", str(brac_run), "--steps", "160",
                 "--behavior-run", str(bc_run), "--brac.critic-hidden-dims", "16", "16",
                 "--brac.actor-hidden-dims", "16", "16", *TINY]) == 0
    cfg = json.loads((brac_run / "config.json").read_text())
    assert cfg["algo"] == "brac" and cfg["behavior"]["actor_hidden_dims"] == [16, 16]
    best_bc = max(rd.read_metrics(bc_run), key=lambda r: r["heldout/log_likelihood"])["step"]
    assert cfg["behavior"]["step"] == best_bc
    rec = rd.read_metrics(brac_run)[-1]
    for k in ("q_data", "q_regularized", "kl_estimate", "td_error", "heldout/q_regularized"):
        assert np.isfinite(rec[k]), k
    assert main(["diagnose", str(brac_run)]) == 0
    d = json.loads((brac_run / "diagnosis.json").read_text())
    assert d["evidence"]["metric"] == "q_regularized" and d["selected_step"] in (40, 80, 120, 160)
    assert main(["report", str(brac_run)]) == 0
    assert "q_regularized" in (brac_run / "report.html").read_text()
    # the frozen pi_beta in BRAC's checkpoint is the BC checkpoint's actor
    from offrl.training.policy import load_state

    s_brac, _ = load_state(brac_run, 160)
    s_bc, _ = load_state(bc_run, best_bc)
    for x, y in zip(jax.tree.leaves(s_brac.behavior_params), jax.tree.leaves(s_bc.actor_params), strict=True):
        np.testing.assert_array_equal(x, y)
