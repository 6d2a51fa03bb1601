"""robomimic HDF5: ``data/demo_<i>/{obs,next_obs,actions,rewards,dones}``, one episode per demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from offrl.data.dataset import DatasetError
from offrl.data.importers.common import (
    _check_file,
    _concat_obs,
    _Episode,
    _flags,
    _h5_array,
    _open_hdf5,
    _per_step,
    _plain,
    _resolve_obs_keys,
    _Source,
)


def _demo_order(name: str) -> tuple[int, int | str]:
    suffix = name[len("demo_") :]
    return (0, int(suffix)) if suffix.isdigit() else (1, suffix)


def _read_robomimic(
    src: str | Path,
    *,
    obs_keys: list[str] | None = None,
    reward_key: str | None = None,
    success_key: str | None = None,
) -> _Source:
    """Read the source into episodes; see :func:`import_robomimic`."""
    path = _check_file(src, "robomimic")
    with _open_hdf5(path, "robomimic") as f:
        data = f.get("data")
        if not isinstance(data, h5py.Group):
            hint = (
                " (it has root arrays like a D4RL file: import it with format 'd4rl')"
                if "observations" in f
                else ""
            )
            raise DatasetError(
                f"{path} has no 'data' group (root keys: {sorted(f.keys())}){hint}: a robomimic file stores "
                "demos as data/demo_<i>; check the file and the format"
            )
        demos = sorted((k for k in data if k.startswith("demo_")), key=_demo_order)
        if not demos:
            raise DatasetError(
                f"{path}: the 'data' group has no demo_<i> groups (it has {sorted(data.keys())}): the file "
                "holds no demonstrations"
            )
        env_args = data.attrs.get("env_args")
        metadata: dict[str, Any] = {"robomimic_demos": len(demos)}
        if env_args is not None:
            env_args = _plain(env_args)
            try:
                metadata["robomimic_env_args"] = (
                    json.loads(env_args) if isinstance(env_args, str) else env_args
                )
            except json.JSONDecodeError:
                metadata["robomimic_env_args"] = env_args

        keys: list[str] | None = None
        skipped: list[str] = []
        episodes = []
        for name in demos:
            where = f"data/{name}"
            demo = data[name]
            if "actions" not in demo:
                raise DatasetError(
                    f"{where} has no 'actions' dataset (it has {sorted(demo.keys())}): every demo needs "
                    "actions (T, act_dim); re-export this demo or remove it from the file"
                )
            obs_group = demo.get("obs")
            if not isinstance(obs_group, h5py.Group):
                raise DatasetError(
                    f"{where} has no 'obs' group (it has {sorted(demo.keys())}): this looks like a raw "
                    "robomimic file with simulator states only; extract observations first with robomimic's "
                    "dataset_states_to_obs.py"
                )
            if keys is None:
                shapes = {k: v.shape[1:] for k, v in obs_group.items() if isinstance(v, h5py.Dataset)}
                keys, skipped = _resolve_obs_keys(shapes, obs_keys, f"{where}/obs")
            actions = _h5_array(demo, "actions", where)
            if actions.ndim == 1:
                actions = actions[:, None]
            n = actions.shape[0]
            obs = _concat_obs({k: obs_group[k] for k in keys if k in obs_group}, keys, f"{where}/obs", n)
            next_group = demo.get("next_obs")
            next_obs = None
            if isinstance(next_group, h5py.Group):
                next_obs = _concat_obs(
                    {k: next_group[k] for k in keys if k in next_group}, keys, f"{where}/next_obs", n
                )
            ep = _Episode(name=where, observations=obs, actions=actions, next_observations=next_obs)
            if "rewards" in demo:
                ep.rewards = _per_step(_h5_array(demo, "rewards", where), "'rewards'", where, n)
            if "dones" in demo:
                ep.dones = _flags(_per_step(_h5_array(demo, "dones", where), "'dones'", where, n))
            ep.reward_alt = _hdf5_key(demo, reward_key, "reward_key", where, n)
            success = _hdf5_key(demo, success_key, "success_key", where, n)
            ep.success = _flags(success) if success is not None else None
            episodes.append(ep)
    dims = [int(np.prod(shapes[k])) for k in keys]
    return _Source(episodes, keys, dims, metadata, skipped)


def _hdf5_key(group: h5py.Group, key: str | None, option: str, where: str, n: int) -> np.ndarray | None:
    if key is None:
        return None
    obj = group.get(key)
    if not isinstance(obj, h5py.Dataset):
        found = []
        group.visititems(lambda name, o: found.append(name) if isinstance(o, h5py.Dataset) else None)
        raise DatasetError(f"{where} has no array {key!r} for {option}: available arrays are {sorted(found)}")
    return _per_step(obj[()], f"{option} {key!r}", where, n)
