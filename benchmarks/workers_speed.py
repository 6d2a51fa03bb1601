"""Total CQL gradient steps per second on this machine: one process with XLA's multi-threaded CPU backend, against
``--workers`` single-threaded processes running at once (what ``offrl study --workers N`` does when the machine
has no more cores than workers).

Usage: python benchmarks/workers_speed.py [--steps 500] [--workers 2] [--smoke]
Prints one JSON object. Compilation is excluded (timing.time_chunk). Shapes: MetaWorld state datasets, batch 256,
the default CQLConfig. Both settings are measured in this one run, one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

SINGLE = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
MULTI = "--xla_cpu_multi_thread_eigen=true"


def _child(steps: int, smoke: bool) -> None:
    import jax
    from timing import state_data, time_chunk

    from offrl.agents import cql
    from offrl.training.train import make_train_chunk

    agent, batch, n = cql.CQLConfig(), 256, 7500
    if smoke:
        agent, batch, n = cql.CQLConfig(critic_hidden_dims=(16, 16), actor_hidden_dims=(16, 16)), 16, 400
    state = cql.init(agent, 39, 4, jax.random.PRNGKey(0))
    data = state_data(n, agent=agent)
    print(json.dumps(time_chunk(make_train_chunk("cql", agent, batch, steps), state, data, steps)[1]))


def _spawn(n: int, flags: str, steps: int, smoke: bool = False) -> list[float]:
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    here = Path(__file__).parent
    cmd = [sys.executable, __file__, "--child", "--steps", str(steps), *(["--smoke"] if smoke else [])]
    procs = [subprocess.Popen(cmd, env=env, cwd=here, stdout=subprocess.PIPE, text=True) for _ in range(n)]
    outs = [p.communicate()[0] for p in procs]
    failed = [p.returncode for p in procs if p.returncode]
    if failed:
        sys.exit(f"a worker exited with status {failed[0]} (its error is above)")
    return [json.loads(o.strip().splitlines()[-1])["steps_per_s"] for o in outs]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--smoke", action="store_true",
                   help="16x16 networks, batch 16, 400 transitions: checks that the script runs (numbers meaningless)")
    args = p.parse_args()
    if args.child:
        _child(args.steps, args.smoke)
        return
    one = _spawn(1, MULTI, args.steps, args.smoke)[0]
    many = _spawn(args.workers, SINGLE, args.steps, args.smoke)
    print(json.dumps({
        "cpu_count": os.cpu_count(),
        "one_process_multi_thread_steps_per_s": one,
        "workers": args.workers,
        "per_worker_single_thread_steps_per_s": many,
        "total_workers_steps_per_s": round(sum(many), 2),
        "ratio_workers_over_one": round(sum(many) / one, 2),
    }))


if __name__ == "__main__":
    main()
