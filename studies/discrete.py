"""The discrete-action experiments of docs/results-discrete.md (issue "Discrete actions"), resumable.

For each game and seed: the logged replay of an online DQN (`offrl collect --task minatar/GAME`), its first 10 %
and a random 10 % of its episodes (`--from-replay`, the talk's ablations); offline DQN (Nature DQN's target),
Double DQN, QR-DQN, Ensemble-DQN, REM and discrete CQL on the full replay, DQN and REM on the two 10 % parts; every
run diagnosed (`offrl diagnose`: the workflow's pick, from offline curves only) and every checkpoint evaluated in
the game (`offrl evaluate`, analysis only). Then the tables and the figure of docs/results-discrete.md. A step
whose output exists is skipped, so running the command again resumes; `--table-only` writes the page from what
has finished.

The offline agents are trained as their sources define them (issue 43): MinAtar's convolution on the grid
(`--dqn.grid-shape` from the replay's metadata), reading the raw binary grids as the logging agent does
(`--no-normalize-observations`), batch 32 (MinAtar, Agarwal et al.), and the logging agent's budget: its learning
rate (offrl.agents.dqn's default, 2.5e-4, the logging agent's) for as many gradient steps as it took
(offrl.envs.minatar.logging_gradient_steps: 95,000 for a 100,000-step replay), unless `--steps` says otherwise.

Usage: .venv/bin/python studies/discrete.py [--games breakout space_invaders] [--seeds 0 1 2]
       [--replay-steps 100000] [--steps N (default: the logging agent's gradient steps)] [--workers 2]
       [--table-only]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from offrl.stats import bootstrap_mean
from offrl.training import run_dir as rd

ROOT = Path(__file__).resolve().parent.parent
OFFRL = [sys.executable, "-m", "offrl.cli"]
AGENTS = ("dqn", "double_dqn", "qr_dqn", "ensemble", "rem", "cql")
ABLATION_AGENTS = ("dqn", "rem")
PARTS = {"all": [], "first10": ["--replay-part", "first", "--replay-fraction", "0.1"],
         "random10": ["--replay-part", "random", "--replay-fraction", "0.1"]}
NAMES = {"dqn": "DQN (Nature)", "double_dqn": "Double DQN", "qr_dqn": "QR-DQN", "ensemble": "Ensemble-DQN",
         "rem": "REM", "cql": "discrete CQL(H)"}
LEGACY_NOTE = ("Measured with the agents before issue 43 (an MLP on the flattened, standardised grids; `dqn` = the "
               "Double DQN target; Adam at 6.25e-5 for 15,000 steps at batch 256, about 25x less learning rate x "
               "steps than the logging agent; a Double DQN logging agent whose epsilon decayed from step 0): out of "
               "date until rerun.")
"""The table's warning for run directories written before issue 43 (their config.json has no ``grid_shape``)."""
LEGACY_NAMES = {**NAMES, "dqn": "DQN (Double DQN target)"}
"""Agent names of those runs: their ``dqn`` variant had the Double DQN target."""
VERSION_FILE = "agents.json"
"""Beside the study's data and runs: the agents' generation (issue 43), so that a study directory of older data or
runs is not silently resumed with the new agents."""
VERSION = {"agents": "issue-43: MinAtar convolution, dqn = Nature DQN, the logging agent's budget",
           "logging_agent": "Nature DQN, MinAtar epsilon schedule (random until learning starts)"}


def is_legacy(run: Path) -> bool:
    """Whether a run directory was trained by the agents before issue 43 (no ``grid_shape`` in its agent config)."""
    return "grid_shape" not in json.loads((run / rd.CONFIG_FILE).read_text()).get("agent", {})


def check_study_dir(out: Path) -> None:
    """Refuse to resume a study directory of data or runs from before issue 43; mark a new one.

    Raises:
        SystemExit: ``out`` holds a replay or a run but no :data:`VERSION_FILE` of this generation.
    """
    marker = out / VERSION_FILE
    if marker.is_file():
        if json.loads(marker.read_text()) != VERSION:
            raise SystemExit(f"{out} was made by another generation of the agents ({marker}): use another --out")
        return
    if any((out / "data").glob("*.h5")) or any((out / "runs").glob("*/config.json")):
        raise SystemExit(f"{out} holds replays or runs from before issue 43 (the logging agent and the offline "
                         f"agents changed): move it aside or pass another --out")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(VERSION, indent=1) + "\n")


def grid_shape(path: Path) -> list[int]:
    """The (H, W, C) of a MinAtar replay's flattened grids: its metadata ``grid_shape`` (offrl.data.collect)."""
    import h5py

    from offrl.data.hdf5 import _decode_attr

    with h5py.File(path, "r") as f:
        return [int(d) for d in _decode_attr(f.attrs["grid_shape"])]


