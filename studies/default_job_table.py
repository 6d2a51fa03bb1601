"""Table of docs/default-job.md from studies/default-job/*/diagnosis.json (analysis-only fields), and the
pre-registered rule applied to it. D4 and D5 (addendum 2) are D3's runs scored with the selectors
``q_peak_in_range`` and ``q_peak_fitted`` (offrl.workflow.rules, on each run's metrics.jsonl), their pick's success
read from evaluation.json; they are judged on seeds 6-8, and D3's runs on the other dev tasks
(CAND_sSEED_TASK) are the addendum's sanity check.
Usage: .venv/bin/python studies/default_job_table.py [RUNS_DIR] [--json OUT]"""
import json
import math
import sys
from pathlib import Path

from offrl.stats import wilson_interval
from offrl.training import run_dir as rd
from offrl.workflow.rules import select_step

# The archive (committed) holds each run's diagnosis.json, evaluation.json, metrics.jsonl and config.json, packed in
# runs.jsonl (offrl.study.pack): unpacked into a temporary folder to be read as run directories.
ROOT = Path(sys.argv[1]) if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else Path("studies/archive/default-job")
if (ROOT / "runs.jsonl").is_file():
    import tempfile

    from offrl.study.pack import unpack_runs

    _unpacked = Path(tempfile.mkdtemp(prefix="default-job-"))
    unpack_runs(ROOT, _unpacked)
    ROOT = _unpacked


def fmt(r):
    if r is None:
        return "-"
    lo, hi = r["ci95"]
    step = f" (step {r['step']:,})" if r.get("step") is not None else ""
    return f"{r['successes']}/{r['episodes']} [{lo:.0%}, {hi:.0%}]{step}"


# candidate -> (the runs it is scored on, the selector that replaces theirs): addendum 2 (D4, D5 on D3's runs)
# and addendum 3 (D8: D7's runs with the paper's Q peak)
RESCORED = {"D4": ("D3", "q_peak_in_range"), "D5": ("D3", "q_peak_fitted"), "D8": ("D7", "q_peak")}
# candidate -> its judging seeds (fresh datasets; addenda 2, 2b, 3); the rest are judged on seeds 0-2
FRESH_SEEDS = {"D4": (6, 7, 8), "D5": (6, 7, 8), "D6": (6, 7, 8), "D7": (9, 10, 11), "D8": (9, 10, 11),
               "D9": (12, 13, 14), "D10": (12, 13, 14),
               "D11": (15, 16, 17), "D12": (18, 19, 20)}
FRESH = tuple(FRESH_SEEDS)


def rescored(run: Path, selector: str, a: dict) -> dict:
    """``a`` (a run's analysis_only summary) with ``selected`` replaced by ``selector``'s pick on the same run."""
    cfg = rd.read_json(run / rd.CONFIG_FILE)
    warm = rd.warmup_steps(cfg.get("algo", "cql"), cfg.get("agent", {}))
    records = sorted((r for r in rd.read_metrics(run) if "step" in r and "q_data" in r and not r.get("diverged")
                      and int(r["step"]) > warm), key=lambda r: int(r["step"]))
    step = select_step(selector, records, cfg["dataset"]["q_range"])
    ev = next(r for r in rd.read_json(run / "evaluation.json")["results"] if int(r["step"]) == step)
    return {**a, "selected": {"step": step, "success_rate": ev["success_rate"], "successes": ev["successes"],
                              "episodes": ev["episodes"], "ci95": list(wilson_interval(ev["successes"], ev["episodes"]))}}


rows, sanity = {}, {}
for diag in sorted(ROOT.glob("D*_s[0-9]*/diagnosis.json")):
    d = json.loads(diag.read_text())
    a = d.get("analysis_only")
    if not a or diag.parent.name.endswith("_bc"):
        continue
    cand, rest = diag.parent.name.split("_s", 1)
    seed, _, task = rest.partition("_")
    for c in [cand] + [k for k, (base, _) in RESCORED.items() if base == cand]:
        entry = {**(rescored(diag.parent, RESCORED[c][1], a) if c in RESCORED else a), "verdict": d["verdict"]}
        (sanity.setdefault(task, {}) if task else rows).setdefault(c, {})[int(seed)] = entry
print("| candidate | seed | verdict | data | BC best | selected (Q peak) | best | last | >= data and > BC best |")
print("|---|---|---|---|---|---|---|---|---|")
out = {}
for cand, seeds in sorted(rows.items()):
    ok = {}
    for seed, a in sorted(seeds.items()):
        sel = a["selected"]["success_rate"]
        ok[seed] = p = sel >= a["behaviour"]["success_rate"] and sel > a["bc_best"]["success_rate"]
        b = a["behaviour"]
        print(f"| {cand} | {seed} | {a['verdict']} | {b['success_rate']:.0%} [{b['ci95'][0]:.0%}, {b['ci95'][1]:.0%}] "
              f"| {fmt(a['bc_best'])} | {fmt(a['selected'])} | {fmt(a['best'])} | {fmt(a['last'])} | {'yes' if p else 'no'} |")
    # D4/D5 are judged on the fresh seeds 6-8; seeds 0-5 were seen before addendum 2 (retrospective)
    primary = {k: a for k, a in seeds.items() if k in FRESH_SEEDS.get(cand, (0, 1, 2))}
    mean_sel = sum(a["selected"]["success_rate"] for a in primary.values()) / max(len(primary), 1)
    passes = len(primary) == 3 and all(ok[k] for k in primary)
    # the replication of an addendum candidate (docs/default-job.md): seeds 3-5, selected >= data on 2 of 3
    rep = [a["selected"]["success_rate"] >= a["behaviour"]["success_rate"] for k, a in seeds.items()
           if 3 <= k <= 5 and cand not in FRESH]
    out[cand] = {"seeds": sorted(seeds), "passes": passes, "mean_selected": mean_sel,
                 "replication_at_or_above_data": f"{sum(rep)}/{len(rep)}" if rep else None}
