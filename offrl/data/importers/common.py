"""What every importer shares: the episode form each format is read into, the steps applied to all of them
(first terminal, rewards, success cut, success-rate filter, assembly), and reading observation keys and per-step
arrays."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from offrl.data.dataset import DatasetError

# A per-step array is an image when it has two or more axes per step, or when its name says so: roboverse
# stores its 48x48x3 camera image flattened to a 6912-vector under "image".
_IMAGE_NAME_TOKENS = ("image", "rgb", "depth", "pixels")

RewardFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclasses.dataclass
class _Episode:
    """One source episode in the common form all importers produce.

    Attributes:
        name: where it came from, for error messages (``data/demo_3``, ``episode 7``).
        observations: (T, obs_dim) float.
        actions: (T, act_dim) float.
        next_observations: (T, obs_dim) float, or None when the source has none (derived later).
        rewards: (T,) float, or None when the source has none.
        dones: (T,) bool, True where the task ended (terminal), or None when the source has none.
        reward_alt: (T,) the array named by ``reward_key``, or None.
        success: (T,) bool, the flags named by ``success_key``, or None.
    """

    name: str
    observations: np.ndarray
    actions: np.ndarray
    next_observations: np.ndarray | None = None
    rewards: np.ndarray | None = None
    dones: np.ndarray | None = None
    reward_alt: np.ndarray | None = None
    success: np.ndarray | None = None
    terminal: bool = False

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    def take(self, stop: int) -> _Episode:
        """The first ``stop`` steps (``next_observations`` must be set)."""
        cut = {
            f.name: (v[:stop] if isinstance(v, np.ndarray) else v)
            for f in dataclasses.fields(self)
            for v in [getattr(self, f.name)]
        }
        return _Episode(**cut)


@dataclasses.dataclass
class _Source:
    """What a format reader returns: the episodes and facts about the source."""

    episodes: list[_Episode]
    obs_keys: list[str] | None
    obs_key_dims: list[int] | None
    metadata: dict[str, Any]
    skipped_image_keys: list[str] = dataclasses.field(default_factory=list)


def _end_at_first_terminal(ep: _Episode, dropped: dict[str, int]) -> _Episode | None:
    """End ``ep`` at its first done step and fill in ``next_observations``; None when nothing is left."""
    n = len(ep)
    done_at = np.flatnonzero(ep.dones) if ep.dones is not None else np.array([], np.int64)
    if done_at.size:
        stop = int(done_at[0]) + 1
        dropped["after_terminal"] += n - stop
        ep.terminal = True
    else:
        stop = n
        ep.terminal = False
    if ep.next_observations is None:
        nxt = np.empty_like(ep.observations)
        nxt[:-1] = ep.observations[1:]
        # The last recorded step has no successor state. A terminal one keeps a placeholder (nothing
        # bootstraps from it); a non-terminal one cannot be used for TD learning, so it is dropped.
        nxt[-1] = ep.observations[-1]
        ep.next_observations = nxt
        if stop == n and not ep.terminal:
            stop = n - 1
            dropped["without_successor"] += 1
    if stop == 0:
        dropped["empty_episodes"] += 1
        return None
    return ep.take(stop)


def _cut_at_first_success(ep: _Episode, dropped: dict[str, int]) -> _Episode:
    flags = ep.success if ep.success is not None else ep.rewards > 0
    hit = np.flatnonzero(flags)
    if hit.size == 0:
        return ep
    stop = int(hit[0]) + 1
    dropped["after_success"] += len(ep) - stop
    ep = ep.take(stop)
    ep.terminal = True
    return ep


def _relabel_rewards(
    episodes: list[_Episode],
    reward_key: str | None,
    success_key: str | None,
    fn: RewardFn | None,
    fn_name: str | None,
) -> str:
    """Set ``ep.rewards`` (float32) on every episode from the chosen source; return its description."""
    if fn is not None:
        obs = np.concatenate([ep.observations for ep in episodes]).astype(np.float32)
        act = np.concatenate([ep.actions for ep in episodes]).astype(np.float32)
        nxt = np.concatenate([ep.next_observations for ep in episodes]).astype(np.float32)
        try:
            out = np.asarray(fn(obs, act, nxt), dtype=np.float32)
        except Exception as e:  # the user's function: report which one failed and how
            raise DatasetError(
                f"reward_fn {fn_name} failed on arrays of {obs.shape[0]} transitions: {e!r}"
            ) from e
        if out.shape not in ((obs.shape[0],), (obs.shape[0], 1)):
            raise DatasetError(
                f"reward_fn {fn_name} returned shape {out.shape}; it must return one reward per transition, "
                f"shape ({obs.shape[0]},)"
            )
        out = out.reshape(-1)
        start = 0
        for ep in episodes:
            ep.rewards = out[start : start + len(ep)]
            start += len(ep)
        return f"reward_fn {fn_name}"
    for ep in episodes:
        if success_key is not None:
            ep.rewards = ep.success.astype(np.float32)
        elif reward_key is not None:
            ep.rewards = ep.reward_alt.astype(np.float32)
        elif ep.rewards is None:
            raise DatasetError(
                f"{ep.name} has no rewards: name the reward array with reward_key, a success flag with "
                "success_key, or a reward_fn"
            )
        else:
            ep.rewards = ep.rewards.astype(np.float32)
    if success_key is not None:
        return f"success_key {success_key!r}: 1.0 on success steps, else 0.0"
    if reward_key is not None:
        return f"reward_key {reward_key!r}"
    return "stored rewards"


def _filter_success_rate(successful: np.ndarray, target: float, seed: int) -> tuple[np.ndarray, dict]:
    """Choose episodes to keep so the success rate is as close to ``target`` as possible.

    Only one kind of episode is dropped: failed ones to raise the rate, successful ones to lower it. Among
    the counts that reach the closest rate, the one keeping the most episodes wins; at least one episode is
    always kept. Which episodes of that kind go is drawn from ``seed``.

    Returns:
        ``(keep, record)``: kept episode indices, increasing, and before/after counts.
    """
    n_s, n_f = int(successful.sum()), int((~successful).sum())
    goal = Fraction(target)
    before = _rate(n_s, n_f)
    if before is not None and goal > before:
        # Raise the rate: keep every success and the number of failures that gets closest.
        choices = [(abs(Fraction(n_s, n_s + f) - goal), -f, n_s, f) for f in range(n_f + 1) if n_s + f > 0]
    else:
        choices = [(abs(Fraction(s, s + n_f) - goal), -s, s, n_f) for s in range(n_s + 1) if s + n_f > 0]
    _, _, keep_s, keep_f = min(choices)
    rng = np.random.default_rng(seed)
    succ_idx, fail_idx = np.flatnonzero(successful), np.flatnonzero(~successful)
    keep = np.sort(np.concatenate([rng.permutation(succ_idx)[:keep_s], rng.permutation(fail_idx)[:keep_f]]))
    after = _rate(keep_s, keep_f)
    record = {
        "target": float(target),
        "episodes_before": n_s + n_f,
        "successful_before": n_s,
        "success_rate_before": float(before) if before is not None else None,
        "episodes_after": keep_s + keep_f,
        "successful_after": keep_s,
        "success_rate_after": float(after) if after is not None else None,
        "dropped_successful": n_s - keep_s,
        "dropped_failed": n_f - keep_f,
    }
    return keep.astype(np.int64), record


def _rate(n_s: int, n_f: int) -> Fraction | None:
    return Fraction(n_s, n_s + n_f) if n_s + n_f else None


def _assemble(episodes: list[_Episode]) -> dict[str, np.ndarray]:
    terminals, timeouts = [], []
    for ep in episodes:
        t = np.zeros(len(ep), bool)
        o = np.zeros(len(ep), bool)
        (t if ep.terminal else o)[-1] = True
        terminals.append(t)
        timeouts.append(o)
    return {
        "observations": np.concatenate([ep.observations for ep in episodes]).astype(np.float32),
        "actions": np.concatenate([ep.actions for ep in episodes]).astype(np.float32),
        "rewards": np.concatenate([ep.rewards for ep in episodes]).astype(np.float32),
        "terminals": np.concatenate(terminals),
        "timeouts": np.concatenate(timeouts),
        "next_observations": np.concatenate([ep.next_observations for ep in episodes]).astype(np.float32),
    }


def _resolve_reward_fn(reward_fn: str | RewardFn) -> tuple[RewardFn, str]:
    if callable(reward_fn):
        name = (
            f"{getattr(reward_fn, '__module__', '?')}:{getattr(reward_fn, '__qualname__', repr(reward_fn))}"
        )
        return reward_fn, name
    if not isinstance(reward_fn, str) or reward_fn.count(":") != 1:
        raise DatasetError(f"reward_fn {reward_fn!r} must be a callable or a 'module:function' string")
    module_name, attr = reward_fn.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise DatasetError(f"reward_fn {reward_fn!r}: cannot import module {module_name!r} ({e})") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise DatasetError(f"reward_fn {reward_fn!r}: module {module_name!r} has no function {attr!r}")
    return fn, reward_fn


def _plain(value: Any) -> Any:
    """Metadata as JSON-friendly Python values (HDF5 attributes are written from them)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, Path):
        return str(value)
    return value


