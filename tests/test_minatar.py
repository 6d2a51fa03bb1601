"""Logged replay from MinAtar (offrl/envs/minatar.py): the replay holds exactly the transitions the online agent
saw, in order, each with its logging step and the epsilon it acted with, and is deterministic for a seed."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gymnax")

from offrl.agents.dqn import DQNConfig  # noqa: E402
from offrl.envs.minatar import ReplayConfig, collect_replay, epsilon_at  # noqa: E402

TINY = ReplayConfig(steps=700, learning_starts=100, buffer_size=200, epsilon_decay_steps=400, chunk_steps=300,
                    agent=DQNConfig(variant="dqn", lr=2.5e-4, hidden_dims=(16,), target_update_every=50))


@pytest.fixture(scope="module")
def replay():
    return collect_replay("minatar/breakout", TINY, seed=0, progress=False)


def test_the_replay_is_every_transition_in_order_with_its_step_and_epsilon(replay):
    a = replay["arrays"]
    n = TINY.steps  # 700 steps in chunks of 300: the last chunk's surplus is not logged
    assert all(len(v) == n for v in a.values())
    np.testing.assert_array_equal(a["logging_step"], np.arange(n))
    # The schedule by hand: 1.0 at step 0, 0.1 from step 400 on, linear between (0.55 at step 200).
    assert a["epsilon"][0] == pytest.approx(1.0) and a["epsilon"][200] == pytest.approx(0.55)
    assert np.allclose(a["epsilon"][400:], 0.1) and np.allclose(a["epsilon"], epsilon_at(np.arange(n), TINY))
    assert a["observations"].shape == (n, 10, 10, 4) and a["observations"].dtype == np.uint8
    assert set(np.unique(a["observations"])) <= {0, 1} and ((a["actions"] >= 0) & (a["actions"] < 3)).all()
    # One stream of experience: the next observation is the following observation, except at an episode's end.
    ends = a["terminals"] | a["timeouts"]
    go_on = ~ends[:-1]
    np.testing.assert_array_equal(a["next_observations"][:-1][go_on], a["observations"][1:][go_on])
    # The learning curve's episodes are exactly the ends, and each return is the sum of its rewards.
    curve = replay["learning_curve"]
    np.testing.assert_array_equal(curve["step"], np.flatnonzero(ends))
    starts = np.concatenate([[0], curve["step"][:-1] + 1])
    sums = [a["rewards"][s:e + 1].sum() for s, e in zip(starts, curve["step"], strict=True)]
    np.testing.assert_allclose(curve["return"], sums)
    assert len(curve["step"]) > 5 and replay["num_actions"] == 3


def test_the_replay_is_deterministic_for_a_seed_and_settings_are_checked(replay):
    again = collect_replay("breakout", TINY, seed=0, progress=False)
    for k, v in replay["arrays"].items():
        np.testing.assert_array_equal(again["arrays"][k], v, err_msg=k)
    with pytest.raises(ValueError, match="unknown MinAtar game 'pong'"):
        collect_replay("pong", TINY)
    with pytest.raises(ValueError, match="logging agent is a DQN"):
        collect_replay("breakout", ReplayConfig(agent=DQNConfig(variant="rem")))
