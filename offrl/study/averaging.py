"""Does a Polyak-averaged actor stop the deployed policy from jumping? The analysis pre-registered in docs/selection.md,
"Averaged actors (pre-registered)" (issue 45), applied mechanically to studies/averaged-actor.toml.

Per run, from the analysis-only evaluation of every candidate checkpoint (80 episodes, recorded one by one):

* **jumps**: neighbouring candidates whose success over all episodes differs by at least 0.3, beside what binomial
  noise alone predicts for the run (:func:`expected_jumps`);
* **the last checkpoint**: its normalised regret on half B of the episodes, halves swapped and averaged (undefined
  when every candidate scores alike), and its absolute success over all episodes;
* **the best checkpoint**: the oracle's success (best on half A, scored on B, swapped and averaged).

Each slice pairs an averaged run with a raw one of the same task, data and seed: the CQL slice with the archived dev
cell (:data:`PAIRED_ARCHIVE`, setting ``base``: not retrained), the default-job slice within the study. Every metric is
reported as the paired difference (averaged - raw) with a cluster bootstrap over tasks, then runs
(:func:`offrl.stats.cluster_bootstrap_mean`, 10,000 resamples, seed 0), and the slice's reading is
:func:`reading`. Nothing here reads a success rate to choose anything but the reported answer.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from offrl.study.selectors import candidates, evaluate_selectors

JUMP = 0.3
"""A jump: neighbouring checkpoints' success differs by at least this much (docs/selection.md)."""
MAX_JUMPY_SHARE = 0.2
MAX_LAST_REGRET = 0.25
PAIRED_ARCHIVE = "studies/archive/dev"
"""Where the CQL slice's raw runs are: the dev grid's archived cells (setting ``base``), pre-registered."""
RAW_SETTINGS = {"base-averaged": "base", "iql-sparse-averaged": "iql-sparse-decayed"}
"""Each averaged setting of studies/averaged-actor.toml and the raw setting it is paired with."""
SLICE_OF = {"base-averaged": "CQL (the dev grid's setting, averaged vs the archived dev cells)",
            "iql-sparse-averaged": "the default job (iql-sparse, averaged vs raw, trained side by side)"}


def jump_probability(p: float, n: int, jump: float = JUMP) -> float:
    """``P(|X - Y| / n >= jump)`` for independent X, Y ~ Binomial(n, p): how often evaluation noise alone makes two
    equally good checkpoints, each rolled out ``n`` episodes, look ``jump`` apart. Exact (the (n+1)^2 outcomes)."""
    from scipy.stats import binom

    pmf = binom.pmf(np.arange(n + 1), n, float(p))
    gap = np.abs(np.subtract.outer(np.arange(n + 1), np.arange(n + 1)))
    # |X - Y| / n >= jump, with a tolerance so that 24 / 80 counts as 0.3 despite floating point.
    return float(pmf @ (gap >= math.ceil(jump * n - 1e-9)).astype(float) @ pmf)


def jumps(cell: dict[str, Any], jump: float = JUMP) -> dict[str, float]:
    """``{"jumps": count, "expected": binomial expectation}`` over the run's neighbouring candidates. The
    expectation sums :func:`jump_probability` over the pairs, each at the pair's pooled success."""
    cps = candidates(cell)
    count, expected = 0, 0.0
    for a, b in zip(cps[:-1], cps[1:], strict=True):
        sa, sb = a["successes"] / a["episodes"], b["successes"] / b["episodes"]
        count += abs(sa - sb) >= jump - 1e-9
        n = min(int(a["episodes"]), int(b["episodes"]))
        expected += jump_probability((a["successes"] + b["successes"]) / (a["episodes"] + b["episodes"]), n, jump)
    return {"jumps": int(count), "expected": expected, "checkpoints": len(cps)}


def run_metrics(cell: dict[str, Any]) -> dict[str, Any]:
    """The pre-registered per-run numbers (module docstring) of one finished cell."""
    sel = evaluate_selectors(cell)
    last = candidates(cell)[-1]
    return {**jumps(cell), "last_regret": sel["last"]["regret"], "last_success": float(last["success_rate"]),
            "best_success": sel.get("oracle", {}).get("success")}


def _key(cell: dict[str, Any]) -> tuple[Any, ...]:
    c = cell["cell"]
    return c["task"], c.get("regime"), int(c["episodes"]), int(c["seed"])


