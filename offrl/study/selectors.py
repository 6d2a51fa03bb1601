"""Checkpoint selectors and how good their picks are, measured against analysis-only success (paper Sec. 5).

Selectors (each reads only offline quantities, never the success rates):

* ``workflow``: the workflow's pick, Guideline 3.1: the peak of the smoothed average dataset Q-value
  (``diagnosis.json``'s ``selected_step``). Its score for rank correlation: the smoothed ``q_data``.
* ``workflow_after_peak``: the checkpoint after that peak (Guideline 3.1's actor-critic variant). Score: the
  smoothed ``q_data`` of the checkpoint before (the rule "one checkpoint after the peak", as a ranking).
* ``last``: the last checkpoint. Score: the step.
* ``heldout_td``: the lowest TD error on held-out episodes (the supervised-learning habit). Score: minus it.
* ``fqe``: the highest fitted-Q-evaluation estimate of the return (:mod:`offrl.workflow.fqe`). Score: it.
* ``softopc``: the highest SoftOPC score (:mod:`offrl.workflow.softopc`; secondary, pre-registered in
  docs/selection.md "SoftOPC, a further candidate"; no pick where the cell has no ``softopc_value``). Score: it.
* ``random``: a uniformly random checkpoint, as a reference; its numbers are expectations.
* ``q_peak_in_range``: the smoothed ``q_data`` peak among checkpoints whose smoothed ``q_data`` stays within the
  largest return the rewards allow plus 10 % of the Q range (earliest candidate if none).
* ``heldout_q_peak``: the peak of the smoothed ``heldout/q_data``.
* ``heldout_q_policy_peak``: the peak of the smoothed ``heldout/q_policy`` among in-range checkpoints.
* ``q_peak_fitted``: ``q_peak_in_range`` among checkpoints with ``td_error_over_target_var <= 0.5``.
* ``oracle``: the best checkpoint on the other half of the evaluation episodes: the **noise floor**.

The candidates and the rules were pre-registered in docs/selection.md before the dev grid ran.

All selectors choose among the same candidates: the checkpoints after the actor's behaviour-cloning warm start
(``agent.bc_steps``), the CQL policies; "best in hindsight" is the best of those candidates.

When the evaluation recorded every episode (``episode_successes``), picks are scored on half B of the episodes
(odd indices) and the oracle picks on half A (even), then the halves swap and the two results are averaged;
otherwise on all episodes, without an oracle. Per run and selector: the success of the pick; the **normalised
regret**
``(best - picked) / (best - worst)`` over the candidates (0: the best checkpoint, 1: the worst; undefined, and
left out, when every candidate has the same success); and the **Spearman rank correlation** between the score
and the success across candidates (undefined when either is constant). Aggregates over runs carry percentile
bootstrap 95% confidence intervals (``scipy.stats.bootstrap``, resampling runs).

**Success-curve label** for diagnosis accuracy (the rule, fixed before looking at any run): smooth the success
rates over the candidates with a centred 3-checkpoint moving average; the run *overfits in success* when the
smoothed peak comes before the last 3 candidates and the mean raw success of the last 3 candidates is at least
``OVERFIT_SUCCESS_DROP`` (0.15) below that peak. The offline verdict agrees when it says ``overfitting`` exactly
for those runs.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from offrl.stats import bootstrap_mean, smooth, spearman
from offrl.study.config import NO_Q_ALGOS
from offrl.workflow.diagnosis import DiagnosisConfig
from offrl.workflow.rules import rule_scores

SELECTORS = ("workflow", "workflow_after_peak", "q_peak_in_range", "heldout_q_peak", "fqe", "heldout_q_policy_peak",
             "q_peak_fitted", "softopc", "last", "heldout_td", "random", "oracle")
OVERFIT_SUCCESS_DROP = 0.15
NEVER_REACHES_MARGIN = 0.1
TAIL = 3
# Secondary analysis, added to docs/selection.md after 6 of the 48 dev runs (before the rest ran): a run whose
# candidates' success counts do not differ at this level (chi-square test of homogeneity over all evaluation
# episodes) is one where no selector can be told from another; normalised regret is then noise over noise.
DISTINGUISHABLE_P = 0.01


def candidates(cell: dict[str, Any]) -> list[dict[str, Any]]:
    """The checkpoints selectors choose among: those after the behaviour-cloning warm start (all if none is)."""
    cps = sorted(cell["checkpoints"], key=lambda c: c["step"])
    after = [c for c in cps if c["step"] > cell.get("warmup_steps", 0)]
    return after or cps


def selector_scores(cell: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """For each selector: ``{"step": picked step, "scores": (n,) array over the candidates or None}``.

    ``workflow`` is the run's own diagnosis (its ``selected_step``: the Q peak, or the best checkpoint before a
    divergence), ``workflow_after_peak`` the candidate after it; every other selector is the rule of the same name
    in :mod:`offrl.workflow.rules`, the code ``offrl select --selector NAME`` runs."""
    cps = candidates(cell)
    steps = [c["step"] for c in cps]
    rules = rule_scores(cps, cell.get("q_range") or [0.0, 1.0], DiagnosisConfig().smoothing_window)
    q_step, qs = rules["q_peak"]
    qs = qs if qs is not None else np.zeros(len(steps))
    wf = cell["diagnosis"].get("selected_step")
    if wf not in steps:  # inconclusive diagnosis: the workflow has no pick; fall back to the smoothed Q peak
        wf = q_step if q_step is not None else steps[-1]
    i = steps.index(wf)
    out = {
        "workflow": {"step": wf, "scores": qs},
        "workflow_after_peak": {"step": steps[min(i + 1, len(steps) - 1)],
                                "scores": np.concatenate([[-np.inf], qs[:-1]])},
        "random": {"step": None, "scores": None},
    }
    # q_peak and q_after_peak are the rules as `offrl select` runs them on any run; ``workflow`` is the pick the
    # run's own diagnosis made (the same on CQL runs selected by Guideline 3.1, another rule where the run's
    # recorded selector is another, e.g. the default job's ``last``).
    for name in ("last", "heldout_td", "fqe", "softopc", "q_peak_in_range", "heldout_q_peak", "heldout_q_policy_peak",
                 "q_peak_fitted", "q_peak", "q_after_peak"):
        step, scores = rules[name]
        out[name] = {"step": step, "scores": scores}
    return out


def _halves(cps: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray] | None:
    """Success of every candidate on the even (A) and odd (B) evaluation episodes; None if not recorded."""
    eps = [c.get("episode_successes") for c in cps]
    if any(not e or len(e) < 2 for e in eps):
        return None
    a = np.array([np.mean(e[0::2]) for e in eps], float)
    b = np.array([np.mean(e[1::2]) for e in eps], float)
    return a, b


def _score(picks: dict[str, int | None], succ: np.ndarray, steps: list[int],
           scores: dict[str, Any]) -> dict[str, dict[str, Any]]:
    best, worst = float(succ.max()), float(succ.min())
    res = {}
    for name, step in picks.items():
        if name == "random":
            picked = float(succ.mean())
        elif step is None:
            res[name] = {"step": None, "success": None, "regret": None, "abs_regret": None, "spearman": None,
                         "within_0.1": None}
            continue
        else:
            picked = float(succ[steps.index(step)])
        regret = (best - picked) / (best - worst) if best > worst else None
        rho = None
        if scores.get(name) is not None:
            sc = np.asarray(scores[name], float)
            ok = np.isfinite(sc)
            rho = spearman(sc[ok], succ[ok])
        res[name] = {"step": step, "success": picked, "best": best, "worst": worst, "regret": regret,
                     "abs_regret": best - picked, "spearman": rho,
                     "within_0.1": None if name == "random" else bool(best - picked <= 0.1 + 1e-12)}
    return res


def evaluate_selectors(cell: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per selector: picked step, its success, best/worst success, normalised regret, Spearman correlation, and
    whether the pick is within 0.1 of the best. With per-episode outcomes, scored on held-apart halves and
    averaged over the two ways round, with the ``oracle`` (noise floor) among the selectors."""
    cps = candidates(cell)
    steps = [c["step"] for c in cps]
    chosen = selector_scores(cell)
    picks = {name: sel["step"] for name, sel in chosen.items()}
    scores = {name: sel["scores"] for name, sel in chosen.items()}
    halves = _halves(cps)
    if halves is None:
        succ = np.array([c["success_rate"] for c in cps], float)
        return _score(picks, succ, steps, scores)
    a, b = halves
    rounds = []
    for pick_on, score_on in ((a, b), (b, a)):
        oracle = steps[int(np.argmax(pick_on))]  # ties: the earliest, as for "best in hindsight"
        rounds.append(_score({**picks, "oracle": oracle}, score_on, steps, {**scores, "oracle": pick_on}))
    out = {}
    for name in rounds[0]:
        r0, r1 = rounds[0][name], rounds[1][name]
        merged = dict(r0)
        for key in ("success", "best", "worst", "regret", "abs_regret", "spearman"):
            vals = [r[key] for r in (r0, r1) if r.get(key) is not None]
            merged[key] = float(np.mean(vals)) if vals else None
        w = [r["within_0.1"] for r in (r0, r1) if r.get("within_0.1") is not None]
        merged["within_0.1"] = float(np.mean(w)) if w else None
        out[name] = merged
    return out


