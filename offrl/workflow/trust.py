"""What offrl can say about how far to trust its pick: the selector's measured record on the dev grid.

The numbers come from the dev grid of docs/selection.md (`offrl study studies/dev.toml`, results in
docs/results.md) and are copied into :data:`MEASURED` by hand when the grid is rerun; nothing here reads a
run's analysis-only success. A run whose task, regime, dataset size or algorithm lies outside the grid is
told so: the record then says little about it.
"""

from __future__ import annotations

from typing import Any

GRID = {
    "tasks": ("pick-place-v3", "drawer-open-v3", "button-press-v3", "lever-pull-v3"),
    "regimes": ("correlated", "mixed"),
    "episodes": (100, 300),
    "algos": ("cql",),
    "obs": ("state",),
}
"""The dev grid (studies/dev.toml)."""

MEASURED: dict[str, dict[str, Any]] = {}
"""Per selector: ``{"regret": mean normalised regret, "regret_ci": [lo, hi], "within_0_1": share of runs whose
pick was within 0.1 of the best, "n": runs}``. Empty until the dev grid has run (docs/results.md)."""


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
        statement = (f"On the dev grid the selector's normalised regret was {measured['regret']:.2f} "
                     f"[{measured['regret_ci'][0]:.2f}, {measured['regret_ci'][1]:.2f}] and its pick was within "
                     f"0.1 of the best checkpoint in {measured['within_0_1']:.0%} of {measured['n']} runs.")
    if outside:
        statement += " This run lies outside what was measured: " + "; ".join(outside) + "."
    return {"selector": selector, "measured": measured, "outside_grid": outside, "statement": statement}
