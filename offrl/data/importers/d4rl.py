"""D4RL-style HDF5 (and flat NumPy arrays with D4RL key names): the transition arrays at the root, episodes cut
at terminals and timeouts; includes files written by ``offrl collect``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from offrl.data.dataset import DatasetError
from offrl.data.hdf5 import _decode_attr as hdf5_decode_attr
from offrl.data.importers.common import (
    _check_file,
    _concat_obs,
    _Episode,
    _flags,
    _open_hdf5,
    _per_step,
    _plain,
    _resolve_obs_keys,
    _Source,
)
from offrl.data.importers.robomimic import _hdf5_key


def _read_d4rl(
    src: str | Path,
    *,
    obs_keys: list[str] | None = None,
    reward_key: str | None = None,
    success_key: str | None = None,
) -> _Source:
    """Read the source into episodes; see :func:`import_d4rl`."""
    path = _check_file(src, "D4RL")
    with _open_hdf5(path, "d4rl") as f:
        if "observations" not in f and isinstance(f.get("data"), h5py.Group):
            raise DatasetError(
                f"{path} has a 'data' group but no root 'observations': it looks like a robomimic file; use "
                "format 'robomimic'"
            )
        arrays: dict[str, Any] = {}
        for k in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations"):
            if k in f:
                obj = f[k]
                arrays[k] = (
                    {kk: v[()] for kk, v in _flat_h5(obj).items()} if isinstance(obj, h5py.Group) else obj[()]
                )
        n = len(arrays["actions"]) if "actions" in arrays else None
        extras = {}
        for option, key in (("reward_key", reward_key), ("success_key", success_key)):
            if key is not None:
                if n is None:
                    break
                extras[option] = _hdf5_key(f, key, option, str(path), n)
        metadata = {k: _decode_attr(v) for k, v in f.attrs.items()}
    return _from_flat(arrays, extras, obs_keys, str(path), metadata)


def _flat_h5(group: h5py.Group) -> dict[str, h5py.Dataset]:
    found: dict[str, h5py.Dataset] = {}
    group.visititems(lambda name, o: found.__setitem__(name, o) if isinstance(o, h5py.Dataset) else None)
    return found


def _decode_attr(value: Any) -> Any:
    # offrl's own attribute encoding (JSON strings prefixed "json:"), so offrl files keep their metadata;
    # _plain then turns array attributes of foreign files into lists.
    return _plain(hdf5_decode_attr(value))


def _from_flat(
    arrays: Mapping[str, Any],
    extras: Mapping[str, np.ndarray | None],
    obs_keys: list[str] | None,
    where: str,
    metadata: dict[str, Any],
) -> _Source:
    """Split D4RL-named flat arrays into episodes at terminals / timeouts."""
    required = ["observations", "actions", "terminals"]
    if extras.get("reward_key") is None and extras.get("success_key") is None:
        required.append("rewards")
    missing = [k for k in required if k not in arrays]
    if missing:
        raise DatasetError(
            f"{where} is missing {missing} (it has {sorted(arrays)}): a D4RL-style file needs observations, "
            "actions, rewards and terminals (timeouts and next_observations are optional)"
        )
    actions = np.asarray(arrays["actions"])
    if actions.ndim == 1:
        actions = actions[:, None]
    n = actions.shape[0]
    obs_raw, next_raw = arrays["observations"], arrays.get("next_observations")
    keys, dims, skipped = None, None, []
    if isinstance(obs_raw, Mapping):
        shapes = {k: np.shape(v)[1:] for k, v in obs_raw.items()}
        keys, skipped = _resolve_obs_keys(shapes, obs_keys, f"{where}: observations")
        dims = [int(np.prod(shapes[k])) for k in keys]
        obs = _concat_obs(obs_raw, keys, f"{where}: observations", n)
        nxt = _concat_obs(next_raw, keys, f"{where}: next_observations", n) if next_raw is not None else None
    else:
        if obs_keys is not None:
            raise DatasetError(
                f"{where}: 'observations' is a single array, so obs_keys {obs_keys} does not apply: "
                "drop obs_keys"
            )
        obs = _two_d(obs_raw, "observations", where)
        nxt = _two_d(next_raw, "next_observations", where) if next_raw is not None else None
    lengths = {"observations": obs.shape[0], "actions": n, "terminals": np.shape(arrays["terminals"])[0]}
    for k in ("rewards", "timeouts"):
        if k in arrays:
            lengths[k] = np.shape(arrays[k])[0]
    if nxt is not None:
        lengths["next_observations"] = nxt.shape[0]
    if len(set(lengths.values())) != 1:
        raise DatasetError(
            f"{where}: the arrays have different lengths {lengths}: every array needs one entry "
            "per transition"
        )
    if n == 0:
        raise DatasetError(f"{where} holds 0 transitions: nothing to import")
    terminals = _flags(_per_step(arrays["terminals"], "'terminals'", where, n))
    timeouts = _flags(_per_step(arrays["timeouts"], "'timeouts'", where, n)) if "timeouts" in arrays else None
    rewards = _per_step(arrays["rewards"], "'rewards'", where, n) if "rewards" in arrays else None
    ends = terminals | timeouts if timeouts is not None else terminals.copy()
    ends[-1] = True
    stops = np.flatnonzero(ends) + 1
    starts = np.concatenate([[0], stops[:-1]])
    episodes = []
    success = extras.get("success_key")
    for i, (a, b) in enumerate(zip(starts, stops, strict=True)):
        episodes.append(
            _Episode(
                name=f"{where}: episode {i} (transitions {a}..{b - 1})",
                observations=obs[a:b],
                actions=actions[a:b],
                next_observations=nxt[a:b] if nxt is not None else None,
                rewards=rewards[a:b] if rewards is not None else None,
                dones=terminals[a:b],
                reward_alt=extras["reward_key"][a:b] if extras.get("reward_key") is not None else None,
                success=_flags(success[a:b]) if success is not None else None,
            )
        )
    return _Source(episodes, keys, dims, metadata, skipped)


def _two_d(a: Any, name: str, where: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 1:
        return a[:, None]
    if a.ndim != 2:
        raise DatasetError(
            f"{where}: '{name}' has shape {a.shape}: image observations are not supported yet; the data "
            "needs flat state vectors (N, obs_dim)"
        )
    return a
