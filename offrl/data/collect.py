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
    horizon: int | None = DEFAULT_HORIZON,
    noise_sigma: float | None = None,
    seed: int = 0,
    terminate_on_success: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    render: RenderConfig | None = None,
    regime: str = DEFAULT_REGIME,
    reward_mode: str | None = None,
) -> Dataset:
    """Collect ``episodes`` episodes of a MetaWorld task and save them as an HDF5 dataset (atomically).

    Behaviour: the task's scripted policy perturbed by ``regime`` (``white``: N(0, noise_sigma^2) noise;
    ``correlated``: slowly wandering deviations, like imperfect teleoperation; ``mixed``: expert, partial and
    exploratory episodes; :mod:`offrl.envs.behaviour`), clipped to the action bounds; failed episodes are kept.
    ``noise_sigma`` None takes the regime's default.

    Reward 1 on a step where the task's success flag is set, else 0; with
    ``terminate_on_success`` the episode ends there (terminal), so Q-values lie in [0, 1].

    ``reward_mode`` (:mod:`offrl.envs.reward_modes`) names the reward structure and overrides
    ``terminate_on_success``: ``terminal`` (1 at the first success, episode ends), ``success-every-step`` (the
    workflow paper's: 1 on every step the success condition holds, never terminal, a fixed horizon) or ``shaped``
    (MetaWorld's own dense reward on every step, never terminal, a fixed horizon). None: the mode
    ``terminate_on_success`` gives. ``horizon`` None: :data:`offrl.envs.DEFAULT_HORIZON` for ``terminal`` and
    ``shaped``, the task's rule-based horizon (:func:`offrl.envs.reward_modes.task_horizon`) for
    ``success-every-step``. The metadata records ``reward_mode`` and ``horizon_rule`` (the rule's description,
    or "given").

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
    from offrl.envs.reward_modes import HORIZON_FACTOR, HORIZON_ROUND, check_reward_mode, task_horizon

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists: choose another --out, or pass --overwrite to replace it")
    mode = check_reward_mode(reward_mode) if reward_mode is not None else (
        "terminal" if terminate_on_success else "success-every-step")
    rule = "given"
    if horizon is None:
        if mode == "success-every-step":
            horizon = task_horizon(task)
            rule = (f"ceil({HORIZON_FACTOR:g} x median first-success step of the noise-free scripted policy / "
                    f"{HORIZON_ROUND}) x {HORIZON_ROUND} (offrl.envs.reward_modes)")
        else:
            horizon = DEFAULT_HORIZON
            rule = "offrl's default time limit (DEFAULT_HORIZON)"
    arrays, info = collect_episodes(
        task, episodes, horizon=horizon, noise_sigma=noise_sigma, seed=seed,
        terminate_on_success=mode == "terminal", progress=progress, render=render, regime=regime,
        reward="shaped" if mode == "shaped" else "success",
    )
    dataset = make_dataset(arrays, {**info, "reward_mode": mode, "horizon_rule": rule, "source": "offrl collect",
                                    "offrl_version": offrl.__version__})
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
    from_replay: str | Path | None = None,
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

    ``from_replay``: instead of training the online agent again, take the transitions from a full logged replay
    this function wrote before (``part`` all, with its ``.replay.npz`` and ``.learning_curve.json``); the result is
    identical to collecting with that file's game and steps and the same ``seed`` (the online agent is
    deterministic for a seed, and ``seed`` also draws ``random``'s episodes), in seconds instead of the agent's
    training time; ``game`` and ``steps`` are then ignored (the file's metadata has them).

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is False (checked before collecting).
        FileNotFoundError: ``from_replay`` or the files beside it are missing.
        ValueError: an unknown game or part, a fraction outside (0, 1], or a ``from_replay`` that is not a full
            MinAtar logged replay.
        RuntimeError: gymnax is not installed.
    """
    import numpy as np

    from offrl.envs.minatar import ReplayConfig, collect_replay, make_game

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists: choose another --out, or pass --overwrite to replace it")
    if part not in ("all", "first", "last", "random"):
        raise ValueError(f"--replay-part {part!r}: use all, first, last or random")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"--replay-fraction must lie in (0, 1], got {fraction}")
    if from_replay is not None:
        return _subsample_replay(Path(from_replay), out, part, fraction, seed, overwrite)
    make_game(game)  # an unknown game or a missing gymnax fails before minutes of training
    res = collect_replay(game, ReplayConfig(steps=steps), seed=seed, progress=progress)
    a = res["arrays"]
    # The log may stop inside an episode: that last piece ends by a timeout (it was cut, not finished).
    timeouts = a["timeouts"].copy()
    if not (a["terminals"][-1] or timeouts[-1]):
        timeouts[-1] = True
    flat = lambda x: x.reshape(len(x), -1).astype(np.float32)  # noqa: E731
    arrays = {
        "observations": flat(a["observations"]), "next_observations": flat(a["next_observations"]),
        "actions": a["actions"][:, None].astype(np.float32), "rewards": a["rewards"],
        "terminals": a["terminals"], "timeouts": timeouts,
    }
    metadata = {
        "source": "offrl collect (MinAtar logged replay)", "offrl_version": offrl.__version__,
        "task": f"minatar/{game.removeprefix('minatar/')}", "action_space": "discrete",
        "num_actions": int(res["num_actions"]), "grid_shape": res["obs_shape"], "replay_steps": int(steps),
        "seed": int(seed),
        "online_final_return": float(np.mean(res["learning_curve"]["return"][-20:]))
        if len(res["learning_curve"]["return"]) else None,
    }
    curve = {"step": res["learning_curve"]["step"].tolist(), "return": res["learning_curve"]["return"].tolist(),
             "seconds": res["seconds"]}
    return _write_replay(out, arrays, metadata, {"logging_step": a["logging_step"], "epsilon": a["epsilon"]}, curve,
                         part, fraction, seed, overwrite)