def success_label(cell: dict[str, Any]) -> str:
    """The run's label from its analysis-only success curve (pre-registered in docs/selection.md).

    On half B of the evaluation episodes when they were recorded (the half selectors are scored on), else on all:
    ``overfitting`` when the smoothed (3) peak comes before the last 3 candidates and the mean of the last 3 is at
    least 0.15 below it; else ``never reaches the data`` when the smoothed peak stays below the data's behaviour
    success minus 0.1 (only when the cell records it); else ``no overfitting``; ``too short`` under 5 candidates.
    """
    cps = candidates(cell)
    halves = _halves(cps)
    succ = halves[1] if halves is not None else np.array([c["success_rate"] for c in cps], float)
    if len(succ) < TAIL + 2:
        return "too short"
    sm = smooth(succ, 3)
    peak = int(np.argmax(sm))
    tail = float(succ[-TAIL:].mean())
    if peak < len(succ) - TAIL and sm[peak] - tail >= OVERFIT_SUCCESS_DROP:
        return "overfitting"
    behaviour = (cell.get("dataset") or {}).get("behaviour_success_rate")
    if behaviour is not None and sm[peak] < float(behaviour) - NEVER_REACHES_MARGIN:
        return "never reaches the data"
    return "no overfitting"


# Which label each verdict claims (docs/selection.md); over-estimation has no label of its own.
VERDICT_LABEL = {"overfitting": "overfitting", "underfitting": "never reaches the data", "healthy": "no overfitting"}
# Pre-registered candidate thresholds of the underfitting rule (DiagnosisConfig.underfit_unexplained).
UNDERFIT_THRESHOLDS = (0.25, 0.5, 1.0)


