"""Analysis-only evaluation: the real success rate of every checkpoint in the simulator.

The workflow never reads these numbers to diagnose or select: they exist to check, after the fact, whether the
offline choices were good. evaluation.json says so in ``used_for_selection: false``.

evaluation.json is always the deployed actor's (what selection, the comparison and the study read). A run that keeps
a Polyak average of its actor can also have its other actor evaluated (``actor``): that goes to
``evaluation-<actor>.json`` beside it (:func:`evaluation_file`), which the report draws next to the deployed one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from offrl.envs import DEFAULT_HORIZON, evaluate_policy
from offrl.envs.gym import DEFAULT_SUCCESS_KEY, EnvSpec
from offrl.training import run_dir as rd
from offrl.training.run_dir import EVALUATION_FILE
from offrl.workflow.comparison import attach_comparison
from offrl.workflow.rules import ACTORS, run_actor

ACTOR_EVALUATION_FILE = "evaluation-{actor}.json"
"""The evaluation of the actor a run does not deploy (e.g. evaluation-trained.json beside an averaged run's
evaluation.json)."""


def evaluation_file(config: dict[str, Any], actor: str | None = None) -> str:
    """The file name an evaluation of ``actor`` ("trained", "averaged"; None: the deployed one) is written to:
    evaluation.json for the actor the run deploys (:func:`offrl.workflow.rules.run_actor`, config.json
    ``deployment.actor``), ``evaluation-<actor>.json`` for the other one.

    Raises:
        ValueError: an unknown actor, or "averaged" for a run that keeps no average.
    """
    chosen = run_actor(config, actor)
    return EVALUATION_FILE if chosen == run_actor(config) else ACTOR_EVALUATION_FILE.format(actor=chosen)


def other_actor(deployed: str) -> str:
    """The actor of :data:`offrl.workflow.rules.ACTORS` that is not ``deployed``.

    Raises:
        ValueError: ``deployed`` is not one of them.
    """
    if deployed not in ACTORS:
        raise ValueError(f"unknown actor {deployed!r}: choose one of {', '.join(ACTORS)}")
    return next(a for a in ACTORS if a != deployed)


def evaluate_run(
    run_dir: str | Path,
    episodes: int = 10,
    seed: int = 0,
    task: str | None = None,
    horizon: int | None = None,
    steps: list[int] | None = None,
    progress: bool = True,
    env: EnvSpec | None = None,
    success_key: str = DEFAULT_SUCCESS_KEY,
    actor: str | None = None,
) -> dict[str, Any]:
    """Roll out every checkpoint (or ``steps``) for ``episodes`` episodes and write evaluation.json (or, for the
    actor the run does not deploy, evaluation-<actor>.json).

    By default in MetaWorld: the task, horizon and success-ends-episode convention default to the dataset's
    metadata. Episode seeds do not overlap the collection's, and are the same for every checkpoint. Image runs
    render the dataset's camera at its size (metadata ``image``) and stack the run's number of frames.

    With ``env``, in any gymnasium environment instead (:func:`offrl.envs.gym.evaluate_gym`; state runs only):
    ``env`` is a gymnasium id, ``"module:factory"`` or a callable returning a ``gymnasium.Env``; an episode
    succeeds when a step's ``info[success_key]`` is truthy. The horizon defaults to the dataset's metadata, else
    the environment's own limit; the episode seeds are derived from ``seed`` as for MetaWorld.
    evaluation.json records the environment under ``env``, and the step limit used under ``horizon``.

    Each checkpoint acts with the run's deployed actor (:func:`offrl.training.policy.checkpoint_policy`): its
    Polyak average when the run keeps one, then named in evaluation.json ``actor``. ``actor`` ("trained" or
    "averaged") picks one instead: the deployed one writes evaluation.json as without it; the other writes
    ``evaluation-<actor>.json`` (:func:`evaluation_file`, with ``actor`` recorded) and leaves evaluation.json and
    diagnosis.json's analysis-only comparison as they are. Either file is rewritten (atomically) on every call,
    as evaluation.json always was. MinAtar runs have no actor: only the deployed (greedy) policy is evaluated.

    Raises:
        FileNotFoundError: not a run directory or no checkpoint.
        ValueError: the task is unknown (the dataset has no ``task`` metadata and none was given); both ``task``
            and ``env`` given; ``env`` given for an image run, or it does not fit the run (see
            :func:`offrl.envs.gym.evaluate_gym`); an unknown ``actor``, or "averaged" for a run that keeps no
            average (trained with actor_ema_decay 0).
        RuntimeError: MetaWorld (or, with ``env``, gymnasium) is not installed.
    """
    run_dir = Path(run_dir)
    cfg = rd.load_run_config(run_dir)
    name = evaluation_file(cfg, actor)  # refuses an unknown actor, or an average the run does not keep
    meta = cfg["dataset"].get("metadata", {})
    if meta.get("action_space") == "discrete":
        return _evaluate_run_minatar(run_dir, cfg, episodes, seed, steps, progress)
    if env is not None:
        return _evaluate_run_gym(run_dir, cfg, env, success_key, episodes, seed, task, horizon, steps, progress,
                                 actor)
    if success_key != DEFAULT_SUCCESS_KEY:
        raise ValueError(f"success_key {success_key!r} (--success-key) only applies with env (--env): MetaWorld "
                         f"reports its own success flag")
    task = task or meta.get("task")
    if not task:
        raise ValueError(
            f"{run_dir}'s dataset names no simulator task: pass --task (a MetaWorld task such as pick-place-v3)"
        )
    horizon = int(horizon or meta.get("horizon") or DEFAULT_HORIZON)
    terminate = bool(meta.get("terminate_on_success", True))
    all_steps = rd.checkpoint_steps(run_dir)
    if not all_steps:
        raise FileNotFoundError(f"{run_dir} has no checkpoints to evaluate: train it first")
    steps = all_steps if steps is None else steps
    render, frame_stack = None, 1
    if cfg["dataset"].get("obs_mode", "state") != "state":
        from offrl.envs.render import RenderConfig

        image = meta.get("image") or {}
        if not image:
            raise ValueError(f"{run_dir} is an image run but its dataset's metadata says nothing of the camera "
                             f"(metadata 'image'): it cannot be evaluated in the simulator")
        render = RenderConfig(**{k: v for k, v in image.items() if k in RenderConfig.__dataclass_fields__})
        frame_stack = int(cfg["training"].get("frame_stack", 1))
    results = _evaluate_steps(
        run_dir, steps, progress, run_actor(cfg, actor),
        lambda policy: evaluate_policy(policy, task, episodes, horizon=horizon, seed=seed,
                                       terminate_on_success=terminate, render=render, frame_stack=frame_stack),
    )
    out = {
        "used_for_selection": False,
        "note": "analysis only: real success in the simulator, never read by diagnosis or selection",
        "task": task,
        "horizon": horizon,
        "episodes": episodes,
        "seed": seed,
        "env": {"kind": "metaworld", "task": task},
        "results": results,
    }
    _write(run_dir, cfg, name, actor, out)
    return out


def _write(run_dir: Path, cfg: dict[str, Any], name: str, actor: str | None, out: dict[str, Any]) -> None:
    # Records which actor acted, writes the file ``name`` (evaluation_file) atomically, and attaches the
    # analysis-only comparison to diagnosis.json when it is the deployed actor's evaluation.json.
    if name != EVALUATION_FILE or "actor" in (cfg.get("deployment") or {}):  # offrl.workflow.rules.run_actor
        out["actor"] = run_actor(cfg, actor)
    rd.write_json(run_dir / name, out)
    if name == EVALUATION_FILE:
        attach_comparison(run_dir)


def _evaluate_steps(
    run_dir: Path, steps: list[int], progress: bool, actor: str,
    evaluate: Callable[[Callable[[Any], Any]], dict[str, Any]],
) -> list[dict[str, Any]]:
    # One evaluation.json row per checkpoint, acting with ``actor``; evaluate(policy) is evaluate_policy or
    # evaluate_gym. The training stack (jax) is imported here, so that reading the file names above needs none.
    from offrl.training.policy import checkpoint_policy

    results = []
    for i, step in enumerate(steps):
        t = time.perf_counter()
        res = evaluate(checkpoint_policy(run_dir, step, actor=actor))
        results.append(
            {
                "step": step,
                "success_rate": res["success_rate"],
                "successes": res["successes"],
                "episodes": res["episodes"],
                "mean_episode_length": res["mean_episode_length"],
                # Per episode, so that analyses can split the episodes (the study's noise floor).
                "episode_successes": res["episode_successes"],
            }
        )
        if progress:
            print(
                f"  evaluate [{i + 1}/{len(steps)}] step {step}: success {res['successes']}/{res['episodes']} "
                f"({time.perf_counter() - t:.1f} s)",
                flush=True,
            )
    return results


def _evaluate_run_gym(
    run_dir: Path, cfg: dict[str, Any], env: EnvSpec, success_key: str, episodes: int, seed: int,
    task: str | None, horizon: int | None, steps: list[int] | None, progress: bool, actor: str | None,
) -> dict[str, Any]:
    # evaluate_run on a gymnasium environment (env given).
    from offrl.envs.gym import evaluate_gym, resolve_env

    if task is not None:
        raise ValueError(f"pass either a MetaWorld task ({task!r}) or an environment ({env!r}), not both")
    if cfg["dataset"].get("obs_mode", "state") != "state":
        raise ValueError(f"{run_dir} is an image run: only state runs can be evaluated on a gymnasium environment "
                         f"(image runs are evaluated in MetaWorld, without --env)")
    meta = cfg["dataset"].get("metadata", {})
    horizon = horizon or meta.get("horizon")
    horizon = int(horizon) if horizon else None
    terminate = bool(meta.get("terminate_on_success", True))
    all_steps = rd.checkpoint_steps(run_dir)
    if not all_steps:
        raise FileNotFoundError(f"{run_dir} has no checkpoints to evaluate: train it first")
    steps = all_steps if steps is None else steps
    _, name = resolve_env(env)  # fails early on a spec that names nothing
    obs_dim, act_dim = int(cfg["dataset"]["obs_dim"]), int(cfg["dataset"]["act_dim"])
    used: list[int] = []  # the step limit evaluate_gym applied: horizon, else the environment's own

    def evaluate(policy: Callable[[Any], Any]) -> dict[str, Any]:
        res = evaluate_gym(policy, env, episodes, seed=seed, success_key=success_key, horizon=horizon,
                           terminate_on_success=terminate, obs_dim=obs_dim, act_dim=act_dim)
        used.append(int(res["horizon"]))
        return res

    results = _evaluate_steps(run_dir, steps, progress, run_actor(cfg, actor), evaluate)
    out = {
        "used_for_selection": False,
        "note": "analysis only: real success in the simulator, never read by diagnosis or selection",
        "task": None,
        # The limit used: evaluate_gym resolves the environment's own when no horizon is given.
        "horizon": used[0] if used else horizon,
        "episodes": episodes,
        "seed": seed,
        "env": {"kind": "gymnasium", "env": name, "success_key": success_key,
                "terminate_on_success": terminate},
        "results": results,
    }
    _write(run_dir, cfg, evaluation_file(cfg, actor), actor, out)
    return out


def _evaluate_run_minatar(run_dir: Path, cfg: dict[str, Any], episodes: int, seed: int, steps: list[int] | None,
                          progress: bool) -> dict[str, Any]:
    """A discrete-action run of a MinAtar replay: the mean return of every checkpoint's greedy policy
    (:func:`offrl.envs.minatar.evaluate_greedy`), in evaluation.json with ``metric: "return"`` (MinAtar has scores,
    not successes, so the success comparison is not attached)."""
    import jax.numpy as jnp

    from offrl.agents import config_from_dict
    from offrl.envs.minatar import EVAL_EPSILON, evaluate_greedy
    from offrl.training.policy import load_state

    meta = cfg["dataset"].get("metadata", {})
    game = str(meta.get("task", ""))
    if not game.startswith("minatar/"):
        raise ValueError(f"{run_dir}'s dataset is of discrete actions but names no MinAtar game (metadata task "
                         f"{game!r}): only MinAtar runs can be rolled out")
    all_steps = rd.checkpoint_steps(run_dir)
    if not all_steps:
        raise FileNotFoundError(f"{run_dir} has no checkpoints to evaluate: train it first")
    steps = all_steps if steps is None else steps
    agent = config_from_dict(cfg["algo"], cfg["agent"])
    norm = cfg["normalizer"]
    mean, std = jnp.asarray(norm["mean"], jnp.float32), jnp.asarray(norm["std"], jnp.float32)
    results = []
    for i, step in enumerate(steps):
        t = time.perf_counter()
        state, _ = load_state(run_dir, step)
        res = evaluate_greedy(state.q_params, agent, int(meta["num_actions"]), game, episodes, seed, mean, std)
        results.append({"step": step, "episodes": episodes, "mean_return": res["mean_return"],
                        "episode_returns": res["returns"], "mean_episode_length": float(np.mean(res["lengths"]))})
        if progress:
            print(f"  evaluate [{i + 1}/{len(steps)}] step {step}: mean return {res['mean_return']:.2f} over "
                  f"{episodes} episodes ({time.perf_counter() - t:.1f} s)", flush=True)
    out = {"used_for_selection": False, "metric": "return", "episodes": episodes, "seed": seed,
           "epsilon": EVAL_EPSILON, "env": {"kind": "minatar", "task": game}, "results": results}
    rd.write_json(run_dir / EVALUATION_FILE, out)
    return out
