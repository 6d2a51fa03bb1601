"""How far to trust a run's pick: the measured record of *its* selection rule on *its* kind of run.

A rule's record is only worth quoting for the method it was measured on: the regret of ``last`` on 48 Cal-QL runs
says nothing about IQL. So the record is kept per grid and per method (:func:`method_label`: the algorithm with the
settings that change what its Q-function means, e.g. Cal-QL's calibration or IQL's reward shift), and a run is
told the record of its own method and rule, always beside what a **random** checkpoint scores on the same runs and
the **noise floor** (the regret of a perfect selector under the evaluation noise: it picks on one half of the
analysis-only episodes and is scored on the other). Where no grid measured the combination the statement says
"not measured". The numbers and how to read them: docs/selection.md, "How far to trust the pick".

The records are computed from the committed archives of finished grids (per-episode outcomes of every checkpoint)
by ``python -m offrl.workflow.trust`` and shipped as ``offrl/workflow/measured.json``; nothing here reads a run's
own analysis-only success.
"""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MEASURED_FILE = Path(__file__).with_name("measured.json")
# The grids whose archives hold per-episode outcomes of every checkpoint (python -m offrl.workflow.trust reads them).
ARCHIVES = ("studies/archive/dev", "studies/archive/algorithms", "studies/archive/model-based",
            "studies/archive/default-job")
# The default-job archive holds every candidate of its notebook; only the one that became the default (D12,
# docs/default-job.md) is a record of what offrl deploys.
DEFAULT_JOB_RUNS = "D12_"
# The study's picks that are not rules of offrl.workflow.rules: the run's own diagnosis's pick and the one after it
# (whatever rule the run recorded); q_peak and q_after_peak are scored as rules.
_NOT_RULES = ("workflow", "workflow_after_peak", "random", "oracle")
RULE_TEXT = {"q_peak": "the Q peak (Guideline 3.1)", "q_after_peak": "the checkpoint after the Q peak",
             "last": "the last checkpoint", "random": "a random checkpoint"}


EARLIER = {"mopo": ("clip_model_rewards", "clipped model rewards, no model replay buffer, the norm of the variances "
                    "over the elites, a deterministic backup"),
           "combo": ("push_down", "the push-down on the whole mixture (real rows included), clipped model rewards, "
                     "no model replay buffer"),
           "bear": ("behaviour_tau", "the constraint's behaviour samples from the VAE being trained, the Laplacian "
                                     "kernel at sigma 10")}
"""Algorithms whose implementation changed to follow its source (issue 43): the field only the faithful one's
agent config records, and what the earlier one did differently. A run or archived cell without the field ran the
earlier implementation, and its results carry that in their name (results pages, the trust statement)."""


def method_label(algo: str, agent: dict[str, Any] | None, reward_shift: float = 0.0) -> str:
    """The method a run trained, named by what changes the meaning of its Q-values: CQL with Cal-QL's
    calibration is ``Cal-QL`` (Nakamoto et al. 2023), without it ``CQL``; IQL names its expectile, inverse
    temperature and reward shift (its sparse-reward settings behave unlike its locomotion ones, docs/default-job.md);
    an algorithm's earlier implementation (:data:`EARLIER`) says so with how it differed; every other algorithm its
    name. Runs of one label are pooled in the records.

    Args:
        algo: config.json ``algo``.
        agent: config.json ``agent`` (the algorithm's hyperparameters); None: the defaults.
        reward_shift: config.json ``training.reward_shift``.
    """
    agent = agent or {}
    if algo == "cql":
        name = "Cal-QL" if agent.get("calibrated") else "CQL"
        return name + (f" (warm start {int(agent['bc_steps'])} steps)" if agent.get("bc_steps") else "")
    if algo == "iql":
        shift = f", rewards {reward_shift:+g}" if reward_shift else ""
        return (f"IQL (expectile {agent.get('expectile', 0.7):g}, beta {agent.get('inverse_temperature', 3.0):g}"
                f"{shift})")
    if algo in EARLIER and agent and EARLIER[algo][0] not in agent:
        # Not the method of today's code: its record must not be quoted for a run of the faithful one.
        return f"{algo.upper()} (earlier implementation: {EARLIER[algo][1]})"
    return algo.upper()


