"""The offline dataset: a validated container of transitions ``(s, a, r, s', done)`` grouped in episodes.

Conventions (D4RL's):
- ``terminals[t]`` is True when ``s'`` is a true end of the task (no bootstrapping from ``s'``);
- ``timeouts[t]`` is True when the episode was cut by a time limit (bootstrapping from ``s'`` continues);
- an episode ends at every transition with ``terminals | timeouts``; the two are never both set.

The on-disk HDF5 schema is documented in ``docs/dataset-format.md`` and implemented in :mod:`offrl.data.hdf5`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")
# Image datasets add camera frames, each distinct state's frame stored once, and the frame of s and s' of
# every transition by index (docs/dataset-format.md).
IMAGE_KEYS = ("images", "image_index", "next_image_index")


class DatasetError(ValueError):
    """A dataset is malformed. The message names the field, the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Transitions of a fixed log of experience, in time order, episode after episode.

    Attributes:
        observations: (N, obs_dim) float32, the state ``s`` of each transition.
        actions: (N, act_dim) float32, the action ``a`` executed in ``s``.
        rewards: (N,) float32, ``r(s, a)``.
        terminals: (N,) bool, True where ``s'`` ends the task (no bootstrap).
        timeouts: (N,) bool, True where the episode was cut by a time limit (bootstrap continues).
        next_observations: (N, obs_dim) float32, ``s'``.
        metadata: free-form facts about the data (task, horizon, noise, behaviour success rate, ...).
        images: image datasets only: (M, H, W, C) uint8 camera frames, every distinct state once (an episode
            of T transitions has T + 1 frames), so next observations cost no second copy.
        image_index: (N,) int64, the frame of ``s`` of each transition (image datasets only).
        next_image_index: (N,) int64, the frame of ``s'`` (image datasets only).

    In image datasets ``observations`` holds the low-dimensional state logged beside the camera (the robot's
    proprioception on a real robot; the simulator state in MetaWorld, of which ``metadata["proprio_dims"]``
    names the robot's own features); training chooses what the networks see (``offrl train --obs``).

    Build one with :func:`make_dataset`, which validates; the constructor itself does not.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    next_observations: np.ndarray
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    images: np.ndarray | None = None
    image_index: np.ndarray | None = None
    next_image_index: np.ndarray | None = None

    @property
    def has_images(self) -> bool:
        return self.images is not None

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """(H, W, C) of the frames, or None without images."""
        return None if self.images is None else tuple(int(d) for d in self.images.shape[1:])

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def num_actions(self) -> int | None:
        """The size of a discrete action space (metadata ``action_space: "discrete"``, ``num_actions``), whose
        actions are stored as (N, 1) float32 indices; None for continuous actions."""
        return discrete_actions(self.metadata)

    @property
    def episode_ends(self) -> np.ndarray:
        """(E,) int64, index of the last transition of every episode."""
        return np.flatnonzero(self.terminals | self.timeouts)

    @property
    def num_episodes(self) -> int:
        return int(self.episode_ends.shape[0])

    def episode_slices(self) -> list[slice]:
        """One ``slice`` into the transition arrays per episode, in order."""
        ends = self.episode_ends
        starts = np.concatenate([[0], ends[:-1] + 1])
        return [slice(int(s), int(e) + 1) for s, e in zip(starts, ends, strict=True)]

    def episode_returns(self) -> np.ndarray:
        """(E,) float64, the undiscounted return of every episode."""
        return np.array([self.rewards[s].sum(dtype=np.float64) for s in self.episode_slices()])

    def select_episodes(self, episode_indices: np.ndarray) -> Dataset:
        """A new dataset with the given episodes (indices into ``episode_slices()``), in the order given."""
        slices = self.episode_slices()
        if len(episode_indices) == 0:
            raise DatasetError("select_episodes got no episodes: ask for at least one episode index")
        idx = np.concatenate([np.arange(slices[i].start, slices[i].stop) for i in episode_indices])
        # Frames are shared, not copied: the selection indexes into the same (possibly huge) frame array.
        images = {}
        if self.images is not None:
            images = dict(images=self.images, image_index=self.image_index[idx],
                          next_image_index=self.next_image_index[idx])
        return Dataset(
            observations=self.observations[idx],
            actions=self.actions[idx],
            rewards=self.rewards[idx],
            terminals=self.terminals[idx],
            timeouts=self.timeouts[idx],
            next_observations=self.next_observations[idx],
            metadata=dict(self.metadata),
            **images,
        )

    def arrays(self) -> dict[str, np.ndarray]:
        """The transition arrays by their D4RL names (and the image keys of image datasets)."""
        keys = REQUIRED_KEYS + (IMAGE_KEYS if self.images is not None else ())
        return {k: getattr(self, k) for k in keys}


def _as_flag(name: str, x: np.ndarray) -> np.ndarray:
    if x.dtype == np.bool_:
        return x
    if np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating):
        if not np.isin(x, (0, 1)).all():
            bad = np.flatnonzero(~np.isin(x, (0, 1)))[0]
            raise DatasetError(
                f"'{name}' must hold only 0/1 or True/False, but {name}[{bad}] = {x[bad]!r}: "
                f"store it as a boolean array"
            )
        return x.astype(bool)
    raise DatasetError(f"'{name}' has dtype {x.dtype}; it must be bool (or 0/1 integers)")


