"""MOPO and COMBO (offrl/agents/model_based.py): the batch split, the termination rule, COMBO's loss and the TD
term against hand computation, MOPO's penalised model rewards, the k-step rollout error by hand, model selection
on held-out data, rollouts that start from training states only, the model's diagnosis on synthetic curves, and
runs end to end through train, resume, diagnose, select, report and export."""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import chain_arrays

from offrl.agents import combo, mopo
from offrl.agents import model_based as mb
from offrl.cli import main
from offrl.data import make_dataset, save_dataset, split_episodes
from offrl.networks import dynamics as dyn
from offrl.training import run_dir as rd
from offrl.workflow.diagnosis import diagnose_model

SMALL = dict(model_hidden_dims=(16, 16), critic_hidden_dims=(16, 16), actor_hidden_dims=(16, 16), num_members=3,
             num_elites=2, rollout_batch_size=4, model_retain_steps=3)


def _zeros(tree):
    return jax.tree.map(jnp.zeros_like, tree)


def test_batch_split_and_termination_rule_by_hand():
    assert mb.split_sizes(mopo.MOPOConfig(), 256) == (13, 50, 243)  # 5 % real; 50 rollouts per step (MOPO's code)
    assert mb.split_sizes(combo.COMBOConfig(), 256) == (128, 50, 128)
    assert mb.buffer_capacity(mopo.MOPOConfig()) == 5000 * 50 * 5  # MOPO: 5 epochs x 50,000 rollouts x h
    with pytest.raises(ValueError, match="too small"):
        mb.split_sizes(combo.COMBOConfig(), 1)
    with pytest.raises(ValueError, match="rollout-batch-size 50 exceeds the 30 rows"):
        mb.split_sizes(mopo.MOPOConfig(), 32)
    # Success ends the episode with reward 1, other rewards are 0: terminate above the midpoint.
    assert mb.terminal_rule(np.array([0, 0, 1.0, 0]), np.array([0, 0, 1, 0])) == 0.5
    assert mb.terminal_rule(np.zeros(4), np.zeros(4)) == math.inf  # time limits only (MetaWorld)
    assert mb.terminal_rule(np.array([1.0, 0.0]), np.array([0, 1])) == math.inf  # terminals the reward cannot tell
    assert "--combo.real-ratio" in " ".join(mb.config_problems(combo.COMBOConfig(real_ratio=1.0)))
    assert "--mopo.num-elites" in " ".join(mb.config_problems(mopo.MOPOConfig(num_members=2, num_elites=3)))


def test_combo_regularizer_and_td_term_by_hand_on_a_zero_critic():
    """With every critic weight 0, Q = 0 everywhere: the TD term is the weighted mean of r^2 per critic, and the
    regularizer adds beta * C * weighted mean of the log-sum-exp (Q on dataset pairs is 0)."""
    cfg = combo.COMBOConfig(**SMALL, gamma=0.9)
    st = mb.init(cfg, 3, 2, jax.random.PRNGKey(0))
    critic = _zeros(st.critic_params)
    b = 6
    batch = {"observations": jnp.ones((b, 3)), "actions": jnp.zeros((b, 2)),
             "rewards": jnp.array([1.0, 0, 2, 0, 1, 3]), "terminals": jnp.zeros(b), "next_observations": jnp.ones((b, 3)),
             "weights": jnp.array([1.0, 1, 1, 1, 0, 0]), "real": jnp.array([1.0, 1, 0, 0, 0, 0])}
    key = jax.random.PRNGKey(3)
    loss, parts = mb.critic_terms(critic, critic, st.actor_params, st.log_temperature, batch, key, cfg)
    loss0, _ = mb.critic_terms(critic, critic, st.actor_params, st.log_temperature, batch, key,
                               combo.COMBOConfig(**SMALL, gamma=0.9, conservative_weight=0.0))
    td = (1.0 + 0 + 4 + 0) / 4  # rows 4 and 5 weigh 0
    assert float(loss0) == pytest.approx(cfg.num_critics * td, rel=1e-6)
    np.testing.assert_allclose(parts["td_error"], np.asarray(batch["rewards"]) ** 2, rtol=1e-6)
    lse = np.asarray(parts["cql_regularizer"])  # LSE - Q, and Q = 0
    # Eq. 2's push-down covers the model rows of weight 1 (rows 2 and 3), not the real rows 0 and 1.
    assert float(loss - loss0) == pytest.approx(cfg.num_critics * lse[2:4].mean(), rel=1e-5)
    # The uniform proposal alone contributes -|A| log 0.5 = 1.386 inside the log-sum-exp: LSE exceeds it.
    assert np.all(lse > 2 * math.log(2.0))


