"""What offrl can say about how far to trust its pick: the selector's measured record on the dev grid.

The numbers come from the dev grid of docs/selection.md (`offrl study studies/dev.toml`, results in
docs/results.md). They are written into ``offrl/workflow/measured.json`` (shipped with the package) from the
study's analysis by ``python -m offrl.workflow.trust STUDY/analysis.json``, whenever the grid is rerun or has
grown; nothing here reads a run's analysis-only success. A run whose task, regime, dataset size or algorithm
lies outside the grid is told so: the record then says little about it.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Any

GRID = {
    "tasks": ("pick-place-v3", "drawer-open-v3", "button-press-v3", "lever-pull-v3"),
    "regimes": ("correlated", "mixed"),
    "episodes": (100, 300),
    "algos": ("cql",),
    "obs": ("state",),
}
"""The dev grid (studies/dev.toml)."""

MEASURED_FILE = Path(__file__).with_name("measured.json")
# The study's selector names -> the rule names of offrl.workflow.rules that diagnosis.json reports; the other
# selectors are named alike. measured.json files written before the rules were named say "after_peak".
_SELECTOR_NAMES = {"workflow": "q_peak", "workflow_after_peak": "q_after_peak"}
_LEGACY_NAMES = {"after_peak": "q_after_peak"}


def load_measured(path: Path = MEASURED_FILE) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The per-selector records and the record's source (``{"study", "runs", "cells_total", "written"}``) from
    measured.json; empty dicts when there is none yet."""
    if not path.is_file():
        return {}, {}
    raw = json.loads(path.read_text())
    selectors = {_LEGACY_NAMES.get(k, k): v for k, v in raw.get("selectors", {}).items()}
    return selectors, dict(raw.get("source", {}))


MEASURED, SOURCE = load_measured()
"""Per selector: ``{"regret": mean normalised regret, "regret_ci": [lo, hi], "within_0_1": share of runs whose
pick was within 0.1 of the best, "n": runs}``; and where the numbers come from. Empty until the dev grid has
run (docs/results.md)."""


def measured_from_analysis(analysis: dict[str, Any], study: str) -> dict[str, Any]:
    """The content of measured.json from a study's analysis.json (:func:`offrl.study.selectors.analyse`)."""
    selectors = {}
    for name, h in analysis["headline"].items():
        regret, within = h["regret"], h.get("within_0.1") or {}
        if regret["mean"] is None:
            continue
        selectors[_SELECTOR_NAMES.get(name, name)] = {
            "regret": regret["mean"], "regret_ci": regret["ci"] or [regret["mean"], regret["mean"]],
            "within_0_1": within.get("mean"), "n": regret["n"],
        }
    return {
        "source": {"study": study, "runs": analysis["runs"], "cells_total": analysis.get("cells_total"),
                   "written": datetime.date.today().isoformat()},
        "selectors": selectors,
    }


def trust_statement(selector: str, config: dict[str, Any]) -> dict[str, Any]:
    """The record of ``selector`` on the dev grid and where this run lies outside it.

    Args:
        selector: The rule that picked the checkpoint (``q_peak`` for Guideline 3.1).
        config: The run's config.json.

    Returns:
        ``{"selector", "measured" (None or the MEASURED entry), "outside_grid" (list of reasons, empty when the
        run is like the grid's), "statement" (one sentence)}``.
    """
    dataset = config.get("dataset") or {}
    meta = dataset.get("metadata") or {}
    outside = []
    algo = config.get("algo", "cql")
    if algo not in GRID["algos"]:
        outside.append(f"algorithm {algo} (the grid trained {', '.join(GRID['algos'])})")
    obs = dataset.get("obs_mode", "state")
    if obs not in GRID["obs"]:
        outside.append(f"{obs} observations (the grid used states)")
    regime = meta.get("regime")
    if regime not in GRID["regimes"]:
        outside.append(f"data {'of regime ' + regime if regime else 'not collected by offrl'} (the grid used the "
                       f"{' and '.join(GRID['regimes'])} regimes)")
    task = meta.get("task")
    if task not in GRID["tasks"]:
        outside.append(f"task {task or 'unknown'} (not a dev task)")
    episodes = dataset.get("num_episodes")
    if episodes is not None and not min(GRID["episodes"]) <= int(episodes) <= max(GRID["episodes"]):
        outside.append(f"{episodes} episodes (the grid used {min(GRID['episodes'])}-{max(GRID['episodes'])})")
    measured = MEASURED.get(selector)
    if measured is None:
        statement = (f"The selector ({selector}) has not yet been measured on the dev grid (studies/dev.toml, "
                     f"docs/selection.md): no regret can be quoted for it.")
    else:
        within = measured.get("within_0_1")
        statement = (f"On the dev grid the selector's normalised regret was {measured['regret']:.2f} "
                     f"[{measured['regret_ci'][0]:.2f}, {measured['regret_ci'][1]:.2f}]"
                     + (f" and its pick was within 0.1 of the best checkpoint in {within:.0%}" if within is not None
                        else "") + f" of {measured['n']} runs.")
        total, runs = SOURCE.get("cells_total"), SOURCE.get("runs")
        if total and runs is not None and runs < total:
            statement += f" The grid is not finished ({runs} of {total} runs): these numbers are provisional."
    if outside:
        statement += " This run lies outside what was measured: " + "; ".join(outside) + "."
    return {"selector": selector, "measured": measured, "outside_grid": outside, "statement": statement}


def main(argv: list[str] | None = None) -> int:
    """``python -m offrl.workflow.trust STUDY/analysis.json [OUT]``: write measured.json from a study's analysis."""
    args = sys.argv[1:] if argv is None else argv
    if not args or not Path(args[0]).is_file():
        print("usage: python -m offrl.workflow.trust STUDY/analysis.json [OUT] (analysis.json from `offrl study`)",
              file=sys.stderr)
        return 2
    analysis = json.loads(Path(args[0]).read_text())
    out = Path(args[1]) if len(args) > 1 else MEASURED_FILE
    from offrl.training.run_dir import atomic_write_text

    atomic_write_text(out, json.dumps(measured_from_analysis(analysis, str(Path(args[0]).parent)), indent=1) + "\n")
    print(f"wrote {out} from {args[0]} ({analysis['runs']} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
