"""A tiny study on Ray against the same study run locally, in one run: wall time of each, their ratio, and what
Ray costs per cell.

Local: `offrl study` with one process (cells one after another, XLA multi-threaded on every core). Ray: a cluster
of two nodes on this machine (a head and a second node, one CPU each, :mod:`ray.cluster_utils`), started before
the clock runs, and `offrl study --ray ADDRESS` (one CPU per cell, XLA single-threaded). Each command is a fresh
process; nothing is cached between them (no persistent compilation cache): every cell compiles its programs.

Per cell, ``outside_cell_s`` is the time Ray's two CPU slots spent on anything but :func:`run_cell`, divided by
the cells: ``(2 * ray_s - sum of the cells' run_cell seconds) / cells``. It holds the command's start-up (import,
connecting, the shared-storage probe), the workers' start-up (import of jax and offrl), the task wrapper, and idle
slots at the end (4 cells on 2 slots leave none idle when the cells take the same time).

Usage: python benchmarks/ray_study.py [--cells 4] [--steps 60] [--smoke]
Prints one JSON object. Needs metaworld (the sim extra) and ray (the ray extra). The machine's load average is
printed beside the numbers: on a busy machine both runs are slower, and Ray's two processes share the cores with
whatever else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STUDY = """
out = "{out}"
steps = {steps}
checkpoint_every = {every}
eval_episodes = {eval_episodes}
horizon = {horizon}
noise_sigma = 0.3
fqe_steps = {fqe_steps}
bootstrap_samples = {bootstrap}

[settings.small]
critic_hidden_dims = [32, 32]
actor_hidden_dims = [32, 32]
bc_steps = {bc_steps}

[settings.small_vib]
critic_hidden_dims = [32, 32]
actor_hidden_dims = [32, 32]
bc_steps = {bc_steps}
vib_dim = 4

[[scenario]]
name = "tiny"
tasks = ["reach-v3"]
episodes = [4]
seeds = {seeds}
settings = {settings}
"""


def _study(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "offrl.cli", "study", *cmd], cwd=cwd, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        sys.exit(f"offrl study {' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", type=int, default=4,
                   help="cells of the study: 2 settings x cells/2 seeds when even; 1: the setting small alone")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--smoke", action="store_true",
                   help="1 evaluation episode, 5 FQE steps, 20 bootstrap samples, a 2-step warm start, 2 checkpoints: "
                        "checks that the script runs (times meaningless)")
    args = p.parse_args()
    study = dict(eval_episodes=2, horizon=60, fqe_steps=50, bootstrap=200, bc_steps=10)
    if args.smoke:
        study = dict(eval_episodes=1, horizon=60, fqe_steps=5, bootstrap=20, bc_steps=2)
    from ray.cluster_utils import Cluster

    env = {**os.environ, "JAX_PLATFORMS": "cpu", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
           "OFFRL_HUGEPAGES": "0"}
    if args.cells < 1 or (args.cells > 1 and args.cells % 2):
        sys.exit(f"--cells {args.cells}: give 1 or an even number (2 settings x cells/2 seeds)")
    settings = ["small"] if args.cells == 1 else ["small", "small_vib"]
    seeds = list(range(max(args.cells // 2, 1)))
    out: dict = {"cells": len(seeds) * len(settings), "steps": args.steps, "cpu_count": os.cpu_count(),
                 "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in ("local", "ray"):
            (tmp / f"{name}.toml").write_text(STUDY.format(out=tmp / name, steps=args.steps,
                                                           every=max(args.steps // (2 if args.smoke else 6), 1),
                                                           seeds=seeds, settings=json.dumps(settings), **study))
        out["local_s"] = round(_study([str(tmp / "local.toml")], tmp, env), 1)

        t = time.perf_counter()
        small = {"num_cpus": 1, "object_store_memory": 80 * 2**20}
        os.environ.update({k: env[k] for k in ("JAX_PLATFORMS", "MUJOCO_GL")})  # the nodes' processes inherit it
        cluster = Cluster(initialize_head=True, head_node_args={**small, "include_dashboard": False})
        cluster.add_node(**small)
        cluster.wait_for_nodes()
        out["cluster_start_s"] = round(time.perf_counter() - t, 1)
        try:
            out["ray_s"] = round(_study([str(tmp / "ray.toml"), "--ray", cluster.address], tmp, env), 1)
        finally:
            cluster.shutdown()

        cell_s = {"local": [], "ray": []}
        for name in cell_s:
            for cell in sorted((tmp / name / "cells").glob("*/cell.json")):
                t = json.loads(cell.read_text())["timings_s"]
                cell_s[name].append(round(sum(t.values()), 1))
        # One record per attempt (offrl.cluster.finish_attempt); only a finished attempt timed its cell.
        records = [r for r in (json.loads(p.read_text()) for p in sorted((tmp / "ray" / "ray").glob("*.json")))
                   if "cell_s" in r]
        failed = [r for r in (json.loads(p.read_text()) for p in (tmp / "ray" / "ray").glob("*.json")) if r.get("error")]
        if len(records) != out["cells"] or len(cell_s["local"]) != out["cells"]:
            # `offrl study` records a failed cell and goes on; times of a study whose cells failed mean nothing.
            sys.exit(f"cells did not finish (local {len(cell_s['local'])}, ray {len(records)} of {out['cells']}): "
                     f"{failed[0]['error'] if failed else 'see the study folders'}")
        same = all(
            {k: v for k, v in json.loads((tmp / "local" / "cells" / c.parent.name / "cell.json").read_text()).items()
             if k not in ("timings_s", "run_dir", "dataset")}
            == {k: v for k, v in json.loads(c.read_text()).items() if k not in ("timings_s", "run_dir", "dataset")}
            for c in (tmp / "ray" / "cells").glob("*/cell.json"))
    n = out["cells"]
    out.update({
        "ratio_local_over_ray": round(out["local_s"] / out["ray_s"], 2),
        "cell_s_local": cell_s["local"],
        "cell_s_ray": cell_s["ray"],
        "run_cell_s_ray": [round(r["cell_s"], 1) for r in records],
        "task_wrapper_s": [round(r["task_s"] - r["cell_s"], 2) for r in records],
        "outside_cell_s_per_cell": round((2 * out["ray_s"] - sum(r["cell_s"] for r in records)) / n, 1),
        "same_results": same,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