def test_mopo_target_keeps_the_entropy_unless_asked():
    """On a zero critic Q = 0: with the deterministic backup the target is r alone, so the TD error is r^2; MOPO's
    default, SAC's soft backup (MOPO's code), adds -gamma alpha log pi(a'|s'), which the same key reproduces."""
    st = mb.init(mopo.MOPOConfig(**SMALL), 3, 2, jax.random.PRNGKey(0))
    critic = _zeros(st.critic_params)
    b = 5
    batch = {"observations": jnp.ones((b, 3)), "actions": jnp.zeros((b, 2)), "rewards": jnp.array([1.0, 0, 0, 1, 0]),
             "terminals": jnp.zeros(b), "next_observations": jnp.full((b, 3), 0.5), "weights": jnp.ones(b),
             "real": jnp.ones(b)}
    key = jax.random.PRNGKey(5)
    assert not mopo.MOPOConfig().deterministic_backup and combo.COMBOConfig().deterministic_backup
    det_cfg = mopo.MOPOConfig(**SMALL, deterministic_backup=True)
    _, det = mb.critic_terms(critic, critic, st.actor_params, st.log_temperature, batch, key, det_cfg)
    np.testing.assert_allclose(det["target_q"], batch["rewards"], atol=1e-7)
    np.testing.assert_allclose(det["td_error"], np.asarray(batch["rewards"]) ** 2, atol=1e-7)
    soft_cfg = mopo.MOPOConfig(**SMALL)
    _, soft = mb.critic_terms(critic, critic, st.actor_params, st.log_temperature, batch, key, soft_cfg)
    # the next action is the first draw of the key's first split, as in critic_terms
    _, _, actor = mb._networks(soft_cfg, 3, 2)
    mean, log_std = actor.apply(st.actor_params, batch["next_observations"])
    _, log_pi = mb.sample_tanh_gaussian(jax.random.split(key, 4)[0], mean, log_std)
    bonus = -soft_cfg.gamma * np.exp(float(st.log_temperature)) * np.asarray(log_pi)
    np.testing.assert_allclose(soft["target_q"], np.asarray(batch["rewards"]) + bonus, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(bonus) > 1e-4)  # the two targets differ


def test_mopo_model_rewards_are_penalised_and_rollouts_start_from_the_given_states():
    cfg = mopo.MOPOConfig(**SMALL, penalty_coef=0.5, rollout_horizon=2)
    st = mb.init(cfg, 3, 2, jax.random.PRNGKey(0))
    starts = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)), jnp.float32)
    out = mb.model_rollout(st, starts, jax.random.PRNGKey(1), cfg, 2)
    assert out["observations"].shape == (16, 3)
    np.testing.assert_array_equal(out["observations"][:8], starts)
    np.testing.assert_array_equal(out["observations"][8:], out["next_observations"][:8])
    # The penalty is max_i ||sigma_i||_2 over *every* member at (s, a), as MOPO's FakeEnv.step.
    model = mb._networks(cfg, 3, 2)[0]
    _, log_var = model.apply(st.selected_model_params, starts, out["actions"][:8])
    np.testing.assert_allclose(out["penalty"][:8], np.sqrt(np.exp(log_var).sum(-1)).max(0), rtol=1e-5)
    assert np.all(np.asarray(out["penalty"]) > 0)
    # A rollout that terminates keeps its terminal transition (weight 1) and nothing after it (weight 0).
    st_term = st.replace(terminal_reward=jnp.asarray(-np.inf))  # every model reward terminates
    out = mb.model_rollout(st_term, starts, jax.random.PRNGKey(1), cfg, 2)
    np.testing.assert_array_equal(out["weights"], [1.0] * 8 + [0.0] * 8)
    np.testing.assert_array_equal(out["terminals"], np.ones(16))


def _zero_reward_model(cfg, n):
    """A model whose every weight is 0: mean 0 (predicts s' = s and r = 0), log-variance the soft clamp of 0."""
    st = mb.init(cfg, 1, 1, jax.random.PRNGKey(0))
    zero = _zeros(st.model_params)
    zero["params"]["max_log_var"] = st.model_params["params"]["max_log_var"]
    zero["params"]["min_log_var"] = st.model_params["params"]["min_log_var"]
    return st.replace(selected_model_params=zero), jnp.zeros((n, 1))


def test_no_positive_background_reward_from_a_model_that_predicts_zero_unless_clipped():
    """The model predicts r = 0 with variance sigma^2 = exp(soft_clamp(0)): its sampled rewards average 0
    (MOPO's code does not clip them). Clipping each draw to the data's range [0, 1] (the flag, off by default)
    turns them into E[clip(x, 0, 1)] = sigma / sqrt(2 pi) (1 - exp(-1 / (2 sigma^2))) + P(x > 1) > 0 per step."""
    n = 20_000
    cfg = mopo.MOPOConfig(**{**SMALL, "rollout_batch_size": n}, rollout_horizon=1, penalty_coef=0.0)
    assert not cfg.clip_model_rewards
    st, starts = _zero_reward_model(cfg, n)
    sigma = math.exp(0.5 * float(dyn.soft_clamp_log_var(jnp.array(0.0), jnp.array(-10.0), jnp.array(0.5))))
    r = np.asarray(mb.model_rollout(st, starts, jax.random.PRNGKey(2), cfg, 1)["rewards"])
    assert r.std() == pytest.approx(sigma, rel=0.03)
    assert abs(r.mean()) < 4 * sigma / math.sqrt(n)  # no background: 0 within 4 standard errors
    clipped = np.asarray(mb.model_rollout(st, starts, jax.random.PRNGKey(2), dataclasses.replace(
        cfg, clip_model_rewards=True), 1)["rewards"])
    tail = 0.5 * (1 - math.erf(1 / (sigma * math.sqrt(2))))  # P(x > 1)
    background = sigma / math.sqrt(2 * math.pi) * (1 - math.exp(-1 / (2 * sigma**2))) + tail
    assert clipped.mean() == pytest.approx(background, rel=0.03)
    assert clipped.mean() > 0.2  # sigma = 0.79: a background of 0.30 per model step


