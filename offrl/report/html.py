"""Self-contained HTML report for one training run.

``write_report(run_dir)`` reads only files inside the run directory (``config.json``,
``metrics.jsonl`` and, when present, ``diagnosis.json``, ``evaluation.json``, the other actor's
``evaluation-<actor>.json`` and the robot check's ``check/check.json``) and writes a single ``report.html``
with the figures embedded as base64 PNGs: no external CSS, JS or network access, so the file can be mailed
around or opened from a copied run directory.

Python computes the report's content (:func:`report_context`: a plain dict of numbers, strings and
base64 figures from :mod:`offrl.report.figures`); the Jinja2 templates in ``offrl/report/templates``
lay it out, with autoescaping on.
"""

from __future__ import annotations

import functools
import html
import json
import math
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from offrl.report.figures import (
    HELDOUT,
    MAIN_CURVE,
    REGULARIZER_CURVE,
    _by_step,
    _eval_counts,
    _loss_figure,
    _metric_figure,
    _num,
    _q_data_axes,  # noqa: F401  (tests reach Figure 1's axes through this module)
    _q_data_figure,
    _q_range,
    _runs_figure,
    _step,
)
from offrl.training.run_dir import atomic_write_text, read_metrics

__all__ = ["load_metrics", "render", "report_context", "write_comparison_report", "write_report"]

TRAIN_COMMAND = "offrl train"
DIAGNOSE_COMMAND = "offrl diagnose"
EVALUATE_COMMAND = "offrl evaluate"
CHECK_COMMAND = "offrl check"

VERDICT_COLOURS = {
    "healthy": "#1e8449",
    "overfitting": "#c0392b",
    "underfitting": "#d68910",
    "over-estimation": "#a04000",
    "diverged": "#7b241c",
    "inconclusive": "#566573",
}


# --------------------------------------------------------------------------------------------
# reading the run directory


# One parser of metrics.jsonl for the whole package: a torn last line is dropped, corruption elsewhere raises.
load_metrics = read_metrics


def _read_json(path: Path) -> tuple[dict | None, str | None]:
    """(data, None) for a readable JSON object, (None, error text) otherwise, (None, None) if absent."""
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"{path.name} could not be read ({exc})"
    if not isinstance(data, dict):
        return None, f"{path.name} does not contain a JSON object"
    return data, None


# --------------------------------------------------------------------------------------------
# HTML


# The page is laid out by templates/report.html.j2 (and comparison.html.j2); the functions below only compute its
# context: plain dicts of strings, numbers and base64 figures, with no markup in them.

TEMPLATES = "templates"


def _escape(value: Any) -> Markup:
    """Autoescaping as the report always escaped (``html.escape``): Jinja's own escaping spells ``'`` as
    ``&#39;`` where ``html.escape`` writes ``&#x27;``; keeping one spelling keeps reports comparable across
    versions. Values that are already markup (the templates' own) pass through."""
    if hasattr(value, "__html__"):
        return Markup(value.__html__())
    return Markup(html.escape(str(value), quote=True))


@functools.cache
def _environment() -> jinja2.Environment:
    # PackageLoader reads the templates through importlib.resources, so they are found in a wheel install too
    # (pyproject.toml ships offrl/report/templates as package data).
    return jinja2.Environment(
        loader=jinja2.PackageLoader("offrl.report", TEMPLATES),
        autoescape=True,
        finalize=_escape,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,  # a context key the template expects but Python forgot fails loudly
    )


def render(template: str, context: dict[str, Any]) -> str:
    """``template`` (a file of offrl/report/templates) filled with ``context``."""
    return _environment().get_template(template).render(context)


def _display(value: Any) -> str | None:
    """Display text of a value from a file (None: the template shows a dash)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, int | str):
        return str(value)
    text = json.dumps(value, default=str, allow_nan=True)
    return text if len(text) <= 400 else text[:400] + " ..."


def _not_run(what: str, command: str, err: str | None) -> dict[str, Any]:
    """A note that a stage's file is missing (``what`` not run yet) or unreadable (``err``), with its command."""
    return {"what": what, "command": command, "err": err}