def _as_float(name: str, x: np.ndarray, ndim: int) -> np.ndarray:
    if x.ndim != ndim:
        want = "(N,)" if ndim == 1 else "(N, dim)"
        raise DatasetError(f"'{name}' has shape {x.shape}; expected {want}: reshape it before saving")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DatasetError(f"'{name}' has dtype {x.dtype}; it must be numeric (float32 is used)")
    x = x.astype(np.float32, copy=False)
    finite = np.isfinite(x)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        kind = "NaN" if np.isnan(x[tuple(bad)]) else "inf"
        raise DatasetError(
            f"'{name}' contains {kind} (first at index {tuple(int(b) for b in bad)}, "
            f"{int((~finite).sum())} values in all): drop or repair those transitions before training"
        )
    return x


def make_dataset(
    arrays: dict[str, Any], metadata: dict[str, Any] | None = None, *, check_continuity: bool = True
) -> Dataset:
    """Validate transition arrays and build a :class:`Dataset`.

    Args:
        arrays: the keys of ``REQUIRED_KEYS``: ``observations`` (N, obs_dim), ``actions`` (N, act_dim),
            ``rewards`` (N,), ``terminals`` (N,), ``timeouts`` (N,), ``next_observations`` (N, obs_dim).
            Numeric arrays are converted to float32 and flags to bool.
        metadata: optional facts; ``action_low`` / ``action_high`` (lists of act_dim floats), when present,
            are checked against the actions.
        check_continuity: check that ``observations[t + 1] == next_observations[t]`` inside each episode,
            which catches missing episode boundaries.

    Returns:
        The validated dataset.

    Raises:
        DatasetError: a key is missing, shapes or lengths disagree, a value is NaN/inf, a flag is not 0/1,
            ``terminals`` and ``timeouts`` are both set on a transition, the last transition ends no
            episode, an action lies outside the declared bounds, or an episode boundary is missing.
    """
    metadata = dict(metadata or {})
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise DatasetError(
            f"dataset is missing {missing}; a dataset needs {list(REQUIRED_KEYS)} "
            f"(see docs/dataset-format.md)"
        )
    obs = _as_float("observations", np.asarray(arrays["observations"]), 2)
    next_obs = _as_float("next_observations", np.asarray(arrays["next_observations"]), 2)
    actions = _as_float("actions", np.asarray(arrays["actions"]), 2)
    rewards = _as_float("rewards", np.asarray(arrays["rewards"]), 1)
    lengths = {
        "observations": obs.shape[0],
        "actions": actions.shape[0],
        "rewards": rewards.shape[0],
        "next_observations": next_obs.shape[0],
    }
    for k in ("terminals", "timeouts"):
        a = np.asarray(arrays[k])
        if a.ndim != 1:
            raise DatasetError(f"'{k}' has shape {a.shape}; expected (N,)")
        lengths[k] = a.shape[0]
    if len(set(lengths.values())) != 1:
        raise DatasetError(
            f"the arrays have different lengths {lengths}: every field needs one entry per transition"
        )
    n = lengths["rewards"]
    if n == 0:
        raise DatasetError("the dataset is empty (0 transitions): collect or import some data first")
    terminals = _as_flag("terminals", np.asarray(arrays["terminals"]))
    timeouts = _as_flag("timeouts", np.asarray(arrays["timeouts"]))
    if next_obs.shape[1] != obs.shape[1]:
        raise DatasetError(
            f"'next_observations' has {next_obs.shape[1]} features but 'observations' has {obs.shape[1]}"
        )
    both = terminals & timeouts
    if both.any():
        raise DatasetError(
            f"terminals and timeouts are both set at {int(both.sum())} transition(s) (first at index "
            f"{int(np.flatnonzero(both)[0])}): a transition either ends the task (terminal) or is cut by a "
            f"time limit (timeout); clear one of them"
        )
    if not (terminals[-1] or timeouts[-1]):
        raise DatasetError(
            "the last transition ends no episode (neither terminals[-1] nor timeouts[-1] is set): if the log "
            "was cut, set timeouts[-1] = True"
        )
    k = discrete_actions(metadata)
    if k is not None:
        # Discrete actions (docs/dataset-format.md): one column of indices 0..K-1, stored as float32.
        bad = (actions.shape[1] != 1) or not np.all((actions == np.round(actions)) & (actions >= 0) & (actions < k))
        if bad:
            raise DatasetError(
                f"metadata says {k} discrete actions, so 'actions' must be one column of integers in [0, {k}); got "
                f"shape {actions.shape} with values in [{actions.min():.4g}, {actions.max():.4g}]: store action "
                f"indices, or drop action_space from the metadata for continuous actions"
            )
    low, high = metadata.get("action_low"), metadata.get("action_high")
    if low is not None and high is not None:
        low = np.asarray(low, np.float32)
        high = np.asarray(high, np.float32)
        if low.shape != (actions.shape[1],) or high.shape != (actions.shape[1],):
            raise DatasetError(
                f"metadata action_low/action_high have shapes {low.shape}/{high.shape}; "
                f"expected ({actions.shape[1]},) to match 'actions'"
            )
        tol = 1e-5 * np.maximum(1.0, np.abs(high - low))
        outside = (actions < low - tol) | (actions > high + tol)
        if outside.any():
            i, j = np.argwhere(outside)[0]
            raise DatasetError(
                f"'actions' lie outside the declared bounds at {int(outside.any(1).sum())} transition(s) "
                f"(first: actions[{i}, {j}] = {actions[i, j]:.4g} not in [{low[j]:.4g}, {high[j]:.4g}]): "
                f"clip the actions or fix metadata action_low/action_high"
            )
    if check_continuity and n > 1:
        ends = terminals | timeouts
        inside = ~ends[:-1]
        # Inside an episode the next state of one transition is the state of the following one; a mismatch
        # means an episode boundary was not marked, and bootstrapping would mix two episodes.
        gap = np.abs(obs[1:] - next_obs[:-1]).max(axis=1)
        scale = 1e-4 * np.maximum(1.0, np.abs(obs[1:]).max(axis=1))
        broken = inside & (gap > scale)
        if broken.any():
            t = int(np.flatnonzero(broken)[0])
            raise DatasetError(
                f"next_observations[{t}] differs from observations[{t + 1}] but no episode ends at "
                f"transition {t} ({int(broken.sum())} such places): mark the episode end with "
                f"timeouts[{t}] = True (or terminals if the task ended there)"
            )
    images = _check_images(arrays, terminals | timeouts, n, check_continuity)
    return Dataset(obs, actions, rewards, terminals, timeouts, next_obs, metadata, **images)


