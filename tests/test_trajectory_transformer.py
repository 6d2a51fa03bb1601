"""Trajectory Transformer (offrl.agents.trajectory_transformer): the discretisation round trip, causal masking,
overfitting a tiny dataset by teacher forcing, beam search on a toy problem with a known best plan, and a run
end to end through train, diagnose, select, export and evaluate."""

from __future__ import annotations

import functools
import json
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import chain_arrays

from offrl.agents import trajectory_transformer as tt
from offrl.cli import main
from offrl.data import Normalizer, make_dataset, save_dataset
from offrl.networks import trajectory_transformer as net
from offrl.training import run_dir as rd
from offrl.training.train import Inputs, _host_arrays, make_batch


@pytest.mark.parametrize("kind", ["quantile", "uniform"])
def test_discretisation_round_trip_is_within_one_bin(kind):
    rng = np.random.default_rng(0)
    x = np.stack([
        rng.normal(size=500),  # continuous
        rng.exponential(size=500),  # skewed
        (rng.random(500) < 0.05).astype(float),  # a sparse 0/1 reward: two point masses
        np.full(500, 3.0),  # constant
    ], axis=1).astype(np.float32)
    edges, centres = net.fit_discretizer(x, 20, kind)
    bins = np.asarray(net.discretize(jnp.asarray(x), jnp.asarray(edges)))
    back = np.asarray(net.reconstruct(jnp.asarray(bins), jnp.asarray(centres)))
    assert bins.min() >= 0 and bins.max() <= 19
    width = np.take_along_axis(edges[1:], bins, 0) - np.take_along_axis(edges[:-1], bins, 0)
    assert np.all(np.abs(back - x) <= width + 1e-5)  # within the value's own bin
    assert np.array_equal(back[:, 2:], x[:, 2:])  # point masses come back exactly (bin means)
    if kind == "quantile":  # equal shares: no bin of the continuous column holds more than twice its share
        assert np.bincount(bins[:, 0], minlength=20).max() <= 2 * 500 / 20
    else:
        assert np.allclose(np.diff(edges[:, 0]), (x[:, 0].max() - x[:, 0].min()) / 20, rtol=1e-4)


def test_a_future_token_cannot_change_a_past_logit_and_decoding_matches():
    t_dim, length = 5, 10  # obs 2, act 1, reward, value; two transitions
    model = net.TrajectoryGPT(t_dim, 6, length, embed_dim=16, num_heads=2, num_layers=2, dropout=0.0)
    tokens = np.random.default_rng(1).integers(0, 6, (1, length)).astype(np.int32)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), tokens)
    apply = jax.jit(model.apply)
    base = np.asarray(apply(params, tokens)[0])

    def changed_at(j):
        other = tokens.copy()
        other[0, j] = (other[0, j] + 1) % 6
        return np.asarray(apply(params, other)[0])

    for j in (3, 6, 9):
        changed = changed_at(j)
        assert np.array_equal(changed[:, :j], base[:, :j]), j  # every logit before position j is unchanged
        assert not np.allclose(changed[:, j:], base[:, j:])
    # No token attends to a value token (position 4): changing it moves only its own position's output.
    assert np.array_equal(np.delete(changed_at(4), 4, axis=1), np.delete(base, 4, axis=1))
    # Decoding one token at a time with the cache gives the same logits as the whole sequence at once.
    cache = net.empty_cache(1, length, 16, 2, 2)
    steps = []
    for p in range(length):
        logits, cache = apply(params, tokens[:, p:p + 1], p, cache)
        steps.append(np.asarray(logits[:, 0]))
    np.testing.assert_allclose(np.stack(steps, axis=1), base, atol=1e-5)


def _window_batch(ds, config):
    """Every window of a dataset as one batch, the way `offrl train` builds them."""
    inputs = Inputs("state", tuple(range(ds.obs_dim)), Normalizer.identity(ds.obs_dim), gamma=config.gamma,
                    window=config.context_transitions)
    data = _host_arrays(ds, inputs)
    return data, {k: jnp.asarray(v) for k, v in make_batch(data, np.arange(len(ds))).items()}


