"""Dataset layer: validation errors name the field and the fix; splits; normalisation; HDF5 round trip."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import chain_arrays

from offrl.data import (
    DatasetError,
    Normalizer,
    load_dataset,
    make_dataset,
    q_value_range,
    save_dataset,
    split_episodes,
    transform_rewards,
)


def _broken(**changes):
    a = chain_arrays()
    for k, v in changes.items():
        if v is None:
            a.pop(k)
        else:
            a[k] = v(a) if callable(v) else v
    return a


def _with(key, index, value):
    def f(a):
        x = a[key].copy()
        x[index] = value
        return x

    return f


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"rewards": None}, r"missing \['rewards'\]"),
        ({"observations": _with("observations", (3, 1), np.nan)}, r"'observations' contains NaN"),
        ({"actions": _with("actions", (5, 0), np.inf)}, r"'actions' contains inf"),
        ({"rewards": _with("rewards", 7, np.nan)}, r"'rewards' contains NaN"),
        ({"rewards": lambda a: a["rewards"][:-1]}, r"different lengths"),
        ({"observations": lambda a: a["observations"][:, :, None]}, r"'observations' has shape"),
        ({"terminals": lambda a: np.where(a["terminals"], 2, 0)}, r"'terminals' must hold only 0/1"),
        ({"timeouts": lambda a: a["timeouts"] | a["terminals"]}, r"terminals and timeouts are both set"),
        ({"timeouts": _with("timeouts", -1, False)}, r"last transition ends no episode"),
        ({"timeouts": _with("timeouts", 19, False)}, r"next_observations\[19\] differs from observations\[20\]"),
        ({"actions": lambda a: a["actions"].astype(str)}, r"'actions' has dtype"),
        ({"next_observations": lambda a: a["next_observations"][:, :2]}, r"'next_observations' has 2 features"),
    ],
)
def test_validation_rejects_bad_input_with_a_named_fix(changes, match):
    with pytest.raises(DatasetError, match=match):
        make_dataset(_broken(**changes))


def test_empty_dataset_is_rejected():
    a = {k: v[:0] for k, v in chain_arrays().items()}
    with pytest.raises(DatasetError, match="empty"):
        make_dataset(a)


def test_actions_outside_declared_bounds_are_rejected():
    a = chain_arrays()
    a["actions"][4, 1] = 1.5
    with pytest.raises(DatasetError, match=r"outside the declared bounds.*actions\[4, 1\]"):
        make_dataset(a, {"action_low": [-1, -1], "action_high": [1, 1]})


def test_integer_flags_and_float64_are_converted(chain_dataset):
    a = chain_arrays()
    a["terminals"] = a["terminals"].astype(np.int64)
    a["observations"] = a["observations"].astype(np.float64)
    ds = make_dataset(a)
    assert ds.terminals.dtype == np.bool_ and ds.observations.dtype == np.float32
    assert ds.num_episodes == 6 and len(ds) == 60


def test_split_is_by_episode_deterministic_and_disjoint(chain_dataset):
    ds = make_dataset(chain_arrays(episodes=20))
    train, held = split_episodes(ds, 0.1, seed=3)
    train2, held2 = split_episodes(ds, 0.1, seed=3)
    _, held3 = split_episodes(ds, 0.1, seed=4)
    assert held.num_episodes == 2 and train.num_episodes == 18
    np.testing.assert_array_equal(held.observations, held2.observations)
    assert not np.array_equal(held.observations, held3.observations)
    # no held-out transition appears in training
    train_rows = {r.tobytes() for r in train.observations}
    assert not any(r.tobytes() in train_rows for r in held.observations)
    # whole episodes: every held-out episode still ends with a terminal or a timeout
    assert held.num_episodes * 10 == len(held)


def test_split_of_single_episode_holds_nothing_out():
    ds = make_dataset(chain_arrays(episodes=1))
    train, held = split_episodes(ds, 0.1)
    assert held is None and len(train) == len(ds)


def test_normalizer_uses_training_statistics_and_survives_constant_features():
    x = np.array([[1.0, 5.0], [3.0, 5.0]], np.float32)
    n = Normalizer.fit(x)
    np.testing.assert_allclose(n.mean, [2.0, 5.0])
    np.testing.assert_allclose(n(x), [[-1.0, 0.0], [1.0, 0.0]])
    assert Normalizer.from_dict(n.to_dict()).std.tolist() == n.std.tolist()


def test_q_value_range_terminal_rewards_and_repeating_rewards(chain_dataset):
    r = q_value_range(chain_dataset, 0.99)
    assert r["reward_only_at_terminals"] and (r["q_min"], r["q_max"]) == (0.0, 1.0)
    a = chain_arrays()
    a["rewards"][:] = 1.0  # rewards on non-terminal steps: Q up to r_max * H, H = min(10, 100)
    r2 = q_value_range(make_dataset(a), 0.99)
    assert not r2["reward_only_at_terminals"] and r2["q_max"] == pytest.approx(10.0)


def test_transform_rewards_shifts_a_copy_and_the_q_range_with_it(chain_dataset):
    shifted = transform_rewards(chain_dataset, shift=-1.0)
    # IQL's AntMaze setting on sparse 0/1 rewards: -1 on every step, 0 on the terminal success.
    np.testing.assert_array_equal(shifted.rewards, np.where(chain_dataset.terminals, 0.0, -1.0))
    assert chain_dataset.rewards.max() == 1.0  # the input is untouched
    assert shifted.observations is chain_dataset.observations
    r = q_value_range(shifted, 0.99)  # rewards now repeat: bound by the effective horizon, 10 steps
    assert (r["q_min"], r["q_max"]) == (pytest.approx(-10.0), 0.0) and not r["reward_only_at_terminals"]
    scaled = transform_rewards(chain_dataset, scale=10.0, shift=0.5)
    np.testing.assert_allclose(scaled.rewards, chain_dataset.rewards * 10.0 + 0.5)
    assert transform_rewards(chain_dataset) is chain_dataset
    for bad in ({"scale": 0.0}, {"scale": -1.0}, {"scale": float("nan")}):
        with pytest.raises(ValueError, match="--reward-scale must be a finite number > 0"):
            transform_rewards(chain_dataset, **bad)
    with pytest.raises(ValueError, match="--reward-shift must be finite"):
        transform_rewards(chain_dataset, shift=float("inf"))


def test_hdf5_round_trip_and_no_silent_overwrite(tmp_path, chain_dataset):
    path = tmp_path / "d.h5"
    save_dataset(path, chain_dataset)
    back = load_dataset(path)
    for k, v in chain_dataset.arrays().items():
        np.testing.assert_array_equal(getattr(back, k), v)
    assert back.metadata["task"] == "toy" and back.metadata["action_low"] == [-1, -1]
    with pytest.raises(FileExistsError, match="--overwrite"):
        save_dataset(path, chain_dataset)
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind


def test_load_rejects_missing_truncated_and_incomplete_files(tmp_path, chain_dataset):
    with pytest.raises(FileNotFoundError, match="offrl collect"):
        load_dataset(tmp_path / "nope.h5")
    path = save_dataset(tmp_path / "d.h5", chain_dataset)
    truncated = tmp_path / "t.h5"
    truncated.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DatasetError, match="not a readable HDF5 file"):
        load_dataset(truncated)
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f["observations"] = np.zeros((3, 2))
    with pytest.raises(DatasetError, match=r"missing \['actions'"):
        load_dataset(tmp_path / "m.h5")


def test_mc_returns_by_hand():
    from offrl.data import mc_returns

    # Episode 1: 3 steps ending terminal with reward 1; episode 2: 2 steps, reward 0.5 then 0, timeout.
    arrays = {
        "observations": np.zeros((5, 2), np.float32), "next_observations": np.zeros((5, 2), np.float32),
        "actions": np.zeros((5, 1), np.float32),
        "rewards": np.array([0.0, 0.0, 1.0, 0.5, 0.0], np.float32),
        "terminals": np.array([0, 0, 1, 0, 0], bool), "timeouts": np.array([0, 0, 0, 0, 1], bool),
    }
    ds = make_dataset(arrays, {}, check_continuity=False)
    g = 0.9
    np.testing.assert_allclose(mc_returns(ds, g), [g**2, g, 1.0, 0.5, 0.0], rtol=1e-6)
    assert mc_returns(ds, g).dtype == np.float32


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_follow_the_umask(tmp_path, chain_dataset, umask):
    import os

    from offrl.training.run_dir import write_json

    old = os.umask(umask)
    try:
        save_dataset(tmp_path / "d.h5", chain_dataset)
        write_json(tmp_path / "c.json", {"a": 1})
    finally:
        os.umask(old)
    for name in ("d.h5", "c.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
