"""Checkpoint selection rules: which checkpoint to deploy, from offline curves only.

One implementation, used both by ``offrl select --selector NAME`` (through :func:`offrl.workflow.diagnosis.
diagnose_run`) and by the validation study that measures every rule on the dev grid (:mod:`offrl.study.selectors`),
so that the rule a user deploys is the rule whose regret docs/results.md reports. The candidates and why each
exists are pre-registered in docs/selection.md; none reads analysis-only success.

Every rule chooses among the *candidates*: the checkpoints after the actor's warm start, in step order. Each
record is a line of metrics.jsonl (plus ``fqe_value`` from fqe.json for ``fqe``, ``softopc_value`` from softopc.json
for ``softopc``). "Smoothed" is the centred
moving average of :func:`offrl.stats.smooth` (3 checkpoints by default), as in the diagnosis.

| rule | picks |
|---|---|
| ``q_peak`` | the peak of the smoothed ``q_data`` (the paper's Guideline 3.1; the default) |
| ``q_after_peak`` | the checkpoint after that peak (Guideline 3.1's actor-critic variant) |
| ``q_peak_in_range`` | the peak of the smoothed ``q_data`` among checkpoints where it stays at or below the largest return the rewards allow plus 10% of the Q range; the earliest candidate if none does (paper App. G) |
| ``heldout_q_peak`` | the peak of the smoothed ``heldout/q_data`` |
| ``heldout_q_policy_peak`` | the peak of the smoothed ``heldout/q_policy`` among in-range checkpoints |
| ``q_peak_fitted`` | ``q_peak_in_range`` among checkpoints with ``td_error_over_target_var`` <= 0.5 (``q_peak_in_range`` if none) |
| ``last`` | the last checkpoint |
| ``heldout_td`` | the lowest ``heldout/td_error`` (``td_error`` without held-out episodes) |
| ``fqe`` | the highest fitted-Q-evaluation estimate of the initial-state value (:mod:`offrl.workflow.fqe`) |
| ``softopc`` | the highest SoftOPC score: the critic on the successful episodes' logged actions minus on all (:mod:`offrl.workflow.softopc`; a secondary rule, docs/selection.md) |
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from offrl.stats import smooth

RULES: dict[str, str] = {
    "q_peak": "peak of q_data (Guideline 3.1)",
    "q_after_peak": "checkpoint after the peak of q_data (Guideline 3.1, actor-critic variant)",
    "q_peak_in_range": "peak of q_data among checkpoints within the reward range",
    "heldout_q_peak": "peak of held-out q_data",
    "heldout_q_policy_peak": "peak of held-out q_policy among checkpoints within the reward range",
    "q_peak_fitted": "in-range peak of q_data among checkpoints whose critic fits its targets",
    "last": "last checkpoint",
    "heldout_td": "lowest held-out TD error",
    "fqe": "highest fitted-Q-evaluation estimate",
    "softopc": "highest SoftOPC score (Irpan et al. 2019)",
}
# Pre-registered constants (docs/selection.md): tolerance above the largest return, and the fit threshold.
IN_RANGE_TOLERANCE = 0.1
FIT_THRESHOLD = 0.5


def within_range(smoothed_q: np.ndarray, q_range: Sequence[float], tolerance: float = IN_RANGE_TOLERANCE) -> np.ndarray:
    """(n,) bool: the checkpoints whose smoothed dataset Q-value stays at or below the largest return the rewards
    allow plus ``tolerance`` x the Q range's width; above it the critic over-estimates (paper App. G). The one
    definition the rules and the diagnosis's over-estimation check share."""
    q_min, q_max = float(q_range[0]), float(q_range[1])
    return np.asarray(smoothed_q) <= q_max + tolerance * (q_max - q_min)


def in_range_peak(steps: Sequence[int], smoothed_q: np.ndarray, q_range: Sequence[float],
                  tolerance: float = IN_RANGE_TOLERANCE) -> int | None:
    """The step of the highest smoothed Q-value among :func:`within_range` checkpoints; None if none is."""
    ok = within_range(smoothed_q, q_range, tolerance)
    if not ok.any():
        return None
    return int(steps[int(np.argmax(np.where(ok, smoothed_q, -np.inf)))])


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else float("nan")