def test_the_model_overfits_a_tiny_dataset_to_near_zero_loss():
    ds = make_dataset(chain_arrays(episodes=2, length=4, obs_dim=2, act_dim=1), {"task": "toy"})
    config = tt.TTConfig(num_bins=16, context_transitions=2, num_layers=1, num_heads=2, embed_dim=32, dropout=0.0,
                         learning_rate=3e-3, weight_decay=0.0, horizon=1)
    data, batch = _window_batch(ds, config)
    assert batch["seq_observations"].shape == (8, 2, 2) and batch["seq_mask"].sum() == 14  # 2 windows end early
    state = tt.fit_data(tt.init(config, 2, 1, jax.random.PRNGKey(0)), data, config)

    @jax.jit
    def steps(state):
        def body(s, k):
            return tt.update(s, batch, k, config)[0], None
        return jax.lax.scan(body, state, jax.random.split(jax.random.PRNGKey(1), 100))[0]

    evaluate = jax.jit(lambda s: tt.evaluate(s, batch, None, config))
    before = evaluate(state)
    state = steps(steps(state))  # 200 Adam steps
    after = evaluate(state)
    assert float(before["token_loss"].mean()) > 1.0  # about log(16) untrained
    assert float(after["token_loss"].mean()) < 0.05
    for k in ("loss_states", "loss_actions", "loss_rewards", "loss_values"):
        assert float(after[k].mean()) < 0.1, k
    assert float(after["action_mse"].mean()) < 1e-3  # the teacher-forced action is the data's, to its bin


def test_beam_search_finds_the_known_best_plan():
    # One state and one action dimension, 4 bins. A toy model: actions uniform; reward 1 for a0 = 3 (the greedy
    # decoy), value 2 after a0 = 2 (its continuation is worth more) and reward 5 for (a0, a1) = (2, 1), else 0.
    # The best plan is (2, 1), scoring 0 + gamma * 5 + gamma^2 * 0.
    gamma, t_dim = 0.99, 4
    one_hot = lambda b: jnp.where(jnp.arange(4) == b[:, None], 0.0, -30.0)  # noqa: E731

    def step(cache, token, pos):
        phase = pos % t_dim
        a0 = jnp.where(pos == 1, token, cache["a0"])
        a1 = jnp.where(pos == 5, token, cache["a1"])
        reward = jnp.where(pos == 1, jnp.where(a0 == 3, 1, 0), jnp.where((a0 == 2) & (a1 == 1), 2, 0))
        value = jnp.where((pos == 2) & (a0 == 2), 2, 0)
        logits = jnp.where(phase == 1, one_hot(reward), jnp.where(phase == 2, one_hot(value), jnp.zeros((1, 4))))
        return logits, {"a0": a0, "a1": a1}

    b = 3
    cache = {"a0": jnp.zeros(b, jnp.int32), "a1": jnp.zeros(b, jnp.int32)}

    @functools.partial(jax.jit, static_argnames="horizon")
    def search(value_centres, horizon):
        return net.beam_search(
            step, cache, jnp.zeros((b, 4)), obs_dim=1, act_dim=1, horizon=horizon, beam_width=4, expand=8,
            action_cdf=0.0, gamma=gamma, reward_centres=jnp.array([0.0, 1.0, 5.0, 0.0]),
            value_centres=value_centres, key=jax.random.PRNGKey(0))

    plans, scores = search(jnp.arange(4.0), 2)
    assert np.array_equal(np.asarray(plans)[:, :, 0], [[2, 1]] * b)
    np.testing.assert_allclose(np.asarray(scores), gamma * 5, rtol=1e-5)
    # Scored by the reward alone one step ahead (horizon 1, no value), the decoy wins.
    plans, scores = search(jnp.zeros(4), 1)
    assert np.array_equal(np.asarray(plans)[:, 0, 0], [3] * b) and np.allclose(np.asarray(scores), 1.0)


