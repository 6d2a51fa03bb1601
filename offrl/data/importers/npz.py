"""NumPy files: D4RL key names in an ``.npz``, or a list of trajectory dicts in an ``.npy`` / ``.npz`` as released
with roboverse data (Kumar et al., 2021)."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from offrl.data.dataset import DatasetError
from offrl.data.importers.common import (
    _check_file,
    _concat_obs,
    _Episode,
    _flags,
    _flatten_dict,
    _per_step,
    _resolve_obs_keys,
    _Source,
)
from offrl.data.importers.d4rl import _from_flat, _two_d


def _read_npz(
    src: str | Path,
    *,
    obs_keys: list[str] | None = None,
    reward_key: str | None = None,
    success_key: str | None = None,
) -> _Source:
    """Read the source into episodes; see :func:`import_npz`."""
    path = _check_file(src, "NumPy")
    where = str(path)
    with open(path, "rb") as fh:
        magic = fh.read(6)
    # np.load with allow_pickle=True unpickles any non-NumPy file; only NumPy containers get that far.
    if magic[:4] != b"PK\x03\x04" and magic != b"\x93NUMPY":
        raise DatasetError(
            f"{where} is not a NumPy .npy/.npz file (it does not start with their magic bytes): check the "
            "file and the format"
        )
    flat: dict[str, np.ndarray] | None = None
    try:
        if magic[:4] == b"PK\x03\x04":
            with np.load(path, allow_pickle=False) as z:
                files = list(z.files)
                if "observations" in files and "actions" in files:
                    flat = {k: z[k] for k in files}
            if flat is None:
                with np.load(path, allow_pickle=True) as z:
                    objs = [k for k in files if z[k].dtype == object]
                    loaded = z[objs[0]] if len(objs) == 1 else None
                if loaded is None:
                    raise DatasetError(
                        f"{where} has arrays {files}: expected D4RL keys (observations, actions, rewards, "
                        "terminals) or a single object array of trajectory dicts"
                    )
        else:
            loaded = np.load(path, allow_pickle=True)
    except DatasetError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DatasetError(f"{where} is not a readable NumPy .npy/.npz file ({e}): check the file") from e
    if flat is not None:
        return _npz_flat(flat, obs_keys, reward_key, success_key, where)
    if isinstance(loaded, np.ndarray) and loaded.dtype == object and loaded.ndim == 0:
        loaded = loaded.item()
    if isinstance(loaded, Mapping) and "observations" in loaded:
        return _npz_flat(dict(loaded), obs_keys, reward_key, success_key, where)
    if isinstance(loaded, np.ndarray) and loaded.dtype != object:
        raise DatasetError(
            f"{where} holds a single {loaded.dtype} array of shape {loaded.shape}: expected a list of "
            "trajectory dicts (observations, actions, rewards, terminals) or an .npz with D4RL key names"
        )
    trajectories = list(loaded) if isinstance(loaded, (np.ndarray, list, tuple)) else None
    if not trajectories or not all(isinstance(t, Mapping) for t in trajectories):
        raise DatasetError(
            f"{where} does not hold a list of trajectory dicts: expected dicts with observations, actions, "
            "rewards and terminals, or an .npz with D4RL key names"
        )
    return _from_trajectories(trajectories, obs_keys, reward_key, success_key, where)


def _npz_flat(arrays: dict[str, Any], obs_keys, reward_key, success_key, where) -> _Source:
    n = len(np.asarray(arrays["actions"]))
    extras = {}
    for option, key in (("reward_key", reward_key), ("success_key", success_key)):
        if key is not None:
            if key not in arrays:
                raise DatasetError(
                    f"{where} has no array {key!r} for {option}: available arrays are {sorted(arrays)}"
                )
            extras[option] = _per_step(arrays[key], f"{option} {key!r}", where, n)
    metadata = {}
    if "metadata" in arrays:  # a JSON string of metadata, when the writer left one
        try:
            metadata = json.loads(str(arrays.pop("metadata")))
        except json.JSONDecodeError:
            pass
    return _from_flat(arrays, extras, obs_keys, where, metadata)


def _stack_obs(raw: Any, where: str) -> np.ndarray | dict[str, np.ndarray]:
    """Observations of one trajectory as a (T, ...) array or a dict of (T, ...) arrays."""
    if isinstance(raw, Mapping):
        return {k: np.asarray(v) for k, v in _flatten_dict(raw).items()}
    if isinstance(raw, (list, tuple)) or (isinstance(raw, np.ndarray) and raw.dtype == object):
        items = list(raw)
        if not items:
            raise DatasetError(f"{where}: 'observations' is empty")
        if isinstance(items[0], Mapping):
            flat = [_flatten_dict(o) for o in items]
            return {k: np.stack([np.asarray(o[k]) for o in flat]) for k in flat[0]}
        return np.stack([np.asarray(o) for o in items])
    return np.asarray(raw)


def _from_trajectories(trajectories, obs_keys, reward_key, success_key, where) -> _Source:
    keys, dims, skipped = None, None, []
    episodes = []
    for i, traj in enumerate(trajectories):
        name = f"{where}: trajectory {i}"
        missing = [k for k in ("observations", "actions") if k not in traj]
        if missing:
            raise DatasetError(
                f"{name} has no {missing} (it has {sorted(traj)}): every trajectory needs them"
            )
        actions = np.asarray(traj["actions"], dtype=np.float64)
        if actions.ndim == 1:
            actions = actions[:, None]
        n = actions.shape[0]
        obs_raw = _stack_obs(traj["observations"], name)
        next_raw = _stack_obs(traj["next_observations"], name) if "next_observations" in traj else None
        if isinstance(obs_raw, dict):
            if keys is None:
                shapes = {k: v.shape[1:] for k, v in obs_raw.items()}
                keys, skipped = _resolve_obs_keys(shapes, obs_keys, f"{name} observations")
                dims = [int(np.prod(shapes[k])) for k in keys]
            obs = _concat_obs(obs_raw, keys, f"{name} observations", n)
            nxt = (
                _concat_obs(next_raw, keys, f"{name} next_observations", n) if next_raw is not None else None
            )
        else:
            if obs_keys is not None:
                raise DatasetError(f"{name}: observations are arrays, not dicts, so obs_keys does not apply")
            obs = _two_d(obs_raw, "observations", name)
            nxt = _two_d(next_raw, "next_observations", name) if next_raw is not None else None
            for label, arr in (("observations", obs), ("next_observations", nxt)):
                if arr is not None and arr.shape[0] != n:
                    raise DatasetError(
                        f"{name}: '{label}' has {arr.shape[0]} steps but 'actions' has {n}: a trajectory "
                        "needs one entry per step in each"
                    )
        ep = _Episode(name=name, observations=obs, actions=actions, next_observations=nxt)
        if "rewards" in traj:
            ep.rewards = _per_step(traj["rewards"], "'rewards'", name, n)
        if "terminals" in traj:
            ep.dones = _flags(_per_step(traj["terminals"], "'terminals'", name, n))
        ep.reward_alt = _traj_key(traj, reward_key, "reward_key", name, n)
        success = _traj_key(traj, success_key, "success_key", name, n)
        ep.success = _flags(success) if success is not None else None
        episodes.append(ep)
    return _Source(episodes, keys, dims, {}, skipped)


def _traj_key(traj: Mapping[str, Any], key: str | None, option: str, name: str, n: int) -> np.ndarray | None:
    if key is None:
        return None
    if key in traj:
        return _per_step(traj[key], f"{option} {key!r}", name, n)
    infos = traj.get("env_infos")
    if isinstance(infos, (list, tuple, np.ndarray)) and len(infos) and isinstance(infos[0], Mapping):
        if all(key in info for info in infos):
            return _per_step(np.array([info[key] for info in infos]), f"{option} env_infos {key!r}", name, n)
        available = sorted(infos[0])
    elif isinstance(infos, Mapping) and key in infos:
        return _per_step(infos[key], f"{option} env_infos {key!r}", name, n)
    else:
        available = sorted(infos) if isinstance(infos, Mapping) else []
    raise DatasetError(
        f"{name} has no {key!r} for {option}: trajectory keys are {sorted(traj)}, "
        f"env_infos keys are {available}"
    )