def test_mopo_penalty_is_the_norm_of_the_standard_deviations_by_hand():
    """u = max_i sqrt(sum_d sigma_{i,d}^2): member 0 variances (1, 4) -> sqrt(5), member 1 (2, 2) -> 2, member 2
    (0.25, 0.25) -> sqrt(0.5); the largest over all members is sqrt(5), and r~ = r - lambda sqrt(5)."""
    log_var = jnp.log(jnp.array([[[1.0, 4.0]], [[2.0, 2.0]], [[0.25, 0.25]]]))
    assert float(dyn.mopo_penalty(log_var)[0]) == pytest.approx(math.sqrt(5.0), rel=1e-6)
    assert float(dyn.penalised_reward(jnp.array([1.0]), log_var, 0.5)[0]) == pytest.approx(1 - 0.5 * math.sqrt(5))
    # In a rollout, every member counts, not only the elites: a model whose non-elite member is the most uncertain.
    cfg = mopo.MOPOConfig(**SMALL, rollout_horizon=1, penalty_coef=1.0)
    st, starts = _zero_reward_model(cfg, 4)
    p = st.selected_model_params["params"]
    wide = jax.tree.map(lambda b: b.at[2, 2:].set(3.0), p["Vmap_Member_0"]["Dense_2"]["bias"])  # member 2's raw log-var
    p = {**p, "Vmap_Member_0": {**p["Vmap_Member_0"], "Dense_2": {**p["Vmap_Member_0"]["Dense_2"], "bias": wide}}}
    st = st.replace(selected_model_params={"params": p}, elite_idx=jnp.array([0, 1], jnp.int32))
    out = mb.model_rollout(st, starts, jax.random.PRNGKey(0), cfg, 1)
    lv = dyn.soft_clamp_log_var(jnp.array(3.0), jnp.array(-10.0), jnp.array(0.5))  # both outputs (s' - s, r)
    np.testing.assert_allclose(out["penalty"], np.full(4, math.sqrt(2 * math.exp(float(lv)))), rtol=1e-5)


