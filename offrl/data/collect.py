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
