"""Importing offline data from other formats into a validated :class:`~offrl.data.dataset.Dataset`.

Formats (``FORMATS``):

- ``robomimic``: robomimic HDF5 (``data/demo_<i>/{obs,next_obs,actions,rewards,dones}``), one episode per
  demo.
- ``d4rl``: D4RL-style HDF5 with the transition arrays at the root, including files written by
  ``offrl collect`` (``docs/dataset-format.md``).
- ``minari``: a Minari dataset stored locally, by id or by path (needs the optional ``minari`` package).
- ``npz``: NumPy files, either D4RL key names in an ``.npz``, or a list of trajectory dicts in an ``.npy`` /
  ``.npz`` as released with roboverse data (Kumar et al., 2021).

Every importer reads its format into episodes of one common form, then :func:`import_dataset` applies the
same steps to all of them: an episode ends at its first terminal (steps recorded after it are dropped), a
missing ``next_observations`` is derived from the following observation, rewards are relabelled if asked,
episodes are cut at their first success if asked, episodes are filtered to a target behaviour success rate
if asked, and the result goes through :func:`~offrl.data.dataset.make_dataset` (validation).

Observations are flat state vectors: image observations are not supported yet, and asking for an image key
raises :class:`~offrl.data.dataset.DatasetError`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from offrl.data.dataset import Dataset, DatasetError, make_dataset
from offrl.data.hdf5 import _decode_attr as hdf5_decode_attr

FORMATS = ("robomimic", "d4rl", "minari", "npz")

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


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------


def import_dataset(
    fmt: str,
    src: str | Path,
    *,
    obs_keys: Sequence[str] | None = None,
    reward_key: str | None = None,
    success_key: str | None = None,
    reward_fn: str | RewardFn | None = None,
    terminate_on_success: bool = False,
    target_success_rate: float | None = None,
    seed: int = 0,
) -> Dataset:
    """Import an offline dataset from another format, relabel and filter it, and validate it.

    Episode boundaries: ``terminals`` are set where the source says the task ended (robomimic ``dones``,
    D4RL ``terminals``, Minari ``terminations``, roboverse ``terminals``); an episode ends at its first
    terminal and steps recorded after it in the same source episode are dropped (they follow the end of the
    task). The last step of an episode that does not end terminal gets ``timeouts = True``.

    ``next_observations``: taken from the source when it has them. Otherwise ``next_observations[t] =
    observations[t + 1]`` inside an episode; the last step of an episode has no successor, so it is dropped
    unless it is terminal, in which case its ``next_observations`` is a copy of its ``observations`` (never
    used: nothing bootstraps from a terminal). The counts of dropped steps go to ``metadata["dropped"]``.

    Rewards (at most one of ``reward_key``, ``success_key``, ``reward_fn``; default: the source's rewards):

    - ``reward_key``: the stored per-step array to use as the reward (a dataset path inside the demo / file,
      an info key for Minari, a trajectory or ``env_infos`` key for roboverse).
    - ``success_key``: a stored per-step success flag; reward 1.0 on success steps, 0.0 otherwise.
    - ``reward_fn``: ``"module:function"`` or a callable mapping ``(observations (N, obs_dim),
      actions (N, act_dim), next_observations (N, obs_dim))`` float32 arrays to rewards (N,).

    A success step is one where the ``success_key`` flag is set, or, without ``success_key``, one with a
    positive reward; a successful episode is one with a positive reward (after relabelling).

    Args:
        fmt: one of ``FORMATS``.
        src: the file (robomimic, d4rl, npz), or a Minari dataset id or directory.
        obs_keys: low-dimensional observation keys to concatenate, in this order, for sources with dict
            observations (robomimic, Minari dict spaces, roboverse dicts). Default: every low-dimensional key,
            sorted by name (image keys are skipped and listed in ``metadata["skipped_image_keys"]``).
        reward_key: see above.
        success_key: see above.
        reward_fn: see above.
        terminate_on_success: cut each episode at its first success step, which becomes terminal.
        target_success_rate: in [0, 1]; drop successful or failed episodes (chosen at random from ``seed``)
            until the fraction of successful episodes is as close as possible to it, dropping as few as
            possible. Before/after counts go to ``metadata["success_filter"]``.
        seed: seeds the choice of dropped episodes; same seed and data, same result.

    Returns:
        The validated dataset. ``metadata`` holds the source's own metadata plus ``source_format``,
        ``source_path``, ``obs_keys`` / ``obs_key_dims``, ``relabelling``, ``dropped``, ``success_filter``,
        ``episodes``, and ``behaviour_success_rate`` when successes are known (``success_key`` given,
        rewards sparse 0/1, or ``terminate_on_success`` / ``target_success_rate`` used).

    Raises:
        FileNotFoundError: ``src`` does not exist (for Minari: neither a directory nor a local dataset id).
        DatasetError: unknown format, invalid option, unreadable or malformed source (the message names the
            key or episode and the fix), image observation keys, or the result fails validation.
        RuntimeError: ``fmt="minari"`` and the ``minari`` package is not installed.
    """
    if fmt not in FORMATS:
        raise DatasetError(f"unknown import format {fmt!r}: choose one of {list(FORMATS)}")
    given = [
        name
        for name, v in (("reward_key", reward_key), ("success_key", success_key), ("reward_fn", reward_fn))
        if v is not None
    ]
    if len(given) > 1:
        raise DatasetError(f"{' and '.join(given)} both define the rewards: pass only one of them")
    if target_success_rate is not None and not 0.0 <= float(target_success_rate) <= 1.0:
        raise DatasetError(f"target_success_rate must be in [0, 1], got {target_success_rate}")
    fn, fn_name = _resolve_reward_fn(reward_fn) if reward_fn is not None else (None, None)
    obs_keys = list(obs_keys) if obs_keys is not None else None
    if obs_keys is not None and not obs_keys:
        raise DatasetError("obs_keys is empty: name at least one observation key, or pass None for all")

    reader = _READERS[fmt]
    source = reader(src, obs_keys=obs_keys, reward_key=reward_key, success_key=success_key)

    dropped = {"after_terminal": 0, "without_successor": 0, "after_success": 0, "empty_episodes": 0}
    episodes = []
    for ep in source.episodes:
        ep = _end_at_first_terminal(ep, dropped)
        if ep is not None:
            episodes.append(ep)
    if not episodes:
        raise DatasetError(
            f"{src}: no transitions left after deriving next_observations (every episode has a single "
            "non-terminal step): the source needs episodes of two or more steps, or stored next observations"
        )

    reward_desc = _relabel_rewards(episodes, reward_key, success_key, fn, fn_name)
    if terminate_on_success:
        episodes = [_cut_at_first_success(ep, dropped) for ep in episodes]

    successful = np.array([bool((ep.rewards > 0).any()) for ep in episodes])
    success_filter = None
    if target_success_rate is not None:
        keep, success_filter = _filter_success_rate(successful, float(target_success_rate), seed)
        episodes = [episodes[i] for i in keep]
        successful = successful[keep]
        success_filter["seed"] = int(seed)

    rewards_all = np.concatenate([ep.rewards for ep in episodes])
    sparse = bool(np.isin(rewards_all, (0.0, 1.0)).all() and (rewards_all == 0).any())
    successes_known = (
        success_key is not None or sparse or terminate_on_success or target_success_rate is not None
    )

    arrays = _assemble(episodes)
    metadata = dict(source.metadata)
    metadata.update(
        source_format=fmt,
        source_path=str(src),
        obs_keys=source.obs_keys,
        obs_key_dims=source.obs_key_dims,
        relabelling={
            "rewards": reward_desc,
            "success": f"success_key {success_key!r}" if success_key is not None else "reward > 0",
            "terminate_on_success": bool(terminate_on_success),
        },
        dropped=dropped,
        success_filter=success_filter,
        episodes=len(episodes),
        transitions=int(arrays["rewards"].shape[0]),
        mean_episode_length=float(arrays["rewards"].shape[0] / len(episodes)),
    )
    if source.skipped_image_keys:
        metadata["skipped_image_keys"] = source.skipped_image_keys
    if terminate_on_success:
        metadata["terminate_on_success"] = True
    if successes_known:
        metadata["behaviour_success_rate"] = float(successful.mean())
    else:
        # A rate carried over from the source would describe other rewards than the ones imported.
        metadata.pop("behaviour_success_rate", None)
    try:
        return make_dataset(arrays, _plain(metadata))
    except DatasetError as e:
        raise DatasetError(f"{src}: {e}") from e


def import_robomimic(src: str | Path, **options: Any) -> Dataset:
    """Import a robomimic HDF5 file (``data/demo_<i>``), one episode per demo.

    Layout (robomimic's documented post-processed format): ``data`` group (attrs ``total``, ``env_args``
    JSON), and per demo ``obs/<key>`` (T, ...), optional ``next_obs/<key>`` (T, ...),
    ``actions`` (T, act_dim), ``rewards`` (T,), ``dones`` (T,). Demos are read in the order of their index
    number (``demo_2`` before ``demo_10``).

    Mapping: the chosen ``obs`` keys are concatenated in order into ``observations`` (and ``next_obs`` into
    ``next_observations``; derived from the next step when the file has no ``next_obs``, e.g. written with
    ``--exclude-next-obs``). ``dones`` (s' is a task-completion state) become ``terminals``: a demo ends at
    its first done. A demo with no done ends with a timeout; a file without ``dones`` has no terminals.
    ``reward_key`` / ``success_key`` are dataset paths inside each demo (``rewards``, ``dones``,
    ``obs/<key>``...). ``data.attrs["env_args"]`` goes to ``metadata["robomimic_env_args"]``.

    Note: robomimic's ``dataset_states_to_obs.py --done_mode 1`` or ``2`` sets ``done`` on the last step of
    every demo, successful or not, so with those files every demo ends terminal.

    Args:
        src: the robomimic ``.hdf5`` file.
        **options: the keyword options of :func:`import_dataset` (``obs_keys``, ``reward_key``,
            ``success_key``, ``reward_fn``, ``terminate_on_success``, ``target_success_rate``, ``seed``).

    Returns:
        The validated dataset (see :func:`import_dataset` for the metadata).

    Raises:
        FileNotFoundError: no such file.
        DatasetError: not HDF5, no ``data`` group or demos, a demo misses ``actions``/``obs``, an unknown or
            image observation key, mismatched lengths, or a missing reward/success key.
    """
    return import_dataset("robomimic", src, **options)


def import_d4rl(src: str | Path, **options: Any) -> Dataset:
    """Import a D4RL-style HDF5 file (transition arrays at the root).

    Keys: ``observations`` (N, obs_dim), ``actions`` (N, act_dim), ``rewards`` (N,), ``terminals`` (N,),
    optional ``timeouts`` (N,) and ``next_observations`` (N, obs_dim). Files written by ``offrl collect``
    (``docs/dataset-format.md``) are this layout; their root attributes are kept as metadata.

    Episodes end at every ``terminals`` or ``timeouts`` step and at the end of the file; without ``timeouts``
    an episode ends only at a terminal and at the file's end. A step with both flags set is terminal (the task
    ended; the time limit is moot). When ``next_observations`` is missing it is derived from the next step
    (see :func:`import_dataset`), which drops the last step of every episode that ends by timeout, as D4RL's
    own ``qlearning_dataset`` does. ``reward_key`` / ``success_key`` name root arrays or paths
    (``infos/success``). ``observations`` may also be a group of per-key arrays, selected with ``obs_keys``.

    Args:
        src: the ``.hdf5`` / ``.h5`` file.
        **options: the keyword options of :func:`import_dataset` (``obs_keys``, ``reward_key``,
            ``success_key``, ``reward_fn``, ``terminate_on_success``, ``target_success_rate``, ``seed``).

    Returns:
        The validated dataset (see :func:`import_dataset` for the metadata).

    Raises:
        FileNotFoundError: no such file.
        DatasetError: not HDF5, a required key is missing, mismatched lengths, or an unknown key.
    """
    return import_dataset("d4rl", src, **options)


def import_npz(src: str | Path, **options: Any) -> Dataset:
    """Import NumPy data: an ``.npz`` with D4RL key names, or a list of trajectory dicts (roboverse).

    - ``.npz`` holding ``observations``, ``actions``, ``rewards``, ``terminals`` (optionally ``timeouts``,
      ``next_observations``): read like a D4RL file, without unpickling.
    - ``.npy`` (or a one-array ``.npz``) holding a list / object array of trajectory dicts, as in the paper's
      released roboverse data. Each dict: ``observations`` (a list of dicts or arrays, or a (T, d) array),
      ``actions`` (T, act_dim), ``rewards`` (T,), ``terminals`` (T,), optionally ``next_observations`` (like
      ``observations``) and ``env_infos`` (a list of T dicts). ``reward_key`` / ``success_key`` name a
      trajectory key or an ``env_infos`` key. Dict observations are concatenated over ``obs_keys``.

    Security: the trajectory-list form is stored with pickle, so reading it needs
    ``np.load(..., allow_pickle=True)``, which can run arbitrary code from a malicious file. Only import
    trajectory lists from sources you trust; the D4RL ``.npz`` form is read with ``allow_pickle=False``.

    Args:
        src: the ``.npz`` or ``.npy`` file.
        **options: the keyword options of :func:`import_dataset` (``obs_keys``, ``reward_key``,
            ``success_key``, ``reward_fn``, ``terminate_on_success``, ``target_success_rate``, ``seed``).

    Returns:
        The validated dataset (see :func:`import_dataset` for the metadata).

    Raises:
        FileNotFoundError: no such file.
        DatasetError: not a NumPy file, neither form, a trajectory misses a key, mismatched lengths, or an
            unknown observation key.
    """
    return import_dataset("npz", src, **options)


def import_minari(src: str | Path, **options: Any) -> Dataset:
    """Import a locally stored Minari dataset, by directory or by dataset id.

    ``src`` is a directory (the dataset's folder, or its ``data`` folder holding ``metadata.json``), or a
    dataset id such as ``"D4RL/door/human-v2"`` looked up under ``$MINARI_DATASETS_PATH`` (default
    ``~/.minari/datasets``). Nothing is downloaded: fetch remote datasets first with ``minari download``.

    A Minari episode of T steps has observations (T + 1, ...) and actions, rewards, terminations,
    truncations (T,): ``observations[:-1]`` -> ``observations``, ``observations[1:]`` ->
    ``next_observations``, ``terminations`` -> ``terminals`` (an episode that is not terminated ends with a
    timeout). Dict observation spaces are concatenated over ``obs_keys`` (nested keys joined with ``/``).
    Actions must be a flat ``Box``; its finite bounds go to ``metadata["action_low"/"action_high"]``.
    ``reward_key`` / ``success_key`` name keys of the episode ``infos`` (``a/b`` for nested ones); infos of
    length T + 1 (the reset info first, as ``minari.DataCollector`` records them) are aligned to the steps by
    dropping the first.

    Args:
        src: a Minari dataset id or directory (see above).
        **options: the keyword options of :func:`import_dataset` (``obs_keys``, ``reward_key``,
            ``success_key``, ``reward_fn``, ``terminate_on_success``, ``target_success_rate``, ``seed``).

    Returns:
        The validated dataset (see :func:`import_dataset` for the metadata).

    Raises:
        RuntimeError: the ``minari`` package is not installed.
        FileNotFoundError: ``src`` is neither a directory nor a local dataset id.
        DatasetError: the dataset cannot be read, the action space is not a flat Box, an unknown or image
            observation key, or a missing info key.
    """
    return import_dataset("minari", src, **options)


# ----------------------------------------------------------------------------------------------------------
# Common steps
# ----------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------
# Observation keys and per-step arrays
# ----------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------
# robomimic
# ----------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------
# D4RL-style HDF5 and flat NumPy arrays
# ----------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------
# NumPy: D4RL arrays in .npz, or roboverse trajectory lists
# ----------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------
# Minari
# ----------------------------------------------------------------------------------------------------------


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


_READERS: dict[str, Callable[..., _Source]] = {
    "robomimic": _read_robomimic,
    "d4rl": _read_d4rl,
    "minari": _read_minari,
    "npz": _read_npz,
}
