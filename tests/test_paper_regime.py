"""The workflow paper's own regime (issue 42): its reward structure, its horizon rule, its noise, the presets, and
FQE's stopping rule and bounds."""

from __future__ import annotations

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

from offrl.data import Normalizer, make_dataset, q_value_range
from offrl.envs.reward_modes import horizon_from_success_steps
from offrl.presets import PAPER, PRESETS, get_preset, train_fields
from offrl.workflow.fqe import FQEConfig, fqe_scores


def test_horizon_rule_is_one_and_a_half_median_rounded_up_to_ten():
    assert horizon_from_success_steps([47, 54, 55, 61]) == 90  # median 54.5 -> 81.75 -> 90
    assert horizon_from_success_steps([91]) == 140  # 136.5 -> 140
    assert horizon_from_success_steps([80, 80]) == 120  # exactly 120 stays
    with pytest.raises(ValueError, match="at least one"):
        horizon_from_success_steps([])


def _scripted_episode_by_hand(task: str, horizon: int, clip: float) -> tuple[np.ndarray, list[bool], list[float]]:
    """One noise-free scripted episode of ``task`` from the collector's first start state (seed 0), the expert's
    actions clipped to +-``clip``: (first observation, success flag of each step, MetaWorld's reward of each
    step). ``last_reward`` is 0 before the first step."""
    from offrl.envs import make_env, scripted_policy

    env = make_env(task, seed=0, horizon=horizon)
    env.seed(0)
    obs, expert, flags, rewards = env.reset(), scripted_policy(task), [], []
    first = obs
    assert env.last_reward == 0.0
    for _ in range(horizon):
        obs, success = env.step(np.clip(expert(obs), -clip, clip))
        flags.append(success)
        rewards.append(env.last_reward)
    env.close()
    return first, flags, rewards


def test_success_every_step_rewards_a_scripted_episode_by_hand(tmp_path):
    """One noise-free scripted episode stepped by hand against the collector's: reward 1 on exactly the steps the
    success flag holds, no terminal, the fixed horizon, and the Q range that follows."""
    pytest.importorskip("metaworld")
    from offrl.data.collect import collect
    from offrl.envs.metaworld import _episode_seeds

    horizon = 90
    ds = collect("pick-place-v3", 1, tmp_path / "d.h5", horizon=horizon, noise_sigma=0.0, seed=0, progress=False,
                 regime="paper", reward_mode="success-every-step")
    assert ds.metadata["reward_mode"] == "success-every-step" and ds.metadata["horizon_rule"] == "given"
    assert len(ds) == horizon and not ds.terminals.any() and ds.timeouts[-1] and ds.timeouts.sum() == 1
    # By hand: the same start state, the expert's action clipped to +-0.9 (the paper regime without noise).
    first, flags, _ = _scripted_episode_by_hand("pick-place-v3", horizon, clip=0.9)
    np.testing.assert_allclose(first, ds.observations[0])
    np.testing.assert_array_equal(ds.rewards, np.array(flags, np.float32))
    assert ds.rewards.sum() > 1  # the expert holds success for many steps: every one of them is rewarded
    r = q_value_range(ds, 0.99)
    assert r["q_max"] == pytest.approx((1 - 0.99**horizon) / 0.01) and r["q_bound"] == "discounted sum over the horizon"
    assert _episode_seeds  # the collector's seeds are its own; the start state matched above


def test_shaped_mode_keeps_metaworlds_reward_on_a_scripted_episode_by_hand(tmp_path):
    """``--reward-mode shaped`` (issue 43's dense-reward check of MOPO): the collector's rewards are MetaWorld's
    own reward of each step, stepped by hand; no terminal at success, the fixed horizon, and the discounted Q
    bound over it. The success rate still reads the success flag."""
    pytest.importorskip("metaworld")
    from offrl.data.collect import collect

    horizon = 60
    ds = collect("reach-v3", 1, tmp_path / "s.h5", horizon=horizon, noise_sigma=0.0, seed=0, progress=False,
                 regime="white", reward_mode="shaped")
    assert ds.metadata["reward_mode"] == "shaped" and ds.metadata["reward"] == "shaped"
    assert len(ds) == horizon and not ds.terminals.any() and ds.timeouts[-1] and ds.timeouts.sum() == 1
    first, flags, rewards = _scripted_episode_by_hand("reach-v3", horizon, clip=1.0)
    np.testing.assert_allclose(first, ds.observations[0])
    np.testing.assert_allclose(ds.rewards, np.array(rewards, np.float32))
    assert any(flags) and ds.metadata["behaviour_success_rate"] == 1.0
    assert len(np.unique(ds.rewards)) > 10 and 0.0 <= ds.rewards.min() and ds.rewards.max() <= 10.0  # dense
    r = q_value_range(ds, 0.99)
    assert r["q_bound"] == "discounted sum over the horizon"
    assert r["q_max"] == pytest.approx(float(ds.rewards.max()) * (1 - 0.99**horizon) / 0.01, rel=1e-5)


