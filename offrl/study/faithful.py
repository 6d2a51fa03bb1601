"""MOPO, COMBO and BEAR measured again as their sources define them: the analysis pre-registered in docs/selection.md,
"Faithful methods, measured again" (issue 43), applied mechanically to studies/faithful.toml and
studies/model-based-dense.toml.

Per run (one seed per cell, so every statement is per task, with Wilson intervals on the evaluation episodes):

* **the pick**: the success (all episodes) of the checkpoint the run's own workflow picks (its diagnosis:
  Guideline 3.1 on its Q curve, after the model phase for MOPO and COMBO; BC the peak of its held-out
  log-likelihood);
* **the best checkpoint**: best on episodes A (even), scored on B (odd), halves swapped and averaged;
* **learns at all**: some candidate succeeds in at least 10 % of its episodes (8 of 80);
* **value sanity**: the last checkpoint's q_data inside the data's Q bounds widened by 10 % of their width;
* **BEAR's constraint**: the last ``mmd`` against epsilon, the multiplier against its ceiling ``e^log_alpha_max``;

each beside the earlier implementation's number on the same data (its archived cell) and BC's pick on the same data.
The method's reading is :func:`method_reading`. No number here chooses a default.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from offrl.stats import wilson_interval
from offrl.study.selectors import candidates, cell_name, evaluate_selectors, selector_scores

LEARNS = 0.10
"""A checkpoint "learns" when it succeeds in at least this share of its episodes (8 of 80)."""
BC_MARGIN = 0.10
VALUE_SLACK = 0.10
TASKS_NEEDED = 3
"""Of the 4 tasks: "learns here" and "fails here" each need this many."""
READ = ("mopo", "combo", "bear")
"""The methods the pre-registered reading is about; a grid's other methods (CQL on the dense reward) are references."""
GRIDS = {
    "faithful": {"methods": ("mopo", "combo", "bear"),
                 "earlier": {"mopo": "studies/archive/model-based", "combo": "studies/archive/model-based",
                             "bear": "studies/archive/algorithms"},
                 "bc": {"mopo": "studies/archive/model-based", "combo": "studies/archive/model-based",
                        "bear": "studies/archive/algorithms"}},
    "model-based-dense": {"methods": ("mopo", "combo", "cql"), "earlier": {}, "bc": {}},
}
"""The pre-registered comparisons, by the study's archive folder name: which methods are read, where the earlier
implementation's cells and BC's cells on the same data are (``{}``: none archived; BC is then the study's own)."""


def run_numbers(cell: dict[str, Any]) -> dict[str, Any]:
    """The per-run numbers of the module docstring for one finished cell."""
    cps = candidates(cell)
    pick = selector_scores(cell)["workflow"]["step"]
    at = {c["step"]: c for c in cps}
    chosen = at.get(pick, cps[-1])
    oracle = evaluate_selectors(cell).get("oracle", {})
    last = cps[-1]
    lo, hi = (float(x) for x in (cell.get("q_range") or [0.0, 1.0]))
    slack = VALUE_SLACK * (hi - lo)
    q_last = last.get("q_data")
    out = {
        "pick_step": chosen["step"],
        "pick": chosen["successes"] / chosen["episodes"],
        "pick_ci": wilson_interval(int(chosen["successes"]), int(chosen["episodes"])),
        "best": oracle.get("success"),
        "learns": any(c["successes"] >= math.ceil(LEARNS * c["episodes"] - 1e-9) for c in cps),
        "q_last": q_last,
        "value_sane": None if q_last is None else bool(lo - slack <= q_last <= hi + slack),
    }
    if cell.get("algo") == "bear":
        agent = cell.get("agent") or {}
        eps, ceiling = agent.get("epsilon"), math.exp(float(agent.get("log_alpha_max", 10.0)))
        mmd, alpha = last.get("mmd"), last.get("alpha")
        out["bear"] = {"mmd": mmd, "epsilon": eps, "alpha": alpha, "ceiling": ceiling,
                       "met": None if mmd is None or eps is None else bool(mmd <= float(eps)),
                       "at_ceiling": None if alpha is None else bool(alpha >= 0.99 * ceiling)}
    return out


def _same_data(a: dict[str, Any], b: dict[str, Any]) -> bool:
    da, db = a.get("dataset") or {}, b.get("dataset") or {}
    return all(da.get(k) == db.get(k) for k in ("transitions", "episodes", "behaviour_success_rate"))


def _partner(cell: dict[str, Any], pool: list[dict[str, Any]], setting: str) -> dict[str, Any] | None:
    """The cell of ``pool`` with ``setting`` on the same task, regime, size and seed, if its data match."""
    c = cell["cell"]
    for other in pool:
        o = other["cell"]
        if (o["task"], o.get("regime"), o["episodes"], o["seed"], o["setting"]) == \
                (c["task"], c.get("regime"), c["episodes"], c["seed"], setting) and _same_data(cell, other):
            return other
    return None


