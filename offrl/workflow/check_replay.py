"""Validation of the robot check by replay of archived per-episode outcomes (docs/selection.md, "The robot check").

    python -m offrl.workflow.check_replay studies/archive/dev studies/archive/algorithms \\
        studies/archive/model-based studies/archive/combo-weight studies/archive/mopo-real-ratio \\
        --out docs/results-check.md

For every Q-based run of every archive, the candidates' analysis-only evaluation episodes are split into halves
A (even indices) and B (odd). The check (:mod:`offrl.workflow.allocation`, the code ``offrl check`` runs) draws
its episodes without replacement from half A, in a fresh random order per repetition, and its pick is scored on
half B; then the halves swap. The evaluation episodes are the analysis-only ground truth here: the rules read
them only as the "robot's" answers to the episodes they ask for, exactly what a user would record. Budget 0 is
the offline rules of :mod:`offrl.study.selectors`, scored on the same halves; the noise floor is the oracle that
picks on all of half A. Intervals: 95% percentile cluster bootstrap, resampling tasks and then runs within them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from offrl.study.config import NO_Q_ALGOS
from offrl.study.selectors import CANDIDATES, candidates, evaluate_selectors
from offrl.workflow.allocation import RULES, Arms, make_rule, prob_best, summarise
from offrl.workflow.rules import rule_scores

BUDGETS = (10, 20, 50, 100)
ANYTIME = ("uniform", "thompson", "top_two_thompson", "offline_prior")  # allocation does not depend on the budget
ADAPTIVE = ("successive_halving", "thompson", "top_two_thompson", "offline_prior")
OFFLINE = ("workflow", *CANDIDATES, "last", "heldout_td")
PRIOR_RULES = ("q_peak_fitted", "q_peak_in_range")  # offline_prior's scores, first available (pre-registered)
DEFAULT_REPS = 100
SUMMARY_SAMPLES = 200  # posterior draws per interval in the replay, for speed (4,000 in `offrl check`)
EARLY_STOP_EVERY, EARLY_STOP_SAMPLES, EARLY_STOP_CONFIDENCE = 5, 500, 0.95


def load_archive(folder: str | Path) -> list[dict[str, Any]]:
    """The archive's Q-based cells whose every candidate recorded its episodes (``episode_successes``, >= 4)."""
    from offrl.study.pack import iter_archived_cells

    cells = []
    for _, cell in iter_archived_cells(folder):  # packed (cells.jsonl) and loose <cell>.json files
        if "checkpoints" not in cell or cell.get("algo", "cql") in NO_Q_ALGOS:
            continue
        cps = candidates(cell)
        if len(cps) >= 2 and all(len(c.get("episode_successes") or []) >= 4 for c in cps):
            cells.append(cell)
    return cells


def prior_scores(cell: dict[str, Any]) -> np.ndarray | None:
    """``offline_prior``'s scores over the candidates: the first of PRIOR_RULES that has them (offline only)."""
    cps = candidates(cell)
    offline = [{k: v for k, v in c.items() if k not in ("successes", "episodes", "success_rate", "episode_successes")}
               for c in cps]
    rules = rule_scores(offline, cell.get("q_range") or [0.0, 1.0])
    for name in PRIOR_RULES:
        scores = rules[name][1]
        if scores is not None and np.isfinite(scores).any():
            return np.asarray(scores, float)
    return None


