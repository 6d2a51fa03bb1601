"""Evaluation on any gymnasium environment (offrl.envs.gym): success from an info key, per-episode seeds, errors,
`offrl evaluate --env`, MetaWorld as one such environment, and docs/evaluate-your-simulator.md."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")

from offrl.envs import metaworld as mw  # noqa: E402
from offrl.envs.gym import evaluate_gym, resolve_env  # noqa: E402

GOAL = 3


class Line(gym.Env):
    """A point on a line: it starts at ``seed % 3`` (0 without a seed), moves by the action (clipped to
    [-1, 1]), succeeds at x >= 3 and falls off (terminated) at x <= -2. ``report`` says when the success flag
    appears in info: every step, only at the end of an episode, or never."""

    def __init__(self, key: str = "success", report: str = "always") -> None:
        self.observation_space = gym.spaces.Box(-10.0, 10.0, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.key, self.report = key, report
        self.x = 0.0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = float(seed % 3) if seed is not None else 0.0
        return np.array([self.x], np.float32), {"start": self.x}

    def step(self, action):
        self.x += float(np.clip(action[0], -1.0, 1.0))
        success, fell = self.x >= GOAL, self.x <= -2
        info = {"position": self.x}
        if self.report == "always" or (self.report == "at_end" and fell):
            info[self.key] = success
        return np.array([self.x], np.float32), float(success), fell, False, info


def right(obs):
    return np.ones((obs.shape[0], 1), np.float32)


def left(obs):
    return -np.ones((obs.shape[0], 1), np.float32)


def starts(episodes, seed=0):
    return np.array([s % 3 for s in mw._episode_seeds(seed, episodes)])


def test_success_rates_and_lengths_are_the_hand_computed_ones():
    x0 = starts(12)
    assert set(x0) == {0, 1, 2}  # the seeds cover every start
    for horizon in (1, 2, 3, 5):
        result = evaluate_gym(right, Line, episodes=12, seed=0, horizon=horizon, num_envs=4)
        assert set(result) == {"success_rate", "successes", "episodes", "mean_episode_length",
                               "episode_successes", "horizon", "seconds"}
        assert result["horizon"] == horizon
        # Moving right from x0 reaches 3 after 3 - x0 steps; the episode ends there (terminate_on_success).
        expected = (x0 + horizon >= GOAL).astype(int)
        assert result["episode_successes"] == expected.tolist()
        assert result["successes"] == expected.sum() and result["episodes"] == 12
        assert result["success_rate"] == expected.sum() / 12
        assert result["mean_episode_length"] == pytest.approx(np.minimum(GOAL - x0, horizon).mean())
    # Without terminate_on_success the outcome is the same, the episodes run to the horizon.
    full = evaluate_gym(right, Line, episodes=12, seed=0, horizon=5, terminate_on_success=False, num_envs=4)
    assert full["episode_successes"] == [1] * 12 and full["mean_episode_length"] == 5.0
    # Moving left never succeeds; the environment ends each episode when the point falls off (x <= -2).
    fell = evaluate_gym(left, Line, episodes=12, seed=0, horizon=10, num_envs=4)
    assert fell["success_rate"] == 0.0 and fell["episode_successes"] == [0] * 12
    assert fell["mean_episode_length"] == pytest.approx((x0 + 2).mean())


def test_the_result_does_not_depend_on_num_envs_and_seeds_change_it():
    def policy(obs):  # right from even positions, left from odd ones: only a start at 2 reaches 3 (in 1 step)
        return np.where(obs % 2 == 0, 1.0, -1.0).astype(np.float32)

    results = [evaluate_gym(policy, Line, episodes=7, seed=5, horizon=4, num_envs=n) for n in (1, 2, 3, 7, 16)]
    for r in results[1:]:
        assert {k: v for k, v in r.items() if k != "seconds"} == {k: v for k, v in results[0].items()
                                                                    if k != "seconds"}
    assert 0 < results[0]["successes"] < 7
    assert results[0]["episode_successes"] == (starts(7, 5) == 2).astype(int).tolist()
    other = evaluate_gym(policy, Line, episodes=7, seed=6, horizon=4, num_envs=3)
    assert other["episode_successes"] == (starts(7, 6) == 2).astype(int).tolist()
    assert other["mean_episode_length"] == pytest.approx(np.where(starts(7, 6) == 2, 1, 4).mean())


def test_the_policy_gets_a_fixed_batch_and_the_success_flag_may_come_at_the_end():
    shapes = []

    def recording(obs):
        shapes.append((obs.shape, obs.dtype))
        return left(obs)

    # 5 episodes on 3 copies: idle copies run throw-away episodes, the batch keeps its width.
    evaluate_gym(recording, Line, episodes=5, seed=0, horizon=10, num_envs=3)
    assert set(shapes) == {((3, 1), np.dtype(np.float32))}
    # A flag reported only at the episode's last step counts (as final-info style environments do).
    late = evaluate_gym(left, lambda: Line(report="at_end"), episodes=4, seed=0, horizon=10, num_envs=2)
    assert late["episode_successes"] == [0, 0, 0, 0]


def test_a_custom_success_key_and_a_missing_one():
    custom = evaluate_gym(right, lambda: Line(key="is_success"), episodes=3, horizon=5, success_key="is_success")
    assert custom["success_rate"] == 1.0
    with pytest.raises(ValueError, match=r"never reported info\['success'\].*'is_success'.*--success-key"):
        evaluate_gym(right, lambda: Line(key="is_success"), episodes=3, horizon=5)
    with pytest.raises(ValueError, match=r"info\['success'\].*'position'"):
        evaluate_gym(right, lambda: Line(report="never"), episodes=2, horizon=5)


def test_environment_specs_limits_and_errors(tmp_path, monkeypatch):
    # A registered id with its own limit: no horizon needed; the environment truncates the episodes.
    gym.register("offrl-test/Line-v0", entry_point=Line, max_episode_steps=2)
    try:
        by_id = evaluate_gym(right, "offrl-test/Line-v0", episodes=6, seed=0)
        assert by_id["episode_successes"] == (starts(6) + 2 >= GOAL).astype(int).tolist()
        assert by_id["horizon"] == 2  # the limit used is returned
    finally:
        gym.registry.pop("offrl-test/Line-v0")
    # "module:factory" with the module in the current directory, as `offrl evaluate --env` gets it.
    (tmp_path / "offrl_test_sim.py").write_text(
        "import gymnasium as gym\n"
        "def make():\n"
        "    return gym.make('MountainCarContinuous-v0')\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "offrl_test_sim", raising=False)
    factory, name = resolve_env("offrl_test_sim:make")
    assert name == "offrl_test_sim:make" and factory().spec.id == "MountainCarContinuous-v0"
    monkeypatch.delitem(sys.modules, "offrl_test_sim")

    with pytest.raises(ValueError, match="declares no episode limit.*--horizon"):
        evaluate_gym(right, Line, episodes=1)
    with pytest.raises(ValueError, match="1-d observations but the policy expects 3-d"):
        evaluate_gym(right, Line, episodes=1, horizon=2, obs_dim=3)
    with pytest.raises(ValueError, match="1-d actions but the policy expects 2-d"):
        evaluate_gym(right, Line, episodes=1, horizon=2, act_dim=2)
    with pytest.raises(ValueError, match="policy_fn must map"):
        evaluate_gym(lambda o: np.zeros(1), Line, episodes=2, horizon=2)
    with pytest.raises(ValueError, match="non-finite"):
        evaluate_gym(lambda o: np.full((o.shape[0], 1), np.nan), Line, episodes=1, horizon=2)
    with pytest.raises(ValueError, match="flat Box observation space.*FlattenObservation"):
        evaluate_gym(right, lambda: gym.make("Blackjack-v1"), episodes=1, horizon=2)
    with pytest.raises(ValueError, match="must build a gymnasium.Env"):
        evaluate_gym(right, lambda: object(), episodes=1, horizon=2)
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        evaluate_gym(right, "no_such_module_xyz:make", episodes=1, horizon=2)
    with pytest.raises(ValueError, match="nor a registered gymnasium id"):
        evaluate_gym(right, "NoSuchEnv-v9", episodes=1, horizon=2)
    for bad in ({"episodes": 0}, {"num_envs": 0}, {"horizon": 0}, {"seed": -1}, {"success_key": ""}):
        with pytest.raises(ValueError):
            evaluate_gym(right, Line, **{"episodes": 1, "horizon": 2, **bad})


def _tiny_run(tmp_path):
    """A behaviour-cloning run (two checkpoints) on a dataset of 1-d observations and actions."""
    from conftest import chain_arrays, tiny_train_config

    from offrl.agents.bc import BCConfig
    from offrl.data import make_dataset, save_dataset
    from offrl.training.train import train

    data = save_dataset(tmp_path / "d.h5", make_dataset(chain_arrays(episodes=4, obs_dim=1, act_dim=1),
                                                        {"task": "toy", "action_low": [-1], "action_high": [1]}))
    return train(tiny_train_config(data, tmp_path / "run", algo="bc", bc=BCConfig(actor_hidden_dims=(8,)),
                                   steps=20, checkpoint_every=10, chunk_steps=10))


def test_offrl_evaluate_env_on_a_tiny_run(tmp_path, monkeypatch, capsys):
    from offrl.cli import main
    from offrl.training.policy import checkpoint_policy
    from offrl.workflow.evaluate import evaluate_run

    run = _tiny_run(tmp_path)
    sim = types.ModuleType("offrl_test_line")  # stands for the user's module with a factory
    sim.make = Line
    monkeypatch.setitem(sys.modules, "offrl_test_line", sim)
    assert main(["evaluate", str(run), "--env", "offrl_test_line:make", "--horizon", "4", "--eval-episodes", "5",
                 "--seed", "3"]) == 0
    assert "evaluation.json" in capsys.readouterr().out
    ev = json.loads((run / "evaluation.json").read_text())
    assert ev["env"] == {"kind": "gymnasium", "env": "offrl_test_line:make", "success_key": "success",
                         "terminate_on_success": True}
    assert ev["task"] is None and ev["horizon"] == 4 and ev["episodes"] == 5 and ev["used_for_selection"] is False
    assert [r["step"] for r in ev["results"]] == [10, 20]
    for row in ev["results"]:  # the same numbers as evaluate_gym on the checkpoint's policy
        direct = evaluate_gym(checkpoint_policy(run, row["step"]), Line, episodes=5, seed=3, horizon=4)
        assert row["episode_successes"] == direct["episode_successes"]
        assert row["mean_episode_length"] == direct["mean_episode_length"]

    # Without --horizon (and none in the dataset's metadata) the environment's registered limit is used, and
    # evaluation.json records that number, not null.
    assert "horizon" not in json.loads((run / "config.json").read_text())["dataset"]["metadata"]
    gym.register("offrl-test/LineLimit-v0", entry_point=Line, max_episode_steps=3)
    try:
        out = evaluate_run(run, env="offrl-test/LineLimit-v0", episodes=4, steps=[20], progress=False)
    finally:
        gym.registry.pop("offrl-test/LineLimit-v0")
    ev = json.loads((run / "evaluation.json").read_text())
    assert out["horizon"] == ev["horizon"] == 3 and ev["env"]["env"] == "offrl-test/LineLimit-v0"
    assert 1 <= ev["results"][0]["mean_episode_length"] <= 3

    with pytest.raises(ValueError, match="not both"):
        evaluate_run(run, env=Line, task="reach-v3", horizon=4, progress=False)
    with pytest.raises(ValueError, match="only applies with env"):
        evaluate_run(run, success_key="is_success", progress=False)
    with pytest.raises(ValueError, match="3-d observations but the policy expects 1-d"):
        evaluate_run(run, env=lambda: gym.wrappers.TimeLimit(_Wide(), 5), progress=False)
    assert main(["evaluate", str(run), "--env", "offrl_test_line:make", "--horizon", "4", "--success-key",
                 "done"]) == 1
    err = capsys.readouterr().err
    assert "offrl: error:" in err and "info['done']" in err and "--success-key" in err


class _Wide(Line):
    def __init__(self):
        super().__init__()
        self.observation_space = gym.spaces.Box(-10.0, 10.0, (3,), np.float32)


@pytest.mark.sim
def test_metaworld_is_one_such_environment():
    pytest.importorskip("metaworld")
    from offrl.envs import evaluate_policy, scripted_policy
    from offrl.envs.gym import metaworld_env

    task, horizon = "pick-place-v3", 52  # the expert needs about 50 steps: some episodes succeed, some do not
    expert = scripted_policy(task)
    fast = evaluate_policy(expert, task, episodes=6, horizon=horizon, seed=2, num_envs=2)
    generic = evaluate_gym(expert, lambda: metaworld_env(task, horizon=horizon), episodes=6, seed=2,
                           horizon=horizon, num_envs=4)
    assert 0 < fast["successes"] < 6
    # Same seeds, same episodes: the fast path's numbers, through gymnasium's vector API.
    assert generic["episode_successes"] == fast["episode_successes"]
    assert generic["mean_episode_length"] == fast["mean_episode_length"]
    assert generic["successes"] == fast["successes"]


DOC = Path(__file__).resolve().parents[1] / "docs" / "evaluate-your-simulator.md"


def test_the_docs_page_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    assert namespace["result"]["success_rate"] == 1.0
