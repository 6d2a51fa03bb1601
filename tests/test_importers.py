"""Importers: each format read from a small file written in that format, relabelling, filtering, errors."""

from __future__ import annotations

import json
import warnings

import h5py
import numpy as np
import pytest

from offrl.data import DatasetError, load_dataset, save_dataset
from offrl.data.importers import FORMATS, import_dataset, import_npz, import_robomimic

# ----------------------------------------------------------------------------------------------------------
# robomimic: data/demo_<i>/{obs,next_obs,actions,rewards,dones}, as robomimic documents it
# ----------------------------------------------------------------------------------------------------------

# (demo index, steps, steps whose s' is a success state). demo_10 is written before demo_2 so that lexical
# order would differ from index order.
DEMOS = [(0, 4, [3]), (1, 3, []), (10, 3, []), (2, 5, [2, 3, 4])]


def _demo_states(d: int, n: int) -> dict[str, np.ndarray]:
    """Per-step observations for steps 0..n (n + 1 states): values encode demo and step."""
    t = np.arange(n + 1, dtype=np.float64)
    return {
        "robot0_eef_pos": np.stack([np.full(n + 1, d), t, 0.5 * t], axis=1),
        "object": np.stack([100.0 + d + 0 * t, -t], axis=1),
        "agentview_image": np.zeros((n + 1, 8, 8, 3), np.uint8),
    }


def write_robomimic(path, *, next_obs=True, demos=DEMOS, drop=None, broken_len=None):
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {}})
        data.attrs["total"] = sum(n for _, n, _ in demos)
        for d, n, success_steps in demos:
            g = data.create_group(f"demo_{d}")
            g.attrs["num_samples"] = n
            states = _demo_states(d, n)
            g.create_dataset("states", data=np.zeros((n, 5)))
            for k, v in states.items():
                g.create_dataset(f"obs/{k}", data=v[:-1])
                if next_obs:
                    g.create_dataset(f"next_obs/{k}", data=v[1:])
            if drop != ("actions", d):
                g.create_dataset("actions", data=np.full((n, 2), 0.1 * d) + np.arange(n)[:, None] * 0.01)
            r = np.zeros(n)
            r[success_steps] = 1.0
            g.create_dataset("rewards", data=r)
            g.create_dataset("dones", data=(r > 0).astype(np.int64))
            if broken_len == d:
                del g["obs/object"]
                g.create_dataset("obs/object", data=np.zeros((n - 1, 2)))


def test_robomimic_maps_demos_in_index_order_with_terminals_timeouts_and_key_order(tmp_path):
    path = tmp_path / "low_dim.hdf5"
    write_robomimic(path)
    ds = import_robomimic(path, obs_keys=["object", "robot0_eef_pos"])

    # demo_2 has dones at steps 2, 3, 4: it ends at its first done, so 3 of its 5 steps remain.
    assert len(ds) == 4 + 3 + 3 + 3
    assert ds.obs_dim == 5 and ds.act_dim == 2
    demo_of_step = ds.observations[:, 2]  # robot0_eef_pos[0] is the demo index; it comes after object's 2
    np.testing.assert_array_equal(demo_of_step, [0] * 4 + [1] * 3 + [2] * 3 + [10] * 3)
    np.testing.assert_array_equal(ds.observations[:, 0], 100 + demo_of_step)  # object first
    np.testing.assert_array_equal(np.flatnonzero(ds.terminals), [3, 9])
    np.testing.assert_array_equal(np.flatnonzero(ds.timeouts), [6, 12])
    # next_observations are the file's next_obs: the step counter advances by one inside each demo.
    np.testing.assert_array_equal(ds.next_observations[:, 1], ds.observations[:, 1] - 1)
    np.testing.assert_array_equal(ds.rewards[[3, 9]], [1, 1])
    assert ds.rewards.sum() == 2

    m = ds.metadata
    assert m["source_format"] == "robomimic" and m["source_path"] == str(path)
    assert m["obs_keys"] == ["object", "robot0_eef_pos"] and m["obs_key_dims"] == [2, 3]
    assert m["robomimic_env_args"]["env_name"] == "Lift"
    assert m["dropped"]["after_terminal"] == 2
    assert m["behaviour_success_rate"] == 0.5
    assert m["relabelling"]["rewards"] == "stored rewards"