def _verdict(diagnosis: dict | None, diag_err: str | None) -> dict[str, Any]:
    """The first screen's box: verdict, pick, rule, recommendation, trust, reasons, compared runs."""
    if diagnosis is None:
        return {"missing": _not_run("Diagnosis", DIAGNOSE_COMMAND, diag_err)}
    verdict = str(diagnosis.get("verdict") or "unknown")
    reasons, compared = diagnosis.get("reasons"), diagnosis.get("compared_runs")
    return {
        "missing": None,
        "verdict": verdict,
        "colour": VERDICT_COLOURS.get(verdict, "#566573"),
        "selected": _step(diagnosis.get("selected_step")),
        "peak": _step(diagnosis.get("peak_step")),
        "rule": diagnosis.get("selection_rule") or None,
        "recommendation": diagnosis.get("recommendation") or None,
        "trust": _trust(diagnosis.get("trust")),
        "reasons": [str(r) for r in reasons] if isinstance(reasons, list) else [],
        "compared": [str(c) for c in compared] if isinstance(compared, list) else [],
    }


def _interval_of(x: Any) -> list[float] | None:
    """A finite ``[lo, hi]`` from a file, else None."""
    if isinstance(x, list | tuple) and len(x) == 2:
        lo, hi = _num(x[0]), _num(x[1])
        if math.isfinite(lo) and math.isfinite(hi):
            return [lo, hi]
    return None


def _trust(trust: Any) -> dict[str, Any] | None:
    """diagnosis.json's ``trust`` (:func:`offrl.workflow.trust.trust_statement`): the statement, and its measured
    numbers as table rows (the rule, a random checkpoint, the noise floor, the rule minus random). Older files
    recorded only the rule's ``regret``, ``regret_ci`` and ``n``: those give the rule's row alone."""
    if not isinstance(trust, dict) or not trust.get("statement"):
        return None
    measured = trust.get("measured")
    rows: list[dict[str, Any]] = []
    about = None
    if isinstance(measured, dict) and math.isfinite(_num(measured.get("regret"))):
        selector = trust.get("selector")
        rows.append({"what": "this pick's rule" + (f" ({selector})" if selector else ""),
                     "regret": _num(measured["regret"]),
                     "ci": _interval_of(measured.get("ci", measured.get("regret_ci"))),
                     "runs": _step(measured.get("runs", measured.get("n")))})
        for key, what in (("random", "a random checkpoint"),
                          ("noise_floor", "noise floor: a perfect selector under the evaluation noise")):
            x = measured.get(key)
            if isinstance(x, dict) and math.isfinite(_num(x.get("mean"))):
                rows.append({"what": what, "regret": _num(x["mean"]), "ci": _interval_of(x.get("ci")),
                             "runs": _step(x.get("n"))})
        if math.isfinite(_num(measured.get("minus_random"))):
            rows.append({"what": "the rule minus random, paired by run", "regret": _num(measured["minus_random"]),
                         "ci": _interval_of(measured.get("minus_random_ci")), "runs": None})
        if measured.get("grid"):
            about = {"grid": str(measured["grid"]), "runs": _step(measured.get("runs")),
                     "tasks": _step(measured.get("tasks")), "method": trust.get("method")}
    return {"statement": str(trust["statement"]), "rows": rows, "about": about}


def _check(run_dir: Path) -> dict[str, Any] | None:
    """The robot check's answer (RUN/check/check.json, written by ``offrl check``) and its per-checkpoint trials;
    None when no check was run. Trials are real episodes (or a simulator's rehearsal of them, which the trial log
    beside check.json marks as operator ``simulator``): unlike evaluation.json they chose the checkpoint."""
    from offrl.workflow.check import CHECK_DIR, LOG_FILE, RESULT_FILE, read_log

    folder = run_dir / CHECK_DIR
    answer, err = _read_json(folder / RESULT_FILE)
    if answer is None:
        return None if err is None else {"error": err}
    deploy = answer.get("deploy") if isinstance(answer.get("deploy"), dict) else {}
    outcome_range = _interval_of(answer.get("outcome_range")) or [0.0, 1.0]
    binary = outcome_range == [0.0, 1.0]
    rows = []
    per = answer.get("per_checkpoint")
    for p in per if isinstance(per, list) else []:
        if not isinstance(p, dict):
            continue
        n, mean = _step(p.get("trials")), _num(p.get("mean"))
        total = mean * n if n and math.isfinite(mean) else (0.0 if n == 0 else math.nan)
        rows.append({"checkpoint": str(p.get("checkpoint")), "episodes": n, "total": total,
                     "successes": _count(total), "mean": mean if n else math.nan,
                     "posterior": _num(p.get("posterior_mean")),
                     "deployed": str(p.get("checkpoint")) == str(deploy.get("checkpoint"))})
    _posterior_means(rows)
    # The trial log says who answered each episode: a simulator's rehearsal records operator "simulator".
    _, trials, _ = read_log(folder / LOG_FILE)
    simulated = sum(1 for t in trials if t.get("operator") == "simulator")
    source = ("unknown" if not trials else "simulated" if simulated == len(trials)
              else "robot" if simulated == 0 else "mixed")
    return {
        "error": None,
        "source": source,
        "checkpoint": deploy.get("checkpoint"),
        "run": deploy.get("run"),
        "estimate": _num(answer.get("estimate")),
        "interval": _interval_of(answer.get("interval")),
        "level": _num(answer.get("interval_level")),
        "prob_best": _num(answer.get("prob_best")),
        "raw_mean": _num(answer.get("raw_mean")),
        "trials_of_deployed": _step(answer.get("trials_of_deployed")),
        "episodes_used": _step(answer.get("episodes_used")),
        "budget": _step(answer.get("budget")),
        "rule": answer.get("rule"),
        "status": answer.get("status"),
        "confidence": _num(answer.get("confidence")),
        "correction": answer.get("correction"),
        "binary": binary,
        "outcome_range": outcome_range,
        "units": {"estimate": _num(answer.get("estimate_outcome_units")),
                  "interval": _interval_of(answer.get("interval_outcome_units"))},
        "rows": rows,
        "logged": len(trials),
        "simulated": simulated,
    }


