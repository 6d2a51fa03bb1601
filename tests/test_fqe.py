"""Fitted Q evaluation: values of known policies on a two-step MDP, and the run-level wrapper."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from offrl.data import Normalizer, make_dataset
from offrl.workflow.fqe import FQEConfig, fqe_scores


def two_step_dataset(episodes: int = 400, seed: int = 0):
    """s0 = (0, x) -> s1 = (1, x) with no reward whatever the action; from s1 the reward is 1 iff a[0] > 0, and
    the episode ends (terminal). A policy that plays a[0] > 0 at s1 is worth gamma from s0, one that plays
    a[0] < 0 is worth 0. Behaviour actions are uniform in [-1, 1], so both policies are covered."""
    rng = np.random.default_rng(seed)
    obs, nxt, act, rew, term, tout = [], [], [], [], [], []
    for _ in range(episodes):
        x = rng.uniform(-1, 1)
        a0, a1 = rng.uniform(-1, 1, 2), rng.uniform(-1, 1, 2)
        obs += [[0.0, x], [1.0, x]]
        nxt += [[1.0, x], [2.0, x]]
        act += [a0, a1]
        rew += [0.0, float(a1[0] > 0)]
        term += [False, True]
        tout += [False, False]
    return make_dataset({
        "observations": np.array(obs), "next_observations": np.array(nxt), "actions": np.array(act),
        "rewards": np.array(rew), "terminals": np.array(term), "timeouts": np.array(tout),
    })


def constant_policy(pi, s):
    return jnp.broadcast_to(pi, (s.shape[0], pi.shape[-1]))


def test_fqe_recovers_the_values_of_known_policies():
    ds = two_step_dataset()
    gamma = 0.9
    policies = jnp.array([[0.7, 0.0], [-0.7, 0.0]])  # good, bad
    res = fqe_scores(policies, constant_policy, ds, Normalizer.identity(2), [0, 1], gamma,
                     FQEConfig(steps=3000, chunk=500, hidden_dims=(64, 64), tau=0.05, learning_rate=1e-3))
    good, bad = res["value"]
    assert good == pytest.approx(gamma, abs=0.08)
    assert bad == pytest.approx(0.0, abs=0.08)
    assert res["td_error"].shape == (2,)


def test_fqe_bootstraps_through_timeouts_not_terminals():
    ds = two_step_dataset(episodes=200)
    arrays = {k: getattr(ds, k).copy() for k in ("observations", "next_observations", "actions", "rewards",
                                                  "terminals", "timeouts")}
    # The first step now ends its episode on a timeout: the value of s1 must still flow back to s0.
    arrays["terminals"][0::2] = False
    arrays["timeouts"][0::2] = True
    cut = make_dataset(arrays)
    res = fqe_scores(jnp.array([[0.7, 0.0]]), constant_policy, cut, Normalizer.identity(2), [0, 1], 0.9,
                     FQEConfig(steps=3000, chunk=500, hidden_dims=(64, 64), tau=0.05, learning_rate=1e-3))
    assert res["value"][0] == pytest.approx(0.9, abs=0.1)


def test_fqe_config_is_checked():
    with pytest.raises(ValueError, match="tau"):
        FQEConfig(tau=0.0)
    with pytest.raises(ValueError, match="steps"):
        FQEConfig(steps=0)
    with pytest.raises(ValueError, match="gamma"):
        fqe_scores(jnp.zeros((1, 2)), constant_policy, two_step_dataset(5), Normalizer.identity(2), [0, 1], 1.0)