def _smoothed(records: Sequence[dict[str, Any]], key: str, window: int) -> np.ndarray | None:
    """The smoothed curve of ``key`` over the records, missing values filled with the curve's mean; None if the
    key is missing everywhere."""
    v = np.array([_num(r.get(key)) for r in records])
    if not np.isfinite(v).any():
        return None
    return smooth(np.where(np.isfinite(v), v, np.nanmean(v)), window)


def rule_scores(
    records: Sequence[dict[str, Any]], q_range: Sequence[float], window: int = 3
) -> dict[str, tuple[int | None, np.ndarray | None]]:
    """Every rule's pick and score over the candidates.

    Args:
        records: the candidates' records (metrics.jsonl lines with ``step``), in step order; ``fqe_value`` for FQE,
            ``softopc_value`` for SoftOPC (:func:`offrl.training.run_dir.with_scores` adds both).
        q_range: ``(q_min, q_max)`` the rewards allow (config.json ``dataset.q_range``).
        window: smoothing window, in checkpoints.

    Returns:
        ``{rule: (picked step or None, (n,) float scores or None)}``; a rule whose curve no record has picks None.
        Scores rank the candidates the way the rule does (higher: preferred; ``-inf``: excluded); the study's
        Spearman correlation reads them.

    Raises:
        ValueError: no records.
    """
    if not records:
        raise ValueError("no candidate checkpoints to select from")
    steps = [int(r["step"]) for r in records]
    q = _smoothed(records, "q_data", window)
    qs = q if q is not None else np.zeros(len(steps))
    in_range = within_range(qs, q_range)
    unexplained = np.array([_num(r.get("td_error_over_target_var")) for r in records])
    fitted = in_range & (unexplained <= FIT_THRESHOLD)

    def peak(scores: np.ndarray | None, allowed: np.ndarray) -> int | None:
        if scores is None:
            return None
        if not allowed.any():
            return steps[0]
        return steps[int(np.argmax(np.where(allowed, scores, -np.inf)))]

    td = np.array([_num(r.get("heldout/td_error")) for r in records])
    if not np.isfinite(td).any():
        td = np.array([_num(r.get("td_error")) for r in records])
    fqe = np.array([_num(r.get("fqe_value")) for r in records])
    soft = np.array([_num(r.get("softopc_value")) for r in records])
    held_q = _smoothed(records, "heldout/q_data", window)
    held_pol = _smoothed(records, "heldout/q_policy", window)
    i = int(np.argmax(qs))
    everywhere = np.ones(len(steps), bool)
    return {
        "q_peak": (steps[i] if q is not None else None, q),
        "q_after_peak": (steps[min(i + 1, len(steps) - 1)] if q is not None else None,
                         np.concatenate([[-np.inf], qs[:-1]]) if q is not None else None),
        "q_peak_in_range": (peak(q, in_range), np.where(in_range, qs, -np.inf) if q is not None else None),
        "heldout_q_peak": (peak(held_q, everywhere), held_q),
        "heldout_q_policy_peak": (peak(held_pol, in_range),
                                  None if held_pol is None else np.where(in_range, held_pol, -np.inf)),
        "q_peak_fitted": (peak(q, fitted) if fitted.any() else peak(q, in_range),
                          np.where(fitted, qs, -np.inf) if fitted.any() and q is not None else None),
        "last": (steps[-1], np.array(steps, float)),
        "heldout_td": (steps[int(np.nanargmin(td))] if np.isfinite(td).any() else None,
                       -td if np.isfinite(td).any() else None),
        "fqe": _highest(steps, fqe),
        "softopc": _highest(steps, soft),
    }


def _highest(steps: list[int], scores: np.ndarray) -> tuple[int | None, np.ndarray | None]:
    """The step of the highest finite score (ties: the earliest) and the scores; (None, None) when none is finite."""
    if not np.isfinite(scores).any():
        return None, None
    return steps[int(np.nanargmax(scores))], scores