def _count(total: float) -> int | float | None:
    """A per-checkpoint sum of outcomes for display: an integer count of successes when it is one (0/1
    outcomes), else rounded to two decimals; None when unknown."""
    if not math.isfinite(total):
        return None
    return int(round(total)) if abs(total - round(total)) < 1e-6 else round(total, 2)


def _posterior_means(rows: list[dict[str, Any]]) -> None:
    """Fill each row's posterior mean (the check's winner's-curse-corrected estimate, shrunk toward the other
    checkpoints: :func:`offrl.workflow.allocation.posterior_mean`) from its trials where check.json has none."""
    if not rows or all(math.isfinite(r["posterior"]) for r in rows):
        return
    if not all(r["episodes"] is not None and math.isfinite(r["total"]) for r in rows):
        return
    import numpy as np

    from offrl.workflow.allocation import Arms, posterior_mean

    counts = np.array([[r["episodes"] for r in rows]], np.int64)
    sums = np.array([[r["total"] for r in rows]], np.float64)
    for r, m in zip(rows, posterior_mean(Arms(counts, sums))[0], strict=True):
        if not math.isfinite(r["posterior"]):
            r["posterior"] = float(m)


def _q_range_width(diagnosis: dict | None) -> float | None:
    q_range = _q_range(diagnosis)
    return None if q_range is None else q_range[1] - q_range[0]


def _warmup_steps(config: dict) -> int:
    """The actor's warm start (CQL ``agent.bc_steps``, BEAR ``agent.warmstart_steps``; else 0), read as
    :func:`offrl.workflow.comparison.attach_comparison` reads it."""
    from offrl.training.run_dir import warmup_steps

    agent = config.get("agent")
    return warmup_steps(config.get("algo", "cql"), agent) if isinstance(agent, dict) else 0


def _rate_text(r: dict) -> tuple[str, str]:
    """("60% (12/20)", "[39%, 78%]") for a row of the analysis-only comparison."""
    ci = r.get("ci95")
    ci = ci if isinstance(ci, list | tuple) and len(ci) == 2 else [math.nan, math.nan]
    return (
        f"{_num(r.get('success_rate')):.0%} ({r.get('successes')}/{r.get('episodes')})",
        f"[{_num(ci[0]):.0%}, {_num(ci[1]):.0%}]",
    )


COMPARISON_ROWS = (
    ("behaviour", "data (behaviour policy)"),
    ("best_warm_start", "best warm-start (BC) checkpoint"),
    ("bc_selected", "behaviour cloning, its offline pick"),
    ("bc_best", "behaviour cloning, best checkpoint"),
    ("selected", "selected (workflow)"),
    ("best", "best checkpoint in hindsight"),
    ("last", "last checkpoint"),
)


def _env_text(evaluation: dict) -> str | None:
    """Where the checkpoints were rolled out, from evaluation.json's ``env`` (``offrl evaluate`` records it;
    ``--env`` runs name a gymnasium environment and its success key), else its MetaWorld ``task``."""
    env = evaluation.get("env")
    env = env if isinstance(env, dict) else {}
    kind, task = env.get("kind"), env.get("task") or evaluation.get("task")
    if kind == "gymnasium":
        key = env.get("success_key")
        return f"gymnasium environment {env.get('env')}" + (f" (success: info[{key!r}])" if key else "")
    if kind in (None, "metaworld"):
        return f"MetaWorld task {task}" if task else None
    return f"{kind} environment {env.get('env') or task}"


