"""Table of docs/default-job.md from studies/default-job/*/diagnosis.json (analysis-only fields), and the
pre-registered rule applied to it. Usage: python studies/default_job_table.py [RUNS_DIR] [--json OUT]"""
import json
import sys
from pathlib import Path

# The archive (committed) holds each run's diagnosis.json, evaluation.json, metrics.jsonl and config.json.
ROOT = Path(sys.argv[1]) if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else Path("studies/archive/default-job")


def fmt(r):
    if r is None:
        return "-"
    lo, hi = r["ci95"]
    step = f" (step {r['step']:,})" if r.get("step") is not None else ""
    return f"{r['successes']}/{r['episodes']} [{lo:.0%}, {hi:.0%}]{step}"


rows = {}
for diag in sorted(ROOT.glob("D*_s[0-9]/diagnosis.json")):
    d = json.loads(diag.read_text())
    a = d.get("analysis_only")
    if not a:
        continue
    cand, seed = diag.parent.name.split("_s")
    rows.setdefault(cand, {})[int(seed)] = {**a, "verdict": d["verdict"]}
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
    primary = {k: a for k, a in seeds.items() if k in (0, 1, 2)}
    mean_sel = sum(a["selected"]["success_rate"] for a in primary.values()) / max(len(primary), 1)
    passes = len(primary) == 3 and all(ok[k] for k in primary)
    # the replication of an addendum candidate (docs/default-job.md): seeds 3-5, selected >= data on 2 of 3
    rep = [a["selected"]["success_rate"] >= a["behaviour"]["success_rate"] for k, a in seeds.items() if k >= 3]
    out[cand] = {"seeds": sorted(seeds), "passes": passes, "mean_selected": mean_sel,
                 "replication_at_or_above_data": f"{sum(rep)}/{len(rep)}" if rep else None}
print()
for cand, r in out.items():
    rep = f"; seeds 3-5: selected at or above the data on {r['replication_at_or_above_data']}" \
        if r["replication_at_or_above_data"] else ""
    print(f"{cand}: mean selected success on seeds 0-2 {r['mean_selected']:.2f}, "
          f"{'passes' if r['passes'] else 'does not pass'} the rule{rep}")
passing = [c for c, r in out.items() if r["passes"]]
print("default:", max(passing, key=lambda c: out[c]["mean_selected"]) if passing else "D0 stays (no candidate passes)")
if "--json" in sys.argv:
    Path(sys.argv[sys.argv.index("--json") + 1]).write_text(json.dumps({"rows": rows, "rule": out}, indent=1))