def config_method(config: dict[str, Any]) -> str:
    """:func:`method_label` of a run's config.json."""
    return method_label(config.get("algo", "cql"), config.get("agent"),
                        float((config.get("training") or {}).get("reward_shift", 0.0) or 0.0))


def load_measured(path: Path = MEASURED_FILE) -> list[dict[str, Any]]:
    """The records of measured.json (a list of :func:`grid_records` entries); empty when there is none."""
    if not path.is_file():
        return []
    return list(json.loads(path.read_text()).get("records", []))


MEASURED = load_measured()
"""Per grid and method: ``{"grid", "archive", "method", "runs", "tasks", "regimes", "episodes", "obs",
"reward_modes", "eval_episodes", "rules": {rule: {"regret", "ci", "n", "minus_random", "minus_random_ci"}},
"random": {...}, "noise_floor": {...}}``; intervals are 95 % cluster bootstraps resampling tasks, then runs."""


# ------------------------------------------------------------------------------------------------ the records


def _runs_as_files(folder: Path) -> Iterable[tuple[str, dict[str, str]]]:
    """``(run name, {file: text})`` of an archive of run directories: packed (runs.jsonl, offrl.study.pack) or,
    for an archive not packed yet, the directories themselves."""
    from offrl.study.pack import iter_packed_runs

    yield from iter_packed_runs(folder)
    for cfg in sorted(folder.glob("*/config.json")):
        yield cfg.parent.name, {f.name: f.read_text() for f in cfg.parent.iterdir() if f.is_file()}


def _default_job_cells(folder: Path) -> Iterable[dict[str, Any]]:
    """The default job's archived runs (run directories, not cell files) as study cells."""
    for name, files in _runs_as_files(folder):
        if not name.startswith(DEFAULT_JOB_RUNS) or name.endswith("_bc") or "evaluation.json" not in files:
            continue
        config = json.loads(files["config.json"])
        outcomes = {int(r["step"]): r for r in json.loads(files["evaluation.json"])["results"]}
        metrics = [json.loads(line) for line in files["metrics.jsonl"].splitlines() if line.strip()]
        checkpoints = [{**r, **{k: outcomes[int(r["step"])][k] for k in ("success_rate", "episode_successes")}}
                       for r in metrics if int(r["step"]) in outcomes]
        meta = config["dataset"].get("metadata") or {}
        yield {"cell": {"task": meta.get("task"), "regime": meta.get("regime"), "episodes": meta.get("episodes"),
                        "seed": config.get("seed")},
               "algo": config["algo"], "agent": config["agent"], "training": config.get("training", {}),
               "q_range": config["dataset"]["q_range"], "warmup_steps": 0, "checkpoints": checkpoints,
               "diagnosis": json.loads(files["diagnosis.json"]), "obs": config["dataset"].get("obs_mode", "state"),
               "reward_mode": meta.get("reward_mode", "terminal")}


def _cells(archive: Path) -> list[dict[str, Any]]:
    if archive.name == "default-job":
        return list(_default_job_cells(archive))
    from offrl.study.pack import iter_archived_cells

    return [cell for _, cell in iter_archived_cells(archive) if "checkpoints" in cell and "cell" in cell]


def cell_reward_mode(cell: dict[str, Any]) -> str:
    """The reward structure of an archived cell's data: the cell's own ``reward_mode`` (default-job runs), else the
    study settings it was archived with (a study records ``reward_mode`` there when it is not ``terminal``), else
    ``terminal`` (every grid before reward modes existed)."""
    return str(cell.get("reward_mode") or (cell.get("study_settings") or {}).get("reward_mode") or "terminal")


