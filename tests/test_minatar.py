"""Logged replay from MinAtar (offrl/envs/minatar.py): the replay holds exactly the transitions the online agent
saw, in order, each with its logging step and the epsilon it acted with (MinAtar's schedule), and is deterministic
for a seed; the offline agents train on it with MinAtar's convolution and are evaluated in the game."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gymnax")

from offrl.agents.dqn import DQNConfig  # noqa: E402
from offrl.envs.minatar import ReplayConfig, collect_replay, epsilon_at, logging_gradient_steps  # noqa: E402

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
    # MinAtar's schedule by hand: 1.0 (uniformly random) until learning starts at step 100, then linear over 400
    # steps: 0.55 at step 300, 0.1 from step 500 on.
    assert np.allclose(a["epsilon"][:101], 1.0) and a["epsilon"][300] == pytest.approx(0.55)
    assert np.allclose(a["epsilon"][500:], 0.1) and np.allclose(a["epsilon"], epsilon_at(np.arange(n), TINY))
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


def test_the_logging_agents_gradient_steps_set_the_offline_budget():
    # One gradient step per environment step from learning_starts on: 500,000 - 5,000 by default, 100,000 - 5,000
    # for the replays of studies/discrete.py; TINY runs 3 chunks of 300 steps (900) and learns from step 100.
    assert logging_gradient_steps(ReplayConfig()) == 495_000
    assert logging_gradient_steps(ReplayConfig(steps=100_000)) == 95_000
    assert logging_gradient_steps(TINY) == 800
    # The offline default learning rate is the logging agent's, so equal steps are an equal budget (lr x steps).
    assert DQNConfig().lr == ReplayConfig().agent.lr == 2.5e-4 and ReplayConfig().agent.variant == "dqn"


def test_the_replay_is_deterministic_for_a_seed_and_settings_are_checked(replay):
    again = collect_replay("breakout", TINY, seed=0, progress=False)
    for k, v in replay["arrays"].items():
        np.testing.assert_array_equal(again["arrays"][k], v, err_msg=k)
    with pytest.raises(ValueError, match="unknown MinAtar game 'pong'"):
        collect_replay("pong", TINY)
    with pytest.raises(ValueError, match="logging agent is a DQN"):
        collect_replay("breakout", ReplayConfig(agent=DQNConfig(variant="rem")))


def test_collect_train_diagnose_select_a_logged_replay_and_refuse_mismatched_actions(tmp_path, capsys):
    import json

    from conftest import chain_arrays

    from offrl.cli import main
    from offrl.data import load_dataset, make_dataset, save_dataset

    data = tmp_path / "breakout.h5"
    assert main(["collect", "--task", "minatar/breakout", "--replay-steps", "1200", "--out", str(data)]) == 0
    ds = load_dataset(data)
    assert ds.num_actions == 3 and ds.observations.shape[1] == 400 and len(ds) == 1200
    assert ds.metadata["action_space"] == "discrete" and ds.metadata["grid_shape"] == [10, 10, 4]
    replay = np.load(str(data) + ".replay.npz")
    np.testing.assert_array_equal(replay["logging_step"], np.arange(1200))
    assert (tmp_path / "breakout.h5.learning_curve.json").is_file()
    first = tmp_path / "first.h5"
    assert main(["collect", "--task", "minatar/breakout", "--replay-steps", "1200", "--replay-part", "first",
                 "--replay-fraction", "0.25", "--out", str(first)]) == 0
    part = load_dataset(first)
    assert 250 < len(part) <= 300  # the first 25%, cut at the end of the last whole episode in it
    np.testing.assert_array_equal(part.observations, ds.observations[:len(part)])
    # The same part taken from the full replay, without training the online agent again, is the same file.
    derived = tmp_path / "first-derived.h5"
    assert main(["collect", "--task", "minatar/breakout", "--from-replay", str(data), "--replay-part", "first",
                 "--replay-fraction", "0.25", "--out", str(derived)]) == 0
    same = load_dataset(derived)
    for k in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations"):
        np.testing.assert_array_equal(getattr(same, k), getattr(part, k), err_msg=k)
    for k in ("logging_step", "epsilon"):
        np.testing.assert_array_equal(np.load(str(derived) + ".replay.npz")[k], np.load(str(first) + ".replay.npz")[k])
    assert same.metadata["replay_part"] == "first" and same.metadata["derived_from"] == str(data)
    assert same.metadata["online_final_return"] == part.metadata["online_final_return"]
    rand = tmp_path / "random.h5"
    assert main(["collect", "--task", "minatar/breakout", "--from-replay", str(data), "--replay-part", "random",
                 "--replay-fraction", "0.5", "--out", str(rand)]) == 0
    assert 0.3 * len(ds) < len(load_dataset(rand)) < 0.7 * len(ds)
    capsys.readouterr()
    # a part is not a full replay, and a missing file names the fix
    assert main(["collect", "--task", "minatar/breakout", "--from-replay", str(first), "--out", str(tmp_path / "x.h5")]) == 1
    assert "not a full MinAtar logged replay" in capsys.readouterr().err
    assert main(["collect", "--task", "minatar/breakout", "--from-replay", str(tmp_path / "no.h5"),
                 "--out", str(tmp_path / "x.h5")]) == 1
    assert "not found" in capsys.readouterr().err and not (tmp_path / "x.h5").exists()

    from offrl.training.policy import load_state

    run = tmp_path / "run"
    tiny = ["--dqn.hidden-dims", "16", "--steps", "60", "--checkpoint-every", "15", "--chunk-steps", "15",
            "--batch-size", "32", "--no-progress"]
    for variant in ("rem", "cql"):
        out = tmp_path / f"run-{variant}"
        # MinAtar's convolution on the flattened grids, reshaped by the dataset's metadata grid_shape (read by the
        # training loop: no --dqn.grid-shape; cql passes it, the same value, explicitly).
        given = ["--dqn.grid-shape", "10", "10", "4"] if variant == "cql" else []
        assert main(["train", "--algo", "dqn", "--dqn.variant", variant, "--dqn.num-heads", "4", "--dataset",
                     str(data), "--out", str(out), *given, *tiny]) == 0
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [15, 30, 45, 60]
        assert {"q_data", "td_error", "heldout/q_data", "td_error_over_target_var"} <= records[-1].keys()
        assert ("cql_regularizer" in records[-1]) == (variant == "cql")
        assert json.loads((out / "config.json").read_text())["agent"]["grid_shape"] == [10, 10, 4]
        conv = load_state(out, 60)[0].q_params["params"]["Conv_0"]["kernel"]
        assert conv.shape == (3, 3, 4, 16)
        run = out
    assert main(["diagnose", str(run)]) == 0
    capsys.readouterr()
    assert main(["select", str(run), "--selector", "last"]) == 0
    assert capsys.readouterr().out.strip() == "60"
    assert main(["evaluate", str(run), "--eval-episodes", "4"]) == 0
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["metric"] == "return" and [r["step"] for r in evaluation["results"]] == [15, 30, 45, 60]
    assert all(len(r["episode_returns"]) == 4 and r["mean_return"] >= 0 for r in evaluation["results"])
    assert main(["report", str(run)]) == 0
    assert "mean return" in (run / "report.html").read_text()
    assert main(["export", str(run), "--out", str(tmp_path / "policy")]) == 1
    assert "discrete-action run" in capsys.readouterr().err
    # A continuous algorithm on discrete actions, and the reverse: one line each, before anything is written.
    assert main(["train", "--algo", "cql", "--dataset", str(data), "--out", str(tmp_path / "bad"), *tiny[2:]]) == 1
    assert "use --algo dqn" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    cont = save_dataset(tmp_path / "cont.h5", make_dataset(chain_arrays(episodes=6), {"task": "toy"}))
    assert main(["train", "--algo", "dqn", "--dataset", str(cont), "--out", str(tmp_path / "bad2"), *tiny]) == 1
    assert "needs discrete actions" in capsys.readouterr().err
    # A grid shape that does not fit the observations: one line, and no run directory left behind.
    assert main(["train", "--algo", "dqn", "--dataset", str(data), "--out", str(tmp_path / "bad3"),
                 "--dqn.grid-shape", "10", "10", "3", *tiny]) == 1
    assert "grid" in capsys.readouterr().err and not (tmp_path / "bad3").exists()