def pair_cells(averaged: list[dict[str, Any]], raw: list[dict[str, Any]]) -> tuple[list[tuple[dict, dict]], list[str]]:
    """Pairs ``(averaged, raw)`` of the same task, regime, episodes and seed, and the problems found: an averaged run
    without a raw partner, or a partner whose data differ (transitions, episodes or behaviour success: the archived
    dev cells hold no dataset fingerprint, so these stand in for it). A pair whose data differ is reported, not
    paired."""
    by_key = {_key(c): c for c in raw}
    pairs, problems = [], []
    for a in averaged:
        r = by_key.get(_key(a))
        if r is None:
            problems.append(f"{'/'.join(map(str, _key(a)))}: no raw run to pair with")
            continue
        da, dr = a.get("dataset") or {}, r.get("dataset") or {}
        differ = [k for k in ("transitions", "episodes", "behaviour_success_rate") if da.get(k) != dr.get(k)]
        if differ:
            problems.append(f"{'/'.join(map(str, _key(a)))}: the data differ ({', '.join(differ)}); not paired")
            continue
        pairs.append((a, r))
    return pairs, problems


def same_training(a: dict[str, Any], r: dict[str, Any]) -> float | None:
    """The largest difference of q_data between the pair's common checkpoints, as a share of the Q range's width:
    0 when the averaged run trained the very same critic as its partner (the average reads the actor, never changes
    it), larger when code or platform changed the training itself. None without common checkpoints."""
    qa = {c["step"]: c.get("q_data") for c in a["checkpoints"]}
    qr = {c["step"]: c.get("q_data") for c in r["checkpoints"]}
    common = [s for s in qa if s in qr and qa[s] is not None and qr[s] is not None]
    if not common:
        return None
    lo, hi = a.get("q_range") or [0.0, 1.0]
    return float(max(abs(qa[s] - qr[s]) for s in common) / max(float(hi) - float(lo), 1e-12))


def slice_analysis(pairs: list[tuple[dict, dict]], samples: int = 10_000) -> dict[str, Any]:
    """Every pre-registered number of one slice, and its reading (:func:`reading`)."""
    from offrl.stats import cluster_bootstrap_mean

    tasks = [a["cell"]["task"] for a, _ in pairs]
    rows = [(run_metrics(a), run_metrics(r)) for a, r in pairs]

    def stat(values: list[float | None]) -> dict[str, Any]:
        out = cluster_bootstrap_mean(values, tasks, samples)
        per: dict[str, float | None] = {}
        for t in sorted(set(tasks)):
            v = [x for x, tt in zip(values, tasks, strict=True) if tt == t and x is not None]
            per[t] = float(np.mean(v)) if v else None
        return {**out, "per_task": per}

    def diff(key: str) -> dict[str, Any]:
        return stat([None if m[key] is None or n[key] is None else m[key] - n[key] for m, n in rows])

    out: dict[str, Any] = {"runs": len(pairs)}
    for side, i in (("averaged", 0), ("raw", 1)):
        out[side] = {k: stat([row[i][k] for row in rows]) for k in ("jumps", "expected", "last_regret",
                                                                       "last_success", "best_success")}
        out[side]["share_with_a_jump"] = (float(np.mean([row[i]["jumps"] > 0 for row in rows])) if rows else None)
        out[side]["undefined_last_regret"] = sum(row[i]["last_regret"] is None for row in rows)
    out["difference"] = {k: diff(k) for k in ("jumps", "last_regret", "last_success", "best_success")}
    out["same_training"] = [same_training(a, r) for a, r in pairs]
    out["reading"] = reading(out)
    return out


def reading(s: dict[str, Any]) -> dict[str, Any]:
    """docs/selection.md's reading, fixed before the runs: ``{"answer": "default" | "off" | "open" | "undecided",
    "conditions": {1..5: bool}, "reason"}``.

    (1) the paired difference in jump counts has its 95 % interval entirely below 0; (2) at most 20 % of the averaged
    runs have a jump; (3) the averaged last checkpoint's mean normalised regret is at most 0.25; (4) the paired
    difference in the last checkpoint's success has an interval not entirely below 0 and a mean >= 0; (5) the paired
    difference in the best checkpoint's success has an interval not entirely below 0. ``default``: all five.
    ``off``: (1) fails with a mean >= 0, or the interval of (4) or (5) lies entirely below 0. ``open`` otherwise."""
    d = s["difference"]
    if any(d[k].get("ci") is None for k in ("jumps", "last_success", "best_success")):
        return {"answer": "undecided", "conditions": {}, "reason": "fewer than 2 pairs: no intervals"}
    below = {k: d[k]["ci"][1] < 0 for k in ("jumps", "last_success", "best_success")}
    last_regret = s["averaged"]["last_regret"]["mean"]
    cond = {1: below["jumps"],
            2: s["averaged"]["share_with_a_jump"] <= MAX_JUMPY_SHARE,
            3: last_regret is not None and last_regret <= MAX_LAST_REGRET,
            4: not below["last_success"] and d["last_success"]["mean"] >= 0,
            5: not below["best_success"]}
    if all(cond.values()):
        answer = "default"
    elif (not cond[1] and d["jumps"]["mean"] >= 0) or below["last_success"] or below["best_success"]:
        answer = "off"
    else:
        answer = "open"
    failed = [str(k) for k, ok in cond.items() if not ok]
    return {"answer": answer, "conditions": cond,
            "reason": "all five conditions hold" if not failed else f"condition(s) {', '.join(failed)} fail"}