def _check_images(arrays: dict[str, Any], ends: np.ndarray, n: int, check_continuity: bool) -> dict[str, Any]:
    """Validate the optional image keys (IMAGE_KEYS); returns them as Dataset fields ({} without images)."""
    present = [k for k in IMAGE_KEYS if arrays.get(k) is not None]
    if not present:
        return {}
    if len(present) != len(IMAGE_KEYS):
        missing = [k for k in IMAGE_KEYS if k not in present]
        raise DatasetError(
            f"an image dataset needs all of {list(IMAGE_KEYS)} but {missing} is missing: 'images' holds each "
            f"frame once and the two index arrays point at the frames of s and s' (docs/dataset-format.md)"
        )
    images = arrays["images"]
    if not isinstance(images, np.ndarray) or images.ndim != 4:
        raise DatasetError(
            f"'images' has shape {getattr(images, 'shape', None)}; expected (num_frames, H, W, C)"
        )
    if images.dtype != np.uint8:
        raise DatasetError(
            f"'images' has dtype {images.dtype}; frames are stored as uint8 pixels in [0, 255]: convert with "
            f"(x * 255).round().astype(np.uint8) if they are floats in [0, 1]"
        )
    m = images.shape[0]
    out = {"images": images}
    for k in ("image_index", "next_image_index"):
        idx = np.asarray(arrays[k])
        if idx.shape != (n,):
            raise DatasetError(f"'{k}' has shape {idx.shape}; expected ({n},), one frame index per transition")
        if not np.issubdtype(idx.dtype, np.integer):
            raise DatasetError(f"'{k}' has dtype {idx.dtype}; it must hold integer frame indices")
        bad = (idx < 0) | (idx >= m)
        if bad.any():
            t = int(np.flatnonzero(bad)[0])
            raise DatasetError(
                f"'{k}'[{t}] = {int(idx[t])} is not a frame of 'images' (it has {m} frames, 0..{m - 1})"
            )
        out[k] = idx.astype(np.int64, copy=False)
    if check_continuity and n > 1:
        inside = ~ends[:-1]
        broken = inside & (out["image_index"][1:] != out["next_image_index"][:-1])
        if broken.any():
            t = int(np.flatnonzero(broken)[0])
            raise DatasetError(
                f"next_image_index[{t}] != image_index[{t + 1}] but no episode ends at transition {t}: inside "
                f"an episode s' of one transition is s of the next; fix the indices or mark the episode end"
            )
    return out


