"""Analysis only: the selected checkpoint beside the data, behaviour cloning, the best and the last checkpoint.

Computed from evaluation.json *after* the selection was made (issue "Trust, part 1": say it side by side);
nothing that diagnoses or selects reads it. Kept apart from :mod:`offrl.workflow.evaluate` (which rolls out
checkpoints in a simulator) so that the offline diagnosis can attach it without importing the simulator or the
training stack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from offrl.stats import wilson_interval
from offrl.training import run_dir as rd
from offrl.training.run_dir import DIAGNOSIS_FILE, EVALUATION_FILE


def _row(step: int | None, successes: int, episodes: int) -> dict[str, Any]:
    lo, hi = wilson_interval(successes, episodes)
    return {"step": step, "success_rate": successes / episodes if episodes else None, "successes": int(successes),
            "episodes": int(episodes), "ci95": [lo, hi]}


def analysis_only_comparison(
    evaluation: dict[str, Any], selected_step: int | None, warmup_steps: int, dataset_metadata: dict[str, Any],
    bc_evaluation: dict[str, Any] | None = None, bc_selected_step: int | None = None, warmup_is_bc: bool = True,
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
        warmup_is_bc: whether the checkpoints within ``warmup_steps`` are behaviour-cloning policies (CQL's warm
            start); False for a warm-up that is not (BEAR's MMD-only start, MOPO's and COMBO's model phase, whose
            actor is untrained): ``best_warm_start`` is then None rather than a row named after BC.

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
        "best_warm_start": best(rows, [s for s in rows if s <= warmup_steps]) if warmup_is_bc else None,
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
    run_dir = Path(run_dir)
    if not (run_dir / DIAGNOSIS_FILE).is_file() or not (run_dir / EVALUATION_FILE).is_file():
        return None

    if rd.read_json(run_dir / EVALUATION_FILE).get("metric") == "return":
        return None  # MinAtar scores, not success rates: the success rows have nothing to compare
    diagnosis = rd.read_json(run_dir / DIAGNOSIS_FILE)
    cfg = rd.load_run_config(run_dir)
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
        rd.warmup_steps(cfg.get("algo", "cql"), cfg.get("agent", {})),
        cfg["dataset"].get("metadata", {}), bc_eval, bc_step,
        warmup_is_bc=cfg.get("algo", "cql") == "cql",  # rd.WARMUP_PHASE: only CQL's warm start is BC
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