def _returns(evaluation: dict, diagnosis: dict | None) -> dict[str, Any]:
    """MinAtar evaluations (``metric: "return"``): the mean return of every checkpoint, the pick marked."""
    picked = (diagnosis or {}).get("selected_step")
    rows = [{"step": r.get("step"), "selected": r.get("step") == picked, "mean_return": _num(r.get("mean_return")),
             "episodes": r.get("episodes")}
            for r in (evaluation.get("results") or []) if isinstance(r, dict)]
    return {"rows": rows, "task": (evaluation.get("env") or {}).get("task"), "epsilon": evaluation.get("epsilon")}


def _actors(run_dir: Path, config: dict, evaluation: dict | None) -> dict[str, Any] | None:
    """The evaluation of the actor a run does not deploy (``evaluation-<actor>.json``, written by
    ``offrl evaluate --actor``), beside the deployed one's evaluation.json; None when the run has no such file, so
    that such a report is laid out as before.

    The deployed actor is evaluation.json's ``actor``, else config.json's ``deployment.actor``, else "trained"
    (:func:`offrl.workflow.rules.run_actor`). Returns ``{"deployed", "other", "file", "evaluation" (None:
    unreadable or without usable results), "counts" (:func:`offrl.report.figures._eval_counts`), "caption"}``:
    the caption under Figure 1, which says where each curve comes from, or why the other one is missing.
    """
    from offrl.workflow.evaluate import ACTOR_EVALUATION_FILE, other_actor
    from offrl.workflow.rules import ACTORS

    deployment = config.get("deployment") if isinstance(config.get("deployment"), dict) else {}
    deployed = next((a for a in ((evaluation or {}).get("actor"), deployment.get("actor")) if a in ACTORS),
                    "trained")
    other = other_actor(deployed)
    file = ACTOR_EVALUATION_FILE.format(actor=other)
    data, err = _read_json(run_dir / file)
    if data is None and err is None:
        return None
    counts = _eval_counts(data)
    sources = "95% Wilson intervals, analysis only: not used for selection"
    if err is not None or not counts:
        why = err or f"{file} has no usable results"
        caption = (f"{why}: only the {deployed} actor's (deployed) success is drawn; re-run "
                   f"`{EVALUATE_COMMAND} {run_dir} --actor {other}`.")
    elif evaluation is None:
        caption = (f"Green dashed line: success rate of the {other} actor (not deployed), from {file}, with "
                   f"{sources}. The deployed {deployed} actor's evaluation.json is missing.")
    else:
        caption = (f"Grey dotted line: success rate of the {deployed} actor (deployed), from evaluation.json; green "
                   f"dashed line: the {other} actor's, from {file}; both with {sources}.")
        differ = evaluation_differences(evaluation, data)
        if differ:
            caption += (f" The two evaluations differ in {'; '.join(differ)}: the curves are not measured alike; "
                        f"re-run one of them with the other's settings.")
    return {"deployed": deployed, "other": other, "file": file, "evaluation": data if counts else None,
            "counts": counts, "caption": caption}


COMPARED_EVALUATION_KEYS = ("env", "horizon", "episodes", "seed")
"""What two evaluations of one run must share for their success curves to be compared point by point."""


def evaluation_differences(first: dict, second: dict) -> list[str]:
    """Each of :data:`COMPARED_EVALUATION_KEYS` on which two evaluation files of a run differ, as
    ``"KEY (A vs B)"``; a key neither file has is not a difference. Empty when they agree."""
    out = []
    for key in COMPARED_EVALUATION_KEYS:
        a, b = first.get(key), second.get(key)
        if a != b and not (a is None and b is None):
            out.append(f"{key} ({json.dumps(a, sort_keys=True)} vs {json.dumps(b, sort_keys=True)})")
    return out


# The comparison rows whose step is a checkpoint of this run (the behaviour-cloning rows are another run's):
# the other actor's success is shown at that step.
OWN_CHECKPOINT_ROWS = ("best_warm_start", "selected", "best", "last")


