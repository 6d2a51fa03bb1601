"""Gradient steps per second of every offrl algorithm's update on this machine, and of a few CQL network/sample
settings.

Usage: python benchmarks/train_speed.py [--steps 1000] [--only cql,iql,...]
Prints one JSON object. Compilation is excluded: each setting is compiled and run once before timing. Shapes
match MetaWorld state datasets: 39-d observations, 4-d actions; batch 256. Every algorithm runs its own defaults
(networks differ: IQL 2 x 256, BEAR 400-300 with a 750-750 VAE, the others 3 x 256), so the numbers compare
what a user gets, not equal networks. MOPO and COMBO are measured per phase (model, then policy). All settings are measured in this one run, one after the other.
"""

from __future__ import annotations

import argparse
import json
import platform

import jax
from timing import state_data, time_chunk

from offrl.agents import CONFIGS, combo, cql, get_agent, mopo
from offrl.training.train import make_train_chunk


def measure(algo: str, agent, steps: int, n: int = 7500, obs_dim: int = 39, act_dim: int = 4) -> dict:
    data = state_data(n, obs_dim, act_dim, algo, agent)  # the arrays `offrl train --algo ALGO` builds
    state = get_agent(algo).init(agent, obs_dim, act_dim, jax.random.PRNGKey(0))
    chunk = make_train_chunk(algo, agent, 256, steps)
    return time_chunk(chunk, state, data, steps)[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--only", default="", help="comma-separated setting names (default: all)")
    args = p.parse_args()
    settings = {f"{algo}_default": (algo, CONFIGS[algo]()) for algo in ("cql", "iql", "awac", "bear", "brac", "bc")}
    settings.update({
        "cql_mlp256x3_samples10": ("cql", cql.CQLConfig(num_action_samples=10)),
        "cql_mlp256x2_samples1": ("cql", cql.CQLConfig(critic_hidden_dims=(256, 256), actor_hidden_dims=(256, 256),
                                                       num_action_samples=1)),
        # Model-based: the model phase (the 7-member ensemble alone) and the policy phase (rollouts of h = 5 from
        # the minibatch, then SAC / CQL on the mixture), measured apart.
        "mopo_model_phase": ("mopo", mopo.MOPOConfig(model_steps=10**9)),
        "mopo_policy_phase": ("mopo", mopo.MOPOConfig(model_steps=1)),
        "combo_policy_phase": ("combo", combo.COMBOConfig(model_steps=1)),
    })
    only = {s for s in args.only.split(",") if s}
    out = {name: measure(algo, cfg, args.steps) for name, (algo, cfg) in settings.items() if not only or name in only}
    out["machine"] = {"cpu": platform.processor() or platform.machine(), "devices": [str(d) for d in jax.devices()]}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