def _regret(succ: np.ndarray, pick: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # (K,) held-out success, (R,) picks -> normalised (NaN when every candidate ties) and absolute regret, (R,).
    best, worst = succ.max(), succ.min()
    absolute = best - succ[pick]
    return (absolute / (best - worst) if best > worst else np.full(len(pick), np.nan)), absolute


def _simulate(rule_name: str, budget: int, stops: tuple[int, ...], pool: np.ndarray, lens: np.ndarray,
              prior: np.ndarray | None, rng: np.random.Generator, early_stop: bool = False) -> dict[int, Any]:
    """Run ``R`` replayed checks of one rule on one half; ``pool`` ``(R, K, L)`` is each repetition's order of
    the half's outcomes per arm (``lens`` ``(K,)`` valid). Returns ``{stop: (arms, picks)}`` at each budget in
    ``stops`` (with ``early_stop``: ``{budget: (arms, picks, episodes used)}``)."""
    reps, k, _ = pool.shape
    rule = make_rule(rule_name, budget, prior_scores=prior, positions=np.arange(k))
    counts = np.zeros((reps, k), np.int64)
    sums = np.zeros((reps, k))
    rows = np.arange(reps)
    out: dict[int, Any] = {}
    stopped = np.zeros(reps, bool)
    used = np.full(reps, budget)
    for t in range(budget + 1):
        arms = Arms(counts.copy(), sums.copy(), counts < lens[None, :])
        if t in stops:
            out[t] = (arms, rule.recommend(arms, rng))
        if early_stop and t > 0 and t % EARLY_STOP_EVERY == 0 and t < budget:
            pick = rule.recommend(arms, rng)
            done = ~stopped & (prob_best(arms, rng, EARLY_STOP_SAMPLES)[rows, pick] >= EARLY_STOP_CONFIDENCE)
            used = np.where(done, t, used)
            stopped |= done
        if t == budget:
            break
        arm = rule.propose(arms, rng)
        live = ~stopped & (counts[rows, arm] < lens[arm])  # an arm whose half is used up records nothing
        outcome = pool[rows, arm, np.minimum(counts[rows, arm], pool.shape[2] - 1)]
        counts[rows, arm] += live
        sums[rows, arm] += np.where(live, outcome, 0.0)
    if early_stop:
        arms = Arms(counts, sums)
        return {budget: (arms, rule.recommend(arms, rng), used)}
    return out


def replay_run(cell: dict[str, Any], reps: int, seed: int, rules: tuple[str, ...] = tuple(RULES),
               early_stop_rule: str | None = None) -> dict[str, Any]:
    """Every rule's replayed check on one run, averaged over repetitions and both ways round.

    Returns:
        ``{"rules": {rule: {budget: {"regret", "abs_regret", "coverage", "width", "estimate_minus_heldout"}}},
        "offline": {selector: {"regret", "abs_regret"}}, "early_stop": {...} or None}``; budget 0 is each anytime
        rule's pick before any trial. Normalised regret is NaN where every candidate ties on both halves.
    """
    cps = candidates(cell)
    k = len(cps)
    eps = [np.asarray(c["episode_successes"], float) for c in cps]
    halves = [[e[0::2] for e in eps], [e[1::2] for e in eps]]
    prior = prior_scores(cell)
    acc: dict[str, dict[int, dict[str, list[float]]]] = {}
    early: dict[str, list[float]] = {"regret": [], "abs_regret": [], "episodes": [], "coverage": []}
    for way in (0, 1):
        pick_half, score_half = halves[way], halves[1 - way]
        lens = np.array([len(h) for h in pick_half])
        width = int(lens.max())
        padded = np.zeros((k, width))
        for i, h in enumerate(pick_half):
            padded[i, : len(h)] = h
        succ = np.array([h.mean() for h in score_half])
        base = np.random.default_rng([seed, way])
        keys = base.random((reps, k, width))
        keys[:, np.arange(width)[None, :] >= lens[:, None]] = np.inf  # padding sorts last
        order = np.argsort(keys, axis=2)
        pool = np.take_along_axis(np.broadcast_to(padded, (reps, k, width)), order, axis=2)
        for ri, name in enumerate(rules):
            runs = [(max(BUDGETS), (0, *BUDGETS))] if name in ANYTIME else [(b, (b,)) for b in BUDGETS]
            for budget, stops in runs:
                rng = np.random.default_rng([seed, way, ri, budget])
                for stop, (arms, pick) in _simulate(name, budget, stops, pool, lens, prior, rng).items():
                    reg, absr = _regret(succ, pick)
                    sm = summarise(arms, pick, rng, samples=SUMMARY_SAMPLES)
                    held = succ[pick]
                    d = acc.setdefault(name, {}).setdefault(stop, {k_: [] for k_ in
                                                                     ("regret", "abs_regret", "coverage", "width",
                                                                      "estimate_minus_heldout")})
                    d["regret"].append(float(np.mean(reg)))
                    d["abs_regret"].append(float(np.mean(absr)))
                    d["coverage"].append(float(np.mean((sm["low"] <= held + 1e-12) & (held <= sm["high"] + 1e-12))))
                    d["width"].append(float(np.mean(sm["high"] - sm["low"])))
                    d["estimate_minus_heldout"].append(float(np.mean(sm["estimate"] - held)))
        if early_stop_rule is not None:
            budget = max(BUDGETS)
            rng = np.random.default_rng([seed, way, 99])
            (arms, pick, used), = _simulate(early_stop_rule, budget, (budget,), pool, lens, prior, rng,
                                            early_stop=True).values()
            reg, absr = _regret(succ, pick)
            sm = summarise(arms, pick, rng, samples=SUMMARY_SAMPLES)
            held = succ[pick]
            early["regret"].append(float(np.mean(reg)))
            early["abs_regret"].append(float(np.mean(absr)))
            early["episodes"].append(float(np.mean(used)))
            early["coverage"].append(float(np.mean((sm["low"] <= held + 1e-12) & (held <= sm["high"] + 1e-12))))
    rules_out = {name: {b: {key: _nanmean(v) for key, v in d.items()} for b, d in per.items()}
                 for name, per in acc.items()}
    sel = evaluate_selectors(cell)
    offline = {name: {"regret": _num(sel[name]["regret"]), "abs_regret": _num(sel[name]["abs_regret"])}
               for name in (*OFFLINE, "random", "oracle") if name in sel}
    return {"rules": rules_out, "offline": offline,
            "early_stop": {key: _nanmean(v) for key, v in early.items()} if early_stop_rule else None}


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _nanmean(v: list[float]) -> float:
    a = np.asarray(v, float)
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def cluster_bootstrap(values: np.ndarray, clusters: list[str], samples: int = 10_000, seed: int = 0,
                      confidence: float = 0.95) -> dict[str, Any]:
    """Mean of per-run ``values`` (NaN: undefined, left out) with a two-stage percentile bootstrap interval over
    the clusters (tasks), then the runs within them: :func:`offrl.stats.cluster_bootstrap_mean`.

    Returns:
        ``{"mean": float or None, "ci": [low, high] or None, "n": runs with a value, "clusters"}``.
    """
    from offrl.stats import cluster_bootstrap_mean

    return cluster_bootstrap_mean(list(np.asarray(values, float)), list(clusters), samples, seed, confidence)


def analyse_archive(cells: list[dict[str, Any]], reps: int, samples: int, seed: int = 0,
                    early_stop_rule: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Every number of one archive's tables (see the module docstring)."""
    per_run = []
    for i, cell in enumerate(cells):
        t = time.perf_counter()
        per_run.append(replay_run(cell, reps, seed + 1000 * i, early_stop_rule=early_stop_rule))
        if progress:
            print(f"  [{i + 1}/{len(cells)}] {cell['cell']['task']} s{cell['cell']['seed']} {cell.get('algo', 'cql')}"
                  f" ({time.perf_counter() - t:.1f} s)", file=sys.stderr, flush=True)
    tasks = [c["cell"]["task"] for c in cells]

    def boot(vals: list[float]) -> dict[str, Any]:
        return cluster_bootstrap(np.asarray(vals, float), tasks, samples, seed)

    def col(name: str, budget: int, key: str) -> np.ndarray:
        if name in RULES:
            return np.array([r["rules"][name].get(budget, {}).get(key, np.nan) for r in per_run])
        return np.array([r["offline"][name][key] for r in per_run])

    offline_means = {n: np.nanmean(col(n, 0, "regret")) for n in OFFLINE}
    best_offline = min(offline_means, key=lambda n: offline_means[n])
    out: dict[str, Any] = {"runs": len(cells), "tasks": sorted(set(tasks)), "best_offline": best_offline,
                           "reps": reps, "per_run": per_run}
    out["reference"] = {n: {"regret": boot(col(n, 0, "regret")), "abs_regret": boot(col(n, 0, "abs_regret"))}
                        for n in (*OFFLINE, "random", "oracle")}
    table: dict[str, dict[int, Any]] = {}
    for name in RULES:
        for b in ((0, *BUDGETS) if name in ANYTIME else BUDGETS):
            reg = col(name, b, "regret")
            row = {"regret": boot(reg), "abs_regret": boot(col(name, b, "abs_regret")),
                   "coverage": boot(col(name, b, "coverage")), "width": float(np.nanmean(col(name, b, "width"))),
                   "bias": float(np.nanmean(col(name, b, "estimate_minus_heldout"))),
                   "minus_random": boot(reg - col("random", 0, "regret")),
                   "minus_best_offline": boot(reg - col(best_offline, 0, "regret"))}
            if b > 0:
                row["minus_uniform"] = boot(reg - col("uniform", b, "regret"))
                diffs = {n: boot(reg - col(n, 0, "regret")) for n in OFFLINE}
                row["below_every_offline"] = all(d["ci"] is not None and d["ci"][1] < 0 for d in diffs.values())
                row["worst_offline_upper"] = max((d["ci"][1] for d in diffs.values() if d["ci"] is not None),
                                                 default=None)
            table.setdefault(name, {})[b] = row
    out["table"] = table
    if early_stop_rule is not None:
        es = [r["early_stop"] for r in per_run]
        out["early_stop"] = {"rule": early_stop_rule, "budget": max(BUDGETS),
                             **{k: boot([e[k] for e in es]) for k in ("regret", "abs_regret", "episodes", "coverage")}}
    return out


def default_allocation(dev: dict[str, Any]) -> dict[str, Any]:
    """The pre-registered decision (docs/selection.md): the adaptive rule whose paired regret difference to
    ``uniform`` has a 95% interval below 0 at both 20 and 50 episodes on dev (the lowest mean at 50 if several);
    else ``uniform``."""
    ok = [n for n in ADAPTIVE if all((ci := dev["table"][n][b]["minus_uniform"]["ci"]) is not None and ci[1] < 0
                                     for b in (20, 50))]
    if not ok:
        return {"default": "uniform", "qualifying": [],
                "reason": "no adaptive rule's paired regret difference to uniform has a 95% interval below 0 at "
                          "both 20 and 50 episodes on dev: uniform stays the default"}
    best = min(ok, key=lambda n: dev["table"][n][50]["regret"]["mean"])
    return {"default": best, "qualifying": ok,
            "reason": f"{best}'s paired regret difference to uniform is below 0 at 20 and 50 episodes on dev"
                      + (f" (of {len(ok)} qualifying, the lowest mean regret at 50)" if len(ok) > 1 else "")}


def _fmt(b: dict[str, Any] | None, signed: bool = False) -> str:
    if not b or b.get("mean") is None:
        return "-"
    f = "{:+.2f}" if signed else "{:.2f}"
    ci = b.get("ci")
    return f.format(b["mean"]) + (f" [{f.format(ci[0])}, {f.format(ci[1])}]" if ci else "")


def markdown(results: dict[str, dict[str, Any]], decision: dict[str, Any], command: str, seconds: float) -> str:
    """The results page, docs/results-check.md."""
    lines = [
        "# The robot check: allocation rules replayed on the archived grids",
        "",
        "Generated by `" + command + "` "
        f"({seconds / 60:.1f} min on one core). Protocol and decision rule pre-registered in docs/selection.md "
        "(\"The robot check\"), committed before this replay ran. Each check draws its episodes without replacement "
        "from half A of every candidate's archived evaluation episodes and its pick is scored on half B (then the "
        "halves swap); budget 0 is the offline rules on the same halves. Means over runs with 95% cluster-bootstrap "
        "intervals (tasks, then runs within them). Rules tried: "
        f"{len(RULES)} ({', '.join(RULES)}); no fork since the pre-registration.",
        "",
        f"**Default allocation rule** (decided on dev, pre-registered): `{decision['default']}`: {decision['reason']}.",
        "",
    ]
    for name, res in results.items():
        best = res["best_offline"]
        ref = res["reference"]
        lines += [f"## {name} ({res['runs']} Q-based runs, {len(res['tasks'])} tasks; {res['reps']} repetitions "
                  f"per run and way round)", ""]
        head = "| rule | " + " | ".join(f"{b} episodes" for b in (0, *BUDGETS)) + " |"
        sep = "|---" * (len(BUDGETS) + 2) + "|"
        for key, title in (("regret", "Normalised regret"), ("abs_regret", "Absolute regret (success)")):
            lines += [f"**{title}** of the deployed checkpoint on the held-out half (lower is better):", "",
                      head, sep]
            for rule in RULES:
                cells = [_fmt(res["table"][rule].get(b, {}).get(key)) if b in res["table"][rule] else "-"
                         for b in (0, *BUDGETS)]
                lines.append(f"| `{rule}` | " + " | ".join(cells) + " |")
            for label, n in ((f"best offline rule (`{best}`)", best), ("random checkpoint", "random"),
                             ("noise floor (oracle on half A)", "oracle")):
                lines.append(f"| {label} | {_fmt(ref[n][key])} | " + " | ".join("" for _ in BUDGETS) + " |")
            lines.append("")
        lines += ["**Paired differences of normalised regret** (per run, rule minus reference; below 0: the rule is "
                  "better). `every offline`: the paired interval to each of the "
                  f"{len(OFFLINE)} offline rules lies below 0 (the largest upper bound in brackets).", "",
                  "| rule | episodes | − uniform | − random | − best offline | every offline |", "|---|---|---|---|---|---|"]
        for rule in RULES:
            for b in BUDGETS:
                row = res["table"][rule][b]
                up = row["worst_offline_upper"]
                lines.append(f"| `{rule}` | {b} | {_fmt(row['minus_uniform'], True)} | "
                             f"{_fmt(row['minus_random'], True)} | {_fmt(row['minus_best_offline'], True)} | "
                             f"{'yes' if row['below_every_offline'] else 'no'}"
                             f"{f' ({up:+.2f})' if up is not None else ''} |")
        lines += ["", "**Coverage of the reported 90% interval** (share of checks whose interval holds the deployed "
                  "checkpoint's held-out success; that success is itself a noisy half of the episodes), with the "
                  "mean interval width and the mean estimate minus the held-out success (the winner's curse left "
                  "after shrinkage):", "", "| rule | " + " | ".join(f"{b} episodes" for b in BUDGETS) + " |",
                  "|---" * (len(BUDGETS) + 1) + "|"]
        for rule in RULES:
            lines.append(f"| `{rule}` | " + " | ".join(
                f"{_fmt(res['table'][rule][b]['coverage'])}; width {res['table'][rule][b]['width']:.2f}, bias "
                f"{res['table'][rule][b]['bias']:+.2f}" for b in BUDGETS) + " |")
        if res.get("early_stop"):
            es = res["early_stop"]
            lines += ["", f"**Early stop** (secondary): `{es['rule']}` with budget {es['budget']}, stopping when "
                      f"P(best) >= {EARLY_STOP_CONFIDENCE} (checked every {EARLY_STOP_EVERY} episodes): episodes "
                      f"used {_fmt(es['episodes'])}, normalised regret {_fmt(es['regret'])}, absolute "
                      f"{_fmt(es['abs_regret'])}, coverage {_fmt(es['coverage'])}."]
        lines += ["", "Offline rules at budget 0 (normalised regret): " + ", ".join(
            f"`{n}` {_fmt(ref[n]['regret'])}" for n in OFFLINE) + ".", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m offrl.workflow.check_replay ARCHIVE [ARCHIVE ...] [--out PAGE] [--reps R] [--samples S]``."""
    p = argparse.ArgumentParser(prog="python -m offrl.workflow.check_replay", description=__doc__.split("\n")[0])
    p.add_argument("archives", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=Path("docs/results-check.md"))
    p.add_argument("--json", type=Path, default=None, help="also write every number as JSON")
    p.add_argument("--reps", type=int, default=DEFAULT_REPS)
    p.add_argument("--samples", type=int, default=10_000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    dev_name = None
    for folder in args.archives:
        cells = load_archive(folder)
        if not cells:
            print(f"{folder}: no Q-based run with per-episode outcomes; skipped", file=sys.stderr)
            continue
        print(f"{folder}: {len(cells)} runs", file=sys.stderr)
        results[folder.name] = analyse_archive(cells, args.reps, args.samples, args.seed)
        dev_name = dev_name or folder.name
    if not results:
        raise SystemExit("no archive with per-episode outcomes")
    first = results["dev"] if "dev" in results else results[dev_name]
    decision = default_allocation(first)
    for folder in args.archives:  # the secondary early-stop row, for the chosen default
        if folder.name in results:
            cells = load_archive(folder)
            es = [replay_run(c, max(args.reps // 2, 10), args.seed + 1000 * i, rules=(),
                             early_stop_rule=decision["default"])["early_stop"] for i, c in enumerate(cells)]
            tasks = [c["cell"]["task"] for c in cells]
            results[folder.name]["early_stop"] = {
                "rule": decision["default"], "budget": max(BUDGETS),
                **{k: cluster_bootstrap(np.array([e[k] for e in es]), tasks, args.samples, args.seed)
                   for k in ("regret", "abs_regret", "episodes", "coverage")}}
    command = "python -m offrl.workflow.check_replay " + " ".join(str(a) for a in args.archives) + \
        (f" --reps {args.reps}" if args.reps != DEFAULT_REPS else "") + f" --out {args.out}"
    text = markdown(results, decision, command, time.perf_counter() - t0)
    from offrl.training.run_dir import atomic_write_text

    atomic_write_text(args.out, text)
    if args.json:
        slim = {k: {kk: vv for kk, vv in v.items() if kk != "per_run"} for k, v in results.items()}
        atomic_write_text(args.json, json.dumps({"decision": decision, "results": slim}, indent=1, default=str))
    print(f"wrote {args.out} ({(time.perf_counter() - t0) / 60:.1f} min)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