def test_robomimic_default_keys_are_sorted_low_dim_and_next_obs_is_derived_when_missing(tmp_path):
    path = tmp_path / "no_next.hdf5"
    write_robomimic(path, next_obs=False)
    ds = import_dataset("robomimic", path)
    assert ds.metadata["obs_keys"] == ["object", "robot0_eef_pos"]
    assert ds.metadata["skipped_image_keys"] == ["agentview_image"]
    # Failed demos (1 and 10) lose their last step, which has no successor; terminal ones keep it.
    assert len(ds) == 4 + 2 + 3 + 2
    assert ds.metadata["dropped"]["without_successor"] == 2
    for sl in ds.episode_slices():
        np.testing.assert_array_equal(ds.next_observations[sl][:-1], ds.observations[sl][1:])
    # demo_2's terminal step 2 has a real successor (step 3) in the file.
    np.testing.assert_array_equal(ds.next_observations[8, 1], -3.0)


def test_robomimic_image_and_unknown_keys_are_refused_with_the_available_keys(tmp_path):
    path = tmp_path / "img.hdf5"
    write_robomimic(path)
    with pytest.raises(
        DatasetError,
        match=r"'agentview_image'.*image observations are not supported yet.*"
        r"\['object', 'robot0_eef_pos'\]",
    ):
        import_robomimic(path, obs_keys=["robot0_eef_pos", "agentview_image"])
    with pytest.raises(
        DatasetError,
        match=r"unknown observation key 'gripper'.*available keys are "
        r"\['agentview_image', 'object', 'robot0_eef_pos'\]",
    ):
        import_robomimic(path, obs_keys=["gripper"])


@pytest.mark.parametrize(
    "writer, match",
    [
        (lambda p: p.write_text("not hdf5"), r"not a readable HDF5 file"),
        (lambda p: h5py.File(p, "w").close(), r"no 'data' group"),
        (lambda p: write_robomimic(p, drop=("actions", 1)), r"data/demo_1 has no 'actions' dataset"),
        (
            lambda p: write_robomimic(p, broken_len=2),
            r"data/demo_2/obs: observation key 'object' has 4 steps.*5",
        ),
    ],
)
def test_robomimic_bad_files_name_the_problem(tmp_path, writer, match):
    path = tmp_path / "bad.hdf5"
    writer(path)
    with pytest.raises(DatasetError, match=match):
        import_robomimic(path)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.hdf5 not found"):
        import_dataset("robomimic", tmp_path / "nope.hdf5")
    with pytest.raises(
        DatasetError, match=r"unknown import format 'rlds'.*'robomimic', 'd4rl', 'minari', 'npz'"
    ):
        import_dataset("rlds", tmp_path / "x")
    assert FORMATS == ("robomimic", "d4rl", "minari", "npz")


# ----------------------------------------------------------------------------------------------------------
# D4RL-style HDF5 and .npz
# ----------------------------------------------------------------------------------------------------------


def _flat_log(lengths=(4, 3, 3), terminal=(True, False, False), timeout=(False, True, False), obs_dim=2):
    """Episodes back to back; observations[t] = [episode, step]; reward 1 at terminal steps."""
    parts = {k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts")}
    for e, (n, term, tout) in enumerate(zip(lengths, terminal, timeout, strict=True)):
        parts["observations"].append(np.stack([np.full(n, e), np.arange(n)], axis=1).astype(np.float32))
        parts["actions"].append(np.full((n, 1), 0.1 * e, np.float32))
        r, t, o = np.zeros(n, np.float32), np.zeros(n, bool), np.zeros(n, bool)
        r[-1], t[-1], o[-1] = float(term), term, tout
        parts["rewards"].append(r)
        parts["terminals"].append(t)
        parts["timeouts"].append(o)
    return {k: np.concatenate(v) for k, v in parts.items()}


def _write_h5(path, arrays):
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)


