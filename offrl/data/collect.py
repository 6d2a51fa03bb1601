"""Collecting an offline dataset from a simulator with a noisy scripted behaviour policy."""

from __future__ import annotations

from pathlib import Path

import offrl
from offrl.data.dataset import Dataset, make_dataset
from offrl.data.hdf5 import save_dataset
from offrl.envs import DEFAULT_HORIZON, collect_episodes
from offrl.envs.behaviour import DEFAULT_REGIME
from offrl.envs.render import RenderConfig


def collect(
    task: str,
    episodes: int,
    out: str | Path,
    horizon: int = DEFAULT_HORIZON,
    noise_sigma: float | None = None,
    seed: int = 0,
    terminate_on_success: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    render: RenderConfig | None = None,
    regime: str = DEFAULT_REGIME,
) -> Dataset:
    """Collect ``episodes`` episodes of a MetaWorld task and save them as an HDF5 dataset (atomically).

    Behaviour: the task's scripted policy perturbed by ``regime`` (``white``: N(0, noise_sigma^2) noise;
    ``correlated``: slowly wandering deviations, like imperfect teleoperation; ``mixed``: expert, partial and
    exploratory episodes; :mod:`offrl.envs.behaviour`), clipped to the action bounds; failed episodes are kept.
    ``noise_sigma`` None takes the regime's default.

    Reward 1 on a step where the task's success flag is set, else 0; with
    ``terminate_on_success`` the episode ends there (terminal), so Q-values lie in [0, 1].

    With ``render`` the dataset also holds a camera image of every state: ``images`` uint8 (M, size, size, 3),
    each state once, and ``image_index``/``next_image_index`` (N,) int64 pointing at the frames of s and s'
    (see :func:`offrl.envs.collect_episodes`); the metadata gets ``image`` (the render settings). Every dataset's
    metadata has ``proprio_dims``, the observation entries that are the robot's own state.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is False (checked before collecting).
        ValueError: unknown task, invalid setting, or a camera the model does not have.
        TypeError: ``render`` is not a RenderConfig or None.
        RuntimeError: MetaWorld is not installed, or ``render`` is given and rendering is impossible
            (MUJOCO_GL=disable, no EGL); the message says what to set and install.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists: choose another --out, or pass --overwrite to replace it")
    arrays, info = collect_episodes(
        task, episodes, horizon=horizon, noise_sigma=noise_sigma, seed=seed,
        terminate_on_success=terminate_on_success, progress=progress, render=render, regime=regime,
    )
    dataset = make_dataset(arrays, {**info, "source": "offrl collect", "offrl_version": offrl.__version__})
    save_dataset(out, dataset, overwrite=overwrite)
    return dataset


def collect_minatar_replay(
    game: str,
    out: str | Path,
    steps: int = 500_000,
    seed: int = 0,
    part: str = "all",
    fraction: float = 1.0,
    overwrite: bool = False,
    progress: bool = True,
) -> Dataset:
    """The logged replay of an online DQN on a MinAtar game (:func:`offrl.envs.minatar.collect_replay`), saved as an
    offrl dataset of discrete actions, with the online agent's record beside it.

    The dataset (docs/dataset-format.md, "Discrete actions"): observations are MinAtar's 10x10xC binary grids,
    flattened to float32 vectors (metadata ``grid_shape``); actions are (N, 1) float32 indices with metadata
    ``action_space: "discrete"`` and ``num_actions``; the reward is the game's. ``part`` keeps, as in the talk's
    ablations, ``all`` the transitions, the ``first`` or ``last`` ``fraction`` of them in logging order (cut at
    whole episodes' ends), or a ``random`` ``fraction`` of the *episodes* (the talk samples frames; whole
    episodes keep the held-out split and the continuity check meaningful). Beside ``out``:
    ``OUT.replay.npz`` with ``logging_step`` and ``epsilon`` of every kept transition, and
    ``OUT.learning_curve.json`` with the online agent's episode returns by step.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is False (checked before collecting).
        ValueError: an unknown game or part, or a fraction outside (0, 1].
        RuntimeError: gymnax is not installed.
    """
    import json
    import os

    import numpy as np

    from offrl.envs.minatar import ReplayConfig, collect_replay, make_game
    from offrl.fileio import temp_file_beside
    from offrl.training.run_dir import atomic_write_text

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists: choose another --out, or pass --overwrite to replace it")
    if part not in ("all", "first", "last", "random"):
        raise ValueError(f"--replay-part {part!r}: use all, first, last or random")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"--replay-fraction must lie in (0, 1], got {fraction}")
    make_game(game)  # an unknown game or a missing gymnax fails before minutes of training
    res = collect_replay(game, ReplayConfig(steps=steps), seed=seed, progress=progress)
    a = res["arrays"]
    n = len(a["actions"])
    ends = np.flatnonzero(a["terminals"] | a["timeouts"])
    # The log may stop inside an episode: that last piece ends by a timeout (it was cut, not finished).
    timeouts = a["timeouts"].copy()
    if not (a["terminals"][-1] or timeouts[-1]):
        timeouts[-1] = True
        ends = np.append(ends, n - 1)
    starts = np.concatenate([[0], ends[:-1] + 1])
    episodes = np.arange(len(ends))
    if part == "first":
        episodes = episodes[ends < max(int(round(fraction * n)), ends[0] + 1)]
    elif part == "last":
        episodes = episodes[starts >= min(n - int(round(fraction * n)), starts[-1])]
    elif part == "random":
        k = max(1, int(round(fraction * len(ends))))
        episodes = np.sort(np.random.default_rng(seed).choice(len(ends), size=k, replace=False))
    keep = np.concatenate([np.arange(starts[e], ends[e] + 1) for e in episodes])
    flat = lambda x: x.reshape(len(x), -1).astype(np.float32)  # noqa: E731
    arrays = {
        "observations": flat(a["observations"][keep]), "next_observations": flat(a["next_observations"][keep]),
        "actions": a["actions"][keep, None].astype(np.float32), "rewards": a["rewards"][keep],
        "terminals": a["terminals"][keep], "timeouts": timeouts[keep],
    }
    metadata = {
        "source": "offrl collect (MinAtar logged replay)", "offrl_version": offrl.__version__,
        "task": f"minatar/{game.removeprefix('minatar/')}", "action_space": "discrete",
        "num_actions": int(res["num_actions"]), "grid_shape": res["obs_shape"], "replay_steps": int(steps),
        "replay_part": part, "replay_fraction": float(fraction), "seed": int(seed),
        "online_final_return": float(np.mean(res["learning_curve"]["return"][-20:]))
        if len(res["learning_curve"]["return"]) else None,
    }
    dataset = make_dataset(arrays, metadata)
    save_dataset(out, dataset, overwrite=overwrite)
    replay = out.with_name(out.name + ".replay.npz")
    fd, tmp = temp_file_beside(replay)
    with os.fdopen(fd, "wb") as f:
        np.savez_compressed(f, logging_step=a["logging_step"][keep], epsilon=a["epsilon"][keep])
    os.replace(tmp, replay)
    curve = {"step": res["learning_curve"]["step"].tolist(), "return": res["learning_curve"]["return"].tolist(),
             "seconds": res["seconds"]}
    atomic_write_text(out.with_name(out.name + ".learning_curve.json"), json.dumps(curve))
    return dataset
