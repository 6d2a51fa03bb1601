"""AWAC: its losses against hand-computed values, the settings refused before training, a bandit where the
policy keeps to the data and prefers its better action, and a run end to end (train, diagnose, export)."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import chain_arrays, two_action_bandit

from offrl.agents import awac, common
from offrl.cli import main
from offrl.data import make_dataset, save_dataset
from offrl.export import load_policy
from offrl.networks import tanh_gaussian_log_prob
from offrl.training import run_dir as rd
from offrl.training.policy import checkpoint_policy
from offrl.training.train import make_train_chunk


def _zero_state(config, obs_dim=3, act_dim=2):
    """Every network outputs 0: Q = 0 everywhere and pi = tanh(N(0, 1))."""
    state = awac.init(config, obs_dim, act_dim, jax.random.PRNGKey(0))
    z = lambda t: jax.tree.map(jnp.zeros_like, t)  # noqa: E731
    return state.replace(critic_params=z(state.critic_params), target_critic_params=z(state.critic_params),
                         actor_params=z(state.actor_params))


def test_losses_by_hand_on_zero_networks():
    config = awac.AWACConfig(critic_hidden_dims=(8,), actor_hidden_dims=(8,))
    state = _zero_state(config)
    act = jnp.array([[0.2, -0.4], [0.0, 0.9]])
    batch = {"observations": jnp.ones((2, 3)), "actions": act, "rewards": jnp.array([1.0, 0.5]),
             "terminals": jnp.array([0.0, 1.0]), "next_observations": jnp.ones((2, 3))}
    # Q = 0 everywhere: the advantage is 0, every weight exp(0 / lambda) = 1, and the actor loss is the mean
    # negative log-likelihood of the dataset actions under tanh(N(0, 1)).
    a_loss, aux = awac.actor_terms(state.actor_params, state, batch, jax.random.PRNGKey(1), config)
    np.testing.assert_allclose(aux["adv_weight"], [1.0, 1.0])
    want = -float(tanh_gaussian_log_prob(act, jnp.zeros(2), jnp.zeros(2)).mean())
    assert float(a_loss) == pytest.approx(want, rel=1e-5)
    # Target y = r + gamma (1 - terminal) * 0 = r; loss = sum over the 2 critics of mean (0 - r)^2.
    c_loss, parts = awac.critic_terms(state.critic_params, state, batch, jax.random.PRNGKey(2), config)
    np.testing.assert_allclose(parts["target_q"], [1.0, 0.5])
    assert float(c_loss) == pytest.approx(2 * (1.0 + 0.25) / 2)
    # The weights are exp(A / lambda), clipped: lambda 0.5 doubles the exponent.
    w = common.advantage_weights(jnp.array([0.5, 3.0]), 1.0 / 0.5, 100.0)
    np.testing.assert_allclose(w, [math.e, 100.0], rtol=1e-6)


@pytest.mark.parametrize("bad", [{"awac_lambda": 0.0}, {"awac_lambda": -1.0}, {"max_weight": 0.0}])
def test_settings_that_cannot_work_are_refused(bad):
    config = awac.AWACConfig(**bad)
    assert len(awac.config_problems(config)) == 1
    with pytest.raises(ValueError, match="--awac"):
        awac.init(config, 3, 2, jax.random.PRNGKey(0))


def test_bandit_policy_keeps_to_the_data_and_prefers_its_better_action():
    data = two_action_bandit()  # one state: a = -0.5 pays 0, a = +0.5 pays 1, half the data each
    # lambda 0.1: weights about exp(+-5) apart. (With the default lambda 1 and this reward gap of 1 they are only
    # about e:1 apart, and a unimodal policy's weighted fit lands between the two modes, nearer the better one.)
    config = awac.AWACConfig(critic_hidden_dims=(32, 32), actor_hidden_dims=(32, 32), critic_lr=1e-3,
                             actor_lr=1e-3, awac_lambda=0.1)
    state = awac.init(config, 2, 1, jax.random.PRNGKey(0))
    state, metrics = make_train_chunk("awac", config, 128, 3000)(state, data, jax.random.PRNGKey(1))
    assert all(np.isfinite(float(v)) for v in jax.tree.leaves(metrics))
    ev = awac.evaluate(state, data, jax.random.PRNGKey(2), config)
    assert float(ev["q_data"][1::2].mean()) == pytest.approx(1.0, abs=0.05)
    assert float(ev["q_data"][::2].mean()) == pytest.approx(0.0, abs=0.05)
    # The better dataset action gets the larger weight.
    assert float(ev["adv_weight"][1::2].mean()) > 10 * float(ev["adv_weight"][::2].mean())
    a = float(awac.deterministic_action(state.actor_params, jnp.ones((1, 2)), 1, config)[0, 0])
    assert a == pytest.approx(0.5, abs=0.1)


def test_awac_end_to_end_train_resume_diagnose_select_report_export(tmp_path, capsys):
    data = save_dataset(tmp_path / "d.h5", make_dataset(chain_arrays(episodes=10), {"task": "toy"}))
    run = tmp_path / "awac"
    tiny = ["--checkpoint-every", "40", "--chunk-steps", "20", "--batch-size", "32", "--no-progress",
            "--awac.critic-hidden-dims", "16", "16", "--awac.actor-hidden-dims", "16", "16"]
    assert main(["train", "--algo", "awac", "--dataset", str(data), "--out", str(run), "--steps", "120",
                 "--awac.awac-lambda", "0", *tiny]) == 1
    assert "--awac.awac-lambda" in capsys.readouterr().err and not run.exists()
    assert main(["train", "--algo", "awac", "--dataset", str(data), "--out", str(run), "--steps", "80",
                 *tiny]) == 0
    assert main(["train", "--resume", "--out", str(run), "--steps", "120", "--no-progress"]) == 0
    records = rd.read_metrics(run)
    assert [r["step"] for r in records] == [40, 80, 120]
    for key in ("q_data", "advantage", "adv_weight", "weighted_nll", "log_likelihood", "q_policy", "td_error",
                "td_error_over_target_var"):  # docs/metrics.md, AWAC: on training and held-out episodes
        assert all(np.isfinite(r[key]) and np.isfinite(r[f"heldout/{key}"]) for r in records), key
    assert main(["diagnose", str(run)]) == 0
    d = json.loads((run / "diagnosis.json").read_text())
    assert d["evidence"]["metric"] == "q_data" and "weighted_nll_end" in d["evidence"]
    capsys.readouterr()
    assert main(["select", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(d["selected_step"])
    assert main(["report", str(run)]) == 0
    assert "weighted_nll" in (run / "report.html").read_text()
    assert main(["export", str(run), "--out", str(tmp_path / "policy")]) == 0
    obs = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(load_policy(tmp_path / "policy")(obs),
                                  checkpoint_policy(run, d["selected_step"])(obs))


@pytest.mark.sim
@pytest.mark.parametrize("algo, extra", [
    ("awac", ["--awac.critic-hidden-dims", "16", "--awac.actor-hidden-dims", "16"]),
    ("bear", ["--bear.critic-hidden-dims", "16", "--bear.actor-hidden-dims", "16", "--bear.vae-hidden-dims", "16",
              "--bear.warmstart-steps", "40"]),
])
def test_the_workflow_runs_awac_and_bear_end_to_end(tmp_path, monkeypatch, capsys, algo, extra):
    """`offrl workflow --algo awac|bear`: collect, train, diagnose on its own regularizer, evaluate (analysis only)
    and report, in one command."""
    pytest.importorskip("metaworld")
    monkeypatch.chdir(tmp_path)
    argv = ["workflow", "--algo", algo, "--episodes", "4", "--horizon", "100", "--regime", "white",
            "--noise-sigma", "0.2", "--steps", "80", "--checkpoint-every", "40", "--eval-episodes", "1",
            "--bc-baseline-steps", "50", "--bc.actor-hidden-dims", "16", "--out", "runs/a", "--no-progress", *extra]
    assert main(argv) == 0
    run = tmp_path / "runs/a"
    cfg = json.loads((run / "config.json").read_text())
    d = json.loads((run / "diagnosis.json").read_text())
    assert cfg["algo"] == algo and d["evidence"]["metric"] == "q_data"
    assert {"awac": "weighted_nll_end", "bear": "mmd_end"}[algo] in d["evidence"]
    assert d["selected_step"] in ((40, 80) if algo == "awac" else (80,))  # BEAR's MMD-only start is no candidate
    ev = json.loads((run / "evaluation.json").read_text())
    assert [r["step"] for r in ev["results"]] == [40, 80] and all(r["episodes"] == 1 for r in ev["results"])
    assert (run / "report.html").is_file() and str(d["selected_step"]) in capsys.readouterr().out