def grid_records(archive: Path, samples: int = 10_000) -> list[dict[str, Any]]:
    """One record per method of an archived grid: every rule's normalised regret (scored as the study scores it,
    :func:`offrl.study.selectors.evaluate_selectors`: picks on one half of the episodes, scored on the other),
    a random pick's, the noise floor's, and each rule minus random paired by run; 95 % intervals resampling
    tasks, then runs (:func:`offrl.stats.cluster_bootstrap_mean`). Methods without a Q-function (BC, TT) and
    cells without per-episode outcomes are left out."""
    from offrl.stats import cluster_bootstrap_mean
    from offrl.study.config import NO_Q_ALGOS
    from offrl.study.selectors import evaluate_selectors

    by_method: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for cell in _cells(archive):
        if cell.get("algo", "cql") in NO_Q_ALGOS or not all(c.get("episode_successes") for c in cell["checkpoints"]):
            continue
        method = method_label(cell.get("algo", "cql"), cell.get("agent"),
                              float((cell.get("training") or {}).get("reward_shift", 0.0) or 0.0))
        by_method.setdefault(method, []).append((cell, evaluate_selectors(cell)))
    records = []
    for method, runs in sorted(by_method.items()):
        tasks = [c["cell"]["task"] for c, _ in runs]

        def stat(name: str, runs=runs, tasks=tasks) -> dict[str, Any]:
            return cluster_bootstrap_mean([s.get(name, {}).get("regret") for _, s in runs], tasks, samples)

        rules = {}
        for name in runs[0][1]:
            if name in _NOT_RULES:
                continue
            r = stat(name)
            if r["mean"] is None:
                continue
            diff = cluster_bootstrap_mean(
                [None if s[name]["regret"] is None or s["random"]["regret"] is None
                 else s[name]["regret"] - s["random"]["regret"] for _, s in runs], tasks, samples)
            rules[name] = {"regret": r["mean"], "ci": r["ci"], "n": r["n"],
                                                   "minus_random": diff["mean"], "minus_random_ci": diff["ci"]}
        cells = [c for c, _ in runs]
        records.append({
            "grid": archive.name, "archive": str(archive), "method": method, "runs": len(runs),
            "tasks": sorted(set(tasks)),
            "regimes": sorted({str(c["cell"].get("regime")) for c in cells}),
            "episodes": sorted({int(c["cell"]["episodes"]) for c in cells if c["cell"].get("episodes")}),
            "obs": sorted({c.get("obs", "state") for c in cells}),
            "reward_modes": sorted({cell_reward_mode(c) for c in cells}),
            "eval_episodes": min(len(cp["episode_successes"]) for c in cells for cp in c["checkpoints"]),
            "rules": rules,
            "random": {k: v for k, v in stat("random").items() if k in ("mean", "ci", "n")},
            "noise_floor": {k: v for k, v in stat("oracle").items() if k in ("mean", "ci", "n")},
        })
    return records


def build_measured(archives: Iterable[str | Path] = ARCHIVES, samples: int = 10_000) -> dict[str, Any]:
    """The content of measured.json: :func:`grid_records` of every archive that exists."""
    records = [r for a in archives if Path(a).is_dir() for r in grid_records(Path(a), samples)]
    return {"written": datetime.date.today().isoformat(),
            "how": "python -m offrl.workflow.trust (offrl/workflow/trust.py); docs/selection.md, "
                   "'How far to trust the pick'",
            "records": records}


# ------------------------------------------------------------------------------------------------ the statement


def _interval(x: dict[str, Any], mean: str = "regret", ci: str = "ci") -> str:
    lo_hi = x.get(ci)
    return f"{x[mean]:.2f}" + (f" [{lo_hi[0]:.2f}, {lo_hi[1]:.2f}]" if lo_hi else "")


