"""Analysis-only evaluation: the real success rate of every checkpoint in the simulator.

The workflow never reads these numbers to diagnose or select: they exist to check, after the fact, whether the
offline choices were good. evaluation.json says so in ``used_for_selection: false``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from offrl.agents import warmup_steps
from offrl.envs import DEFAULT_HORIZON, evaluate_policy
from offrl.envs.gym import DEFAULT_SUCCESS_KEY, EnvSpec
from offrl.training import run_dir as rd
from offrl.training.policy import checkpoint_policy
from offrl.training.train import load_run_config

EVALUATION_FILE = "evaluation.json"


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
) -> dict[str, Any]:
    """Roll out every checkpoint (or ``steps``) for ``episodes`` episodes and write evaluation.json.

    By default in MetaWorld: the task, horizon and success-ends-episode convention default to the dataset's
    metadata. Episode seeds do not overlap the collection's, and are the same for every checkpoint. Image runs
    render the dataset's camera at its size (metadata ``image``) and stack the run's number of frames.

    With ``env``, in any gymnasium environment instead (:func:`offrl.envs.gym.evaluate_gym`; state runs only):
    ``env`` is a gymnasium id, ``"module:factory"`` or a callable returning a ``gymnasium.Env``; an episode
    succeeds when a step's ``info[success_key]`` is truthy. The horizon defaults to the dataset's metadata, else
    the environment's own limit; the episode seeds are derived from ``seed`` as for MetaWorld.
    evaluation.json records the environment under ``env``, and the step limit used under ``horizon``.

    Raises:
        FileNotFoundError: not a run directory or no checkpoint.
        ValueError: the task is unknown (the dataset has no ``task`` metadata and none was given); both ``task``
            and ``env`` given; ``env`` given for an image run, or it does not fit the run (see
            :func:`offrl.envs.gym.evaluate_gym`).
        RuntimeError: MetaWorld (or, with ``env``, gymnasium) is not installed.
    """
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    meta = cfg["dataset"].get("metadata", {})
    if env is not None:
        return _evaluate_run_gym(run_dir, cfg, env, success_key, episodes, seed, task, horizon, steps, progress)
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
        run_dir, steps, progress,
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
    rd.write_json(run_dir / EVALUATION_FILE, out)
    attach_comparison(run_dir)
    return out


def _evaluate_steps(
    run_dir: Path, steps: list[int], progress: bool, evaluate: Callable[[Callable[[Any], Any]], dict[str, Any]]
) -> list[dict[str, Any]]:
    # One evaluation.json row per checkpoint; evaluate(policy) is evaluate_policy or evaluate_gym.
    results = []
    for i, step in enumerate(steps):
        t = time.perf_counter()
        res = evaluate(checkpoint_policy(run_dir, step))
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
    task: str | None, horizon: int | None, steps: list[int] | None, progress: bool,
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

    results = _evaluate_steps(run_dir, steps, progress, evaluate)
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
    rd.write_json(run_dir / EVALUATION_FILE, out)
    attach_comparison(run_dir)
    return out


def _row(step: int | None, successes: int, episodes: int) -> dict[str, Any]:
    from offrl.workflow.selection import wilson_interval

    lo, hi = wilson_interval(successes, episodes)
    return {"step": step, "success_rate": successes / episodes if episodes else None, "successes": int(successes),
            "episodes": int(episodes), "ci95": [lo, hi]}


def analysis_only_comparison(
    evaluation: dict[str, Any], selected_step: int | None, warmup_steps: int, dataset_metadata: dict[str, Any],
    bc_evaluation: dict[str, Any] | None = None, bc_selected_step: int | None = None,
) -> dict[str, Any]:
    """The selected checkpoint side by side with the data and the obvious alternatives, for analysis only.

    Computed from evaluation.json after the selection was made; nothing that selects or diagnoses reads it.

    Args:
        evaluation: The content of evaluation.json (``results``: one ``{step, successes, episodes}`` per
            checkpoint).
        selected_step: The workflow's pick (diagnosis.json ``selected_step``); None if it picked nothing.
        warmup_steps: The actor's behaviour-cloning warm start (``agent.bc_steps``): checkpoints at or before it
            are behaviour-cloning policies.
        dataset_metadata: The dataset's metadata (config.json ``dataset.metadata``); its
            ``behaviour_success_rate`` and ``episodes`` give the data's own success.
        bc_evaluation: evaluation.json of a behaviour-cloning run on the same data (the workflow's baseline when
            CQL has no warm start), or None.
        bc_selected_step: that run's offline pick (its held-out log-likelihood peak).

    Returns:
        ``{"behaviour", "best_warm_start", "bc_selected", "bc_best", "selected", "best", "last", "note"}``
        (``bc_*`` only with ``bc_evaluation``); each entry is None when it
        does not exist (no metadata, no warm-start checkpoint evaluated, nothing selected) or ``{"step",
        "success_rate", "successes", "episodes", "ci95"}`` with a 95 % Wilson interval. ``behaviour`` has step
        None and counts the dataset's episodes. ``best`` is the best of the checkpoints after the warm start
        (the candidates of the selection), ``best_warm_start`` the best of those at or before it; both are
        maxima of noisy estimates, biased upwards. These two and ``bc_best`` also carry ``"tied"``: True when
        no checkpoint is better than another (all have the same successes out of the same episodes, i.e. the
        same success rate as `offrl evaluate` writes them, e.g. all 0%; also a single checkpoint at 0%), and
        then ``"tied_checkpoints"``, their number: the row (the earliest of them) names no best checkpoint,
        see :func:`tie_reason`.
    """
    def table(ev: dict[str, Any]) -> dict[int, dict[str, Any]]:
        return {int(r["step"]): _row(int(r["step"]), int(r["successes"]), int(r["episodes"]))
                for r in sorted(ev.get("results", []), key=lambda r: r["step"])}

    def best(rows: dict[int, dict[str, Any]], steps: list[int]) -> dict[str, Any] | None:
        # Ties go to the earlier checkpoint, as for "best in hindsight" everywhere in offrl; when all are tied
        # the row says so (no checkpoint is better than another).
        if not steps:
            return None
        row = rows[max(steps, key=lambda s: (rows[s]["successes"] / rows[s]["episodes"], -s))]
        same = len({(rows[s]["successes"], rows[s]["episodes"]) for s in steps}) == 1
        tied = same and (len(steps) > 1 or row["successes"] == 0)
        return {**row, "tied": tied, **({"tied_checkpoints": len(steps)} if tied else {})}

    rows = table(evaluation)

    behaviour = None
    rate, n = dataset_metadata.get("behaviour_success_rate"), dataset_metadata.get("episodes")
    if rate is not None and n:
        behaviour = _row(None, round(float(rate) * int(n)), int(n))
    candidates = [s for s in rows if s > warmup_steps]
    bc: dict[str, Any] = {}
    if bc_evaluation is not None:
        bc_rows = table(bc_evaluation)
        bc["bc_selected"] = bc_rows.get(bc_selected_step) if bc_selected_step is not None else None
        bc["bc_best"] = best(bc_rows, list(bc_rows))
    return {
        "behaviour": behaviour,
        "best_warm_start": best(rows, [s for s in rows if s <= warmup_steps]),
        **bc,
        "selected": rows.get(selected_step) if selected_step is not None else None,
        "best": best(rows, candidates),
        "last": rows[max(rows)] if rows else None,
        "note": "analysis only: computed from evaluation.json after selection; 95% Wilson intervals; 'best' and "
        "'best_warm_start' are maxima of noisy estimates (biased upwards)",
    }


def attach_comparison(run_dir: str | Path, bc_run: str | Path | None = None) -> dict[str, Any] | None:
    """Adds ``analysis_only`` (:func:`analysis_only_comparison`) to RUN_DIR/diagnosis.json when the run has both
    a diagnosis and an evaluation; rewrites the file atomically. Returns the comparison, or None.

    ``bc_run`` names a diagnosed and evaluated behaviour-cloning run on the same data; without it, the baseline
    recorded by an earlier call (``analysis_only.bc_run``) is kept, so a later `offrl diagnose` drops nothing."""
    from offrl.workflow.diagnosis import DIAGNOSIS_FILE

    run_dir = Path(run_dir)
    if not (run_dir / DIAGNOSIS_FILE).is_file() or not (run_dir / EVALUATION_FILE).is_file():
        return None
    diagnosis = rd.read_json(run_dir / DIAGNOSIS_FILE)
    cfg = load_run_config(run_dir)
    if bc_run is None:
        bc_run = (diagnosis.get("analysis_only") or {}).get("bc_run")
    bc_eval = bc_step = None
    if bc_run is not None and (Path(bc_run) / EVALUATION_FILE).is_file():
        bc_eval = rd.read_json(Path(bc_run) / EVALUATION_FILE)
        if (Path(bc_run) / DIAGNOSIS_FILE).is_file():
            bc_step = rd.read_json(Path(bc_run) / DIAGNOSIS_FILE).get("selected_step")
    else:
        bc_run = None
    comparison = analysis_only_comparison(
        rd.read_json(run_dir / EVALUATION_FILE), diagnosis.get("selected_step"),
        warmup_steps(cfg.get("algo", "cql"), cfg.get("agent", {})),
        cfg["dataset"].get("metadata", {}), bc_eval, bc_step,
    )
    if bc_run is not None:
        comparison["bc_run"] = str(bc_run)
    rd.write_json(run_dir / DIAGNOSIS_FILE, {**diagnosis, "analysis_only": comparison})
    return comparison


def tie_reason(row: dict[str, Any] | None) -> str | None:
    """Why a best row of :func:`analysis_only_comparison` names no checkpoint, or None when it names one:
    "none: no checkpoint succeeded (8 evaluated, all at 0%)" or "none: all 8 checkpoints tied at 50%"."""
    if not isinstance(row, dict) or not row.get("tied"):
        return None
    n, rate = row.get("tied_checkpoints"), row.get("success_rate")
    if not row.get("successes"):
        return f"none: no checkpoint succeeded ({n} evaluated, all at 0%)"
    # The report calls this on diagnosis.json as read: a rate that is not a number is not formatted.
    return f"none: all {n} checkpoints tied" + (f" at {rate:.0%}" if isinstance(rate, int | float) else "")


def format_comparison(comparison: dict[str, Any]) -> list[str]:
    """One terminal line per row of :func:`analysis_only_comparison`: rate, interval, episodes and step; a best
    row whose checkpoints are all tied says so (:func:`tie_reason`) instead of naming one."""
    names = {"behaviour": "data (behaviour)", "best_warm_start": "best warm-start (BC)",
             "bc_selected": "BC, offline pick", "bc_best": "BC, best checkpoint",
             "selected": "selected", "best": "best checkpoint", "last": "last checkpoint"}
    lines = []
    for key, name in names.items():
        r = comparison.get(key)
        if r is None:
            continue
        tie = tie_reason(r)
        if tie is not None:
            lines.append(f"  {name:22s} {tie}  [{r['ci95'][0]:.0%}, {r['ci95'][1]:.0%}] each, "
                         f"{r['successes']}/{r['episodes']} episodes each")
            continue
        where = "" if r["step"] is None else f"  step {r['step']}"
        lines.append(f"  {name:22s} {r['success_rate']:4.0%}  [{r['ci95'][0]:.0%}, {r['ci95'][1]:.0%}]  "
                     f"{r['successes']}/{r['episodes']} episodes{where}")
    return lines