print()
for cand, r in out.items():
    rep = f"; seeds 3-5: selected at or above the data on {r['replication_at_or_above_data']}" \
        if r["replication_at_or_above_data"] else ""
    js = FRESH_SEEDS.get(cand, (0, 1, 2))
    judged = f"{min(js)}-{max(js)}"
    print(f"{cand}: mean selected success on seeds {judged} {r['mean_selected']:.2f}, "
          f"{'passes' if r['passes'] else 'does not pass'} the rule{rep}")
if sanity:
    print("\nSanity check (addenda 2, 3): seed 0 of the other dev tasks (D7/D8: mixed data)")
    print("| task | candidate | verdict | data | BC best | selected | best | last | selected >= data |")
    print("|---|---|---|---|---|---|---|---|---|")
    for task, cands in sorted(sanity.items()):
        for cand, seeds in sorted(cands.items()):
            for _seed, a in sorted(seeds.items()):
                b = a["behaviour"]
                print(f"| {task} | {cand} | {a['verdict']} | {b['success_rate']:.0%} | {fmt(a['bc_best'])} | "
                      f"{fmt(a['selected'])} | {fmt(a['best'])} | {fmt(a['last'])} | "
                      f"{'yes' if a['selected']['success_rate'] >= b['success_rate'] else 'no'} |")
    for cand in FRESH:
        n = sum(seeds[s]["selected"]["success_rate"] >= seeds[s]["behaviour"]["success_rate"]
                for cands in sanity.values() for c, seeds in cands.items() if c == cand for s in seeds)
        tasks = sum(cand in cands for cands in sanity.values())
        if cand in out:
            out[cand]["sanity"] = f"{n}/{tasks}"
            out[cand]["passes"] = out[cand]["passes"] and tasks == 3 and n >= 2
        print(f"{cand}: at or above the data on {n} of {tasks} other tasks (needs 2 of 3)")
passing = [c for c, r in out.items() if r["passes"]]
print("default:", max(passing, key=lambda c: out[c]["mean_selected"]) if passing else "D0 stays (no candidate passes)")
if "--json" in sys.argv:
    Path(sys.argv[sys.argv.index("--json") + 1]).write_text(
        json.dumps({"rows": rows, "sanity": sanity, "rule": out}, indent=1))

# Evaluation noise (descriptive, addendum 3): are the checkpoints after step 5,000 of one CQL run distinguishable
# by their 20 episodes each? Pearson's chi-square test of one common success rate on the 2 x K table of successes
# and failures; dispersion = chi2 / dof (1 = binomial noise alone). And the noise floor of the rule: the chance
# that a pick whose true success equals the run's pooled rate clears the data's point estimate on 20 episodes.
NOISE_RUNS = ("D3", "D7", "D10")  # the CQL candidates' own runs (the others are rescorings or other algorithms)
if "--noise" in sys.argv:
    from scipy import stats

    print("\n| run | checkpoints | pooled success | dispersion | p (one rate) | P(pick >= data) |")
    print("|---|---|---|---|---|---|")
    tot_chi = tot_dof = 0.0
    for ev_file in sorted(ROOT.glob("D*_s[0-9]*/evaluation.json")):
        if ev_file.parent.name.endswith("_bc") or ev_file.parent.name.split("_s", 1)[0] not in NOISE_RUNS:
            continue
        res = [r for r in rd.read_json(ev_file)["results"] if int(r["step"]) >= 5000]
        k = [r["successes"] for r in res]
        n = [r["episodes"] for r in res]
        p = sum(k) / sum(n)
        if not 0 < p < 1:
            continue
        chi, pval, dof, _ = stats.chi2_contingency([k, [ni - ki for ki, ni in zip(k, n, strict=True)]], correction=False)
        tot_chi, tot_dof = tot_chi + chi, tot_dof + dof
        data = rd.read_json(ev_file.parent / "diagnosis.json")["analysis_only"]["behaviour"]["success_rate"]
        need = math.ceil(data * n[0] - 1e-9)
        print(f"| {ev_file.parent.name} | {len(k)} | {p:.2f} | {chi / dof:.2f} | {pval:.3f} | "
              f"{stats.binom.sf(need - 1, n[0], p):.2f} |")
    print(f"all runs: dispersion {tot_chi / tot_dof:.2f}, p = {stats.chi2.sf(tot_chi, tot_dof):.2g}")