def _comparison(evaluation: dict, diagnosis: dict | None, config: dict,
                actors: dict[str, Any] | None = None) -> dict[str, Any]:
    """The analysis-only comparison: diagnosis.json's ``analysis_only`` (written by `offrl evaluate` and
    `offrl diagnose`), or the same computation on evaluation.json when the diagnosis has none. A "best"
    checkpoint is not named when the comparison says all candidates are tied (``"tied"``, typically all 0%);
    a diagnosis.json written before offrl recorded ties gets its best rows recomputed from evaluation.json.

    With ``actors`` (:func:`_actors`) whose other actor has results, every row of one of this run's checkpoints
    also gets that actor's success at the same step (``other``; None: a dash), and ``actors`` names both.

    Returns ``{"usable": False}`` without usable results, else ``{"usable", "about", "rows", "tied_best",
    "actors"}`` with rows ``{"name", "step" (None: a dash), "rate", "ci", "other"}`` and ``actors`` None, or
    ``{"deployed", "other"}`` when the table has the other actor's column."""
    from offrl.workflow.comparison import analysis_only_comparison, tie_reason

    counts = _eval_counts(evaluation)
    if not counts:
        return {"usable": False}
    about = [env] if (env := _env_text(evaluation)) else []
    if _step(evaluation.get("episodes")) is not None:
        about.append(f"{_step(evaluation['episodes'])} episodes per checkpoint")
    if _step(evaluation.get("horizon")) is not None:
        about.append(f"horizon {_step(evaluation['horizon'])} steps")
    about.append(f"{len(counts)} checkpoint(s) evaluated")
    other_at = {r["step"]: r for r in actors["counts"]} if actors and actors["counts"] else None
    if other_at is not None:
        about.append(f"the {actors['deployed']} actor (deployed) acting; the {actors['other']} actor's column from "
                     f"{actors['file']} ({_episodes_text(actors['counts'])})")
    warmup = _warmup_steps(config)
    comparison = (diagnosis or {}).get("analysis_only")
    best_keys = ("best", "best_warm_start")
    if not isinstance(comparison, dict) or any(
        isinstance(comparison.get(k), dict) and "tied" not in comparison[k] for k in best_keys
    ):
        dataset = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
        metadata = dataset.get("metadata") if isinstance(dataset.get("metadata"), dict) else {}
        fresh = analysis_only_comparison(
            {"results": counts}, _step((diagnosis or {}).get("selected_step")), warmup, metadata
        )
        comparison = fresh if not isinstance(comparison, dict) else {
            **comparison, **{k: fresh[k] for k in best_keys}
        }
    rows, tied_best = [], False
    for key, name in COMPARISON_ROWS:
        r = comparison.get(key)
        if key == "selected" and r is None:
            rows.append({"name": name, "step": None, "rate": "no diagnosis yet" if diagnosis is None
                         else "none selected", "ci": "", "other": None})
        if not isinstance(r, dict) or r.get("success_rate") is None:
            continue
        tie = tie_reason(r)
        if tie is not None:
            tied_best = tied_best or key == "best"
            rows.append({"name": name, "step": None, "rate": tie, "ci": _rate_text(r)[1] + " each", "other": None})
            continue
        rate, ci = _rate_text(r)
        at = other_at.get(_step(r.get("step"))) if other_at is not None and key in OWN_CHECKPOINT_ROWS else None
        rows.append({"name": name, "step": r.get("step"), "rate": rate, "ci": ci,
                     "other": None if at is None else
                     f"{at['successes'] / at['episodes']:.0%} ({at['successes']}/{at['episodes']})"})
    return {"usable": True, "about": ", ".join(about), "rows": rows, "tied_best": tied_best,
            "actors": None if other_at is None else {"deployed": actors["deployed"], "other": actors["other"]}}


def _episodes_text(counts: list[dict]) -> str:
    """"20 episodes per checkpoint" (or "10-20 ..." when the rows differ) of :func:`_eval_counts` rows."""
    n = sorted({r["episodes"] for r in counts})
    return f"{n[0] if len(n) == 1 else f'{n[0]}-{n[-1]}'} episodes per checkpoint"


# Readable names of the evidence keys offrl.workflow.diagnosis writes; other keys are shown as they are.
# "The curve" is the one Metric 3.1 reads (evidence "metric": q_data for CQL).
EVIDENCE_LABELS = {
    "metric": "curve diagnosed (Metric 3.1)",
    "algo": "algorithm",
    "first_unsound_step": "first checkpoint that diverged (step)",
    "divergence_limit": "divergence limit on the curve",
    "checkpoints": "checkpoints diagnosed (after the warm start)",
    "warmup_checkpoints_ignored": "warm-start (BC) checkpoints left out (steps)",
    "q_data_below_q_range_by": "curve's end below the lowest return the rewards allow, by",
    "peak_step": "peak of the curve (step)",
    "peak_q_data_smoothed": "curve at its peak (smoothed)",
    "end_q_data": "curve at the end (mean of the last checkpoints)",
    "q_data_drop": "drop from the peak to the end",
    "drop_threshold": "drop needed to call it a decline",
    "q_data_noise_std": "curve's noise (std between checkpoints)",
    "checkpoints_after_peak": "checkpoints after the peak",
    "heldout_q_data_declining": "held-out curve declines too",
    "heldout_peak_step": "peak of the held-out curve (step)",
    "td_error_end": "TD error (end)",
    "cql_regularizer_end": "CQL regularizer (end)",
    "kl_estimate_end": "KL estimate (end)",
    "regularizer_end": "regularizer (end)",
    "q_error_estimate_end": "estimated Q error (end)",
    "heldout_td_error_end": "held-out TD error (end)",
    "heldout_over_train_td_error": "held-out TD error / training TD error",
    "q_range_width": "Q range width allowed by the rewards",
    "q_error_over_q_range": "estimated Q error / Q range width",
    "num_params": "parameter counts",
    "td_error_over_target_var_end": "unexplained share of TD-target variance (end)",
    "metric_3_2": "Metric 3.2: runs with more capacity",
    "overestimation_steps": "steps where Q exceeds the largest return the rewards allow",
    "in_range_peak_step": "peak of the curve within the Q range (step)",
}