def _ci(x: dict[str, Any] | None, fmt: str = ".2f") -> str:
    if not x or x.get("mean") is None:
        return "–"
    ci = x.get("ci")
    return f"{x['mean']:{fmt}}" + (f" [{ci[0]:{fmt}}, {ci[1]:{fmt}}]" if ci else "") + f" (n={x['n']})"


def averaging_lines(study_cells: list[dict[str, Any]], samples: int = 10_000,
                    archive: str = PAIRED_ARCHIVE) -> list[str]:
    """The results page's section for a study with averaged actors (settings of :data:`RAW_SETTINGS`); empty when
    the study has none. The CQL slice's raw runs are read from ``archive``."""
    from pathlib import Path

    from offrl.study.pack import iter_archived_cells

    averaged = {s: [c for c in study_cells if c["cell"]["setting"] == s] for s in RAW_SETTINGS}
    if not any(averaged.values()):
        return []
    L = ["\n## Averaged actors: the pre-registered comparison (docs/selection.md, \"Averaged actors\")\n",
         f"Per slice, the paired difference averaged - raw (mean [95 % cluster interval over tasks, then runs], per-task "
         f"means in the table's last column); a jump is a change of at least {JUMP} in success between neighbouring "
         f"checkpoints, beside the count binomial noise alone predicts. Reading applied mechanically "
         f"(offrl.study.averaging.reading).\n"]
    for setting, cells in averaged.items():
        if not cells:
            continue
        raw_setting = RAW_SETTINGS[setting]
        if setting == "base-averaged":
            source = [c for _, c in iter_archived_cells(Path(archive)) if c["cell"]["setting"] == raw_setting] \
                if Path(archive).is_dir() else []
        else:
            source = [c for c in study_cells if c["cell"]["setting"] == raw_setting]
        pairs, problems = pair_cells(cells, source)
        L.append(f"\n### {SLICE_OF[setting]}: {len(pairs)} pairs\n")
        for p in problems:
            L.append(f"- {p}")
        if not pairs:
            continue
        s = slice_analysis(pairs, samples)
        L += ["| per run | averaged | raw | averaged - raw | per task (difference) |", "|---|---|---|---|---|"]
        names = {"jumps": "jumps (count)", "expected": "jumps binomial noise predicts", "last_regret":
                 "last checkpoint: normalised regret", "last_success": "last checkpoint: success",
                 "best_success": "best checkpoint (oracle): success"}
        for k, name in names.items():
            d = s["difference"].get(k)
            per = ", ".join(f"{t} {v:.2f}" for t, v in (d or {}).get("per_task", {}).items() if v is not None)
            fmt = ".2g" if k == "expected" else ".2f"  # binomial noise predicts about 1e-3 jumps a run
            L.append(f"| {name} | {_ci(s['averaged'][k], fmt)} | {_ci(s['raw'][k], fmt)} | {_ci(d)} | {per} |")
        L.append(f"\nRuns with at least one jump: averaged {s['averaged']['share_with_a_jump']:.2f}, raw "
                 f"{s['raw']['share_with_a_jump']:.2f} (target: at most {MAX_JUMPY_SHARE}). Last checkpoint's regret "
                 f"undefined (every candidate alike): averaged {s['averaged']['undefined_last_regret']}, raw "
                 f"{s['raw']['undefined_last_regret']}.")
        same = [x for x in s["same_training"] if x is not None]
        if same:
            L.append(f"Same training as the partner (largest q_data difference over the Q range's width): "
                     f"{max(same):.2g} at most over {len(same)} pairs (0: the critic is the partner's, the pair "
                     f"differs by the average alone).")
        r = s["reading"]
        word = {"default": "averaging becomes the default (decay 0.999)", "off": "averaging stays off: it did not help",
                "open": "open: the pre-registered widening applies", "undecided": "not decidable yet"}[r["answer"]]
        marks = ", ".join(f"({k}) {'yes' if v else 'no'}" for k, v in r["conditions"].items())
        L.append(f"\n**Reading: {word}** ({r['reason']}; {marks}).\n")
        missed = []
        if s["averaged"]["share_with_a_jump"] > MAX_JUMPY_SHARE:
            missed.append(f"jumps in more than {MAX_JUMPY_SHARE:.0%} of runs")
        if (s["averaged"]["last_regret"]["mean"] or 0) > MAX_LAST_REGRET:
            missed.append(f"the last averaged checkpoint more than {MAX_LAST_REGRET} from the best")
        if missed:
            L.append("Targets missed: " + "; ".join(missed) + ".\n")
    return L
