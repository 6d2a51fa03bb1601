"""Analysis-only evaluation: the real success rate of every checkpoint in the simulator.

The workflow never reads these numbers to diagnose or select: they exist to check, after the fact, whether the
offline choices were good. evaluation.json says so in ``used_for_selection: false``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from offrl.envs import DEFAULT_HORIZON, evaluate_policy
from offrl.training import run_dir as rd
from offrl.training.policy import load_policy
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
) -> dict[str, Any]:
    """Roll out every checkpoint (or ``steps``) for ``episodes`` episodes and write evaluation.json.

    The task, horizon and success-ends-episode convention default to the dataset's metadata.
    Episode seeds do not overlap the collection's, and are the same for every checkpoint. Image runs render the
    dataset's camera at its size (metadata ``image``) and stack the run's number of frames.

    Raises:
        FileNotFoundError: not a run directory or no checkpoint.
        ValueError: the task is unknown (the dataset has no ``task`` metadata and none was given).
        RuntimeError: MetaWorld is not installed.
    """
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    meta = cfg["dataset"].get("metadata", {})
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
    results = []
    for i, step in enumerate(steps):
        t = time.perf_counter()
        res = evaluate_policy(
            load_policy(run_dir, step), task, episodes, horizon=horizon, seed=seed,
            terminate_on_success=terminate, render=render, frame_stack=frame_stack,
        )
        results.append(
            {
                "step": step,
                "success_rate": res["success_rate"],
                "successes": res["successes"],
                "episodes": res["episodes"],
                "mean_episode_length": res["mean_episode_length"],
            }
        )
        if progress:
            print(
                f"  evaluate [{i + 1}/{len(steps)}] step {step}: success {res['successes']}/{res['episodes']} "
                f"({time.perf_counter() - t:.1f} s)",
                flush=True,
            )
    out = {
        "used_for_selection": False,
        "note": "analysis only: real success in the simulator, never read by diagnosis or selection",
        "task": task,
        "horizon": horizon,
        "episodes": episodes,
        "seed": seed,
        "results": results,
    }
    rd.write_json(run_dir / EVALUATION_FILE, out)
    return out