def _evidence(diagnosis: dict | None, diag_err: str | None) -> dict[str, Any]:
    """The evidence table's rows: a readable name, and the raw key of diagnosis.json (shown small, and in the
    title) when the name differs from it; or why there is none."""
    evidence = (diagnosis or {}).get("evidence")
    if isinstance(evidence, dict) and evidence:
        rows = [{"key": str(k), "label": EVIDENCE_LABELS.get(str(k), str(k)), "known": str(k) in EVIDENCE_LABELS,
                 "value": _display(v)} for k, v in evidence.items()]
        return {"rows": rows, "missing": None}
    return {"rows": [], "missing": _not_run("Diagnosis", DIAGNOSE_COMMAND, diag_err) if diagnosis is None else None}


def _config_rows(config: dict) -> list[tuple[str, str | None]]:
    def sub(name: str) -> dict:
        v = config.get(name)
        return v if isinstance(v, dict) else {}

    dataset, agent, training = sub("dataset"), sub("agent"), sub("training")
    fingerprint = dataset.get("fingerprint")
    rows = [
        ("algorithm", config.get("algo")),
        ("dataset path", dataset.get("path")),
        ("dataset task", dataset.get("task")),
        ("dataset fingerprint", fingerprint[:16] if isinstance(fingerprint, str) else fingerprint),
        ("gradient steps", training.get("steps")),
        ("checkpoint every", training.get("checkpoint_every")),
        ("seed", config.get("seed")),
        ("CQL alpha", agent.get("alpha")),
        ("discount gamma", agent.get("gamma")),
        ("target update tau", agent.get("tau")),
    ]
    return [(k, _display(v)) for k, v in rows]


def _version_rows(config: dict) -> list[tuple[str, str | None]]:
    """offrl's version once (config.json records it twice: ``offrl_version`` and ``versions.offrl``), then the
    other packages."""
    versions = config.get("versions") if isinstance(config.get("versions"), dict) else {}
    offrl = config.get("offrl_version") or versions.get("offrl")
    rows = [("offrl", offrl)] + [(str(k), v) for k, v in sorted(versions.items()) if k != "offrl"]
    return [(k, _display(v)) for k, v in rows]


def _missing(records: list[dict], key: str) -> str:
    """Why there is no figure for ``key``: never recorded, or recorded without a finite value."""
    if any(k in rec for rec in records for k in (key, HELDOUT + key)):
        return (
            f"{key} is in metrics.jsonl but has no finite value (all NaN, null or infinite), as happens when "
            "training diverges, or (null) when no transition of the evaluation sets is one it is defined on."
        )
    return f"No {key} recorded in metrics.jsonl."


def _summary(config: dict, records: list[dict]) -> str:
    """The line under the title: checkpoints, last step, time elapsed, task."""
    last = records[-1]
    time_s = _num(last.get("time_s"))
    summary = f"{len(records)} checkpoint(s), last at step {last['step']}"
    if math.isfinite(time_s):
        summary += (
            f", {time_s / 3600:.1f} h elapsed" if time_s >= 7200 else f", {time_s / 60:.1f} min elapsed"
        )
    task = (config.get("dataset") or {}).get("task") if isinstance(config.get("dataset"), dict) else None
    if task:
        summary += f", task {task}"
    return summary


def _figure(title: str, b64: str | None, missing: str, caption: str) -> dict[str, Any]:
    """One figure of the report: its base64 PNG, or (None) the note saying why there is none."""
    return {"title": title, "b64": b64, "missing": missing, "caption": caption}


