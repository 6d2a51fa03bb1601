"""Gradient steps per second of offrl's CQL update on this machine, for a few network/sample settings.

Usage: python benchmarks/train_speed.py [--steps 1000]
Prints one JSON object. Compilation is excluded: each setting is compiled and run once before timing.
Shapes match MetaWorld state datasets: 39-d observations, 4-d actions; batch 256.
"""

from __future__ import annotations

import argparse
import json
import platform

import jax
from timing import state_data, time_chunk

from offrl.agents import cql
from offrl.training.train import make_train_chunk


def measure(agent: cql.CQLConfig, steps: int, n: int = 7500, obs_dim: int = 39, act_dim: int = 4) -> dict:
    data = state_data(n, obs_dim, act_dim)
    state = cql.init(agent, obs_dim, act_dim, jax.random.PRNGKey(0))
    chunk = make_train_chunk("cql", agent, 256, steps)
    return time_chunk(chunk, state, data, steps)[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=1000)
    args = p.parse_args()
    settings = {
        "mlp256x3_samples10": cql.CQLConfig(num_action_samples=10),
        "mlp256x3_samples1": cql.CQLConfig(num_action_samples=1),
        "mlp256x2_samples10": cql.CQLConfig(critic_hidden_dims=(256, 256), actor_hidden_dims=(256, 256), num_action_samples=10),
        "mlp256x2_samples1": cql.CQLConfig(
            critic_hidden_dims=(256, 256), actor_hidden_dims=(256, 256), num_action_samples=1
        ),
    }
    out = {name: measure(cfg, args.steps) for name, cfg in settings.items()}
    out["machine"] = {"cpu": platform.processor() or platform.machine(), "devices": [str(d) for d in jax.devices()]}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