def _is_image(key: str, step_shape: tuple[int, ...]) -> bool:
    leaf = key.rsplit("/", 1)[-1].lower()
    return len(step_shape) >= 2 or any(tok in leaf for tok in _IMAGE_NAME_TOKENS)


def _resolve_obs_keys(
    step_shapes: Mapping[str, tuple[int, ...]], obs_keys: list[str] | None, where: str
) -> tuple[list[str], list[str]]:
    """Check ``obs_keys`` against the available keys; default to every low-dimensional key, sorted.

    Args:
        step_shapes: per-step shape of every available key.
        obs_keys: requested keys, or None.
        where: the place the keys were found, for messages.

    Returns:
        ``(keys, skipped_image_keys)``.

    Raises:
        DatasetError: an unknown or image key was requested, or no low-dimensional key exists.
    """
    described = ", ".join(f"{k} {tuple(s)}" for k, s in sorted(step_shapes.items()))
    low_dim = sorted(k for k, s in step_shapes.items() if not _is_image(k, s))
    images = sorted(k for k, s in step_shapes.items() if _is_image(k, s))
    if obs_keys is None:
        if not low_dim:
            raise DatasetError(
                f"{where} has no low-dimensional observation keys (found: {described}): image observations "
                "are not supported yet; the data needs low-dimensional (state) keys"
            )
        return low_dim, images
    for k in obs_keys:
        if k not in step_shapes:
            raise DatasetError(
                f"unknown observation key {k!r} in {where}: available keys are {sorted(step_shapes)} "
                f"(per-step shapes: {described})"
            )
        if _is_image(k, step_shapes[k]):
            raise DatasetError(
                f"observation key {k!r} in {where} is an image (per-step shape {tuple(step_shapes[k])}): "
                f"image observations are not supported yet; choose low-dimensional keys from {low_dim}"
            )
    if len(set(obs_keys)) != len(obs_keys):
        raise DatasetError(f"obs_keys {obs_keys} names a key twice: name each key once")
    return list(obs_keys), []