def _figures(
    records: list[dict], diagnosis: dict | None, evaluation: dict | None, config: dict,
    actors: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The numbered figures, in order: the curve the diagnosis reads (with both actors' success when ``actors``,
    :func:`_actors`, has the other's), TD error, the regularizer, the Q error estimate, the training losses, and
    for model-based runs (MOPO, COMBO) the dynamics model's four curves."""
    q_width = _q_range_width(diagnosis)
    algo = config.get("algo", "cql")
    main_key = MAIN_CURVE.get(algo, MAIN_CURVE["cql"])[0]
    reg_key, reg_title = REGULARIZER_CURVE.get(algo, REGULARIZER_CURVE["cql"])
    figs = [
        _figure(
            "The curve the diagnosis reads (overfitting check, Metric 3.1)",
            _q_data_figure(records, diagnosis, evaluation, algo,
                           None if actors is None or actors["evaluation"] is None
                           else (actors["deployed"], actors["other"], actors["evaluation"])),
            _missing(records, main_key),
            "With overfitting, the average Q-value on dataset actions rises and then falls as training continues; "
            "the workflow selects a checkpoint near the peak. Held-out data makes the drop easier to see."
            + (
                " Blue dash-dotted lines: the range of returns the rewards allow (diagnosis.json q_range), "
                "which the reasons cite; when the curve lies far outside it, a note at the edge says where."
                if main_key == "q_data" and _q_range(diagnosis) is not None
                else ""
            ),
        ),
        _figure(
            "TD error",
            _metric_figure(
                records, "td_error", "td_error: temporal-difference error", diagnosis, log_if_positive=True
            ),
            _missing(records, "td_error"),
            "A TD error that stays high on the training transitions suggests underfitting.",
        ),
        _figure(
            "Regularizer",
            _metric_figure(records, reg_key, reg_title, diagnosis),
            _missing(records, reg_key),
            "A regularizer that stays high together with a high TD error suggests underfitting; one that "
            "drops with more capacity confirms it (Metric 3.2).",
        ),
        _figure(
            "Q-value error estimate",
            _metric_figure(
                records,
                "q_error_estimate",
                "q_error_estimate",
                diagnosis,
                hline=(q_width, "Q range allowed by rewards") if q_width is not None else None,
            ),
            _missing(records, "q_error_estimate"),
            "An estimated Q error comparable to the Q range allowed by the rewards means the Q-values carry "
            "little information."
            + ("" if q_width is not None else " (No diagnosis yet, so the Q range is not drawn.)"),
        ),
        _figure(
            "Training losses",
            _loss_figure(records, diagnosis),
            "No train/* losses recorded in metrics.jsonl.",
            "Averages of the training losses between checkpoints.",
        ),
    ]
    if "model" in (diagnosis or {}) or any("model_mse" in r for r in records):
        figs += _model_figures(records, diagnosis)
    return figs


def _model_figures(records: list[dict], diagnosis: dict | None) -> list[dict[str, Any]]:
    """MOPO/COMBO: the dynamics model's held-out error, NLL, k-step error and reward error."""
    m = (diagnosis or {}).get("model") or {}
    verdict = f" Model verdict: {m['verdict']}: {m['reason']}. {m['recommendation']}." if m else ""
    if m.get("reward_warning"):
        verdict += f" Warning: {m['reward_warning']}."
    return [
        _figure("The dynamics model: held-out error (its validation loss)",
                _metric_figure(records, "model_mse", "model_mse: one-step error of the ensemble's means (normalised "
                               "units)", diagnosis, log_if_positive=True),
                _missing(records, "model_mse"),
                "MOPO/COMBO: the model's one-step squared error on training and held-out transitions, at every "
                "checkpoint. Rising held-out error while training error falls is the model overfitting; the policy "
                "rolls out each member's snapshot of lowest held-out error." + verdict),
        _figure("The dynamics model: negative log-likelihood",
                _metric_figure(records, "model_nll", "model_nll: Gaussian NLL per output (nats, up to a constant)",
                               diagnosis),
                _missing(records, "model_nll"),
                "The ensemble's training objective (PETS Eq. 2) on training and held-out transitions: unlike the "
                "squared error it also scores the predicted variances, which MOPO's penalty is built from. A "
                "held-out NLL that rises while the training one falls is the variances memorising the data."),
        _figure("The dynamics model: k-step rollout error",
                _metric_figure(records, "model_rollout_mse", "model_rollout_mse: open-loop k-step error",
                               diagnosis, log_if_positive=True),
                _missing(records, "model_rollout_mse"),
                "The elites' mean prediction fed back k times under the data's actions, against the real "
                "trajectory: the compounding error the policy's rollouts see."),
        _figure("The dynamics model: reward error where the data is rewarded",
                _metric_figure(records, "model_reward_mse_rewarded", "model_reward_mse_rewarded: squared error of "
                               "the predicted reward on transitions with a non-zero reward", diagnosis),
                _missing(records, "model_reward_mse_rewarded"),
                "With sparse rewards the model's error on the few rewarded transitions is what decides whether its "
                "rollouts pay for success: a value near the reward squared (1 for 0/1 rewards) means the model "
                "predicts almost none of it, however low the one-step error on all transitions is."),
    ]


def report_context(
    run_dir: Path,
    config: dict,
    records: list[dict],
    diagnosis: dict | None,
    diag_err: str | None,
    evaluation: dict | None,
    eval_err: str | None,
    actors: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything templates/report.html.j2 lays out, computed from the run's files (numbers, strings and base64
    figures; no markup). ``actors``: the other actor's evaluation (:func:`_actors`), None without one."""
    # MinAtar runs are scored by returns, not successes: their evaluation has a table of its own, and the success
    # overlays of the figures are left out.
    returns = evaluation if (evaluation or {}).get("metric") == "return" else None
    if returns is not None:
        evaluation, actors = None, None
    return {
        "name": run_dir.resolve().name or str(run_dir),
        "run_dir": str(run_dir),
        "summary": _summary(config, records),
        "verdict": _verdict(diagnosis, diag_err),
        "check": _check(run_dir),
        "returns": _returns(returns, diagnosis) if returns is not None else None,
        "comparison": _comparison(evaluation, diagnosis, config, actors) if evaluation is not None else None,
        "success_overlay": evaluation is not None,
        "actors": None if actors is None else {"caption": actors["caption"]},
        "eval_missing": _not_run("Evaluation (optional, analysis only)", EVALUATE_COMMAND, eval_err),
        "figures": _figures(records, diagnosis, evaluation, config, actors),
        "evidence": _evidence(diagnosis, diag_err),
        "config_rows": _config_rows(config),
        "version_rows": _version_rows(config),
        "commands": {"check": CHECK_COMMAND},
    }


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write a self-contained HTML report for ``run_dir``; returns the path written.

    The default output is ``run_dir/report.html``. Only files inside ``run_dir`` are read. The
    file is written atomically (a temporary file next to it, then a rename).
    Raises FileNotFoundError if ``config.json`` or ``metrics.jsonl`` is missing or
    ``metrics.jsonl`` has no complete record yet.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"run directory {run_dir} not found (run directories are created by `{TRAIN_COMMAND}`)"
        )
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} not found: is {run_dir} a run directory? "
            f"config.json is written by `{TRAIN_COMMAND}` when a run starts"
        )
    config, err = _read_json(config_path)
    if config is None:
        raise ValueError(f"{err}: cannot build a report for {run_dir}")
    records = _by_step(load_metrics(run_dir))
    if not records:
        raise FileNotFoundError(
            f"{run_dir / 'metrics.jsonl'} has no complete record yet: `{TRAIN_COMMAND}` "
            "appends one at every checkpoint; wait for the first checkpoint"
        )
    diagnosis, diag_err = _read_json(run_dir / "diagnosis.json")
    evaluation, eval_err = _read_json(run_dir / "evaluation.json")
    actors = _actors(run_dir, config, evaluation)

    context = report_context(run_dir, config, records, diagnosis, diag_err, evaluation, eval_err, actors)
    text = render("report.html.j2", context)

    out_path = Path(out) if out is not None else run_dir / "report.html"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_path, text)
    return out_path


