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

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from offrl.data.dataset import Dataset, DatasetError, make_dataset
from offrl.data.importers.common import (
    RewardFn,
    _assemble,
    _cut_at_first_success,
    _end_at_first_terminal,
    _filter_success_rate,
    _plain,
    _relabel_rewards,
    _resolve_reward_fn,
    _Source,
)
from offrl.data.importers.d4rl import _read_d4rl
from offrl.data.importers.minari import _read_minari
from offrl.data.importers.npz import _read_npz
from offrl.data.importers.robomimic import _read_robomimic

FORMATS = ("robomimic", "d4rl", "minari", "npz")

_READERS: dict[str, Callable[..., _Source]] = {
    "robomimic": _read_robomimic,
    "d4rl": _read_d4rl,
    "minari": _read_minari,
    "npz": _read_npz,
}



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
    reward_mode: str | None = None,
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
        reward_mode: the reward structure to record (offrl.envs.reward_modes), None for none: ``terminal``
            cuts each episode at its first success (as ``terminate_on_success``); ``success-every-step`` (the
            workflow paper's) keeps every success step rewarded 1 and needs sparse 0/1 rewards after relabelling
            (a ``success_key``, or such rewards in the source); its Q bound (offrl.data.q_value_range) reads the
            longest episode as the horizon (metadata ``horizon``) unless the source's metadata has one;
            ``shaped`` records that the rewards are a dense reward kept as they are (no cut at success, the
            same horizon rule for the Q bound).

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
    if reward_mode is not None:
        from offrl.envs.reward_modes import FIXED_HORIZON_MODES, REWARD_MODES

        if reward_mode not in REWARD_MODES:
            raise DatasetError(f"unknown reward mode {reward_mode!r}: use one of {', '.join(REWARD_MODES)}")
        if reward_mode in FIXED_HORIZON_MODES and terminate_on_success:
            raise DatasetError(f"--reward-mode {reward_mode} keeps rewarding after the first success: drop "
                               "--terminate-on-success")
        terminate_on_success = terminate_on_success or reward_mode == "terminal"
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
    if reward_mode is not None:
        if reward_mode == "success-every-step" and not sparse:
            raise DatasetError(f"{src}: --reward-mode success-every-step needs 0/1 rewards after relabelling (got "
                               f"values outside {{0, 1}}): relabel them with --success-key")
        metadata["reward_mode"] = reward_mode
        if reward_mode in FIXED_HORIZON_MODES and not metadata.get("horizon"):
            metadata["horizon"] = int(max(len(ep.rewards) for ep in episodes))
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