def test_d4rl_without_next_observations_derives_them_and_drops_steps_without_successor(tmp_path):
    path = tmp_path / "d4rl.hdf5"
    _write_h5(path, _flat_log())  # episode 2 runs to the end of the file with no flag: a cut log
    ds = import_dataset("d4rl", path)
    # Episode 0 ends terminal (kept, 4 steps); episodes 1 (timeout) and 2 (file end) lose their last step.
    assert len(ds) == 4 + 2 + 2
    np.testing.assert_array_equal(np.flatnonzero(ds.terminals), [3])
    np.testing.assert_array_equal(np.flatnonzero(ds.timeouts), [5, 7])
    np.testing.assert_array_equal(ds.next_observations[:3], ds.observations[1:4])
    np.testing.assert_array_equal(ds.next_observations[3], ds.observations[3])  # terminal: placeholder
    np.testing.assert_array_equal(ds.next_observations[4:6], [[1, 1], [1, 2]])
    np.testing.assert_array_equal(ds.next_observations[6:8], [[2, 1], [2, 2]])
    assert ds.metadata["dropped"]["without_successor"] == 2


def test_d4rl_without_timeouts_ends_episodes_at_terminals_and_file_end(tmp_path):
    a = _flat_log(lengths=(3, 5), terminal=(True, False), timeout=(False, False))
    del a["timeouts"]
    a["next_observations"] = a["observations"] + np.array([0, 1], np.float32)
    path = tmp_path / "no_timeouts.h5"
    _write_h5(path, a)
    ds = import_dataset("d4rl", path)
    assert len(ds) == 8
    np.testing.assert_array_equal(np.flatnonzero(ds.terminals), [2])
    np.testing.assert_array_equal(np.flatnonzero(ds.timeouts), [7])
    np.testing.assert_array_equal(ds.next_observations, a["next_observations"])


def test_d4rl_step_with_both_flags_is_terminal(tmp_path):
    a = _flat_log(lengths=(3, 2), terminal=(True, False), timeout=(True, True))
    a["next_observations"] = a["observations"] + np.array([0, 1], np.float32)
    _write_h5(tmp_path / "both.h5", a)
    ds = import_dataset("d4rl", tmp_path / "both.h5")
    np.testing.assert_array_equal(np.flatnonzero(ds.terminals), [2])
    np.testing.assert_array_equal(np.flatnonzero(ds.timeouts), [4])


def test_d4rl_reads_offrl_files_and_round_trips_through_save_and_load(tmp_path, chain_dataset):
    src = save_dataset(tmp_path / "collected.h5", chain_dataset)
    ds = import_dataset("d4rl", src)
    for k, v in chain_dataset.arrays().items():
        np.testing.assert_array_equal(getattr(ds, k), v)
    assert ds.metadata["task"] == "toy" and ds.metadata["action_low"] == [-1, -1]
    assert ds.metadata["behaviour_success_rate"] == 0.5
    out = save_dataset(tmp_path / "imported.h5", ds)
    back = load_dataset(out)
    for k, v in ds.arrays().items():
        np.testing.assert_array_equal(getattr(back, k), v)
    assert back.metadata["relabelling"] == ds.metadata["relabelling"]
    assert back.metadata["source_format"] == "d4rl"


def test_robomimic_import_round_trips_through_save_and_load(tmp_path):
    path = tmp_path / "rm.hdf5"
    write_robomimic(path)
    ds = import_robomimic(path, obs_keys=["robot0_eef_pos"])
    back = load_dataset(save_dataset(tmp_path / "out.h5", ds))
    for k, v in ds.arrays().items():
        np.testing.assert_array_equal(getattr(back, k), v)
    assert back.metadata["obs_keys"] == ["robot0_eef_pos"]
    assert back.metadata["robomimic_env_args"]["env_name"] == "Lift"


def test_d4rl_bad_files_name_the_key(tmp_path):
    a = _flat_log()
    a.pop("actions")
    _write_h5(tmp_path / "no_actions.h5", a)
    with pytest.raises(DatasetError, match=r"missing \['actions'\]"):
        import_dataset("d4rl", tmp_path / "no_actions.h5")
    a = _flat_log()
    a["rewards"] = a["rewards"][:-1]
    _write_h5(tmp_path / "short.h5", a)
    with pytest.raises(DatasetError, match=r"different lengths .*'rewards': 9"):
        import_dataset("d4rl", tmp_path / "short.h5")
    write_robomimic(tmp_path / "rm.hdf5")
    with pytest.raises(DatasetError, match=r"looks like a robomimic file; use format 'robomimic'"):
        import_dataset("d4rl", tmp_path / "rm.hdf5")


def test_npz_with_d4rl_keys(tmp_path):
    path = tmp_path / "log.npz"
    np.savez(path, **_flat_log())
    ds = import_npz(path)
    assert len(ds) == 8 and ds.metadata["source_format"] == "npz"
    np.testing.assert_array_equal(np.flatnonzero(ds.terminals), [3])