def test_terminal_mode_is_todays_data(tmp_path):
    pytest.importorskip("metaworld")
    from offrl.data.collect import collect

    ds = collect("pick-place-v3", 2, tmp_path / "t.h5", horizon=150, noise_sigma=0.0, seed=0, progress=False,
                 regime="white", reward_mode="terminal")
    assert ds.metadata["reward_mode"] == "terminal" and ds.terminals.sum() == 2 and ds.rewards.sum() == 2
    assert q_value_range(ds, 0.99)["q_max"] == 1.0


def test_paper_regime_clips_to_point_nine():
    from offrl.envs.behaviour import EpisodeBehaviour, make_regime

    r = make_regime("paper")
    assert (r.sigma, r.action_clip) == (0.1, 0.9) and r.to_info() == {"regime": "paper", "sigma": 0.1,
                                                                       "action_clip": 0.9}
    b = EpisodeBehaviour(r, 4, 10, np.random.default_rng(0))
    a = b.act(np.zeros(4), 0)
    assert a.shape == (4,) and np.all(np.abs(a) < 1.0)
    assert make_regime("white").action_clip is None


def test_paper_preset_values_and_deviations():
    assert PRESETS["paper"] is PAPER and get_preset("iql-sparse").algo == "iql"
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        get_preset("nope")
    agent = PAPER.agent_config()
    assert agent.calibrated is False and agent.bc_steps == 10_000 and agent.init_temperature == 1.0
    assert agent.num_action_samples == 1 and agent.alpha == 1.0 and not agent.lagrange
    assert (agent.critic_lr, agent.actor_lr, agent.temperature_lr) == (3e-4, 1e-4, 1e-4)
    assert PAPER.steps >= 100_000 and PAPER.checkpoint_every == 5_000 and PAPER.selector == "q_peak"
    assert PAPER.reward_mode == "success-every-step" and PAPER.regime == "paper"
    assert all(isinstance(d, str) and d for d in PAPER.deviations)
    fields = train_fields(PAPER)
    assert fields["preset"] == "paper" and fields["agent"] == agent and fields["steps"] == 100_000


def test_iql_sparse_preset_matches_the_workflow_default():
    from offrl.workflow.pipeline import ALGO_DEFAULTS, WorkflowConfig

    p, d = get_preset("iql-sparse"), ALGO_DEFAULTS["iql"]
    assert (p.steps, p.checkpoint_every, p.reward_shift) == (d["steps"], d["checkpoint_every"], d["reward_shift"])
    assert p.selector == "last"  # the default job's rule (docs/default-job.md, D12)
    iql = WorkflowConfig().iql
    assert (p.agent["expectile"], p.agent["inverse_temperature"]) == (iql.expectile, iql.inverse_temperature)
    assert train_fields(p)["iql"].actor_lr_decay_steps == p.steps