def write_comparison_report(out_dir: str | Path, runs: dict[str, str | Path], decision: dict | None = None) -> Path:
    """OUT_DIR/report.html: several runs side by side (q_data, TD error, CQL regularizer, srank; training and
    held-out) and the automated workflow's decision path, like the paper's Figure 1. Reads only the runs'
    metrics.jsonl and diagnosis.json files; written atomically.

    Args:
        out_dir: folder of the comparison.
        runs: display name -> run directory.
        decision: ``{"path": [...], "reasons": [...]}`` from :func:`offrl.workflow.auto.decide`.
    """
    out_dir = Path(out_dir)
    records = {name: _by_step(load_metrics(run)) for name, run in runs.items()}
    rows = []
    for name, run in runs.items():
        diag, _ = _read_json(Path(run) / "diagnosis.json")
        rows.append({"name": name, "dir": str(run), "verdict": (diag or {}).get("verdict", "-"),
                     "selected": str((diag or {}).get("selected_step", "-"))})
    context = {
        "name": out_dir.name,
        "path": list((decision or {}).get("path", [])),
        "reasons": list((decision or {}).get("reasons", [])),
        "figure": _runs_figure(records),
        "rows": rows,
    }
    out = out_dir / "report.html"
    atomic_write_text(out, render("comparison.html.j2", context))
    return out