def method_reading(rows: list[dict[str, Any]]) -> dict[str, str]:
    """docs/selection.md's reading for one method and reward, from its per-task rows (``numbers`` of the run and
    ``bc`` the BC pick on the same data or None): ``{"answer": "learns here" | "fails here" | "mixed", "reason"}``.

    *Learns here*: in at least 3 of the 4 tasks the best checkpoint's success is at least 0.10 and the pick's success
    at least BC's pick minus 0.10. *Fails here*: in at least 3 of the 4 tasks no checkpoint reaches 0.10. *Mixed*
    otherwise (also when BC's pick is missing on a task, which then does not count towards "learns here")."""
    learns = sum(1 for r in rows if (r["numbers"]["best"] or 0.0) >= LEARNS and r["bc"] is not None
                 and r["numbers"]["pick"] >= r["bc"] - BC_MARGIN)
    fails = sum(1 for r in rows if not r["numbers"]["learns"])
    if learns >= TASKS_NEEDED:
        return {"answer": "learns here", "reason": f"{learns} of {len(rows)} tasks: best >= {LEARNS} and the pick "
                                                   f"within {BC_MARGIN} of BC's or above"}
    if fails >= TASKS_NEEDED:
        return {"answer": "fails here", "reason": f"{fails} of {len(rows)} tasks: no checkpoint reaches {LEARNS}"}
    return {"answer": "mixed", "reason": f"learns on {learns}, no checkpoint reaches {LEARNS} on {fails}, of "
                                         f"{len(rows)} tasks"}


def _archived(folder: str) -> list[dict[str, Any]]:
    from offrl.study.pack import iter_archived_cells

    return [c for _, c in iter_archived_cells(Path(folder))] if Path(folder).is_dir() else []


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def faithful_lines(study_cells: list[dict[str, Any]], archive: Path | str | None) -> list[str]:
    """The results page's section for the two pre-registered grids (:data:`GRIDS`, by the study's archive folder
    name); empty for any other study."""
    grid = GRIDS.get(Path(archive).name) if archive is not None else None
    if grid is None:
        return []
    L = ["\n## Measured again: the pre-registered reading (docs/selection.md, \"Faithful methods, measured again\")\n",
         "One seed per cell: per task, success over the 80 analysis-only episodes with its 95 % Wilson interval; "
         "*best* is the checkpoint best on half A scored on half B (halves swapped and averaged); *earlier* the same "
         "numbers of offrl's earlier implementation on the same data (its archived cell); *BC* BC's pick on the same "
         "data. Reading applied mechanically (offrl.study.faithful.method_reading).\n"]
    for method in grid["methods"]:
        cells = sorted((c for c in study_cells if c.get("algo") == method), key=lambda c: c["cell"]["task"])
        if not cells:
            continue
        earlier_pool = _archived(grid["earlier"][method]) if method in grid["earlier"] else []
        bc_pool = _archived(grid["bc"][method]) if method in grid["bc"] else study_cells
        rows = []
        bear = method == "bear"
        L += [f"\n### {method.upper()}\n",
              "| task | pick [95 % CI] | best | learns (>= 0.10) | last q_data (sane) | earlier: pick / best | BC pick |"
              + (" mmd / epsilon, alpha at ceiling | earlier mmd |" if bear else ""),
              "|---|---|---|---|---|---|---|" + ("---|---|" if bear else "")]
        for cell in cells:
            n = run_numbers(cell)
            old = _partner(cell, earlier_pool, cell["cell"]["setting"])
            old_n = run_numbers(old) if old is not None else None
            bc = _partner(cell, bc_pool, "bc")
            bc_pick = run_numbers(bc)["pick"] if bc is not None else None
            rows.append({"task": cell["cell"]["task"], "numbers": n, "bc": bc_pick})
            lo, hi = n["pick_ci"]
            earlier = "–" if old_n is None else f"{old_n['pick']:.2f} / {_pct(old_n['best'])}"
            line = (f"| {cell['cell']['task']} | {n['pick']:.2f} [{lo:.2f}, {hi:.2f}] | {_pct(n['best'])} | "
                    f"{'yes' if n['learns'] else 'no'} | {_pct(n['q_last'])} ({'yes' if n['value_sane'] else 'no'}) | "
                    f"{earlier} | {_pct(bc_pick)} |")
            if bear:
                b = n["bear"]
                old_mmd = (old_n or {}).get("bear", {}).get("mmd")
                line += (f" {_pct(b['mmd'])} / {b['epsilon']}, {'yes' if b['at_ceiling'] else 'no'} | "
                         f"{_pct(old_mmd)} |")
            L.append(line)
            if old is None and earlier_pool:
                L.append(f"  (no earlier cell on the same data for {cell_name(cell)})")
        if method in READ:
            r = method_reading(rows)
            L.append(f"\n**{method.upper()}: {r['answer']}** ({r['reason']}).")
        else:
            L.append(f"\n{method.upper()} is a reference here: no reading was pre-registered for it.")
        sane = [x["numbers"]["value_sane"] for x in rows if x["numbers"]["value_sane"] is not None]
        if method == "combo":
            ok = bool(sane) and all(sane) and len(sane) == len(rows)
            L.append(f"COMBO's value is {'sane' if ok else 'not sane'}: the last q_data inside the widened bounds in "
                     f"{sum(sane)} of {len(rows)} runs (all needed).")
        if bear:
            met = sum(bool(x["numbers"]["bear"]["met"]) for x in rows)
            L.append(f"BEAR's constraint is {'met' if met >= TASKS_NEEDED else 'not met'}: the last mmd at most "
                     f"epsilon in {met} of {len(rows)} runs ({TASKS_NEEDED} needed).")
        L.append("")
    return L
