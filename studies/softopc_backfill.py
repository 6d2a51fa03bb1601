"""SoftOPC for cells that finished before the study computed it (docs/selection.md, "SoftOPC, a further candidate").

For every archived cell of a study whose run directory still holds its checkpoints and whose archived record has no
SoftOPC yet: score the candidate checkpoints (offrl.workflow.softopc, offline: the dataset and the critics, nothing
retrained, no simulator) and add ``softopc_value`` to each checkpoint and the ``softopc`` facts to the archived
record and to the run's cell.json (with the data's horizon, which cell.json records since then too). Cells whose checkpoints are gone are listed, not guessed. Safe to run again.

Usage: .venv/bin/python studies/softopc_backfill.py studies/paper-regime.toml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from offrl.data import load_dataset
from offrl.study.cell import cell_softopc, softopc_facts
from offrl.study.config import cells_of, load_study_config
from offrl.study.store import CELL_FILE, archive_file
from offrl.training import run_dir as rd


def backfill(study: Path) -> dict[str, list[str]]:
    """Add SoftOPC to the archived cells of ``study`` that lack it; returns the cell names by outcome
    (``added``, ``undefined``, ``had``, ``no checkpoints``, ``not archived``)."""
    config = load_study_config(study)
    outcome: dict[str, list[str]] = {"added": [], "undefined": [], "had": [], "no checkpoints": [], "not archived": []}
    for cell in cells_of(config):
        target = archive_file(config, cell)
        if target is None or not target.is_file():
            outcome["not archived"].append(cell.name)
            continue
        record = rd.read_json(target)
        if "softopc" in record and "horizon" in record["dataset"]:
            outcome["had"].append(cell.name)
            continue
        run = Path(record["run_dir"])
        if not run.is_dir() or not rd.checkpoint_steps(run):
            outcome["no checkpoints"].append(cell.name)
            continue
        dataset = load_dataset(record["dataset"]["path"])
        record["dataset"]["horizon"] = dataset.metadata.get("horizon")  # cell.json records it since SoftOPC too
        steps = [c["step"] for c in record["checkpoints"] if c["step"] > int(record.get("warmup_steps", 0))]
        cfg = rd.read_json(run / rd.CONFIG_FILE)
        timings: dict[str, float] = {}
        soft = cell_softopc(run, cfg, steps, dataset, timings)
        by_step = {r["step"]: r["value"] for r in soft.get("results", [])}
        for cp in record["checkpoints"]:
            cp["softopc_value"] = by_step.get(cp["step"])
        record["softopc"] = softopc_facts(soft)
        record.setdefault("timings_s", {}).update({k: round(v, 1) for k, v in timings.items()})
        rd.write_json(target, record)
        local = run / CELL_FILE
        if local.is_file():
            rd.write_json(local, {k: v for k, v in record.items() if k != "study_settings"})
        outcome["undefined" if "undefined" in soft else "added"].append(cell.name)
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="the study's .toml")
    args = parser.parse_args(argv)
    for what, names in backfill(args.study).items():
        print(f"{what}: {len(names)}" + (f" ({', '.join(names)})" if names and what != "not archived" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
