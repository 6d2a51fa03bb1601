"""The offline DQN family (offrl/agents/dqn.py): every loss against hand computation on a network whose output is a
chosen constant, the MinAtar convolution on grids and flattened grids (and against flax's Conv), and a two-state
chain where every variant learns the optimal actions from uniformly logged data (the first action pays only
through bootstrapping)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from offrl.agents import dqn


def test_huber_and_quantile_huber_by_hand():
    np.testing.assert_allclose(dqn.huber(jnp.array([0.5, 2.0, -3.0])), [0.125, 1.5, 2.5])
    # Two quantiles (tau = 0.25, 0.75) at 0 against a target of 2: u = 2 > 0 everywhere, so the weights are the
    # taus: 0.25 * huber(2) + 0.75 * huber(2) = 0.25 * 1.5 + 0.75 * 1.5 = 1.5. Below the target the upper
    # quantile pays three times more than the lower one.
    loss = dqn.quantile_huber_loss(jnp.zeros((1, 2)), jnp.full((1, 2), 2.0))
    np.testing.assert_allclose(loss, [1.5])
    # A target below both: weights 1 - tau = 0.75, 0.25; u = -1: huber 0.5 -> 0.75 * 0.5 + 0.25 * 0.5 = 0.5.
    np.testing.assert_allclose(dqn.quantile_huber_loss(jnp.ones((1, 2)), jnp.zeros((1, 1))), [0.5])


def test_rem_weights_are_a_random_convex_combination():
    a = dqn.rem_weights(jax.random.PRNGKey(0), 5)
    b = dqn.rem_weights(jax.random.PRNGKey(1), 5)
    assert a.shape == (5,) and float(a.sum()) == pytest.approx(1.0) and bool((a >= 0).all())
    assert not np.allclose(a, b)


def _constant_net_state(config, outputs_online, outputs_target):
    """A state whose online and target networks output the given (O, A) arrays for every observation: every
    kernel zero (the hidden layer outputs relu(0) = 0), the last bias the values."""
    online, target = np.asarray(outputs_online, np.float32), np.asarray(outputs_target, np.float32)
    state = dqn.init(config, 3, online.shape[1], jax.random.PRNGKey(0))

    def with_bias(values):
        params = jax.tree.map(jnp.zeros_like, state.q_params)
        last = f"Dense_{len(config.hidden_dims)}"
        params["params"][last]["bias"] = jnp.asarray(values.reshape(-1))
        return params

    return state.replace(q_params=with_bias(online), target_q_params=with_bias(target))


def _batch(action=0, reward=1.0, terminal=0.0):
    obs = jnp.ones((1, 3))
    return {"observations": obs, "next_observations": obs, "actions": jnp.array([action], jnp.int32),
            "rewards": jnp.array([reward]), "terminals": jnp.array([terminal])}


def _loss(state, config, batch, alpha=None):
    return float(dqn._td_parts(config, state.q_params, state.target_q_params, state.num_actions, batch,
                               jax.random.PRNGKey(0), alpha)["loss"][0])


def test_nature_and_double_dqn_targets_by_hand_with_and_without_jit():
    r, not_done = jnp.array([1.0, 1.0, 2.0]), jnp.array([1.0, 1.0, 0.0])
    # Transition 0: online argmax 1, target network (5, 2): Nature takes the target's own max 5, Double its value
    # of the online choice, 2. Transition 1: both networks prefer action 0: the targets agree. Transition 2 ends
    # the episode: y = r for both.
    online = jnp.array([[1.0, 3.0], [4.0, 0.0], [0.0, 9.0]])
    target = jnp.array([[5.0, 2.0], [6.0, 1.0], [7.0, 8.0]])
    for f in (lambda *a: a[0](*a[1:]), lambda *a: jax.jit(a[0])(*a[1:])):
        nature = f(dqn.nature_dqn_target, r, not_done, 0.5, target)
        double = f(dqn.double_dqn_target, r, not_done, 0.5, online, target)
        np.testing.assert_allclose(nature, [1 + 0.5 * 5, 1 + 0.5 * 6, 2.0])
        np.testing.assert_allclose(double, [1 + 0.5 * 2, 1 + 0.5 * 6, 2.0])


def test_dqn_is_nature_dqn_double_dqn_its_own_variant_and_the_cql_penalty_by_hand():
    config = dqn.DQNConfig(variant="dqn", gamma=0.5, hidden_dims=(4,), encoder="mlp")
    # Online Q = [1, 3] (argmax 1), target network's Q = [5, 2] (argmax 0): the two targets differ.
    state = _constant_net_state(config, [[1.0, 3.0]], [[5.0, 2.0]])
    # Nature DQN: y = 1 + 0.5 * max(5, 2) = 3.5; Q(s, 0) = 1; u = 2.5: huber 2.5 - 0.5 = 2.0.
    assert _loss(state, config, _batch()) == pytest.approx(2.0)
    assert _loss(state, config, _batch(terminal=1.0)) == pytest.approx(0.0)  # y = r = 1 = Q(s, 0)
    # Double DQN: the online network picks action 1, the target network values it at 2: y = 2, u = 1: huber 0.5.
    double = dataclasses.replace(config, variant="double_dqn")
    assert _loss(state, double, _batch()) == pytest.approx(0.5)
    assert float(dqn.evaluate(state, _batch(), jax.random.PRNGKey(0), double)["target_q"][0]) == pytest.approx(2.0)
    # CQL(H) on the DQN (Nature) loss.
    cql = dataclasses.replace(config, variant="cql", cql_alpha=2.0)
    penalty = math.log(math.exp(1.0) + math.exp(3.0)) - 1.0  # logsumexp_a Q(s, a) - Q(s, a_data)
    assert _loss(state, cql, _batch()) == pytest.approx(2.0 + 2.0 * penalty, rel=1e-6)
    parts = dqn.evaluate(state, _batch(), jax.random.PRNGKey(0), cql)
    assert float(parts["cql_regularizer"][0]) == pytest.approx(penalty, rel=1e-6)
    assert float(parts["q_data"][0]) == 1.0 and float(parts["q_policy"][0]) == 3.0
    assert float(parts["target_q"][0]) == pytest.approx(3.5) and float(parts["td_error"][0]) == pytest.approx(6.25)


def test_the_minatar_torso_reads_grids_and_flattened_grids_alike():
    """Young & Tian 2019's convolution (3x3, 16 channels, stride 1, no padding) on (B, 10, 10, C) grids, and on
    the same grids flattened as offrl datasets store them when ``grid_shape`` says their shape."""
    grids = jax.random.bernoulli(jax.random.PRNGKey(1), 0.3, (5, 10, 10, 4)).astype(jnp.float32)
    flat = grids.reshape(5, -1)  # the row-major flattening of offrl.data.collect
    for variant, outputs in (("dqn", 1), ("rem", 3), ("qr_dqn", 7)):
        on_grid = dqn.DQNConfig(variant=variant, num_heads=3, num_quantiles=7)
        state = dqn.init(on_grid, (10, 10, 4), 6, jax.random.PRNGKey(0))
        params = state.q_params["params"]
        assert params["Conv_0"]["kernel"].shape == (3, 3, 4, 16)
        assert params["Dense_0"]["kernel"].shape == (8 * 8 * 16, 128)  # the 8x8x16 map, flattened, into 128 units
        q = dqn._net(on_grid, 6).apply(state.q_params, grids)
        assert q.shape == (5, outputs, 6) and q.dtype == jnp.float32
        on_flat = dataclasses.replace(on_grid, grid_shape=(10, 10, 4))
        flat_state = dqn.init(on_flat, 400, 6, jax.random.PRNGKey(0))
        assert jax.tree.map(jnp.shape, flat_state.q_params) == jax.tree.map(jnp.shape, state.q_params)
        np.testing.assert_allclose(dqn._net(on_flat, 6).apply(state.q_params, flat), q, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(dqn.greedy_action(state.q_params, flat, 6, on_flat),
                                      dqn.greedy_action(state.q_params, grids, 6, on_grid))
    # Vector observations keep the MLP; so does --dqn.encoder mlp on a grid.
    assert "Conv_0" not in dqn.init(dqn.DQNConfig(), 400, 6, jax.random.PRNGKey(0)).q_params["params"]
    mlp = dqn.init(dqn.DQNConfig(encoder="mlp"), (10, 10, 4), 6, jax.random.PRNGKey(0)).q_params["params"]
    assert "Conv_0" not in mlp and mlp["Dense_0"]["kernel"].shape == (400, 128)


def test_the_fast_minatar_convolution_is_flax_conv():
    """MinAtarConv (patches times a matrix) against the plain reference, flax.linen.Conv(16, (3, 3), VALID): the
    same parameters from the same key, the same outputs and gradients, with and without jit."""
    import flax.linen as nn

    x = jax.random.normal(jax.random.PRNGKey(2), (3, 10, 10, 5))
    fast, ref = dqn.MinAtarConv(16), nn.Conv(16, (3, 3), strides=1, padding="VALID")
    params = ref.init(jax.random.PRNGKey(0), x)
    mine = fast.init(jax.random.PRNGKey(0), x)
    assert jax.tree.map(jnp.shape, mine) == jax.tree.map(jnp.shape, params)
    np.testing.assert_allclose(mine["params"]["kernel"], params["params"]["kernel"])
    params = jax.tree.map(lambda p: p + 0.1, params)  # a nonzero bias too
    for apply in (lambda m, p, x: m.apply(p, x), lambda m, p, x: jax.jit(m.apply)(p, x)):
        np.testing.assert_allclose(apply(fast, params, x), apply(ref, params, x), rtol=1e-5, atol=1e-5)
    grads = [jax.grad(lambda p, m=m: (m.apply(p, x) ** 2).sum())(params) for m in (fast, ref)]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), *grads)


def test_grid_settings_that_do_not_fit_the_observations_are_refused():
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="300 cells but the observations have 400 features"):
        dqn.init(dqn.DQNConfig(grid_shape=(10, 10, 3)), 400, 3, key)
    with pytest.raises(ValueError, match="needs --dqn.grid-shape"):
        dqn.init(dqn.DQNConfig(encoder="minatar"), 400, 3, key)
    with pytest.raises(ValueError, match="grid-shape must be H W C"):
        dqn.init(dqn.DQNConfig(grid_shape=(400,)), 400, 3, key)
    with pytest.raises(ValueError, match="drop it"):
        dqn.init(dqn.DQNConfig(encoder="mlp", grid_shape=(10, 10, 4)), 400, 3, key)
    assert dqn.config_problems(dqn.DQNConfig(variant="c51"))  # the training loop refuses it before any run dir


def test_ensemble_and_rem_by_hand():
    online, target = [[1.0, 2.0], [3.0, 0.0]], [[0.0, 4.0], [2.0, 2.0]]  # 2 heads x 2 actions
    ens = dqn.DQNConfig(variant="ensemble", gamma=0.5, num_heads=2, hidden_dims=(4,), encoder="mlp")
    state = _constant_net_state(ens, online, target)
    # Head 0: y = 1 + 0.5 * max(0, 4) = 3, u = 3 - 1 = 2: 1.5. Head 1: y = 1 + 0.5 * 2 = 2, u = -1: 0.5. Mean 1.0.
    assert _loss(state, ens, _batch()) == pytest.approx(1.0)
    rem = dataclasses.replace(ens, variant="rem")
    # alpha = (0.25, 0.75): Q = 0.25 * 1 + 0.75 * 3 = 2.5; target mix = (1.5, 2.5), max 2.5; y = 2.25; u = -0.25.
    assert _loss(state, rem, _batch(), jnp.array([0.25, 0.75])) == pytest.approx(0.5 * 0.25**2)
    # Evaluated (and acting) with the heads' mean: Q = 2, target mix (1, 3), y = 2.5, td_error 0.25.
    parts = dqn.evaluate(state, _batch(), jax.random.PRNGKey(0), rem)
    assert float(parts["q_data"][0]) == pytest.approx(2.0) and float(parts["td_error"][0]) == pytest.approx(0.25)


def test_qr_dqn_target_by_hand():
    config = dqn.DQNConfig(variant="qr_dqn", gamma=0.5, num_quantiles=2, hidden_dims=(4,), encoder="mlp")
    # Online quantiles of action 0: (0, 0). Target quantiles: action 0 (2, 2), action 1 (0, 0): a* = 0 by the
    # mean, the target distribution 1 + 0.5 * (2, 2) = (2, 2): the loss of the first test, 1.5.
    state = _constant_net_state(config, [[0.0, 1.0], [0.0, 1.0]], [[2.0, 0.0], [2.0, 0.0]])
    assert _loss(state, config, _batch()) == pytest.approx(1.5)


def test_settings_that_cannot_work_are_refused():
    for bad, message in ((dict(variant="c51"), "variant"), (dict(gamma=1.0), "gamma"),
                         (dict(kappa=0.0), "kappa"), (dict(target_update_every=0), "target-update-every")):
        with pytest.raises(ValueError, match=message):
            dqn.init(dqn.DQNConfig(**bad), 3, 2, jax.random.PRNGKey(0))


def _chain_data(n=4000, seed=0):
    """Two states (one-hot), two actions, logged uniformly at random. State 0: action 0 ends the episode with
    reward 0.5, action 1 moves to state 1 with reward 0. State 1: action 0 ends with reward 1, action 1 with 0.
    With gamma 0.9, Q*(0, 1) = 0.9 > Q*(0, 0) = 0.5: the better first action pays only through the bootstrap."""
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 2, n)
    a = rng.integers(0, 2, n)
    eye = np.eye(2, dtype=np.float32)
    reward = np.where(s == 0, np.where(a == 0, 0.5, 0.0), np.where(a == 0, 1.0, 0.0)).astype(np.float32)
    terminal = ~((s == 0) & (a == 1))
    next_s = np.where(terminal, s, 1)
    return {"observations": jnp.asarray(eye[s]), "next_observations": jnp.asarray(eye[next_s]),
            "actions": jnp.asarray(a, jnp.int32), "rewards": jnp.asarray(reward),
            "terminals": jnp.asarray(terminal.astype(np.float32))}


@pytest.mark.parametrize("variant", dqn.VARIANTS)
def test_every_variant_learns_the_optimal_actions_of_a_chain_from_logged_data(variant):
    config = dqn.DQNConfig(variant=variant, gamma=0.9, lr=3e-3, target_update_every=50, hidden_dims=(32,),
                           encoder="mlp", num_heads=4, num_quantiles=8, cql_alpha=0.1)
    data = _chain_data()
    state = dqn.init(config, 2, 2, jax.random.PRNGKey(0))

    @jax.jit
    def step(state, key):
        idx = jax.random.randint(key, (64,), 0, data["actions"].shape[0])
        return dqn.update(state, {k: v[idx] for k, v in data.items()}, jax.random.fold_in(key, 1), config)

    for k in range(1500):
        state, metrics = step(state, jax.random.PRNGKey(k))
    greedy = dqn.greedy_action(state.q_params, jnp.eye(2), 2, config)
    assert greedy.tolist() == [1, 0], (variant, metrics)
    parts = dqn.evaluate(state, {k: v[:200] for k, v in data.items()}, jax.random.PRNGKey(0), config)
    q_s0 = dqn._values(config, dqn._net(config, 2).apply(state.q_params, jnp.eye(2)))[0]
    assert float(q_s0[1]) == pytest.approx(0.9, abs=0.15) and float(q_s0[0]) == pytest.approx(0.5, abs=0.15)
    assert float(parts["td_error"].mean()) < 0.05


def test_the_dqn_diagnosis_recommends_its_own_remedies():
    from offrl.workflow.diagnosis import diagnose_metrics

    x = np.arange(10)
    q = np.where(x <= 3, 0.1 * x, 0.3 - 0.05 * (x - 3))  # rises, then falls: overfitting
    records = [{"step": 100 * (i + 1), "q_data": float(v), "td_error": 1e-3, "q_error_estimate": 0.1}
               for i, v in enumerate(q)]
    d = diagnose_metrics(records, (0.0, 1.0), algo="dqn")
    assert d["verdict"] == "overfitting" and d["selected_step"] == 400
    assert "--dqn.variant cql" in d["recommendation"] and "VIB" not in d["recommendation"]