def verdict_with(cell: dict[str, Any], config: DiagnosisConfig) -> str:
    """The offline verdict of a finished cell under other diagnosis thresholds, from its checkpoint records.

    Reads only offline metrics (the cell's checkpoints hold every key the diagnosis reads) and no success."""
    from offrl.workflow.diagnosis import diagnose_metrics

    offline = [{k: v for k, v in c.items() if k not in ("successes", "episodes", "success_rate",
                                                          "episode_successes", "fqe_value", "softopc_value")
                and v is not None}
               for c in cell["checkpoints"]]
    return diagnose_metrics(offline, tuple(cell["q_range"]), config,
                            warmup_steps=int(cell.get("warmup_steps", 0)))["verdict"]


def per_verdict_agreement(rows: list[dict[str, Any]], samples: int) -> dict[str, Any]:
    """Per verdict: runs, the labels they carry, the label the verdict claims, and the share that carry it.

    ``rows``: ``{"verdict", "success_label"}`` per labelled run."""
    out = {}
    for verdict in sorted({r["verdict"] for r in rows}):
        mine = [r for r in rows if r["verdict"] == verdict]
        claim = VERDICT_LABEL.get(verdict)
        out[verdict] = {
            "runs": len(mine),
            "labels": dict(Counter(r["success_label"] for r in mine)),
            "claims": claim,
            "agreement": bootstrap_mean([float(r["success_label"] == claim) for r in mine], samples) if claim else None,
        }
    return out


def overestimation_drop(cell: dict[str, Any]) -> dict[str, Any] | None:
    """For a run the diagnosis calls over-estimation: its first flagged checkpoint, and the half-B success before
    (best smoothed, up to and including it) and after it (mean), as pre-registered in docs/selection.md."""
    steps_over = (cell.get("diagnosis", {}).get("evidence") or {}).get("overestimation_steps")
    if cell.get("verdict") != "over-estimation" or not steps_over:
        return None
    cps = candidates(cell)
    halves = _halves(cps)
    succ = halves[1] if halves is not None else np.array([c["success_rate"] for c in cps], float)
    steps = [c["step"] for c in cps]
    first = min(steps_over)
    i = next((k for k, s in enumerate(steps) if s >= first), len(steps) - 1)
    before = float(smooth(succ, 3)[: i + 1].max())
    after = float(succ[i + 1:].mean()) if i + 1 < len(succ) else None
    return {"name": cell_name(cell), "first_flagged_step": first, "success_before": before, "success_after": after,
            "drop": None if after is None else before - after}


