"""Table of docs/default-job.md from studies/default-job/*/diagnosis.json (analysis-only fields), and the
pre-registered rule applied to it. Usage: python studies/default_job_table.py [--json OUT]"""
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


rows, verdicts = {}, {}
for diag in sorted(ROOT.glob("D*_s[0-9]/diagnosis.json")):
    d = json.loads(diag.read_text())
    a = d.get("analysis_only")
    if not a:
        continue
    cand, seed = diag.parent.name.split("_s")
    rows.setdefault(cand, {})[int(seed)] = {**a, "verdict": d["verdict"]}
print("| candidate | seed | verdict | data | BC best | selected (Q peak) | best | last | passes |")
print("|---|---|---|---|---|---|---|---|---|")
out = {}
for cand, seeds in sorted(rows.items()):
    ok = []
    for seed, a in sorted(seeds.items()):
        sel = a["selected"]["success_rate"]
        p = sel >= a["behaviour"]["success_rate"] and sel > a["bc_best"]["success_rate"]
        ok.append(p)
        b = a["behaviour"]
        print(f"| {cand} | {seed} | {a['verdict']} | {b['success_rate']:.0%} [{b['ci95'][0]:.0%}, {b['ci95'][1]:.0%}] "
              f"| {fmt(a['bc_best'])} | {fmt(a['selected'])} | {fmt(a['best'])} | {fmt(a['last'])} | {'yes' if p else 'no'} |")
    mean_sel = sum(a["selected"]["success_rate"] for a in seeds.values()) / len(seeds)
    out[cand] = {"seeds": sorted(seeds), "passes": len(ok) == 3 and all(ok), "mean_selected": mean_sel}
print()
for cand, r in out.items():
    print(f"{cand}: {len(r['seeds'])} seeds, mean selected success {r['mean_selected']:.2f}, "
          f"{'passes' if r['passes'] else 'does not pass'} the rule")
passing = [c for c, r in out.items() if r["passes"]]
print("default:", max(passing, key=lambda c: out[c]["mean_selected"]) if passing else "D0 stays (no candidate passes)")
if "--json" in sys.argv:
    Path(sys.argv[sys.argv.index("--json") + 1]).write_text(json.dumps({"rows": rows, "rule": out}, indent=1))