def split_episodes(
    dataset: Dataset, heldout_fraction: float = 0.1, seed: int = 0
) -> tuple[Dataset, Dataset | None]:
    """Split by whole episodes into training and held-out episodes, deterministically.

    Splitting by episode (not by transition) keeps the held-out transitions from episodes the critic never
    trained on, so held-out TD error measures generalisation rather than memorisation.

    Args:
        dataset: the full dataset.
        heldout_fraction: fraction of episodes held out, in [0, 1). At least one episode is held out when the
            fraction is positive and the dataset has two or more episodes; none when it has one.
        seed: seeds the permutation of episodes; the same seed and dataset give the same split.

    Returns:
        ``(train, heldout)``; ``heldout`` is None when nothing is held out.

    Raises:
        DatasetError: the fraction is outside [0, 1).
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise DatasetError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    n_ep = dataset.num_episodes
    n_held = 0 if heldout_fraction == 0 or n_ep < 2 else max(1, int(round(heldout_fraction * n_ep)))
    n_held = min(n_held, n_ep - 1)
    if n_held == 0:
        return dataset, None
    perm = np.random.default_rng(seed).permutation(n_ep)
    held = np.sort(perm[:n_held])
    train = np.sort(perm[n_held:])
    return dataset.select_episodes(train), dataset.select_episodes(held)


@dataclasses.dataclass(frozen=True)
class Normalizer:
    """Per-feature observation normalisation ``(s - mean) / std``, fit on training episodes only.

    Attributes:
        mean: (obs_dim,) float32.
        std: (obs_dim,) float32, at least ``min_std`` so constant features map to 0 rather than dividing by 0.
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, observations: np.ndarray, min_std: float = 1e-3) -> Normalizer:
        """Fit to (N, obs_dim) observations."""
        mean = observations.mean(axis=0, dtype=np.float64).astype(np.float32)
        std = observations.std(axis=0, dtype=np.float64).astype(np.float32)
        return cls(mean=mean, std=np.maximum(std, np.float32(min_std)))

    @classmethod
    def identity(cls, obs_dim: int) -> Normalizer:
        return cls(mean=np.zeros(obs_dim, np.float32), std=np.ones(obs_dim, np.float32))

    def __call__(self, observations: np.ndarray) -> np.ndarray:
        return ((observations - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, list[float]]) -> Normalizer:
        return cls(mean=np.asarray(d["mean"], np.float32), std=np.asarray(d["std"], np.float32))