def distinguishable(cell: dict[str, Any]) -> dict[str, Any]:
    """Whether the candidates' success rates differ beyond evaluation noise (analysis only).

    Chi-square test of homogeneity (``scipy.stats.chi2_contingency``) on the 2 x K table of successes and failures
    of the K candidates over all their evaluation episodes; ``distinguishable`` when its p-value is below
    ``DISTINGUISHABLE_P``. A table with no success or no failure at all has p = 1.

    Returns:
        ``{"p_value": float, "distinguishable": bool}``.
    """
    cps = candidates(cell)
    succ = np.array([int(c["successes"]) for c in cps])
    fail = np.array([int(c["episodes"]) - int(c["successes"]) for c in cps])
    if len(cps) < 2 or succ.sum() == 0 or fail.sum() == 0:
        return {"p_value": 1.0, "distinguishable": False}
    from scipy.stats import chi2_contingency

    p = float(chi2_contingency(np.stack([succ, fail])).pvalue)
    return {"p_value": p, "distinguishable": bool(p < DISTINGUISHABLE_P)}


def headline_stats(per_run: list[dict[str, Any]], samples: int) -> dict[str, dict[str, Any]]:
    """Per selector, over the given runs: success of the pick, normalised and absolute regret, Spearman, the
    share within 0.1 of the best, and the paired regret difference to the paper's rule, each a bootstrap mean."""
    headline = {}
    for name in SELECTORS:
        rows = [r["selectors"][name] for r in per_run if name in r["selectors"]]
        if not rows:
            continue
        headline[name] = {
            "success": bootstrap_mean([r["success"] for r in rows if r["success"] is not None], samples),
            "regret": bootstrap_mean([r["regret"] for r in rows if r["regret"] is not None], samples),
            "abs_regret": bootstrap_mean([r["abs_regret"] for r in rows if r["abs_regret"] is not None], samples),
            "spearman": bootstrap_mean([r["spearman"] for r in rows if r["spearman"] is not None], samples),
            "within_0.1": bootstrap_mean([float(r["within_0.1"]) for r in rows if r.get("within_0.1") is not None],
                                         samples),
            # Paired with the paper's rule on the same runs: the interval of the per-run difference.
            "regret_minus_workflow": bootstrap_mean(
                [r["regret"] - w["regret"] for r, w in
                 ((p["selectors"][name], p["selectors"]["workflow"]) for p in per_run if name in p["selectors"])
                 if r["regret"] is not None and w["regret"] is not None], samples),
        }
    return headline


def analyse(cells: list[dict[str, Any]], config: Any) -> dict[str, Any]:
    """Every number of the results page from the finished cells (cell.json contents)."""
    samples = int(getattr(config, "bootstrap_samples", 10_000))
    every_run = []
    for cell in cells:
        sel = evaluate_selectors(cell)
        every_run.append({"name": cell_name(cell), "cell": cell["cell"], "selectors": sel,
                          "algo": cell.get("algo", "cql"), "verdict": cell["verdict"],
                          "success_label": success_label(cell),
                          "behaviour_success_rate": (cell.get("dataset") or {}).get("behaviour_success_rate"),
                          **distinguishable(cell)})
    # The selector tables and the diagnosis accuracy are about Q-based selection; a reference without a Q-function
    # (BC) appears in the per-algorithm table only.
    per_run = [r for r in every_run if r["algo"] not in NO_Q_ALGOS]
    cells = [c for c in cells if c.get("algo", "cql") not in NO_Q_ALGOS]
    headline = headline_stats(per_run, samples)
    apart = [r for r in per_run if r["distinguishable"]]
    best = bootstrap_mean([float(r["selectors"]["last"]["best"]) for r in per_run], samples) if per_run else None
    confusion = Counter((r["verdict"], r["success_label"]) for r in per_run)
    labelled = [r for r in per_run if r["success_label"] != "too short"]
    agree = [(r["verdict"] == "overfitting") == (r["success_label"] == "overfitting") for r in labelled]
    tp = sum(r["verdict"] == "overfitting" and r["success_label"] == "overfitting" for r in labelled)
    pred = sum(r["verdict"] == "overfitting" for r in labelled)
    actual = sum(r["success_label"] == "overfitting" for r in labelled)
    per_verdict = per_verdict_agreement(labelled, samples)
    by_name = {cell_name(c): c for c in cells}
    threshold_variants = {
        f"{x:g}": per_verdict_agreement(
            [{"verdict": verdict_with(by_name[r["name"]], DiagnosisConfig(underfit_unexplained=x)),
              "success_label": r["success_label"]} for r in labelled], samples)
        for x in UNDERFIT_THRESHOLDS
    }
    return {
        "runs": len(per_run),  # the Q-based runs the selector tables and the diagnosis accuracy read
        "cells_finished": len(every_run),  # every finished run, references (BC, TT) included
        "per_run": every_run,  # BC too: the per-run tables list every run
        "headline": headline,
        "distinguishable": {"p_below": DISTINGUISHABLE_P, "runs": len(apart),
                            "headline": headline_stats(apart, samples)},
        "best_in_hindsight": best,
        "diagnosis_accuracy": {
            "rule": f"success overfits: smoothed (3) success peaks before the last {TAIL} candidates and the mean of "
                    f"the last {TAIL} is >= {OVERFIT_SUCCESS_DROP} below the peak",
            "labelled_runs": len(labelled),
            "accuracy": bootstrap_mean([float(a) for a in agree], samples),
            "precision": tp / pred if pred else None,
            "recall": tp / actual if actual else None,
            "overfitting_by_success": actual,
            "overfitting_by_verdict": pred,
            "confusion": [{"verdict": v, "success_label": s, "runs": n} for (v, s), n in sorted(confusion.items())],
            "per_verdict": per_verdict,
            "underfit_threshold_variants": threshold_variants,
            "overestimation": [d for c in cells if (d := overestimation_drop(c)) is not None],
            # What "always not overfitting" scores (../shared/reference/validation.md: an agreement rate means
            # nothing without its base rate), and the same agreement under the rule before Metric 3.1 required a
            # rise (DiagnosisConfig.require_rise = False), on the same runs.
            "base_rate_not_overfitting": (bootstrap_mean([float(r["success_label"] != "overfitting")
                                                          for r in labelled], samples) if labelled else None),
            "old_rule": _old_rule_agreement(labelled, by_name, samples),
        },
        "regime": regime_checks(cells, per_run, samples),
        "remedies": _remedies_by_scenario(cells, config),
        "per_algorithm": per_algorithm(every_run, samples),
        "default_rule": default_rule(headline),
    }


