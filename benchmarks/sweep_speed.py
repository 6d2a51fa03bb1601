"""Throughput of `offrl sweep` (K CQL runs vmapped in one program) against the same K runs one after another.

Usage: python benchmarks/sweep_speed.py [--steps 200] [--k 1 4 16] [--smoke]
Prints one JSON object: for each K, the vmapped program's run-steps per second (K x gradient steps / s), the
sequential baseline's (one run's compiled chunk, timed, times K runs in sequence: K x steps / (K x time)), and
their ratio. Compilation is excluded on both sides of the ratio and reported apart (K compilations for K
sequential runs, one for the sweep). Shapes: MetaWorld state datasets (39-d observations, 4-d
actions), batch 256, the default CQLConfig networks; members differ in seed and alpha.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time

import jax
import jax.numpy as jnp
from timing import state_data

from offrl.agents import cql
from offrl.training.train import scan_steps


def _timed(fn, *args, repeats: int = 2) -> tuple[float, float]:
    """(best seconds of ``repeats`` calls after the first, seconds of the first call: compilation included)."""
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best, first


def measure(k: int, steps: int, agent: cql.CQLConfig, data: dict, batch: int = 256) -> dict:
    """One K: run-steps/s of the vmapped sweep and of K runs in sequence (``batch`` transitions per step)."""
    single_state = cql.init(agent, 39, 4, jax.random.PRNGKey(0))
    single = jax.jit(lambda s, key: scan_steps(cql, agent, batch, steps, s, data, key))
    t_single, first_single = _timed(single, single_state, jax.random.PRNGKey(1))

    states = jax.tree.map(lambda *xs: jnp.stack(xs), *[cql.init(agent, 39, 4, jax.random.PRNGKey(i)) for i in range(k)])
    alphas = jnp.linspace(0.5, 5.0, k)

    def member(s, key, alpha):
        return scan_steps(cql, dataclasses.replace(agent, alpha=alpha), batch, steps, s, data, key)

    vmapped = jax.jit(jax.vmap(member))
    t_vmap, first_vmap = _timed(vmapped, states, jax.random.split(jax.random.PRNGKey(1), k), alphas)
    seq = k * steps / (k * t_single)
    vec = k * steps / t_vmap
    return {"k": k, "vmapped_run_steps_per_s": round(vec, 1), "sequential_run_steps_per_s": round(seq, 1),
            "ratio": round(vec / seq, 2),
            # Not in the ratio: K sequential runs compile K times, the sweep once.
            "sequential_compile_s": round(k * (first_single - t_single), 1),
            "vmapped_compile_s": round(first_vmap - t_vmap, 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--k", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--smoke", action="store_true",
                   help="16x16 networks, batch 16, 400 transitions: checks that the script runs (numbers meaningless)")
    args = p.parse_args()
    agent, batch, n = cql.CQLConfig(), 256, 7500
    if args.smoke:
        agent, batch, n = cql.CQLConfig(critic_hidden_dims=(16, 16), actor_hidden_dims=(16, 16)), 16, 400
    data = state_data(n, agent=agent)
    out = {"sweep": [measure(k, args.steps, agent, data, batch) for k in args.k]}
    out["settings"] = {"steps_timed": args.steps, "batch": batch, "smoke": args.smoke, "critic_hidden_dims": agent.critic_hidden_dims,
                       "actor_hidden_dims": agent.actor_hidden_dims, "num_action_samples": agent.num_action_samples}
    out["machine"] = {"cpu": platform.processor() or platform.machine(), "devices": [str(d) for d in jax.devices()]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