def _concat_obs(arrays: Mapping[str, Any], keys: list[str], where: str, length: int) -> np.ndarray:
    """Concatenate the per-step arrays of ``keys`` (each (length, ...)) into (length, sum of dims)."""
    parts = []
    for k in keys:
        if k not in arrays:
            raise DatasetError(
                f"{where} has no observation key {k!r} (it has {sorted(arrays)}): every episode needs the "
                "same keys; choose keys present in all of them with obs_keys"
            )
        a = np.asarray(arrays[k])
        if a.shape[0] != length:
            raise DatasetError(
                f"{where}: observation key {k!r} has {a.shape[0]} steps but the episode has {length}: the "
                "arrays of one episode must have one entry per step; re-export this episode"
            )
        parts.append(a.reshape(length, -1))
    return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def _per_step(a: Any, name: str, where: str, length: int) -> np.ndarray:
    """A per-step scalar array, (length,) or (length, 1), as (length,)."""
    a = np.asarray(a)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.shape != (length,):
        raise DatasetError(
            f"{where}: {name} has shape {a.shape} but the episode has {length} steps: it needs one value per "
            f"step, shape ({length},)"
        )
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise DatasetError(f"{where}: {name} has dtype {a.dtype}; it must be numeric or boolean")
    return a


def _flags(a: np.ndarray) -> np.ndarray:
    return np.asarray(a) != 0


def _flatten_dict(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level with ``a/b`` keys."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten_dict(v, name + "/"))
        else:
            out[name] = v
    return out


def _check_file(src: str | Path, what: str) -> Path:
    path = Path(src)
    if not path.is_file():
        hint = "it is a directory, not a file" if path.is_dir() else "check the path"
        raise FileNotFoundError(f"{what} file {path} not found: {hint}")
    return path


def _open_hdf5(path: Path, fmt: str) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(
            f"{path} is not a readable HDF5 file ({e}): format {fmt!r} needs an HDF5 file; check the format "
            "and that the file is complete"
        ) from e


def _h5_array(group: h5py.Group, key: str, where: str) -> np.ndarray:
    obj = group.get(key)
    if not isinstance(obj, h5py.Dataset):
        raise DatasetError(f"{where}/{key} is a group, not an array")
    return obj[()]