def _old_rule_agreement(labelled: list[dict[str, Any]], by_name: dict[str, Any], samples: int) -> dict[str, Any]:
    """Agreement of the overfitting verdict with the labels when Metric 3.1 does not require a rise (the rule before
    issue 42), and how many runs it calls overfitting."""
    old = DiagnosisConfig(require_rise=False)
    verdicts = [verdict_with(by_name[r["name"]], old) for r in labelled]
    agree = [float((v == "overfitting") == (r["success_label"] == "overfitting"))
             for v, r in zip(verdicts, labelled, strict=True)]
    return {"accuracy": bootstrap_mean(agree, samples) if agree else None,
            "overfitting_by_verdict": sum(v == "overfitting" for v in verdicts)}


def q_shape(cell: dict[str, Any]) -> str:
    """The shape of a run's q_data over its candidates by Metric 3.1's tests (``detect_decline``, the cell's Q
    range): ``rises then falls``, ``rises only``, ``falls only`` (from its first candidate, no rise beyond the
    noise) or ``neither``; ``too short`` under 4 candidates."""
    from offrl.workflow.diagnosis import detect_decline

    q = np.array([c.get("q_data") if c.get("q_data") is not None else np.nan for c in candidates(cell)], float)
    q = q[np.isfinite(q)]
    if len(q) < DiagnosisConfig().min_checkpoints:
        return "too short"
    lo, hi = cell.get("q_range") or [0.0, 1.0]
    dec = detect_decline(q, DiagnosisConfig(), float(hi) - float(lo))
    return {(True, True): "rises then falls", (True, False): "rises only", (False, True): "falls only",
            (False, False): "neither"}[(dec.rose, dec.falls)]


REGIME_RULES = ("q_peak", "q_after_peak", "last", "heldout_td", "fqe", "random", "oracle")
"""The rules docs/selection.md's "The paper's regime" judges, in the order its table prints them."""
SECONDARY_RULES = ("softopc",)
"""Rules pre-registered after the grid started (docs/selection.md, "SoftOPC, a further candidate"): printed below the
others, labelled secondary, with their paired difference to ``random``; undefined on runs without their scores."""