def test_model_buffer_fill_wrap_around_and_the_real_model_mix_by_hand():
    # capacity = retain 2 steps x 2 rollouts x horizon 1 = 4 rows
    cfg = mopo.MOPOConfig(**{**SMALL, "rollout_batch_size": 2, "model_retain_steps": 2}, rollout_horizon=1)
    assert mb.buffer_capacity(cfg) == 4
    st = mb.init(cfg, 1, 1, jax.random.PRNGKey(0))

    def rows(values, weights):
        v = jnp.asarray(values, jnp.float32)
        return {"observations": v[:, None], "actions": v[:, None], "rewards": v, "terminals": jnp.zeros_like(v),
                "next_observations": v[:, None] + 0.5, "penalty": v, "weights": jnp.asarray(weights, jnp.float32)}

    st = mb.write_buffer(st, rows([1, 2, 3], [1, 0, 1]))  # row 2 came after its rollout terminated: not stored
    np.testing.assert_array_equal(st.model_buffer["rewards"], [1, 3, 0, 0])
    assert (int(st.buffer_ptr), int(st.buffer_size)) == (2, 2)
    st = mb.write_buffer(st, rows([4, 5, 6], [1, 1, 1]))  # fills rows 2, 3, wraps around to row 0 (the oldest)
    np.testing.assert_array_equal(st.model_buffer["rewards"], [6, 3, 4, 5])
    np.testing.assert_array_equal(st.model_buffer["next_observations"][:, 0], [6.5, 3.5, 4.5, 5.5])
    assert (int(st.buffer_ptr), int(st.buffer_size)) == (1, 4)
    st = mb.write_buffer(st, rows([7, 8], [0, 0]))  # nothing alive: nothing changes
    np.testing.assert_array_equal(st.model_buffer["rewards"], [6, 3, 4, 5])
    assert (int(st.buffer_ptr), int(st.buffer_size)) == (1, 4)

    # The mix: n_real real rows first, then n_model rows drawn from the filled part of the buffer only.
    cfg = mopo.MOPOConfig(**{**SMALL, "rollout_batch_size": 3, "model_retain_steps": 10}, rollout_horizon=2,
                          real_ratio=0.25)
    st = mb.init(cfg, 3, 2, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    b = 16
    batch = {"observations": jnp.asarray(rng.normal(size=(b, 3)), jnp.float32),
             "actions": jnp.asarray(rng.uniform(-1, 1, (b, 2)), jnp.float32), "rewards": jnp.ones(b),
             "terminals": jnp.zeros(b), "next_observations": jnp.asarray(rng.normal(size=(b, 3)), jnp.float32)}
    n_real, n_starts, n_model = mb.split_sizes(cfg, b)
    assert (n_real, n_starts, n_model) == (4, 3, 12)
    st1, mixed, rolled = mb.mixed_batch(st, batch, jax.random.PRNGKey(1), cfg)
    assert int(st1.buffer_size) == 6 and int(st1.buffer_ptr) == 6  # 3 rollouts x 2 steps, none terminated
    np.testing.assert_array_equal(rolled["observations"][:3], batch["observations"][4:7])  # the starts
    np.testing.assert_array_equal(mixed["observations"][:4], batch["observations"][:4])
    np.testing.assert_array_equal(mixed["real"], [1.0] * 4 + [0.0] * 12)
    np.testing.assert_array_equal(mixed["weights"], np.ones(16))
    stored = {tuple(r) for r in np.asarray(st1.model_buffer["observations"][:6])}
    assert all(tuple(r) in stored for r in np.asarray(mixed["observations"][4:]))
    # The buffer's rows are the rollouts, step by step: the penalised reward and the penalty travel together.
    np.testing.assert_array_equal(st1.model_buffer["rewards"][:6], rolled["rewards"])
    np.testing.assert_array_equal(st1.model_buffer["penalty"][:6], rolled["penalty"])


def test_rollout_error_by_hand_for_a_model_that_predicts_no_change():
    cfg = mopo.MOPOConfig(**SMALL)
    st = mb.init(cfg, 2, 1, jax.random.PRNGKey(0))
    params = _zeros(st.model_params)  # mean 0: predicts s' = s
    k = 3
    # The real state grows by 1 per step in both features; the prediction stays put: errors 1, 4, 9.
    obs = jnp.stack([jnp.full((4, 2), float(j)) for j in range(k + 1)], axis=1)
    mask = jnp.ones((4, k + 1)).at[1, 3].set(0.0)  # row 1's episode ends after 2 steps
    mask = mask.at[3, 1:].set(0.0)  # row 3 is its episode's last transition: nothing to predict
    batch = {"observations": obs[:, 0], "actions": jnp.zeros((4, 1)), "seq_observations": obs,
             "seq_actions": jnp.zeros((4, k + 1, 1)), "seq_mask": mask}
    err, defined = mb.rollout_mse(params, st.elite_idx, batch, cfg)
    np.testing.assert_allclose(err, [14 / 3, 5 / 2, 14 / 3, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(defined, [1, 1, 1, 0])
    # The logged value is the mean over the rows with a step to predict, not over all rows (row 3 is no error).
    from offrl.agents.common import DEFINED
    from offrl.training.train import checkpoint_record

    ev = {"model_rollout_mse": float(np.mean(err)), "model_rollout_mse" + DEFINED: float(np.mean(defined))}
    rec = checkpoint_record(ev, 100.0, "heldout/")
    assert rec == {"heldout/model_rollout_mse": pytest.approx((14 / 3 * 2 + 5 / 2) / 3)}
    # Defined on no row: absent (None), not NaN, which the training loop would take for a divergence.
    assert checkpoint_record({"model_rollout_mse": 0.0, "model_rollout_mse" + DEFINED: 0.0}, 100.0) == {
        "model_rollout_mse": None}


def test_reward_error_on_rewarded_transitions_by_hand_for_a_model_that_predicts_zero():
    from offrl.agents.common import DEFINED
    from offrl.training.train import checkpoint_record

    cfg = mopo.MOPOConfig(**SMALL)
    st = mb.init(cfg, 2, 1, jax.random.PRNGKey(0))
    zero = _zeros(st.model_params)  # predicts reward 0 everywhere
    st = st.replace(model_params=zero, selected_model_params=zero)
    r = jnp.array([0.0, 1.0, 0.0, 0.0, 0.5])
    batch = {"observations": jnp.ones((5, 2)), "actions": jnp.zeros((5, 1)), "rewards": r,
             "terminals": jnp.zeros(5), "next_observations": jnp.ones((5, 2))}
    parts = mb.evaluate(st, batch, jax.random.PRNGKey(1), cfg)
    np.testing.assert_allclose(parts["model_reward_mse"], r**2, atol=1e-7)
    np.testing.assert_array_equal(parts["model_reward_mse_rewarded" + DEFINED], [0, 1, 0, 0, 1])
    ev = {k: float(np.mean(v)) for k, v in parts.items() if k.startswith("model_reward")}
    rec = checkpoint_record(ev, 100.0)
    assert rec["model_reward_mse"] == pytest.approx((1 + 0.25) / 5)
    assert rec["model_reward_mse_rewarded"] == pytest.approx((1 + 0.25) / 2)  # over the two rewarded rows only
    assert rec["model_reward_share_rewarded"] == 0.0  # a model that predicts 0 pays none of either reward
    # A model that predicts 0.25 everywhere (the reward head's bias; every other output 0): 0.25 / 1 and 0.25 / 0.5.
    last = jax.tree_util.tree_leaves_with_path(zero)
    bias = [p for p, _ in last if "bias" in jax.tree_util.keystr(p)][-1]
    quarter = jax.tree_util.tree_map_with_path(
        lambda p, v: v.at[..., 2].set(0.25) if p == bias else v, zero)  # outputs: [ds (2), r] means, then log-vars
    st = st.replace(model_params=quarter, selected_model_params=quarter)
    parts = mb.evaluate(st, batch, jax.random.PRNGKey(1), cfg)
    ev = {k: float(np.mean(v)) for k, v in parts.items() if k.startswith("model_reward")}
    assert checkpoint_record(ev, 100.0)["model_reward_share_rewarded"] == pytest.approx((0.25 + 0.5) / 2)


def test_combo_pushes_q_down_on_model_rows_and_up_on_real_rows_by_hand():
    """COMBO Eq. 2 on a hand-built batch and a random critic: the regularizer adds
    beta * C * (mean over the model rows of LSE_a Q(s, a) - mean over the real rows of Q(s, a)) to the loss, where
    LSE and Q are the critics' means per row (the loss is linear in each critic's). Rows of weight 0 count in
    neither; ``push_down="mixture"`` (the earlier offrl COMBO) averages the LSE over the real rows too."""
    cfg = combo.COMBOConfig(**SMALL, conservative_weight=2.0)
    st = mb.init(cfg, 3, 2, jax.random.PRNGKey(0))
    rng = np.random.default_rng(1)
    b = 8
    batch = {"observations": jnp.asarray(rng.normal(size=(b, 3)), jnp.float32),
             "actions": jnp.asarray(rng.uniform(-0.9, 0.9, (b, 2)), jnp.float32),
             "rewards": jnp.asarray(rng.uniform(0, 1, b), jnp.float32), "terminals": jnp.zeros(b),
             "next_observations": jnp.asarray(rng.normal(size=(b, 3)), jnp.float32),
             "weights": jnp.array([1.0, 1, 1, 1, 1, 1, 1, 0]), "real": jnp.array([1.0, 1, 1, 0, 0, 1, 0, 0])}
    key = jax.random.PRNGKey(5)
    args = (st.critic_params, st.target_critic_params, st.actor_params, st.log_temperature, batch, key)
    loss, parts = mb.critic_terms(*args, cfg)
    loss0, _ = mb.critic_terms(*args, dataclasses.replace(cfg, conservative_weight=0.0))
    q = np.asarray(parts["q_data"])  # (B,), mean over the critics
    lse = np.asarray(parts["cql_regularizer"]) + q  # the log-sum-exp of each row
    assert np.ptp(q) > 1e-3 and np.ptp(lse) > 1e-3  # the rows differ, so the sets matter
    real_rows, model_rows = [0, 1, 2, 5], [3, 4, 6]  # row 7 weighs 0
    expected = 2.0 * cfg.num_critics * (lse[model_rows].mean() - q[real_rows].mean())
    assert float(loss - loss0) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    mixture, _ = mb.critic_terms(*args, dataclasses.replace(cfg, push_down="mixture"))
    expected = 2.0 * cfg.num_critics * (lse[:7].mean() - q[real_rows].mean())
    assert float(mixture - loss0) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert "push-down" in " ".join(mb.config_problems(dataclasses.replace(cfg, push_down="real")))


def test_model_selection_keeps_each_members_best_heldout_snapshot():
    cfg = mopo.MOPOConfig(**SMALL)
    st = mb.init(cfg, 3, 2, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    held = {"observations": jnp.asarray(rng.normal(size=(1, 64, 3)), jnp.float32),
            "actions": jnp.asarray(rng.uniform(-1, 1, (1, 64, 2)), jnp.float32),
            "rewards": jnp.zeros((1, 64)), "next_observations": jnp.asarray(rng.normal(size=(1, 64, 3)), jnp.float32)}
    mask = jnp.ones((1, 64)).at[0, 60:].set(0.0)

    def spoil(params, member, scale):  # add noise to one member's weights only
        return jax.tree.map(lambda w: w.at[member].add(scale) if w.ndim > 1 else w, params)

    st = st.replace(model_params=spoil(st.model_params, 1, 5.0))
    st = mb.select_model(st, held, mask, cfg)
    assert 1 not in np.asarray(st.elite_idx).tolist() and np.all(np.isfinite(st.member_heldout_mse))
    first = st.member_heldout_mse
    # Member 0 gets worse: its snapshot and held-out MSE stay; the others are unchanged.
    worse = st.replace(model_params=spoil(st.model_params, 0, 5.0))
    after = mb.select_model(worse, held, mask, cfg)
    np.testing.assert_array_equal(after.member_heldout_mse, first)
    leaf = lambda p: p["params"]["Vmap_Member_0"]["Dense_0"]["kernel"]  # noqa: E731
    np.testing.assert_array_equal(leaf(after.selected_model_params), leaf(st.selected_model_params))
    # Per-member MSE over the valid rows only, by hand.
    valid = jax.tree.map(lambda v: v[0, :60], held)
    by_hand = np.asarray(mb.member_mse(st.model_params, valid, cfg)).mean(axis=1)
    np.testing.assert_allclose(first, by_hand, rtol=1e-5)


def test_model_phase_then_policy_phase():
    cfg = combo.COMBOConfig(**SMALL, model_steps=2)
    st = mb.init(cfg, 3, 2, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    batch = {"observations": jnp.asarray(rng.normal(size=(32, 3)), jnp.float32),
             "actions": jnp.asarray(rng.uniform(-1, 1, (32, 2)), jnp.float32), "rewards": jnp.zeros(32),
             "terminals": jnp.zeros(32), "next_observations": jnp.asarray(rng.normal(size=(32, 3)), jnp.float32)}
    update = jax.jit(lambda s, k: mb.update(s, batch, k, cfg))
    s1, m1 = update(st, jax.random.PRNGKey(1))
    assert float(m1["model_loss"]) != 0 and float(m1["critic_loss"]) == 0
    np.testing.assert_array_equal(jax.tree.leaves(s1.critic_params)[-1], jax.tree.leaves(st.critic_params)[-1])
    s2, _ = update(s1, jax.random.PRNGKey(2))
    s3, m3 = update(s2, jax.random.PRNGKey(3))
    assert float(m3["model_loss"]) == 0 and float(m3["critic_loss"]) > 0 and int(s3.step) == 3
    for a, b in zip(jax.tree.leaves(s3.model_params), jax.tree.leaves(s2.model_params), strict=True):
        np.testing.assert_array_equal(a, b)  # the model is frozen in the policy phase


def test_rollouts_never_start_from_heldout_states():
    from offrl.data import Normalizer
    from offrl.training.train import Inputs, _host_arrays, make_batch

    ds = make_dataset(chain_arrays(episodes=10), {"task": "toy"})
    train_ds, held_ds = split_episodes(ds, 0.2, seed=0)
    inputs = Inputs("state", (0, 1, 2), Normalizer.identity(3))
    data = _host_arrays(train_ds, inputs)
    cfg = mopo.MOPOConfig(**SMALL)
    st = mb.init(cfg, 3, 2, jax.random.PRNGKey(0))
    idx = np.random.default_rng(0).integers(0, len(train_ds), 64)
    batch = {k: jnp.asarray(v) for k, v in make_batch(data, idx).items()}
    _, _, rolled = mb.mixed_batch(st, batch, jax.random.PRNGKey(0), cfg)
    _, n_starts, _ = mb.split_sizes(cfg, 64)
    starts = np.asarray(rolled["observations"][:n_starts])
    train_rows = {tuple(r) for r in np.round(train_ds.observations, 5)}
    held_rows = {tuple(r) for r in np.round(held_ds.observations, 5)}
    assert all(tuple(r) in train_rows for r in np.round(starts, 5))
    assert not any(tuple(r) in held_rows for r in np.round(starts, 5))


def _records(train, held):
    return [{"step": 100 * (i + 1), "model_mse": t, "heldout/model_mse": h} for i, (t, h) in enumerate(zip(train, held, strict=True))]


def test_model_diagnosis_on_synthetic_curves():
    n = 12
    train = list(np.linspace(1.0, 0.1, n))
    over = diagnose_model(_records(train, [1.0, 0.6, 0.4, 0.3, 0.32, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9]), 1200)
    assert over["verdict"] == "overfitting" and over["best_step"] == 400
    under = diagnose_model(_records(train, list(np.linspace(1.0, 0.3, n))), 1200)
    assert under["verdict"] == "underfitting" and "model-steps" in under["recommendation"]
    flat = diagnose_model(_records(train, [1.0, 0.6, 0.4, 0.3] + [0.3] * 8), 1200)
    assert flat["verdict"] == "healthy"
    assert flat["reward_share"] is None and flat["reward_warning"] is None  # not logged: nothing said
    # The reward head's share on the rewarded transitions: the last checkpoint's, held-out where it is defined.
    recs = _records(train, [1.0, 0.6, 0.4, 0.3] + [0.3] * 8)
    for r, share in zip(recs, np.linspace(0.9, 0.05, n), strict=True):
        r["model_reward_share_rewarded"], r["heldout/model_reward_share_rewarded"] = 0.9, float(share)
    low = diagnose_model(recs, 1200)
    assert low["verdict"] == "healthy" and low["reward_share"] == pytest.approx(0.05)
    assert "5% of the reward on the held-out transitions" in low["reward_warning"]
    recs[-1]["heldout/model_reward_share_rewarded"] = None  # no rewarded held-out transition at the last one
    assert diagnose_model(recs, 1200)["reward_share"] == pytest.approx(0.9 - 0.85 * 10 / 11)
    for r in recs:
        r["heldout/model_reward_share_rewarded"] = None
    assert diagnose_model(recs, 1200)["reward_warning"] is None  # training share 0.9 >= 0.5
    # Checkpoints after the model phase do not count; too few in it is inconclusive.
    assert diagnose_model(_records(train, list(np.linspace(1.0, 0.3, n))), 200)["verdict"] == "inconclusive"


TINY = ["--checkpoint-every", "40", "--chunk-steps", "20", "--batch-size", "32", "--no-progress"]


def _tiny(algo):
    return [
        f"--{algo}.model-hidden-dims", "16", "16", f"--{algo}.critic-hidden-dims", "16", "16",
        f"--{algo}.actor-hidden-dims", "16", "16", f"--{algo}.num-members", "3", f"--{algo}.num-elites", "2",
        f"--{algo}.model-steps", "120", f"--{algo}.rollout-horizon", "2", f"--{algo}.rollout-error-steps", "2",
        f"--{algo}.rollout-batch-size", "8", f"--{algo}.model-retain-steps", "20"]


def test_mopo_end_to_end_train_resume_diagnose_select_report_export(tmp_path, capsys):
    data = save_dataset(tmp_path / "d.h5", make_dataset(chain_arrays(episodes=10), {"task": "toy"}))
    run = tmp_path / "mopo"
    # No held-out episodes: no model selection, refused before anything is written.
    assert main(["train", "--algo", "mopo", "--dataset", str(data), "--out", str(run), "--steps", "160",
                 "--heldout-fraction", "0", *TINY, *_tiny("mopo")]) == 1
    assert "held-out episodes" in capsys.readouterr().err and not run.exists()
    assert main(["train", "--algo", "mopo", "--dataset", str(data), "--out", str(run), "--steps", "160",
                 *TINY, *_tiny("mopo")]) == 0
    assert main(["train", "--resume", "--out", str(run), "--steps", "200", "--no-progress"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["algo"] == "mopo" and cfg["agent"]["penalty_coef"] == 1.0 and cfg["agent"]["real_ratio"] == 0.05
    recs = rd.read_metrics(run)
    assert [r["step"] for r in recs] == [40, 80, 120, 160, 200]
    for k in ("model_nll", "model_mse", "model_rollout_mse", "heldout/model_mse", "heldout/model_rollout_mse",
              "model_reward_mse", "heldout/model_reward_mse", "q_data", "td_error", "heldout/q_data"):
        assert np.isfinite(recs[-1][k]), k
    assert recs[-1]["train/model_penalty"] > 0 and recs[0]["train/model_mse"] > 0
    # The selected model is frozen after the model phase.
    assert recs[-1]["heldout/model_mse"] == pytest.approx(recs[-2]["heldout/model_mse"])
    assert main(["diagnose", str(run)]) == 0
    out = capsys.readouterr().out
    d = json.loads((run / "diagnosis.json").read_text())
    assert d["model"]["verdict"] in ("overfitting", "underfitting", "healthy") and "model:" in out
    assert d["selected_step"] in (160, 200)  # checkpoints of the model phase are not policies
    assert d["evidence"]["warmup_phase"] == rd.WARMUP_PHASE["mopo"]  # the report's grey band is named by it
    m = d["model"]  # the toy data rewards 1 at the end of some episodes: the reward head's share is defined
    assert m["reward_share"] is not None and (m["reward_warning"] is not None) == (m["reward_share"] < 0.5)
    assert m["reward_warning"] is None or (m["reward_warning"] in d["reasons"] and "model reward:" in out)
    assert main(["select", str(run)]) == 0
    assert main(["report", str(run)]) == 0
    html = (run / "report.html").read_text()
    assert "k-step rollout error" in html and "The dynamics model: negative log-likelihood" in html
    assert "reward error where the data is rewarded" in html
    assert main(["export", str(run), "--out", str(tmp_path / "policy")]) == 0

    from offrl.training.policy import checkpoint_policy

    act = np.asarray(checkpoint_policy(run, d["selected_step"])(np.zeros((4, 3), np.float32)))
    assert act.shape == (4, 2) and np.all(np.abs(act) < 1)


def test_combo_end_to_end_train_resume_diagnose_report_export(tmp_path, capsys):
    one = save_dataset(tmp_path / "one.h5", make_dataset(chain_arrays(episodes=1), {"task": "toy"}))
    run = tmp_path / "combo"
    # One episode: nothing to hold out for model selection; refused before anything is written.
    assert main(["train", "--algo", "combo", "--dataset", str(one), "--out", str(run), "--steps", "160",
                 *TINY, *_tiny("combo")]) == 1
    assert "held-out episodes" in capsys.readouterr().err and not run.exists()
    data = save_dataset(tmp_path / "d.h5", make_dataset(chain_arrays(episodes=10), {"task": "toy"}))
    assert main(["train", "--algo", "combo", "--dataset", str(data), "--out", str(run), "--steps", "160",
                 *TINY, *_tiny("combo")]) == 0
    assert main(["train", "--resume", "--out", str(run), "--steps", "200", "--no-progress"]) == 0
    recs = rd.read_metrics(run)
    assert [r["step"] for r in recs] == [40, 80, 120, 160, 200]
    assert recs[-1]["heldout/model_mse"] == pytest.approx(recs[-2]["heldout/model_mse"])  # frozen after the phase
    assert main(["diagnose", str(run)]) == 0
    d = json.loads((run / "diagnosis.json").read_text())
    assert d["model"]["verdict"] in ("overfitting", "underfitting", "healthy") and d["selected_step"] in (160, 200)
    assert main(["report", str(run)]) == 0 and "k-step rollout error" in (run / "report.html").read_text()
    assert main(["export", str(run), "--out", str(tmp_path / "policy")]) == 0
    assert recs[-1]["train/cql_regularizer"] != 0 and np.isfinite(recs[-1]["heldout/cql_regularizer"])
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["agent"]["conservative_weight"] == 1.0 and cfg["agent"]["real_ratio"] == 0.5


def test_mopo_resume_inside_the_model_phase_matches_an_uninterrupted_run(tmp_path):
    import shutil

    from offrl.training.policy import load_state

    data = save_dataset(tmp_path / "d.h5", make_dataset(chain_arrays(episodes=10), {"task": "toy"}))
    args = ["train", "--algo", "mopo", "--dataset", str(data), "--steps", "160", *TINY, *_tiny("mopo")]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main([*args, "--out", str(full)]) == 0
    assert main([*args, "--out", str(part)]) == 0
    # A crash just after the checkpoint of step 40, inside the 120-step model phase: the members' snapshots,
    # their best held-out errors and the elites must come back from the checkpoint, not start afresh.
    for step in (80, 120, 160):
        shutil.rmtree(part / rd.CHECKPOINT_DIR / str(step))
    assert main(["train", "--resume", "--out", str(part), "--no-progress"]) == 0
    a, b = rd.read_metrics(full), rd.read_metrics(part)
    assert [r["step"] for r in b] == [40, 80, 120, 160]
    for ra, rb in zip(a, b, strict=True):
        for k in ("model_mse", "heldout/model_mse", "heldout/model_rollout_mse", "q_data", "train/model_nll"):
            assert ra[k] == rb[k], (k, ra["step"])
    sa, _ = load_state(full, 160)
    sb, _ = load_state(part, 160)
    np.testing.assert_array_equal(sa.elite_idx, sb.elite_idx)
    for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb), strict=True):
        np.testing.assert_array_equal(x, y)


def test_mopo_resume_inside_the_policy_phase_restores_the_model_buffer_exactly(tmp_path):
    """A crash after the checkpoint of step 160, 40 steps into the policy phase: the model replay buffer (320 rows,
    already wrapped around by up to 40 steps x 8 rollouts x 2 steps) comes back from the checkpoint, so the resumed run
    ends in the same state as an uninterrupted one."""
    import shutil

    from offrl.training.policy import load_state

    data = save_dataset(tmp_path / "d.h5", make_dataset(chain_arrays(episodes=10), {"task": "toy"}))
    args = ["train", "--algo", "mopo", "--dataset", str(data), "--steps", "200", *TINY, *_tiny("mopo")]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main([*args, "--out", str(full)]) == 0
    assert main([*args, "--out", str(part)]) == 0
    shutil.rmtree(part / rd.CHECKPOINT_DIR / "200")
    assert main(["train", "--resume", "--out", str(part), "--no-progress"]) == 0
    sa, _ = load_state(full, 200)
    sb, _ = load_state(part, 200)
    s160, _ = load_state(full, 160)
    # up to 640 rows written (fewer where a model rollout terminated on the toy's success reward): wrapped around
    assert int(s160.buffer_size) == 320 and 0 <= int(s160.buffer_ptr) < 320
    for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb), strict=True):
        np.testing.assert_array_equal(x, y)
    assert rd.read_metrics(full)[-1]["q_data"] == rd.read_metrics(part)[-1]["q_data"]


@pytest.mark.sim
@pytest.mark.parametrize("algo", ["mopo", "combo"])
def test_the_workflow_command_runs_model_based_algorithms_end_to_end(algo, tmp_path, monkeypatch, capsys):
    """`offrl workflow --algo mopo|combo`: collect, train (model phase, then policy), diagnose with the model's
    verdict, select after the model phase, evaluate (analysis only)."""
    pytest.importorskip("metaworld")
    monkeypatch.chdir(tmp_path)
    argv = ["workflow", "--algo", algo, "--episodes", "6", "--horizon", "60", "--regime", "white",
            "--noise-sigma", "0.2", "--steps", "160", "--checkpoint-every", "40", "--eval-episodes", "1",
            "--bc-baseline-steps", "0", "--out", f"runs/{algo}", *_tiny(algo), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    d = json.loads((tmp_path / f"runs/{algo}/diagnosis.json").read_text())
    assert d["model"]["verdict"] in ("overfitting", "underfitting", "healthy") and "model:" in out
    assert d["selected_step"] == 160  # 40, 80 and 120 are the model phase: never a policy
    assert "successes" in json.dumps(json.loads((tmp_path / f"runs/{algo}/evaluation.json").read_text()))