def _keep(terminals, timeouts, part: str, fraction: float, seed: int):
    """Indices of the transitions ``part`` keeps (collect_minatar_replay's docstring), whole episodes only."""
    import numpy as np

    n = len(terminals)
    ends = np.flatnonzero(terminals | timeouts)
    starts = np.concatenate([[0], ends[:-1] + 1])
    episodes = np.arange(len(ends))
    if part == "first":
        episodes = episodes[ends < max(int(round(fraction * n)), ends[0] + 1)]
    elif part == "last":
        episodes = episodes[starts >= min(n - int(round(fraction * n)), starts[-1])]
    elif part == "random":
        k = max(1, int(round(fraction * len(ends))))
        episodes = np.sort(np.random.default_rng(seed).choice(len(ends), size=k, replace=False))
    return np.concatenate([np.arange(starts[e], ends[e] + 1) for e in episodes])


def _write_replay(out: Path, arrays, metadata, log, curve, part: str, fraction: float, seed: int,
                  overwrite: bool) -> Dataset:
    """Keep ``part`` of a full logged replay and write the dataset, OUT.replay.npz (atomically) and
    OUT.learning_curve.json."""
    import json
    import os

    import numpy as np

    from offrl.fileio import temp_file_beside
    from offrl.training.run_dir import atomic_write_text

    keep = _keep(arrays["terminals"], arrays["timeouts"], part, fraction, seed)
    dataset = make_dataset({k: v[keep] for k, v in arrays.items()},
                           {**metadata, "replay_part": part, "replay_fraction": float(fraction)})
    save_dataset(out, dataset, overwrite=overwrite)
    replay = out.with_name(out.name + ".replay.npz")
    fd, tmp = temp_file_beside(replay)
    with os.fdopen(fd, "wb") as f:
        np.savez_compressed(f, **{k: v[keep] for k, v in log.items()})
    os.replace(tmp, replay)
    atomic_write_text(out.with_name(out.name + ".learning_curve.json"), json.dumps(curve))
    return dataset


def _subsample_replay(src: Path, out: Path, part: str, fraction: float, seed: int, overwrite: bool) -> Dataset:
    """``collect_minatar_replay(..., from_replay=src)``: the kept part of an existing full logged replay."""
    import json

    import numpy as np

    from offrl.data.hdf5 import load_dataset

    replay, curve = src.with_name(src.name + ".replay.npz"), src.with_name(src.name + ".learning_curve.json")
    for f in (src, replay, curve):
        if not f.is_file():
            raise FileNotFoundError(f"--from-replay: {f} not found: give a logged replay written by "
                                    f"`offrl collect --task minatar/GAME` (the .h5 with its files beside it)")
    ds = load_dataset(src)
    md = dict(ds.metadata)
    if md.get("action_space") != "discrete" or "replay_steps" not in md or md.get("replay_part", "all") != "all":
        raise ValueError(f"--from-replay {src}: not a full MinAtar logged replay (metadata replay_part "
                         f"{md.get('replay_part')!r}, action_space {md.get('action_space')!r}): give the file "
                         f"collected with --replay-part all")
    with np.load(replay) as z:
        log = {k: z[k] for k in ("logging_step", "epsilon")}
    if len(log["epsilon"]) != len(ds):
        raise ValueError(f"--from-replay: {replay} has {len(log['epsilon'])} transitions, {src} {len(ds)}: the "
                         f"files do not belong together; collect the replay again")
    arrays = {k: getattr(ds, k) for k in ("observations", "actions", "rewards", "terminals", "timeouts",
                                         "next_observations")}
    md.pop("replay_part", None)
    md.pop("replay_fraction", None)
    md["derived_from"] = str(src)
    return _write_replay(out, arrays, md, log, json.loads(curve.read_text()), part, fraction, seed, overwrite)