def regime_checks(cells: list[dict[str, Any]], per_run: list[dict[str, Any]], samples: int) -> dict[str, Any]:
    """docs/selection.md, "The paper's regime": the shape of q_data per run; every rule's regret with a cluster
    bootstrap that resamples tasks, then runs (``offrl.stats.cluster_bootstrap_mean``); the paired differences to
    ``q_peak`` and of ``q_peak`` to ``random``, with per-task means; FQE's convergence and bounds."""
    from offrl.stats import cluster_bootstrap_mean

    shapes = Counter(q_shape(c) for c in cells)
    tasks = [r["cell"]["task"] for r in per_run]

    def regret(r: dict[str, Any], name: str) -> float | None:
        v = r["selectors"].get(name, {}).get("regret")
        return None if v is None else float(v)

    def per_task(values: list[float | None]) -> dict[str, float | None]:
        out = {}
        for t in sorted(set(tasks)):
            v = [x for x, tt in zip(values, tasks, strict=True) if tt == t and x is not None]
            out[t] = float(np.mean(v)) if v else None
        return out

    rules, paired = {}, {}
    for name in REGIME_RULES:
        vals = [regret(r, name) for r in per_run]
        rules[name] = {**cluster_bootstrap_mean(vals, tasks, samples), "per_task": per_task(vals)}
        if name != "q_peak":
            diff = [None if regret(r, name) is None or regret(r, "q_peak") is None
                    else regret(r, name) - regret(r, "q_peak") for r in per_run]
            paired[f"{name} - q_peak"] = {**cluster_bootstrap_mean(diff, tasks, samples), "per_task": per_task(diff)}
    # The pre-registered reading's own quantity (docs/selection.md, "The paper's regime"): q_peak - random.
    diff = [None if regret(r, "q_peak") is None or regret(r, "random") is None
            else regret(r, "q_peak") - regret(r, "random") for r in per_run]
    paired["q_peak - random"] = {**cluster_bootstrap_mean(diff, tasks, samples), "per_task": per_task(diff)}
    secondary = {}
    for name in SECONDARY_RULES:
        vals = [regret(r, name) for r in per_run]
        diff = [None if v is None or regret(r, "random") is None else v - regret(r, "random")
                for v, r in zip(vals, per_run, strict=True)]
        scored = sum(r["selectors"].get(name, {}).get("step") is not None for r in per_run)
        secondary[name] = {**cluster_bootstrap_mean(vals, tasks, samples), "per_task": per_task(vals),
                           "minus_random": {**cluster_bootstrap_mean(diff, tasks, samples),
                                            "per_task": per_task(diff)},
                           "runs_with_a_pick": scored, "runs": len(per_run)}
    undefined = sum(regret(r, "q_peak") is None for r in per_run)
    # q_data against the lowest return the rewards allow (docs/selection.md's observation on the paper regime: a
    # curve below its range is not the paper's "values propagate, then overfit").
    below_last = below_all = 0
    for c in cells:
        q = [cp["q_data"] for cp in candidates(c) if cp.get("q_data") is not None]
        if q:
            q_min = float((c.get("q_range") or [0.0, 1.0])[0])
            below_last += q[-1] < q_min
            below_all += max(q) < q_min
    fqe = [c.get("fqe") or {} for c in cells]
    n_est = sum(len([cp for cp in candidates(c) if cp.get("fqe_value") is not None]) for c in cells)
    return {
        "q_shape": dict(shapes),
        "rules": rules,
        "paired": paired,
        "secondary": secondary,
        "runs_without_regret": undefined,
        "q_below_range": {"last": int(below_last), "everywhere": int(below_all), "runs": len(cells)},
        "fqe": {"runs": len(fqe), "converged": sum(bool(f.get("converged")) for f in fqe),
                "estimates": n_est, "out_of_bounds": sum(int(f.get("out_of_bounds") or 0) for f in fqe)},
    }


OPEN_UNDEFINED_RUNS = 4
"""docs/selection.md, "The paper's regime": more than this many runs without a defined regret leave the answer open."""
DIAGNOSTIC_TASK_MEAN = -0.05
"""... and "a diagnostic, not a selector" needs every task's mean q_peak - random at or above this."""


def regime_reading(reg: dict[str, Any]) -> dict[str, str]:
    """The pre-registered reading of "The paper's regime" (docs/selection.md), applied mechanically to
    :func:`regime_checks`' numbers: ``{"answer": "works" | "diagnostic" | "open" | "undecided", "reason"}``.

    ``works``: the paired ``q_peak - random`` has a 95 % cluster interval entirely below 0 and a mean below 0 on every
    task. ``diagnostic``: the interval contains 0 or lies above it, with every task's mean at or above -0.05.
    ``open`` otherwise, and whenever more than 4 runs have no defined regret (the pre-registered text lists that
    case under "open"; it is checked first, since such a grid cannot answer either way). ``undecided``: no interval
    (under 2 runs with a regret)."""
    undefined = int(reg.get("runs_without_regret") or 0)
    if undefined > OPEN_UNDEFINED_RUNS:
        return {"answer": "open", "reason": f"{undefined} runs have no defined regret (every candidate scores "
                                            f"alike), more than {OPEN_UNDEFINED_RUNS}"}
    d = (reg.get("paired") or {}).get("q_peak - random") or {}
    ci, tasks = d.get("ci"), {t: v for t, v in (d.get("per_task") or {}).items() if v is not None}
    if ci is None or not tasks:
        return {"answer": "undecided", "reason": "q_peak - random has no interval yet"}
    text = (f"q_peak - random {d['mean']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}], per task "
            + ", ".join(f"{t} {v:.3f}" for t, v in sorted(tasks.items())))
    if ci[1] < 0 and all(v < 0 for v in tasks.values()):
        return {"answer": "works", "reason": f"{text}: the interval lies below 0 and every task's mean is below 0"}
    if ci[1] >= 0 and all(v >= DIAGNOSTIC_TASK_MEAN for v in tasks.values()):
        return {"answer": "diagnostic", "reason": f"{text}: the interval reaches 0 or above and every task's mean is "
                                                  f"at or above {DIAGNOSTIC_TASK_MEAN}"}
    return {"answer": "open", "reason": f"{text}: neither reading's conditions hold"}