class Line:
    """A 1-d point moved by the action; succeeds at x >= 2 (a gymnasium environment, built lazily)."""

    def __new__(cls):
        gym = pytest.importorskip("gymnasium")

        class _Line(gym.Env):
            observation_space = gym.spaces.Box(-10.0, 10.0, (1,), np.float32)
            action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

            def reset(self, *, seed=None, options=None):
                super().reset(seed=seed)
                self.x = 0.0
                return np.array([self.x], np.float32), {}

            def step(self, action):
                self.x += float(np.clip(action[0], -1, 1))
                return np.array([self.x], np.float32), float(self.x >= 2), False, False, {"success": self.x >= 2}

        return _Line()


def test_tt_end_to_end_train_diagnose_select_export_evaluate(tmp_path, capsys, monkeypatch):
    data = save_dataset(tmp_path / "d.h5", make_dataset(chain_arrays(episodes=8, obs_dim=1, act_dim=1),
                                                        {"task": "toy", "action_low": [-1], "action_high": [1]}))
    run = tmp_path / "tt"
    flags = ["--tt.num-bins", "8", "--tt.context-transitions", "2", "--tt.num-layers", "1", "--tt.num-heads", "2",
             "--tt.embed-dim", "16", "--tt.horizon", "1", "--tt.beam-width", "2", "--tt.expand", "2",
             "--tt.dropout", "0", "--checkpoint-every", "10", "--chunk-steps", "10", "--batch-size", "16", "--no-progress"]
    # A setting that cannot work fails before anything is written, naming the flag.
    assert main(["train", "--algo", "tt", "--dataset", str(data), "--out", str(run), "--steps", "40", *flags,
                 "--tt.horizon", "3", "--tt.gamma", "1"]) == 1
    err = capsys.readouterr().err
    assert "--tt.horizon" in err and "--tt.gamma" in err and not run.exists()
    assert main(["train", "--algo", "tt", "--dataset", str(data), "--out", str(run), "--steps", "40", *flags]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["algo"] == "tt" and cfg["agent"]["context_transitions"] == 2 and set(cfg["num_params"]) == {
        "transformer"}
    recs = rd.read_metrics(run)
    assert [r["step"] for r in recs] == [10, 20, 30, 40]
    for k in ("token_loss", "token_log_likelihood", "loss_states", "loss_actions", "loss_rewards", "loss_values",
              "action_mse"):
        assert np.isfinite(recs[-1][k]) and np.isfinite(recs[-1][f"heldout/{k}"]), k
    assert "q_data" not in recs[-1]
    assert main(["diagnose", str(run)]) == 0
    d = json.loads((run / "diagnosis.json").read_text())
    assert d["evidence"]["metric"] == "heldout/token_log_likelihood" and d["verdict"] != "over-estimation"
    assert d["peak_step"] == d["selected_step"] and d["selected_step"] in (10, 20, 30, 40)
    capsys.readouterr()
    assert main(["select", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(d["selected_step"])
    assert main(["export", str(run), "--out", str(tmp_path / "policy")]) == 0

    from offrl.export import load_policy
    from offrl.training.policy import checkpoint_policy

    exported = load_policy(tmp_path / "policy")
    obs = np.array([[0.0], [0.5], [1.5], [-1.0]], np.float32)
    act = exported(obs)
    assert act.shape == (4, 1) and np.all(np.abs(act) <= 1)
    assert np.array_equal(act, checkpoint_policy(run, d["selected_step"])(obs))

    sim = types.ModuleType("offrl_test_tt_line")
    sim.make = Line
    monkeypatch.setitem(sys.modules, "offrl_test_tt_line", sim)
    # 4 episodes: 4 simulators in lockstep, the batch size the planner was compiled for above.
    assert main(["evaluate", str(run), "--env", "offrl_test_tt_line:make", "--horizon", "3", "--episodes", "4"]) == 0
    ev = json.loads((run / "evaluation.json").read_text())
    assert [r["step"] for r in ev["results"]] == [10, 20, 30, 40]