# roboverse-style trajectory dicts: observations as a list of {"image", "state"} dicts, env_infos per step.
def _roboverse_trajectories():
    trajs = []
    for i, (n, success_steps) in enumerate([(5, [2, 3]), (4, []), (3, [2])]):
        obs = [{"image": np.zeros(12, np.uint8), "state": np.array([i, t, 2.0 * t])} for t in range(n + 1)]
        trajs.append(
            {
                "observations": obs[:-1],
                "next_observations": obs[1:],
                "actions": np.full((n, 2), 0.1 * i),
                "rewards": np.zeros(n),
                "terminals": np.zeros(n),
                "env_infos": [{"success": float(t in success_steps), "dist": -float(t)} for t in range(n)],
                "agent_infos": [{} for _ in range(n)],
            }
        )
    return trajs


def test_npy_trajectory_list_with_success_key_and_terminate_on_success(tmp_path):
    path = tmp_path / "roboverse.npy"
    np.save(path, np.array(_roboverse_trajectories(), dtype=object), allow_pickle=True)

    plain = import_npz(path)
    assert plain.metadata["obs_keys"] == ["state"] and plain.metadata["skipped_image_keys"] == ["image"]
    assert len(plain) == 12 and not plain.terminals.any()
    np.testing.assert_array_equal(np.flatnonzero(plain.timeouts), [4, 8, 11])
    assert plain.rewards.sum() == 0

    relabelled = import_npz(path, success_key="success")
    np.testing.assert_array_equal(np.flatnonzero(relabelled.rewards), [2, 3, 11])
    assert relabelled.metadata["behaviour_success_rate"] == pytest.approx(2 / 3)
    assert not relabelled.terminals.any()

    cut = import_npz(path, success_key="success", terminate_on_success=True)
    # Trajectory 0 ends at its first success (step 2); trajectory 2 already ends at its success.
    assert len(cut) == 3 + 4 + 3
    np.testing.assert_array_equal(np.flatnonzero(cut.terminals), [2, 9])
    np.testing.assert_array_equal(np.flatnonzero(cut.timeouts), [6])
    np.testing.assert_array_equal(cut.rewards[[2, 9]], [1, 1])
    assert cut.metadata["dropped"]["after_success"] == 2
    assert cut.metadata["terminate_on_success"] is True
    assert cut.metadata["relabelling"]["success"] == "success_key 'success'"

    with pytest.raises(DatasetError, match=r"'image'.*image observations are not supported yet"):
        import_npz(path, obs_keys=["image"])
    with pytest.raises(
        DatasetError, match=r"trajectory 0 has no 'grasp' for success_key.*\['dist', 'success'\]"
    ):
        import_npz(path, success_key="grasp")


def test_npz_refuses_files_that_are_not_numpy(tmp_path):
    path = tmp_path / "x.npy"
    path.write_bytes(b"\x80\x04not a numpy file")  # a pickle header: must not be unpickled
    with pytest.raises(DatasetError, match="not a NumPy .npy/.npz file"):
        import_npz(path)


# ----------------------------------------------------------------------------------------------------------
# Relabelling and the success-rate filter
# ----------------------------------------------------------------------------------------------------------


