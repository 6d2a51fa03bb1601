"""MetaWorld adapter: dataset layout, seeding, scripted expert and batched evaluation."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("metaworld")

from offrl.envs import (  # noqa: E402
    DEFAULT_HORIZON,
    MetaWorldEnv,
    available_tasks,
    collect_episodes,
    evaluate_policy,
    scripted_policy,
)
from offrl.envs import metaworld as mw  # noqa: E402

pytestmark = pytest.mark.sim

TASK = "pick-place-v3"
KEYS = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")


def _episode_slices(data: dict[str, np.ndarray]) -> list[slice]:
    ends = np.flatnonzero(data["terminals"] | data["timeouts"])
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [slice(int(s), int(e) + 1) for s, e in zip(starts, ends, strict=True)]


@pytest.fixture(scope="module")
def short():
    """3 noisy episodes of 30 steps: too short for pick-place, so all of them time out."""
    return collect_episodes(TASK, 3, horizon=30, seed=0, progress=False)


@pytest.fixture(scope="module")
def expert_runs():
    """5 noiseless episodes at the default horizon, with termination on success."""
    return collect_episodes(TASK, 5, horizon=DEFAULT_HORIZON, noise_sigma=0.0, seed=0, progress=False)


def test_shapes_and_dtypes(short):
    data, info = short
    n = len(data["rewards"])
    assert n == 90  # 3 episodes x 30 steps, none finishes pick-place that fast
    dims = {"observations": (n, 39), "next_observations": (n, 39), "actions": (n, 4)}
    for key in KEYS:
        assert data[key].shape == dims.get(key, (n,)), key
    for key in ("observations", "next_observations", "actions", "rewards"):
        assert data[key].dtype == np.float32, key
    assert data["terminals"].dtype == np.bool_ and data["timeouts"].dtype == np.bool_
    assert info["episodes"] == 3 and info["horizon"] == 30 and info["transitions"] == n
    assert info["mean_episode_length"] == pytest.approx(30.0)
    assert info["action_low"] == [-1.0] * 4 and info["action_high"] == [1.0] * 4
    assert np.all(data["actions"] >= -1.0) and np.all(data["actions"] <= 1.0)
    assert np.all(np.isfinite(data["observations"]))


@pytest.mark.parametrize("which", ["short", "expert_runs"])
def test_episode_boundaries_are_consistent(which, request):
    data, info = request.getfixturevalue(which)
    assert not np.any(data["terminals"] & data["timeouts"])
    episodes = _episode_slices(data)
    assert len(episodes) == info["episodes"]
    assert episodes[-1].stop == len(data["rewards"])
    for ep in episodes:
        length = ep.stop - ep.start
        assert 1 <= length <= info["horizon"]
        # Only the last transition may end the episode; a timeout means the horizon was used up.
        assert not np.any(data["terminals"][ep][:-1] | data["timeouts"][ep][:-1])
        if data["timeouts"][ep][-1]:
            assert length == info["horizon"]
        # Inside an episode the next observation is the following observation.
        np.testing.assert_array_equal(data["next_observations"][ep][:-1], data["observations"][ep][1:])


@pytest.mark.parametrize("which", ["short", "expert_runs"])
def test_rewards_are_sparse_and_only_on_terminals(which, request):
    data, info = request.getfixturevalue(which)
    assert set(np.unique(data["rewards"])) <= {0.0, 1.0}
    np.testing.assert_array_equal(data["rewards"], data["terminals"].astype(np.float32))
    assert info["behaviour_success_rate"] == pytest.approx(data["terminals"].sum() / info["episodes"])


def test_noiseless_expert_solves_pick_place_within_default_horizon(expert_runs):
    data, info = expert_runs
    assert info["behaviour_success_rate"] >= 0.8
    assert data["terminals"].sum() >= 4
    assert info["mean_episode_length"] < DEFAULT_HORIZON


def test_noiseless_actions_are_the_expert_actions(expert_runs):
    data, _ = expert_runs
    expert = scripted_policy(TASK)
    np.testing.assert_array_equal(data["actions"], expert(data["observations"]))


def test_goal_is_observed_and_start_states_vary_between_resets(expert_runs):
    data, _ = expert_runs
    firsts = data["observations"][[ep.start for ep in _episode_slices(data)]]
    goals, objects = firsts[:, -3:], firsts[:, 4:7]
    assert np.all(np.abs(goals).sum(axis=1) > 0)  # goal-hidden envs would show zeros here
    # MetaWorld's goal-observable classes freeze the start state; the adapter must unfreeze it.
    assert len(np.unique(goals, axis=0)) == len(goals)
    assert len(np.unique(objects, axis=0)) == len(objects)


def test_without_termination_episodes_run_to_the_horizon():
    data, info = collect_episodes(
        TASK, 2, horizon=80, noise_sigma=0.0, seed=0, terminate_on_success=False, progress=False
    )
    assert len(data["rewards"]) == 160
    assert not data["terminals"].any()
    np.testing.assert_array_equal(np.flatnonzero(data["timeouts"]), [79, 159])
    # The expert keeps the object at the goal after the first success: several rewarded steps each.
    assert data["rewards"][:80].sum() > 1 and data["rewards"][80:].sum() > 1
    assert set(np.unique(data["rewards"])) == {0.0, 1.0}
    assert info["behaviour_success_rate"] == 1.0 and info["mean_episode_length"] == 80.0


def test_collection_is_deterministic_per_seed(short):
    data, info = short
    again, info_again = collect_episodes(TASK, 3, horizon=30, seed=0, progress=False)
    other, _ = collect_episodes(TASK, 3, horizon=30, seed=1, progress=False)
    for key in KEYS:
        np.testing.assert_array_equal(data[key], again[key])
    assert info == info_again
    assert not np.array_equal(data["observations"][0], other["observations"][0])
    assert not np.array_equal(data["actions"], other["actions"])


def test_evaluate_scripted_and_zero_policies():
    expert = scripted_policy(TASK)
    result = evaluate_policy(expert, TASK, episodes=6, seed=0, num_envs=3)
    assert set(result) == {"success_rate", "successes", "episodes", "mean_episode_length", "episode_successes",
                           "seconds"}
    assert result["episodes"] == 6 and result["success_rate"] >= 0.8
    assert result["success_rate"] == pytest.approx(result["successes"] / 6)
    assert len(result["episode_successes"]) == 6 and sum(result["episode_successes"]) == result["successes"]
    # Per-episode seeds: the batch width changes the speed, never the answer, nor which episode succeeded.
    same = evaluate_policy(expert, TASK, episodes=6, seed=0, num_envs=2)
    assert same["successes"] == result["successes"]
    assert same["episode_successes"] == result["episode_successes"]
    assert same["mean_episode_length"] == result["mean_episode_length"]

    calls = []

    def zero(obs):
        calls.append(obs.shape)
        return np.zeros((obs.shape[0], 4), np.float32)

    idle = evaluate_policy(zero, TASK, episodes=3, horizon=40, seed=0, num_envs=2)
    assert idle["success_rate"] == 0.0 and idle["successes"] == 0 and idle["episode_successes"] == [0, 0, 0]
    assert idle["mean_episode_length"] == 40.0
    # One call per time step on a fixed-width batch (so a jitted policy compiles once).
    assert set(calls) == {(2, 39)} and len(calls) == 80


def test_evaluation_start_states_differ_from_collection():
    seen = []

    def record(obs):
        seen.append(obs.copy())
        return np.zeros((obs.shape[0], 4), np.float32)

    evaluate_policy(record, TASK, episodes=2, horizon=1, seed=0, num_envs=2)
    collected, _ = collect_episodes(TASK, 2, horizon=1, seed=0, progress=False)
    assert not np.any(np.all(np.isclose(seen[0][:, None], collected["observations"][None]), axis=-1))


def test_evaluate_rejects_bad_policy_output():
    with pytest.raises(ValueError, match="policy_fn must map"):
        evaluate_policy(lambda o: np.zeros(4), TASK, episodes=2, horizon=5, num_envs=2)
    with pytest.raises(ValueError, match="non-finite"):
        evaluate_policy(lambda o: np.full((o.shape[0], 4), np.nan), TASK, episodes=1, horizon=5)


def test_env_interface_and_horizon_guard():
    env = MetaWorldEnv(TASK, seed=3, horizon=2)
    assert (env.obs_dim, env.act_dim, env.horizon) == (39, 4, 2)
    np.testing.assert_array_equal(env.action_low, -np.ones(4, np.float32))
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(4))
    obs = env.reset()
    assert obs.shape == (39,) and obs.dtype == np.float32
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3))
    for _ in range(2):
        obs, success = env.step(np.full(4, 5.0))  # out-of-range actions are clipped, not rejected
        assert obs.dtype == np.float32 and isinstance(success, bool)
    with pytest.raises(RuntimeError, match="horizon"):
        env.step(np.zeros(4))
    env.close()


def test_argument_errors():
    with pytest.raises(ValueError, match="pick-place-v3") as err:
        collect_episodes("pick-plase-v3", 1, progress=False)
    assert "reach-v3" in str(err.value)
    with pytest.raises(ValueError, match="episodes"):
        collect_episodes(TASK, 0, progress=False)
    with pytest.raises(ValueError, match="horizon"):
        collect_episodes(TASK, 1, horizon=0, progress=False)
    with pytest.raises(ValueError, match="noise_sigma"):
        collect_episodes(TASK, 1, noise_sigma=-0.1, progress=False)
    with pytest.raises(ValueError, match="Unknown MetaWorld task"):
        evaluate_policy(lambda o: o[:, :4], "nope", episodes=1)
    with pytest.raises(ValueError, match="Unknown MetaWorld task"):
        scripted_policy("nope")
    assert TASK in available_tasks() and len(available_tasks()) == 50


def test_missing_simulator_raises_install_hint(monkeypatch):
    for name in ("metaworld", "metaworld.env_dict", "metaworld.policies"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(RuntimeError, match=r"pip install 'offrl\[sim\]'"):
        mw.available_tasks()
    with pytest.raises(RuntimeError, match="MetaWorld is not installed"):
        collect_episodes(TASK, 1, progress=False)


MULTI = "reach-v3+drawer-open-v3"


def test_multi_task_spec_validation():
    assert mw.task_list(MULTI) == ["reach-v3", "drawer-open-v3"]
    assert mw.task_list(TASK) == [TASK]
    mw._check_task(TASK)  # a single task is still fine
    mw._check_task("pick-place-v3+drawer-open-v3+reach-v3")
    with pytest.raises(ValueError, match="'drawer-opne-v3'") as err:
        mw._check_task("reach-v3+drawer-opne-v3")
    assert "Unknown MetaWorld task" in str(err.value) and "pick-place-v3" in str(err.value)
    with pytest.raises(ValueError, match="repeats 'reach-v3'"):
        mw._check_task("reach-v3+drawer-open-v3+reach-v3")
    with pytest.raises(ValueError, match="Unknown MetaWorld task ''"):
        mw._check_task("reach-v3+")
    with pytest.raises(ValueError, match="Unknown MetaWorld task"):
        collect_episodes("reach-v3+nope", 1, progress=False)
    with pytest.raises(ValueError, match="Unknown MetaWorld task"):
        scripted_policy("nope+reach-v3")
    assert isinstance(mw.make_env(TASK, seed=0, horizon=2), MetaWorldEnv)


def test_multi_task_env_interface_and_task_cycle():
    env = mw.make_env(MULTI, seed=3, horizon=2)
    assert isinstance(env, mw.MultiTaskEnv) and env.task == MULTI
    assert (env.obs_dim, env.act_dim, env.horizon) == (41, 4, 2)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(4))
    seen = []
    for _ in range(3):
        obs = env.reset()
        assert obs.shape == (41,) and obs.dtype == np.float32
        seen.append(int(np.argmax(obs[39:])))
        obs, success = env.step(np.zeros(4))
        assert obs.shape == (41,) and isinstance(success, bool)
        assert int(np.argmax(obs[39:])) == seen[-1]
    assert seen == [1, 0, 1]  # starts at task seed % T, then alternates
    env.seed(4)
    assert np.argmax(env.reset()[39:]) == 0
    env.close()


def test_multi_task_collection_has_one_hot_and_alternates_tasks():
    data, info = collect_episodes(MULTI, 4, horizon=20, seed=0, progress=False)
    assert info["obs_dim"] == 41 and info["tasks"] == ["reach-v3", "drawer-open-v3"]
    assert info["task"] == MULTI
    assert data["observations"].shape[1] == 41 and data["next_observations"].shape[1] == 41
    for key in ("observations", "next_observations"):
        one_hot = data[key][:, 39:]
        assert set(np.unique(one_hot)) == {0.0, 1.0}
        np.testing.assert_array_equal(one_hot.sum(axis=1), 1.0)
    episodes = _episode_slices(data)
    assert len(episodes) == 4
    tasks = []
    for ep in episodes:
        ids = np.argmax(data["observations"][ep][:, 39:], axis=1)
        assert np.all(ids == ids[0])
        assert np.all(np.argmax(data["next_observations"][ep][:, 39:], axis=1) == ids[0])
        tasks.append(int(ids[0]))
    assert tasks == [0, 1, 0, 1]
    single_info = collect_episodes(TASK, 1, horizon=2, seed=0, progress=False)[1]
    assert single_info["tasks"] == [TASK] and single_info["obs_dim"] == 39


def test_noiseless_multi_task_expert_succeeds():
    data, info = collect_episodes(MULTI, 2, horizon=DEFAULT_HORIZON, noise_sigma=0.0, seed=0, progress=False)
    assert info["behaviour_success_rate"] > 0
    expert = scripted_policy(MULTI)
    np.testing.assert_array_equal(data["actions"], expert(data["observations"]))
    np.testing.assert_array_equal(expert(data["observations"][0]), data["actions"][0])
    # Each row goes to its own task's expert, on the first 39 entries.
    single = scripted_policy("drawer-open-v3")
    rows = data["observations"][:, 40] == 1.0
    np.testing.assert_array_equal(data["actions"][rows], single(data["observations"][rows, :39]))
    with pytest.raises(ValueError, match="shape"):
        expert(np.zeros(39))


def test_multi_task_evaluation_balances_tasks():
    expert = scripted_policy(MULTI)
    seen = set()

    def spy(obs):
        seen.update(int(k) for k in np.argmax(obs[:, 39:], axis=1))
        assert obs.shape == (2, 41)
        return expert(obs)

    result = evaluate_policy(spy, MULTI, episodes=4, horizon=20, seed=0, num_envs=2)
    assert result["episodes"] == 4 and seen == {0, 1}
    seeds = mw._episode_seeds(0, 5, 2)
    assert [s % 2 for s in seeds] == [0, 1, 0, 1, 0] and min(seeds) >= 0
    plain = mw._episode_seeds(0, 5)
    assert all(abs(a - b) <= 1 for a, b in zip(seeds, plain, strict=True))


def test_multi_task_rendering_is_refused():
    from offrl.envs import RenderConfig

    with pytest.raises(ValueError, match="state-only"):
        collect_episodes(MULTI, 1, horizon=2, progress=False, render=RenderConfig())
    with pytest.raises(ValueError, match="state-only"):
        evaluate_policy(lambda o: np.zeros((o.shape[0], 4)), MULTI, episodes=1, horizon=2, render=RenderConfig())