def _outside(record: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Where the run differs from the grid that measured its record."""
    dataset = config.get("dataset") or {}
    meta = dataset.get("metadata") or {}
    outside = []
    obs = dataset.get("obs_mode", "state")
    if obs not in record["obs"]:
        outside.append(f"{obs} observations (the grid used {', '.join(record['obs'])})")
    regime = meta.get("regime")
    if regime not in record["regimes"]:
        outside.append(f"data {'of regime ' + regime if regime else 'not collected by offrl'} (the grid used "
                       f"{' and '.join(record['regimes'])})")
    mode = meta.get("reward_mode", "terminal")
    if mode not in record.get("reward_modes", ["terminal"]):
        outside.append(f"reward mode {mode} (the grid used {', '.join(record.get('reward_modes', ['terminal']))})")
    task = meta.get("task")
    if task not in record["tasks"]:
        outside.append(f"task {task or 'unknown'} (not one of the grid's {len(record['tasks'])} tasks)")
    episodes = dataset.get("num_episodes")
    lo, hi = min(record["episodes"], default=0), max(record["episodes"], default=0)
    if episodes is not None and record["episodes"] and not lo <= int(episodes) <= hi:
        outside.append(f"{episodes} episodes (the grid used {lo}-{hi})")
    return outside


def trust_statement(selector: str, config: dict[str, Any],
                    records: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The measured record of ``selector`` on runs of this run's method, and where this run lies outside them.

    Args:
        selector: the rule that picked the checkpoint (:data:`offrl.workflow.rules.RULES`).
        config: the run's config.json.
        records: the records to search; default :data:`MEASURED`.

    Returns:
        ``{"selector", "method", "measured" (None or ``{"grid", "runs", "regret", "ci", "random", "noise_floor",
        "minus_random", "minus_random_ci"}``), "outside_grid" (reasons, empty when the run is like the grid's),
        "statement" (a few sentences)}``. Of several grids that measured the combination the one with the most
        runs is quoted.
    """
    method = config_method(config)
    found = [r for r in (MEASURED if records is None else records)
             if r["method"] == method and selector in r["rules"]]
    rule_text = RULE_TEXT.get(selector, f"rule {selector}")
    if not found:
        others = sorted({r["method"] for r in (MEASURED if records is None else records)})
        statement = (f"Not measured: no grid has judged {rule_text} ({selector}) on {method} runs, so no regret can "
                     f"be quoted for this pick (measured methods: {', '.join(others) or 'none'}; docs/selection.md).")
        return {"selector": selector, "method": method, "measured": None, "outside_grid": [], "statement": statement}
    record = max(found, key=lambda r: r["runs"])
    rule = record["rules"][selector]
    measured = {"grid": record["grid"], "runs": rule["n"], "tasks": len(record["tasks"]), "regret": rule["regret"],
                "ci": rule["ci"], "random": record["random"], "noise_floor": record["noise_floor"],
                "minus_random": rule["minus_random"], "minus_random_ci": rule["minus_random_ci"]}
    diff = rule.get("minus_random_ci")
    if diff and diff[1] < 0:
        verdict = "better than a random pick"
    elif diff and diff[0] > 0:
        verdict = "worse than a random pick"
    else:
        verdict = "not distinguishable from a random pick"
    statement = (
        f"On the {record['grid']} grid ({method}, {rule['n']} runs on {len(record['tasks'])} tasks), "
        f"{rule_text} had normalised regret {_interval(rule)} (0 = the best checkpoint, 1 = the worst); a random "
        f"checkpoint {_interval(record['random'], 'mean')}; the noise floor, what a perfect selector scores under "
        f"the evaluation noise, {_interval(record['noise_floor'], 'mean')}. Paired by run, the rule minus random is "
        f"{_interval(rule, 'minus_random', 'minus_random_ci')}: {verdict}."
    )
    outside = _outside(record, config)
    if outside:
        statement += " This run lies outside what was measured: " + "; ".join(outside) + "."
    return {"selector": selector, "method": method, "measured": measured, "outside_grid": outside,
            "statement": statement}


def main(argv: list[str] | None = None) -> int:
    """``python -m offrl.workflow.trust [ARCHIVE ...] [--out PATH]``: write measured.json from the archives (by
    default :data:`ARCHIVES`, from the repository root) and print one line per record."""
    args = list(sys.argv[1:] if argv is None else argv)
    out = MEASURED_FILE
    if "--out" in args:
        i = args.index("--out")
        if i + 1 >= len(args):
            print("usage: python -m offrl.workflow.trust [ARCHIVE ...] [--out PATH]", file=sys.stderr)
            return 2
        out = Path(args[i + 1])
        del args[i:i + 2]
    missing = [a for a in args if not Path(a).is_dir()]
    if missing:
        print(f"offrl: error: no archive folder {missing[0]}: pass folders such as {ARCHIVES[0]}", file=sys.stderr)
        return 2
    measured = build_measured(args or ARCHIVES)
    from offrl.training.run_dir import atomic_write_text

    atomic_write_text(out, json.dumps(measured, indent=1) + "\n")
    for r in measured["records"]:
        rules = ", ".join(f"{k} {v['regret']:.2f}" for k, v in sorted(r["rules"].items()))
        print(f"{r['grid']:12s} {r['method']:40s} {r['runs']:3d} runs: random {r['random']['mean']:.2f}, "
              f"noise floor {r['noise_floor']['mean']:.2f}; {rules}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