def sh(args: list[str], log: Path) -> float:
    """Run an offrl command, its output to ``log``; returns its wall time in seconds. Raises on failure."""
    t = time.perf_counter()
    with open(log, "a") as f:
        f.write("$ offrl " + " ".join(args) + "\n")
        f.flush()
        subprocess.run(OFFRL + args, stdout=f, stderr=subprocess.STDOUT, check=True, cwd=ROOT,
                       env={**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")})
    return time.perf_counter() - t


def collect(game: str, seed: int, a: argparse.Namespace) -> dict[str, float]:
    data = a.out / "data"
    data.mkdir(parents=True, exist_ok=True)
    full = data / f"{game}_s{seed}_all.h5"
    times = {}
    if not full.exists():
        times["collect_s"] = sh(["collect", "--task", f"minatar/{game}", "--replay-steps", str(a.replay_steps),
                                 "--seed", str(seed), "--out", str(full)], a.out / "collect.log")
    for part, flags in PARTS.items():
        f = data / f"{game}_s{seed}_{part}.h5"
        if part != "all" and not f.exists():
            sh(["collect", "--task", f"minatar/{game}", "--from-replay", str(full), "--seed", str(seed), *flags,
                "--out", str(f)], a.out / "collect.log")
    return times


def run(game: str, seed: int, part: str, agent: str, a: argparse.Namespace) -> None:
    out = a.out / "runs" / f"{game}_s{seed}_{part}_{agent}"
    if (out / "evaluation.json").exists():
        return
    log = a.out / "runs" / f"{out.name}.log"
    done = max((r.get("step", 0) for r in rd.read_metrics(out)), default=0) if (out / rd.METRICS_FILE).exists() else 0
    if out.exists() and done < a.steps:  # an unfinished run: resume its training, then diagnose and evaluate
        sh(["train", "--resume", "--out", str(out), "--no-progress"], log)
    elif not out.exists():
        data = a.out / "data" / f"{game}_s{seed}_{part}.h5"
        sh(["train", "--algo", "dqn", "--dqn.variant", agent, "--dataset", str(data), "--out", str(out),
            "--dqn.grid-shape", *map(str, grid_shape(data)), "--no-normalize-observations",
            "--batch-size", str(a.batch_size), "--steps", str(a.steps), "--checkpoint-every", str(a.steps // 10),
            "--seed", str(seed), "--no-progress"], log)
    sh(["diagnose", str(out)], log)
    t = sh(["evaluate", str(out), "--episodes", str(a.eval_episodes), "--seed", str(seed)], log)
    (out / "evaluate_seconds.json").write_text(json.dumps({"evaluate_s": t}))


def boot(x: list[float]) -> str:
    """Mean and 95 % percentile-bootstrap interval over runs (offrl.stats.bootstrap_mean)."""
    b = bootstrap_mean(x)
    if b["mean"] is None:
        return "-"
    ci = f" [{b['ci'][0]:.2f}, {b['ci'][1]:.2f}]" if b["ci"] else ""
    return f"{b['mean']:.2f}{ci} (n={b['n']})"


def table(a: argparse.Namespace) -> str:
    rows: dict[tuple[str, str, str], list[dict]] = {}
    online: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {"collect": [], "train": [], "evaluate": []}
    curves: dict[tuple[str, str], list[tuple[list[int], list[float], int | None]]] = {}
    runs: dict[tuple[str, int, str, str], dict] = {}
    online_by: dict[tuple[str, int], float] = {}
    legacy: set[bool] = set()
    for game in a.games:
        for seed in a.seeds:
            full = a.out / "data" / f"{game}_s{seed}_all.h5"
            lc = full.with_name(full.name + ".learning_curve.json")
            if lc.exists():
                c = json.loads(lc.read_text())
                online.setdefault(game, []).append(float(np.mean(c["return"][-20:])))
                online_by[(game, seed)] = online[game][-1]
                cpu["collect"].append(float(c.get("seconds", float("nan"))))
            for part in PARTS:
                for agent in (AGENTS if part == "all" else ABLATION_AGENTS):
                    out = a.out / "runs" / f"{game}_s{seed}_{part}_{agent}"
                    if not (out / "evaluation.json").exists():
                        continue
                    legacy.add(is_legacy(out))
                    ev = json.loads((out / "evaluation.json").read_text())["results"]
                    pick = json.loads((out / "diagnosis.json").read_text()).get("selected_step")
                    by = {int(r["step"]): float(r["mean_return"]) for r in ev}
                    steps = sorted(by)
                    rec = {"final": by[steps[-1]], "best": max(by.values()), "best_heldout": _best_heldout(ev),
                           "pick": by.get(int(pick)) if pick is not None else None, "pick_step": pick}
                    rows.setdefault((game, part, agent), []).append(rec)
                    runs[(game, seed, part, agent)] = rec
                    cpu["train"].append(max(float(m.get("time_s", 0)) for m in rd.read_metrics(out)))
                    es = out / "evaluate_seconds.json"
                    if es.exists():
                        cpu["evaluate"].append(json.loads(es.read_text())["evaluate_s"])
                    if part == "all":
                        curves.setdefault((game, agent), []).append((steps, [by[s] for s in steps], pick))
    if legacy == {True, False}:
        raise SystemExit(f"{a.out} mixes runs from before and after issue 43: table them from separate directories")
    names = LEGACY_NAMES if legacy == {True} else NAMES
    lines = ([LEGACY_NOTE, ""] if legacy == {True} else []) + [
        "| game | data | agent | final score | best checkpoint | workflow pick | online DQN (final) |",
        "|---|---|---|---|---|---|---|"]
    for (game, part, agent), rs in sorted(rows.items(), key=lambda kv: (kv[0][0], list(PARTS).index(kv[0][1]),
                                                                         AGENTS.index(kv[0][2]))):
        picks = [r["pick"] for r in rs if r["pick"] is not None]
        lines.append(f"| {game} | {part} | {names[agent]} | {boot([r['final'] for r in rs])} | "
                     f"{boot([r['best'] for r in rs])} | {boot(picks)} | {boot(online.get(game, []))} |")
    timing = ", ".join(f"{k} {np.nanmean(v):.0f} s per {'replay' if k == 'collect' else 'run'} (n={len(v)})"
                       for k, v in cpu.items() if v)
    _figure(curves, a, names)
    return ("\n".join(lines) + f"\n\nWall time on 2 CPU cores, two jobs at a time: {timing}.\n\n"
            + claims(runs, online_by, names))


def _best_heldout(results: list[dict]) -> float:
    """The best checkpoint's score without the max-of-noise bias: the checkpoint with the highest mean return on
    the even-numbered episodes, scored on the odd-numbered ones, and the reverse; the two averaged (the noise floor
    of docs/results.md, applied to returns)."""
    halves = []
    for pick_on, score_on in ((0, 1), (1, 0)):
        best = max(results, key=lambda r: np.mean(r["episode_returns"][pick_on::2]))
        halves.append(float(np.mean(best["episode_returns"][score_on::2])))
    return float(np.mean(halves))


def claims(runs: dict[tuple[str, int, str, str], dict], online: dict[tuple[str, int], float],
           names: dict[str, str] = NAMES) -> str:
    """The talk's four claims as paired comparisons over the (game, seed) pairs where both sides finished.

    Every score is divided by the final score of the online DQN that logged that replay (the talk's
    normalisation: 1 = the logging agent's level), so the two games pool; each row is the mean of the per-pair
    values with a 95 % bootstrap interval over pairs (offrl.stats.bootstrap_mean).
    """
    def norm(game: str, seed: int, part: str, agent: str, key: str) -> float | None:
        r = runs.get((game, seed, part, agent))
        if r is None or r[key] is None or not online.get((game, seed)):
            return None
        return r[key] / online[(game, seed)]

    pairs = sorted(online)

    def row(label: str, f) -> str:
        values = [v for v in (f(g, s) for g, s in pairs) if v is not None]
        return f"| {label} | {boot(values)} |"

    def diff(x: tuple[str, str, str], y: tuple[str, str, str]):
        def f(g: str, s: int) -> float | None:
            u, v = norm(g, s, *x), norm(g, s, *y)
            return None if u is None or v is None else u - v
        return f

    out = ["| comparison (scores over the logging agent's final score; paired over game x seed) | mean [95 % CI] (n) |",
           "|---|---|"]
    present = [ag for ag in AGENTS if any(key[3] == ag for key in runs)]  # the archive has no double_dqn
    for agent in present:
        out.append(row(f"1. {names[agent]} final, full replay (1 = the online DQN's final)",
                       lambda g, s, agent=agent: norm(g, s, "all", agent, "final")))
    for agent in ("rem", "qr_dqn"):
        out.append(row(f"2. {names[agent]} - DQN, final, full replay",
                       diff(("all", agent, "final"), ("all", "dqn", "final"))))
    for agent in ABLATION_AGENTS:
        for part in ("first10", "random10"):
            out.append(row(f"3. {names[agent]}: {part} - full replay, final",
                           diff((part, agent, "final"), ("all", agent, "final"))))
        out.append(row(f"3. {names[agent]}: random10 - first10, final",
                       diff(("random10", agent, "final"), ("first10", agent, "final"))))
    for agent in present:
        out.append(row(f"4. {names[agent]}: best checkpoint - final, full replay (best chosen on half the episodes, "
                       f"scored on the other half)", diff(("all", agent, "best_heldout"), ("all", agent, "final"))))
        out.append(row(f"4. {names[agent]}: workflow pick - final, full replay",
                       diff(("all", agent, "pick"), ("all", agent, "final"))))
    return "\n".join(out) + "\n"


def _figure(curves, a: argparse.Namespace, names: dict[str, str] = NAMES) -> None:
    if not curves:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    games = sorted({g for g, _ in curves})
    fig, axes = plt.subplots(1, len(games), figsize=(5 * len(games), 3.6), squeeze=False)
    for ax, game in zip(axes[0], games, strict=True):
        for agent in AGENTS:
            for i, (steps, ret, pick) in enumerate(curves.get((game, agent), [])):
                line, = ax.plot(steps, ret, alpha=0.7, color=f"C{AGENTS.index(agent)}",
                                label=names[agent] if i == 0 else None)
                if pick is not None and int(pick) in steps:
                    ax.plot([int(pick)], [ret[steps.index(int(pick))]], "o", color=line.get_color())
        ax.set_title(f"minatar/{game}, full replay (dot: pick)")
        ax.set_xlabel("gradient steps")
        ax.set_ylabel("mean return (analysis only)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    a.figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.figure, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--games", nargs="+", default=["breakout", "space_invaders"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--replay-steps", type=int, default=100_000)
    p.add_argument("--steps", type=int, default=None,
                   help="offline gradient steps (default: the logging agent's, offrl.envs.minatar."
                        "logging_gradient_steps: 95,000 for --replay-steps 100000)")
    p.add_argument("--batch-size", type=int, default=32, help="offline batch (MinAtar's and Agarwal et al.'s 32)")
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "studies" / "discrete")
    p.add_argument("--results", type=Path, default=ROOT / "docs" / "results-discrete-table.md")
    p.add_argument("--figure", type=Path, default=ROOT / "docs" / "figures" / "results" / "discrete_returns.png")
    p.add_argument("--table-only", action="store_true")
    a = p.parse_args()
    from offrl.agents.dqn import DQNConfig
    from offrl.envs.minatar import ReplayConfig, logging_gradient_steps

    logging = ReplayConfig(steps=a.replay_steps)
    if a.steps is None:
        a.steps = logging_gradient_steps(logging)
    budget, logged = DQNConfig().lr * a.steps, logging.agent.lr * logging_gradient_steps(logging)
    if not a.table_only:
        print(f"offline budget {DQNConfig().lr:g} x {a.steps:,} steps = {budget:.2f}; the logging agent's "
              f"{logging.agent.lr:g} x {logging_gradient_steps(logging):,} = {logged:.2f} "
              f"(ratio {budget / logged:.2f})", flush=True)
    if a.table_only and (a.out / "runs.jsonl").is_file():
        # A packed archive (offrl.study.pack): its run directories, unpacked into a temporary copy of --out.
        import shutil
        import tempfile

        from offrl.study.pack import unpack_runs

        copy = Path(tempfile.mkdtemp(prefix="discrete-")) / a.out.name
        shutil.copytree(a.out, copy)
        unpack_runs(a.out, copy)
        a.out = copy
    if not a.table_only:
        check_study_dir(a.out)
    (a.out / "runs").mkdir(parents=True, exist_ok=True)
    if not a.table_only:
        with ThreadPoolExecutor(a.workers) as pool:
            list(pool.map(lambda gs: collect(*gs, a), [(g, s) for s in a.seeds for g in a.games]))
            jobs = [(g, s, part, ag) for s in a.seeds for g in a.games for part in PARTS
                    for ag in (AGENTS if part == "all" else ABLATION_AGENTS)]
            failed = []
            for j, f in [(j, pool.submit(run, *j, a)) for j in jobs]:
                try:
                    f.result()
                except subprocess.CalledProcessError as e:  # keep the others going; the log says why
                    failed.append(f"{'_'.join(map(str, j))}: {e}")
        for line in failed:
            print("failed:", line, file=sys.stderr)
    text = table(a)
    a.results.write_text(f"<!-- written by studies/discrete.py; do not edit -->\n{text}")
    print(text)


if __name__ == "__main__":
    main()