def default_selector(algo: str) -> str:
    """The rule an algorithm's runs deploy by when neither the user nor a preset names one: the last checkpoint for
    IQL (with rewards <= 0, as in its sparse-reward setting, its Q falls while values propagate, so a Q peak is the
    least-trained critic; on the algorithms grid its Q peak scored no better than the last, docs/selection.md),
    the Q peak (Guideline 3.1) for the others. Algorithms without a Q-function (BC, TT) select by their own
    held-out curve whatever this says (offrl.workflow.diagnosis)."""
    return "last" if algo == "iql" else "q_peak"


def deployment_selector(algo: str, selector: str | None = None, preset: str | None = None) -> str:
    """The rule a run deploys by: ``selector`` if given, else the preset's (offrl/presets.py), else
    :func:`default_selector`. Recorded in config.json ``deployment.selector`` when the run is trained.

    Raises:
        ValueError: an unknown selector or preset.
    """
    if selector is None and preset is not None:
        from offrl.presets import PRESETS

        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
        selector = PRESETS[preset].selector
    selector = selector or default_selector(algo)
    if selector not in RULES:
        raise ValueError(f"unknown selector {selector!r}: choose one of {', '.join(RULES)}")
    return selector


def run_selector(config: dict[str, Any]) -> str:
    """The rule a trained run deploys by, from its config.json: ``deployment.selector`` (recorded since the
    deployment record exists), else what :func:`deployment_selector` gives for its algorithm and preset."""
    recorded = (config.get("deployment") or {}).get("selector")
    if recorded:
        return str(recorded)
    return deployment_selector(config.get("algo", "cql"), None, (config.get("training") or {}).get("preset"))


ACTORS = ("trained", "averaged")
"""Which actor of a run acts (offrl.agents.common.ACTORS, repeated here so that reading a run needs no jax)."""


def run_actor(config: dict[str, Any], actor: str | None = None) -> str:
    """The actor a trained run deploys, from its config.json: ``actor`` if given, else ``deployment.actor``
    (recorded ``"averaged"`` when the run keeps a Polyak average of its actor, agent ``actor_ema_decay`` > 0), else
    ``"trained"`` (every run made before averaged actors existed).

    Raises:
        ValueError: an unknown actor, or ``"averaged"`` for a run that keeps no average.
    """
    chosen = actor or (config.get("deployment") or {}).get("actor") or "trained"
    if chosen not in ACTORS:
        raise ValueError(f"unknown actor {chosen!r}: choose one of {', '.join(ACTORS)}")
    if chosen == "averaged" and not float((config.get("agent") or {}).get("actor_ema_decay") or 0.0) > 0:
        raise ValueError("this run keeps no averaged actor (its agent's actor_ema_decay is 0): choose the trained "
                         "actor, or train with actor_ema_decay > 0 (e.g. --agent.actor-ema-decay 0.999)")
    return chosen


def select_step(rule: str, records: Sequence[dict[str, Any]], q_range: Sequence[float], window: int = 3) -> int:
    """The checkpoint step ``rule`` picks among the candidates (see :func:`rule_scores`).

    Raises:
        ValueError: an unknown rule, no records, or the curve the rule reads is missing from every record (for
            ``fqe``: no ``fqe_value``, i.e. the run has no fqe.json).
    """
    if rule not in RULES:
        raise ValueError(f"unknown selector {rule!r}: choose one of {', '.join(RULES)}")
    step, _ = rule_scores(records, q_range, window)[rule]
    if step is None:
        need = {"fqe": "fqe.json (offrl fqe RUN)", "softopc": "softopc.json (offrl softopc RUN)", "heldout_q_peak": "heldout/q_data",
                "heldout_q_policy_peak": "heldout/q_policy", "heldout_td": "heldout/td_error or td_error"}
        raise ValueError(f"selector {rule} needs {need.get(rule, 'q_data')} at the candidate checkpoints, which "
                         f"this run does not have: choose another --selector")
    return step