def q_value_range(dataset: Dataset, gamma: float) -> dict[str, Any]:
    """The range of Q-values that the dataset's rewards allow, for judging the size of Q errors (paper Sec. 3).

    When every nonzero reward sits on a terminal transition (sparse reward that ends the episode, as in
    ``offrl collect`` with ``terminate_on_success``), a return collects at most one such reward, so
    ``Q in [min(0, r_min), max(0, r_max)]``. Otherwise rewards can repeat and the bound is the discounted sum
    over the effective horizon ``H = min(longest episode, 1 / (1 - gamma))`` (the paper uses the task horizon,
    30, in Scenario #2): ``Q in [min(0, r_min) * H, max(0, r_max) * H]``.

    Data collected with the paper's reward structure (metadata ``reward_mode`` ``"success-every-step"``,
    :mod:`offrl.envs.reward_modes`: a reward on every step the success condition holds, never terminal, a fixed
    horizon ``H``, metadata ``horizon``), and likewise ``"shaped"`` data (MetaWorld's dense reward, never
    terminal, a fixed horizon), get the exact discounted bound instead: a return over at most ``H``
    steps collects at most ``sum_{t<H} gamma^t = (1 - gamma^H) / (1 - gamma)`` rewards of ``r_max`` (Kumar et al.
    2021 Sec. 3 states the undiscounted "at most the horizon"; offrl's Q is discounted). Caveat: timeouts
    bootstrap, so a critic's own fixed point for a state that holds success can approach ``r_max / (1 - gamma)``;
    the bound is that of the data's returns, which the diagnosis compares Q with.

    Args:
        dataset: the training data.
        gamma: discount factor in [0, 1).

    Returns:
        ``{"q_min", "q_max", "effective_horizon", "reward_only_at_terminals", "r_min", "r_max", "reward_mode",
        "q_bound"}`` (floats; effective_horizon in steps; ``reward_mode`` the metadata's or None; ``q_bound`` how
        q_max was computed: ``"one terminal reward"``, ``"discounted sum over the horizon"`` or ``"reward x
        effective horizon"``).
    """
    r_min, r_max = float(dataset.rewards.min()), float(dataset.rewards.max())
    lengths = np.diff(np.concatenate([[-1], dataset.episode_ends]))
    horizon = float(min(lengths.max(), 1.0 / (1.0 - gamma)))
    nonzero = dataset.rewards != 0
    only_terminal = bool(nonzero.any() and not (nonzero & ~dataset.terminals).any())
    # numpy only; imported here so that offrl.data does not import offrl.envs at load time
    from offrl.envs.reward_modes import FIXED_HORIZON_MODES

    mode = dataset.metadata.get("reward_mode")
    if mode in FIXED_HORIZON_MODES:
        h = int(dataset.metadata.get("horizon") or lengths.max())
        scale, bound = float(sum(gamma**t for t in range(h))), "discounted sum over the horizon"
    elif only_terminal:
        scale, bound = 1.0, "one terminal reward"
    else:
        scale, bound = horizon, "reward x effective horizon"
    return {
        "q_min": min(0.0, r_min) * scale,
        "q_max": max(0.0, r_max) * scale,
        "effective_horizon": horizon,
        "reward_only_at_terminals": only_terminal,
        "r_min": r_min,
        "r_max": r_max,
        "reward_mode": mode,
        "q_bound": bound,
    }


def reward_transform_problems(scale: float, shift: float) -> list[str]:
    """Why ``scale * r + shift`` cannot be trained on, one sentence per problem (empty when it can)."""
    problems = []
    if not (np.isfinite(scale) and scale > 0):
        problems.append(f"--reward-scale must be a finite number > 0 (got {scale}); 1 keeps the rewards as stored")
    if not np.isfinite(shift):
        problems.append(f"--reward-shift must be finite (got {shift}); 0 keeps the rewards as stored")
    return problems


