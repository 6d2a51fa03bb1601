"""Behaviour success of every regime (`offrl collect --regime`) on the dev tasks; prints one JSON object.

    python benchmarks/regimes.py [--episodes 100] [--seed 0] [--tasks pick-place-v3 ...] [--markdown]

Each cell collects ``--episodes`` episodes in memory (nothing is written) and reports the fraction with a
success, its 95 % Wilson interval and, for ``mixed``, the rate of each episode kind. docs/dataset-format.md
shows the table this prints with ``--markdown``.
"""

from __future__ import annotations

import argparse
import json
import time

from offrl.envs import collect_episodes
from offrl.envs.behaviour import REGIMES
from offrl.stats import wilson_interval

DEV_TASKS = ("pick-place-v3", "drawer-open-v3", "button-press-v3", "lever-pull-v3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="+", default=list(DEV_TASKS))
    parser.add_argument("--markdown", action="store_true", help="also print the docs table")
    args = parser.parse_args()
    results: dict[str, dict[str, dict]] = {}
    for regime in REGIMES:
        for task in args.tasks:
            t = time.perf_counter()
            _, info = collect_episodes(task, args.episodes, seed=args.seed, progress=False, regime=regime)
            k = round(info["behaviour_success_rate"] * args.episodes)
            results.setdefault(regime, {})[task] = {
                "success_rate": info["behaviour_success_rate"],
                "ci95": list(wilson_interval(k, args.episodes)),
                "by_kind": info.get("behaviour_success_by_kind"),
                "seconds": round(time.perf_counter() - t, 1),
            }
    print(json.dumps({"episodes": args.episodes, "seed": args.seed, "results": results}, indent=1))
    if args.markdown:
        print("| regime | " + " | ".join(args.tasks) + " |")
        print("|---" * (len(args.tasks) + 1) + "|")
        for regime, row in results.items():
            cells = [f"{r['success_rate']:.0%} [{r['ci95'][0]:.0%}, {r['ci95'][1]:.0%}]" for r in row.values()]
            print(f"| `{regime}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