def reward_minus_step(obs: np.ndarray, actions: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    """A reward_fn importable as 'test_importers:reward_minus_step'."""
    return -next_obs[:, 1]


def test_reward_fn_as_callable_and_as_module_path(tmp_path):
    path = tmp_path / "d4rl.hdf5"
    _write_h5(path, _flat_log())
    for fn in (reward_minus_step, "test_importers:reward_minus_step"):
        ds = import_dataset("d4rl", path, reward_fn=fn)
        np.testing.assert_array_equal(ds.rewards, -ds.next_observations[:, 1])
        assert ds.metadata["relabelling"]["rewards"] == "reward_fn test_importers:reward_minus_step"
        assert "behaviour_success_rate" not in ds.metadata  # dense negative rewards: success unknown
    with pytest.raises(DatasetError, match=r"reward_fn 'test_importers:nothing'.*no function 'nothing'"):
        import_dataset("d4rl", path, reward_fn="test_importers:nothing")
    with pytest.raises(DatasetError, match=r"returned shape \(8, 2\)"):
        import_dataset("d4rl", path, reward_fn=lambda o, a, n: n)


def test_reward_key_and_exclusive_reward_sources(tmp_path):
    a = _flat_log()
    path = tmp_path / "d4rl.hdf5"
    _write_h5(path, a)
    with h5py.File(path, "a") as f:
        f.create_dataset("infos/dense", data=np.arange(10, dtype=np.float32))
    ds = import_dataset("d4rl", path, reward_key="infos/dense")
    np.testing.assert_array_equal(ds.rewards, [0, 1, 2, 3, 4, 5, 7, 8])  # steps 6 and 9 had no successor
    with pytest.raises(DatasetError, match=r"no array 'infos/missing' for reward_key.*infos/dense"):
        import_dataset("d4rl", path, reward_key="infos/missing")
    with pytest.raises(DatasetError, match="reward_key and reward_fn both define the rewards"):
        import_dataset("d4rl", path, reward_key="infos/dense", reward_fn=reward_minus_step)


def _ten_episodes(tmp_path):
    """10 episodes of 3 steps; episodes 0-5 succeed (reward 1, terminal), 6-9 fail (timeout)."""
    success = [True] * 6 + [False] * 4
    a = _flat_log(lengths=(3,) * 10, terminal=tuple(success), timeout=tuple(not s for s in success))
    a["next_observations"] = a["observations"] + np.array([0, 1], np.float32)
    path = tmp_path / "ten.h5"
    _write_h5(path, a)
    return path


@pytest.mark.parametrize(
    "target, episodes, rate, dropped_successful, dropped_failed",
    [
        (0.5, 8, 0.5, 2, 0),
        (0.8, 8, 0.75, 0, 2),
        (0.6, 10, 0.6, 0, 0),
        (1.0, 6, 1.0, 0, 4),
        (0.0, 4, 0.0, 6, 0),
        (0.25, 5, 0.2, 5, 0),
    ],
)
def test_target_success_rate_filter_reaches_the_closest_rate(
    tmp_path, target, episodes, rate, dropped_successful, dropped_failed
):
    path = _ten_episodes(tmp_path)
    ds = import_dataset("d4rl", path, target_success_rate=target, seed=3)
    returns = ds.episode_returns()
    assert ds.num_episodes == episodes
    assert (returns > 0).mean() == rate
    f = ds.metadata["success_filter"]
    assert f["success_rate_before"] == 0.6 and f["success_rate_after"] == rate
    assert (f["dropped_successful"], f["dropped_failed"]) == (dropped_successful, dropped_failed)
    assert ds.metadata["behaviour_success_rate"] == rate


def test_target_success_rate_filter_is_deterministic_in_the_seed(tmp_path):
    path = _ten_episodes(tmp_path)
    kept = [
        tuple(import_dataset("d4rl", path, target_success_rate=0.5, seed=s).observations[::3, 0])
        for s in (0, 0, 1, 2, 3)
    ]
    assert kept[0] == kept[1]
    assert len(set(kept)) > 1  # different seeds drop different successful episodes
    for k in kept:
        assert list(k) == sorted(k)  # episodes keep their order
    with pytest.raises(DatasetError, match=r"target_success_rate must be in \[0, 1\]"):
        import_dataset("d4rl", path, target_success_rate=1.5)


# ----------------------------------------------------------------------------------------------------------
# Minari
# ----------------------------------------------------------------------------------------------------------


def test_minari_box_observations_by_id_and_by_path(tmp_path, monkeypatch):
    minari = pytest.importorskip("minari")
    gym = pytest.importorskip("gymnasium")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    env = minari.DataCollector(gym.make("Pendulum-v1", max_episode_steps=5))
    for seed in range(3):
        env.reset(seed=seed)
        while True:
            *_, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                break
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # minari warns about missing author/description metadata
        env.create_dataset(dataset_id="offrl/pendulum-v0", algorithm_name="random")
    env.close()
    source = minari.load_dataset("offrl/pendulum-v0")
    first = next(iter(source.iterate_episodes()))

    ds = import_dataset("minari", "offrl/pendulum-v0")
    assert len(ds) == 15 and ds.obs_dim == 3 and ds.act_dim == 1
    assert not ds.terminals.any()
    np.testing.assert_array_equal(np.flatnonzero(ds.timeouts), [4, 9, 14])  # Pendulum truncates
    np.testing.assert_allclose(ds.observations[:5], first.observations[:-1])
    np.testing.assert_allclose(ds.next_observations[:5], first.observations[1:])
    np.testing.assert_allclose(ds.rewards[:5], first.rewards)
    assert ds.metadata["action_low"] == [-2.0] and ds.metadata["action_high"] == [2.0]
    assert ds.metadata["minari_dataset_id"] == "offrl/pendulum-v0" and ds.metadata["env_id"] == "Pendulum-v1"
    assert "behaviour_success_rate" not in ds.metadata  # dense negative rewards

    by_path = import_dataset("minari", tmp_path / "minari" / "offrl" / "pendulum-v0")
    np.testing.assert_array_equal(by_path.observations, ds.observations)
    with pytest.raises(FileNotFoundError, match=r"'offrl/absent-v0' not found.*\['offrl/pendulum-v0'\]"):
        import_dataset("minari", "offrl/absent-v0")


def test_minari_dict_observations_concatenate_keys_and_use_info_success(tmp_path, monkeypatch):
    minari = pytest.importorskip("minari")
    gym = pytest.importorskip("gymnasium")
    from minari.data_collector.episode_buffer import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    obs_space = gym.spaces.Dict(
        {
            "joint": gym.spaces.Box(-9, 9, (2,)),
            "cube": gym.spaces.Box(-9, 9, (3,)),
            "camera_rgb": gym.spaces.Box(0, 255, (4, 4, 3), np.uint8),
        }
    )
    act_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    buffers = []
    for e, n in enumerate((4, 3)):
        t = np.arange(n + 1, dtype=np.float32)
        buffers.append(
            EpisodeBuffer(
                observations={
                    "joint": np.stack([t, t], 1),
                    "cube": np.stack([e + 0 * t, t, t], 1),
                    "camera_rgb": np.zeros((n + 1, 4, 4, 3), np.uint8),
                },
                actions=np.zeros((n, 2), np.float32),
                rewards=[0.0] * n,
                terminations=[False] * (n - 1) + [e == 0],
                truncations=[False] * (n - 1) + [e != 0],
                # As DataCollector records them: the reset info first, then one per step.
                infos={"success": np.array([False] + [e == 0 and s >= 2 for s in range(n)])},
            )
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers(
            "offrl/dict-v0", buffers, observation_space=obs_space, action_space=act_space, jpeg_encoding=False
        )

    ds = import_dataset("minari", "offrl/dict-v0", obs_keys=["joint", "cube"], success_key="success")
    assert ds.obs_dim == 5 and len(ds) == 7
    np.testing.assert_array_equal(ds.observations[:4, :2], [[0, 0], [1, 1], [2, 2], [3, 3]])  # joint first
    np.testing.assert_array_equal(ds.observations[:, 2], [0, 0, 0, 0, 1, 1, 1])  # then cube
    np.testing.assert_array_equal(np.flatnonzero(ds.terminals), [3])
    np.testing.assert_array_equal(np.flatnonzero(ds.timeouts), [6])
    np.testing.assert_array_equal(ds.rewards, [0, 0, 1, 1, 0, 0, 0])  # info success after steps 2 and 3
    assert ds.metadata["behaviour_success_rate"] == 0.5
    assert ds.metadata["obs_key_dims"] == [2, 3]

    default = import_dataset("minari", "offrl/dict-v0")
    assert default.metadata["obs_keys"] == ["cube", "joint"]
    assert default.metadata["skipped_image_keys"] == ["camera_rgb"]
    with pytest.raises(DatasetError, match=r"'camera_rgb'.*image observations are not supported yet"):
        import_dataset("minari", "offrl/dict-v0", obs_keys=["camera_rgb"])
    with pytest.raises(
        DatasetError, match=r"unknown observation key 'gripper'.*\['camera_rgb', 'cube', 'joint'\]"
    ):
        import_dataset("minari", "offrl/dict-v0", obs_keys=["gripper"])


def test_loading_a_robomimic_file_as_an_offrl_dataset_points_at_offrl_import(tmp_path):
    from offrl.data import DatasetError, load_dataset

    path = tmp_path / "robo.hdf5"
    write_robomimic(path)
    with pytest.raises(DatasetError, match="offrl import .* --format robomimic"):
        load_dataset(path)