def test_train_cli_preset_sets_fields_and_explicit_flags_override(tmp_path, monkeypatch):
    import offrl.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "run", lambda cmd: seen.setdefault("cmd", cmd) and 0)
    assert cli.main(["train", "--preset", "paper", "--out", str(tmp_path / "r"), "--dataset", "x.h5"]) == 0
    cmd = seen.pop("cmd")
    assert cmd.preset == "paper" and cmd.algo == "cql" and cmd.steps == 100_000 and cmd.checkpoint_every == 5_000
    assert cmd.agent.calibrated is False and cmd.agent.bc_steps == 10_000 and cmd.agent.init_temperature == 1.0
    assert cli.main(["train", "--preset", "paper", "--out", str(tmp_path / "r"), "--steps", "20000",
                     "--cql.bc-steps", "500"]) == 0
    cmd = seen.pop("cmd")
    assert cmd.steps == 20_000 and cmd.agent.bc_steps == 500 and cmd.agent.calibrated is False
    assert cli.main(["train", "--preset", "nope", "--out", "r"]) == 1
    assert cli.main(["workflow", "--preset", "paper"]) == 0
    w = seen.pop("cmd")
    assert (w.preset, w.algo, w.selector, w.reward_mode, w.regime, w.horizon) == (
        "paper", "cql", "q_peak", "success-every-step", "paper", None)
    assert w.agent.bc_steps == 10_000 and w.steps == 100_000


def test_preset_is_recorded_in_config_json(tmp_path, chain_dataset):
    from conftest import tiny_train_config

    from offrl.data import save_dataset
    from offrl.training.train import train

    path = save_dataset(tmp_path / "d.h5", chain_dataset)
    out = train(tiny_train_config(path, tmp_path / "run", preset="paper"))
    assert json.loads((out / "config.json").read_text())["training"]["preset"] == "paper"


def chain(length: int = 6, episodes: int = 40):
    """A deterministic chain s_0 -> ... -> s_{L-1}, reward 1 on its last (terminal) step, whatever the action:
    every policy is worth gamma^(L-1) from s_0."""
    obs, nxt, act, rew, term, tout = [], [], [], [], [], []
    rng = np.random.default_rng(0)
    for _ in range(episodes):
        for t in range(length):
            obs.append([t / length, 0.0])
            nxt.append([(t + 1) / length, 0.0])
            act.append(rng.uniform(-1, 1, 2))
            rew.append(float(t == length - 1))
            term.append(t == length - 1)
            tout.append(False)
    return make_dataset({"observations": np.array(obs), "next_observations": np.array(nxt),
                         "actions": np.array(act), "rewards": np.array(rew), "terminals": np.array(term),
                         "timeouts": np.array(tout)})


def constant_policy(pi, s):
    return jnp.broadcast_to(pi, (s.shape[0], pi.shape[-1]))


def test_fqe_stopping_rule_on_a_chain_with_a_known_value():
    ds, gamma = chain(), 0.9
    truth = gamma**5
    policies = jnp.array([[0.5, 0.5], [-0.5, 0.2]])
    config = FQEConfig(steps=40_000, batch_size=64, hidden_dims=(32, 32), tau=0.05, chunk=250, window=1000,
                       tolerance=0.005, learning_rate=1e-3)
    res = fqe_scores(policies, constant_policy, ds, Normalizer.identity(2), [0, 1], gamma, config,
                     value_range=(0.0, 1.0))
    assert res["converged"] and res["steps_taken"] < config.steps  # it stopped by the rule, before the cap
    assert res["min_steps"] == 120  # the propagation time: 6 steps / tau 0.05
    # It never stops before the propagation time, however still the start values look.
    late = fqe_scores(policies, constant_policy, ds, Normalizer.identity(2), [0, 1], gamma,
                      dataclasses.replace(config, min_steps=8000), value_range=(0.0, 1.0))
    assert late["converged"] and late["steps_taken"] >= 8000
    assert res["settled"].all() and res["in_bounds"].all()
    np.testing.assert_allclose(res["value"], truth, atol=0.05)
    # Without a tolerance: exactly the steps asked for, never "converged".
    fixed = fqe_scores(policies, constant_policy, ds, Normalizer.identity(2), [0, 1], gamma,
                       dataclasses.replace(config, tolerance=None, steps=500), value_range=(0.0, 1.0))
    assert fixed["steps_taken"] == 500 and not fixed["converged"]
    # Bounds are checked: a range the values cannot lie in flags every estimate.
    off = fqe_scores(policies, constant_policy, ds, Normalizer.identity(2), [0, 1], gamma,
                     dataclasses.replace(config, tolerance=None, steps=2000), value_range=(2.0, 3.0))
    assert not off["in_bounds"].any()
    with pytest.raises(ValueError, match="tolerance"):
        FQEConfig(tolerance=0.0)
