"""Minari datasets stored locally, by id or by path (needs the optional ``minari`` package)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from offrl.data.dataset import DatasetError
from offrl.data.importers.common import (
    _concat_obs,
    _Episode,
    _flags,
    _flatten_dict,
    _per_step,
    _resolve_obs_keys,
    _Source,
)
from offrl.data.importers.d4rl import _two_d


def _read_minari(
    src: str | Path,
    *,
    obs_keys: list[str] | None = None,
    reward_key: str | None = None,
    success_key: str | None = None,
) -> _Source:
    """Read the source into episodes; see :func:`import_minari`."""
    try:
        import minari
    except ImportError as e:
        raise RuntimeError(
            "importing Minari datasets needs the minari package: pip install minari (or 'offrl[minari]')"
        ) from e
    path = Path(src)
    try:
        if path.is_dir():
            data_path = path / "data" if (path / "data" / "metadata.json").is_file() else path
            if not (data_path / "metadata.json").is_file():
                raise DatasetError(
                    f"{path} is not a Minari dataset directory (no metadata.json in it or in its data/ "
                    "folder): pass the dataset's folder or its id"
                )
            ds = minari.MinariDataset(str(data_path))
        else:
            from minari.storage.datasets_root_dir import get_dataset_path

            if not (get_dataset_path(str(src)) / "data").is_dir():
                local = sorted(minari.list_local_datasets())
                root = os.environ.get("MINARI_DATASETS_PATH", str(Path.home() / ".minari" / "datasets"))
                raise FileNotFoundError(
                    f"Minari dataset {str(src)!r} not found: it is neither a directory nor a dataset id "
                    f"under {root} (MINARI_DATASETS_PATH); local datasets: {local}. Download it with `minari "
                    f"download {src}` or pass its directory"
                )
            ds = minari.load_dataset(str(src), download=False)
    except (DatasetError, FileNotFoundError):
        raise
    except Exception as e:  # minari raises ValueError/KeyError/AssertionError on bad or foreign files
        raise DatasetError(f"{src} cannot be read as a Minari dataset ({e!r}): check the path or id") from e

    import gymnasium as gym

    act_space = ds.action_space
    if not isinstance(act_space, gym.spaces.Box) or len(act_space.shape) != 1:
        raise DatasetError(
            f"Minari dataset {ds.id!r} has action space {act_space}: offrl needs continuous actions, "
            "a flat Box"
        )
    metadata: dict[str, Any] = {"minari_dataset_id": ds.id, "minari_version": ds.minari_version}
    if ds.env_spec is not None:
        metadata["env_id"] = ds.env_spec.id
    if np.isfinite(act_space.low).all() and np.isfinite(act_space.high).all():
        metadata["action_low"] = act_space.low.astype(float).tolist()
        metadata["action_high"] = act_space.high.astype(float).tolist()

    keys, dims, skipped = None, None, []
    episodes = []
    for ep_data in ds.iterate_episodes():
        name = f"Minari {ds.id}: episode {ep_data.id}"
        n = len(ep_data)
        raw = ep_data.observations
        if isinstance(raw, Mapping):
            raw = _flatten_dict(raw)
            if keys is None:
                shapes = {k: np.shape(v)[1:] for k, v in raw.items()}
                keys, skipped = _resolve_obs_keys(shapes, obs_keys, f"Minari {ds.id} observations")
                dims = [int(np.prod(shapes[k])) for k in keys]
            all_obs = _concat_obs(raw, keys, name, n + 1)
        elif isinstance(raw, np.ndarray):
            if obs_keys is not None:
                raise DatasetError(
                    f"Minari dataset {ds.id!r} has a single-array observation space, so obs_keys {obs_keys} "
                    "does not apply: drop obs_keys"
                )
            if raw.shape[0] != n + 1:
                raise DatasetError(
                    f"{name}: observations have {raw.shape[0]} entries; expected {n + 1} (T + 1)"
                )
            all_obs = _two_d(raw, "observations", name)
        else:
            raise DatasetError(
                f"Minari dataset {ds.id!r} has observation space {ds.observation_space}: only Box and Dict "
                "spaces of flat vectors are supported"
            )
        actions = np.asarray(ep_data.actions, dtype=np.float64).reshape(n, -1)
        ep = _Episode(
            name=name,
            observations=all_obs[:-1],
            actions=actions,
            next_observations=all_obs[1:],
            rewards=_per_step(ep_data.rewards, "'rewards'", name, n),
            dones=_flags(_per_step(ep_data.terminations, "'terminations'", name, n)),
        )
        infos = _flatten_dict(ep_data.infos or {})
        ep.reward_alt = _info_key(infos, reward_key, "reward_key", name, n, ep_data)
        success = _info_key(infos, success_key, "success_key", name, n, ep_data)
        ep.success = _flags(success) if success is not None else None
        episodes.append(ep)
    if not episodes:
        raise DatasetError(f"Minari dataset {ds.id!r} has no episodes: nothing to import")
    return _Source(episodes, keys, dims, metadata, skipped)


def _info_key(
    infos: Mapping[str, Any], key: str | None, option: str, name: str, n: int, ep_data: Any
) -> np.ndarray | None:
    if key is None:
        return None
    if key in ("rewards", "terminations", "truncations"):
        return _per_step(getattr(ep_data, key), f"{option} {key!r}", name, n)
    if key not in infos:
        raise DatasetError(
            f"{name} has no info key {key!r} for {option}: its infos have {sorted(infos)} (record infos when "
            "collecting, e.g. DataCollector(record_infos=True))"
        )
    a = np.asarray(infos[key])
    if a.shape[:1] == (n + 1,):
        a = a[1:]  # the first entry is the reset info, before any step
    return _per_step(a, f"{option} {key!r}", name, n)