SOFTOPC_MIN_RUNS = 8


def softopc_reading(sec: dict[str, Any]) -> dict[str, str]:
    """docs/selection.md, "SoftOPC, a further candidate": *worth a confirmation grid* when, on at least 8 runs where
    it picks, ``softopc - random`` has a 95 % interval entirely below 0 and a mean below 0 on at least 3 of 4 tasks
    (every task of a grid with fewer than 4); else *not better than chance*; *too few runs* under 8.
    ``sec``: :func:`regime_checks`' ``secondary["softopc"]``."""
    d = sec.get("minus_random") or {}
    if int(sec.get("runs_with_a_pick") or 0) < SOFTOPC_MIN_RUNS or d.get("ci") is None:
        return {"answer": "too few runs", "reason": f"a pick on {sec.get('runs_with_a_pick', 0)} runs, "
                                                   f"{SOFTOPC_MIN_RUNS} needed"}
    tasks = [v for v in (d.get("per_task") or {}).values() if v is not None]
    needed = min(3, len(tasks))
    below = sum(v < 0 for v in tasks)
    if d["ci"][1] < 0 and below >= needed:
        return {"answer": "worth a confirmation grid", "reason": f"interval below 0, {below} of {len(tasks)} tasks "
                                                                 f"below 0"}
    return {"answer": "not better than chance", "reason": f"interval [{d['ci'][0]:.2f}, {d['ci'][1]:.2f}], "
                                                          f"{below} of {len(tasks)} tasks below 0"}


# The candidates the default rule may choose: docs/selection.md's candidate table; its references (last,
# heldout_td, random, oracle) are reported but never become the default.
CANDIDATES = ("workflow_after_peak", "q_peak_in_range", "heldout_q_peak", "fqe", "heldout_q_policy_peak",
              "q_peak_fitted")