def transform_rewards(dataset: Dataset, scale: float = 1.0, shift: float = 0.0) -> Dataset:
    """The dataset with every reward mapped to ``scale * r + shift`` (a copy; the input is not changed).

    Offline RL code rescales sparse rewards to set the size of Q-values relative to hyperparameters that are
    fixed in reward units (IQL's inverse temperature beta multiplies advantages): IQL's reference code trains
    its AntMaze runs on ``r - 1`` (Kostrikov et al. 2022; CQL's AntMaze code on ``4 (r - 0.5)``), the workflow
    paper's code on ``10 r`` on real robots (../shared/reference/implementation-notes.md). A positive scale
    leaves the optimal policy unchanged; so does a shift when episodes never terminate, but with terminals it
    changes the value of ending early (``r - 1`` with a terminal success charges -1 for every step before it).

    Args:
        dataset: the transitions.
        scale: > 0 and finite (0 would erase the rewards, a negative one reverse them).
        shift: finite, in reward units.

    Returns:
        A `Dataset` sharing every array but ``rewards`` ((N,) float32); the same object when ``scale == 1`` and
        ``shift == 0``.

    Raises:
        ValueError: ``scale`` is not > 0 or either value is not finite.
    """
    problems = reward_transform_problems(scale, shift)
    if problems:
        raise ValueError("; ".join(problems))
    if scale == 1.0 and shift == 0.0:
        return dataset
    rewards = (dataset.rewards.astype(np.float64) * scale + shift).astype(np.float32)
    return dataclasses.replace(dataset, rewards=rewards)


def mc_returns(dataset: Dataset, gamma: float) -> np.ndarray:
    """Discounted Monte-Carlo return-to-go of every transition, ``G_t = r_t + gamma * G_{t+1}`` inside its episode.

    An episode that ends by ``terminals`` has ``G = r`` on its last transition; one that ends by ``timeouts`` is
    truncated there (no bootstrap). ``G_t`` estimates the behaviour policy's ``Q^beta(s_t, a_t)``; with
    non-negative rewards the truncation only lowers it, so it stays a lower bound of the behaviour's value in
    expectation. Cal-QL (Nakamoto et al. 2023, Sec. 4) uses it as the reference value below which CQL stops
    pushing Q down.

    Args:
        dataset: the transitions, episodes contiguous and in order.
        gamma: discount factor in [0, 1).

    Returns:
        (N,) float32.
    """
    out = np.zeros(len(dataset), np.float64)
    rewards = dataset.rewards.astype(np.float64)
    for sl in dataset.episode_slices():
        g = 0.0
        for i in range(sl.stop - 1, sl.start - 1, -1):
            g = rewards[i] + gamma * g
            out[i] = g
    return out.astype(np.float32)


def divergence_limit(q_min: float, q_max: float, factor: float = 10.0) -> float:
    """Q-values above this have left the range the rewards allow by far: extrapolation error blowing up.

    ``q_max + factor * max(q_max - q_min, |q_max|, 1)`` (reward units). Only over-estimation counts: CQL's
    downward bias can put Q well below ``q_min`` without anything diverging (docs/metrics.md).
    """
    return q_max + factor * max(q_max - q_min, abs(q_max), 1.0)


def discrete_actions(metadata: dict) -> int | None:
    """The number of discrete actions a dataset's metadata declares (``action_space: "discrete"`` with
    ``num_actions`` K >= 2); None for continuous actions.

    Raises:
        DatasetError: ``action_space`` is neither ``"discrete"`` nor ``"continuous"``, or K is missing or < 2.
    """
    space = metadata.get("action_space", "continuous")
    if space == "continuous":
        return None
    if space != "discrete":
        raise DatasetError(f"metadata action_space is {space!r}: use 'discrete' or 'continuous'")
    k = metadata.get("num_actions")
    if not isinstance(k, int | np.integer) or int(k) < 2:
        raise DatasetError(f"metadata action_space is 'discrete' but num_actions is {k!r}: give the number of "
                           f"actions (an integer >= 2)")
    return int(k)
