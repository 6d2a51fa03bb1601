"""Choosing an algorithm's conservatism offline, from the tracked metrics (paper Appendix G): CQL's alpha,
BRAC's beta, MOPO's reward penalty lambda (``penalty_coef``, Yu et al. 2020 Eq. 10), COMBO's conservative weight
beta (``conservative_weight``, Yu et al. 2021 Eq. 2).

The paper warns that CQL fails when alpha is too low (Q over-estimates actions the data does not cover and
the policy exploits the error) or too high (Q is pushed down everywhere and the policy cannot improve on the
data). Neither failure needs a rollout to be seen:

- **too low**: the dataset Q-value rises *above the largest return the rewards allow* (``q_max`` of the Q range),
  or the run diverges: no real return can be that high, so the critic over-estimates.
- **too high**: every value is sound, but more conservatism than needed only costs policy improvement.

The procedure trains one short run per value of a grid, diagnoses each with the ordinary workflow, and picks
the **least conservative value whose Q stays sound**: not diverged, and ``max q_data <= q_max + tolerance``.
Every run is an ordinary run directory, so each can be inspected and reported on its own.

MOPO and COMBO fail the same two ways: with too small a penalty (or conservative weight) the policy exploits the
dynamics model's errors and Q over-estimates (MOPO Sec. 4, COMBO Sec. 4), with too large a one Q is pushed
down everywhere. Their checkpoints inside the model phase have no policy and are not read.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from offrl.training import run_dir as rd
from offrl.training.train import ALGO_FIELD, TrainConfig, TrainingDiverged, train
from offrl.workflow.diagnosis import diagnose_run

TUNING_FILE = "tuning.json"

# Each tunable algorithm's conservatism knob, a field of its hyperparameters (TrainConfig's ALGO_FIELD group).
# Larger is more conservative for all four.
KNOBS = {"cql": "alpha", "brac": "beta", "mopo": "penalty_coef", "combo": "conservative_weight"}


def judge(
    records: list[dict[str, Any]], q_range: Sequence[float], tolerance: float = 0.1, after_step: int = 0
) -> dict[str, Any]:
    """Whether a run's Q stayed sound: no divergence and ``max q_data <= q_max + tolerance * width``.

    Args:
        records: the run's metrics records.
        q_range: ``(q_min, q_max)`` the rewards allow.
        tolerance: slack above q_max, as a fraction of the range's width.
        after_step: read ``q_data`` only at checkpoints after this step (gradient steps): a warm start's
            checkpoints, such as MOPO's and COMBO's model phase, hold no policy (divergence counts anywhere).
    """
    q_min, q_max = q_range
    qs = [r["q_data"] for r in records
          if isinstance(r.get("q_data"), (int, float)) and r.get("step", after_step + 1) > after_step]
    finite = [q for q in qs if math.isfinite(q)]
    diverged = any(r.get("diverged") for r in records) or len(finite) < len(qs) or not finite
    max_q = max(finite) if finite else float("nan")
    over = bool(finite) and max_q > q_max + tolerance * max(q_max - q_min, 1e-12)
    return {"max_q_data": max_q, "overestimates": over, "diverged": diverged, "sound": not (over or diverged)}


def tune_conservatism(
    base: TrainConfig,
    out_dir: str | Path,
    values: Sequence[float] = (0.1, 0.3, 1.0, 3.0, 10.0),
    tolerance: float = 0.1,
) -> dict[str, Any]:
    """Train ``base`` once per value of its algorithm's conservatism knob (``KNOBS``: CQL's alpha, BRAC's beta,
    MOPO's ``penalty_coef``, COMBO's ``conservative_weight``), read each run's metrics, and choose the least
    conservative sound value. Writes ``out_dir/tuning.json``.

    Runs go to ``out_dir/KNOB_VALUE`` (``alpha_1``, ``penalty_coef_0.3``, ...); an existing one is resumed,
    never overwritten. MOPO and COMBO train their dynamics model again in every run (``model_steps`` each).

    Returns:
        ``{"parameter", "chosen", "rule", "runs": [{"value", "run_dir", "verdict", "selected_step", ...}]}``.

    Raises:
        ValueError: ``base.algo`` has no conservatism knob (bc, iql, ...), or no value is given.
    """
    if base.algo not in KNOBS:
        knobs = ", ".join(f"{a} ({n})" for a, n in KNOBS.items())
        raise ValueError(f"tuning applies to {knobs}, not {base.algo!r}")
    if not values:
        raise ValueError("give at least one value to try")
    field, name = ALGO_FIELD[base.algo], KNOBS[base.algo]
    default = getattr(type(getattr(base, field))(), name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for value in sorted(values):
        run = out_dir / f"{name}_{value:g}"
        agent = dataclasses.replace(getattr(base, field), **{name: float(value)})
        cfg = dataclasses.replace(base, out=run, resume=(run / rd.CONFIG_FILE).is_file(), **{field: agent})
        try:
            train(cfg)
        except TrainingDiverged:
            pass  # the run is marked diverged in its metrics; judged below like any other
        d = diagnose_run(run)
        records = rd.read_metrics(run)
        verdict = judge(records, d["q_range"], tolerance, after_step=rd.warmup_steps(base.algo, agent))
        runs.append({"value": value, "run_dir": str(run), "verdict": d["verdict"],
                     "selected_step": d["selected_step"], **verdict})
    sound = [r for r in runs if r["sound"]]
    chosen = min(sound, key=lambda r: r["value"]) if sound else None
    result = {
        "parameter": name,
        "algo": base.algo,
        "chosen": chosen["value"] if chosen else None,
        "chosen_run": chosen["run_dir"] if chosen else None,
        "rule": (
            f"the smallest {name} whose run neither diverged nor lifted q_data above the largest return the "
            f"rewards allow (+{tolerance:g} x the range's width)"
        ),
        "runs": runs,
    }
    if chosen is None:
        result["advice"] = f"every {name} tried over-estimates or diverges: try larger values"
    elif len(sound) == len(runs) and len(runs) > 1:
        # Nothing over-estimated, so the rule had nothing to go on (see docs/metrics.md: on pick-place-v3 this
        # fell back to the smallest value, the worst in hindsight).
        result["advice"] = (
            f"no {name} tried over-estimated, so the choice is uninformed: the smallest value is returned; "
            f"prefer the paper's default ({name} = {default:g})"
        )
    rd.write_json(out_dir / TUNING_FILE, result)
    return result