def default_rule(headline: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The pre-registered default rule of docs/selection.md, applied mechanically: the default becomes the
    candidate whose paired regret difference to the paper's rule (``workflow``, the Q peak) has a 95% interval
    entirely below 0, the one with the lowest mean regret if several do; else the paper's rule stays.

    Returns:
        ``{"default": selector name, "qualifying": [names], "reason": one sentence}``.
    """
    qualifying = []
    for name in CANDIDATES:
        diff = (headline.get(name) or {}).get("regret_minus_workflow") or {}
        ci = diff.get("ci")
        if ci is not None and ci[1] < 0:
            qualifying.append(name)
    if not qualifying:
        return {"default": "workflow", "qualifying": [],
                "reason": "no candidate's paired regret difference to the Q peak has a 95% interval below 0: the "
                          "paper's rule stays the default"}
    best = min(qualifying, key=lambda n: headline[n]["regret"]["mean"])
    ci = headline[best]["regret_minus_workflow"]["ci"]
    return {"default": best, "qualifying": qualifying,
            "reason": f"{best}'s paired regret difference to the Q peak is "
                      f"{headline[best]['regret_minus_workflow']['mean']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}], entirely "
                      f"below 0" + (f"; of the {len(qualifying)} that qualify it has the lowest mean regret"
                                    if len(qualifying) > 1 else "")}


def _remedies_by_scenario(cells: list[dict[str, Any]], config: Any) -> dict[str, list[dict[str, Any]]]:
    scenarios = getattr(config, "scenarios", None)
    if not scenarios:
        return {"all": remedy_effects(cells)}
    from offrl.study.config import cells_of

    by_name = {cell_name(c): c for c in cells}
    return {sc.name: remedy_effects([by_name[c.name] for c in cells_of(config, sc.name) if c.name in by_name])
            for sc in scenarios}


def cell_name(cell: dict[str, Any]) -> str:
    """The cell's directory name (``Cell.name``) from its cell.json."""
    c = cell["cell"]
    regime = c.get("regime", "white")
    tag = "" if regime == "white" else f"{regime}__"
    return f"{c['task']}__{tag}{c['episodes']}ep__s{c['seed']}__{c['setting']}"


def late_success(cell: dict[str, Any]) -> float:
    """Mean success of the last 3 candidates: does a run keep its later checkpoints good?"""
    succ = [c["success_rate"] for c in candidates(cell)]
    return float(np.mean(succ[-TAIL:]))


def _last(cell: dict[str, Any], key: str) -> float | None:
    v = candidates(cell)[-1].get(key)
    return None if v is None else float(v)


def _paired(rows: list[dict[str, Any]], ref: list[dict[str, Any]], key: str, samples: int) -> dict[str, Any] | None:
    """Bootstrap mean of ``key``'s success minus the reference algorithm's on the same run (task, regime, dataset
    size, seed); None when no run is shared."""
    def run_key(r: dict[str, Any]) -> tuple:
        c = r["cell"]
        return c["task"], c.get("regime", "white"), c["episodes"], c["seed"]

    by = {run_key(r): r for r in ref}
    pick = (lambda r: r["selectors"]["workflow"]["success"]) if key == "pick" else \
        (lambda r: r["selectors"]["workflow"]["best"])
    diffs = [pick(r) - pick(by[run_key(r)]) for r in rows if run_key(r) in by
             and pick(r) is not None and pick(by[run_key(r)]) is not None]
    return bootstrap_mean(diffs, samples) if diffs else None


def per_algorithm(per_run: list[dict[str, Any]], samples: int) -> dict[str, dict[str, Any]]:
    """Per algorithm (cell.json ``algo``): the success of the workflow's pick, of the best checkpoint in hindsight
    and of the last, the pick's normalised regret, and the behaviour data's success, each a bootstrap mean over
    that algorithm's runs; and, paired by run (same task, data and seed), the pick's and the best checkpoint's
    success minus CQL's and minus BC's (``pick_minus_cql``, ``best_minus_cql``, ``pick_minus_bc``,
    ``best_minus_bc``; None when the study has no such runs)."""
    out = {}
    groups = {algo: [r for r in per_run if r.get("algo", "cql") == algo]
              for algo in sorted({r.get("algo", "cql") for r in per_run})}
    for algo, runs in groups.items():
        rows = [r["selectors"] for r in runs]
        out[algo] = {
            "runs": len(rows),
            "pick_success": bootstrap_mean([r["workflow"]["success"] for r in rows], samples),
            "best_success": bootstrap_mean([r["workflow"]["best"] for r in rows], samples),
            "last_success": bootstrap_mean([r["last"]["success"] for r in rows], samples),
            "pick_regret": bootstrap_mean([r["workflow"]["regret"] for r in rows], samples),
            "data_success": bootstrap_mean([r.get("behaviour_success_rate") for r in runs], samples),
        }
        for ref in ("cql", "bc"):
            for key in ("pick", "best"):
                out[algo][f"{key}_minus_{ref}"] = None if ref == algo or ref not in groups else \
                    _paired(runs, groups[ref], key, samples)
    return out


def remedy_effects(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each (task, episodes, seed) run with ``base`` and a remedy setting: what the remedy changed."""
    groups: dict[tuple, dict[str, dict[str, Any]]] = {}
    for cell in cells:
        c = cell["cell"]
        groups.setdefault((c["task"], c.get("regime", "white"), c["episodes"], c["seed"]), {})[c["setting"]] = cell
    out = []
    for (task, _regime, episodes, seed), runs in sorted(groups.items()):
        base = runs.get("base")
        if base is None:
            continue
        for setting, other in sorted(runs.items()):
            if setting == "base" or other.get("algo", "cql") != base.get("algo", "cql"):
                continue  # another algorithm is not a remedy of the base run (see per_algorithm)
            sb, so = evaluate_selectors(base)["workflow"], evaluate_selectors(other)["workflow"]
            out.append({
                "task": task, "episodes": episodes, "seed": seed, "remedy": setting,
                "verdict": [base["verdict"], other["verdict"]],
                "workflow_pick_success": [sb["success"], so["success"]],
                "best_success": [sb["best"], so["best"]],
                "late_success": [late_success(base), late_success(other)],
                "final_td_error": [_last(base, "td_error"), _last(other, "td_error")],
                "final_q_data": [_last(base, "q_data"), _last(other, "q_data")],
            })
    return out
