"""Gradient steps per second of image CQL (48x48x3 pixels, batch 256) for the paper's encoders.

Usage: python benchmarks/image_speed.py [--steps 20] [--size 48] [--batch-size 256] [--settings cnn_fc256x3 ...]
       python benchmarks/image_speed.py --compare-loops   # the Python loop of jitted steps vs one lax.scan
Prints one JSON object. Compilation is excluded: each setting is compiled and run once before timing. The data
are random frames held once on the device with frame indices, as in `offrl train --obs image`; the batch is
assembled (gathered and cropped) inside the compiled update, so the numbers include that cost.
"""

from __future__ import annotations

import argparse
import json
import platform

import jax
import jax.numpy as jnp
import numpy as np
from timing import time_chunk

from offrl.agents import cql
from offrl.training.train import make_train_chunk

SETTINGS = {
    # The paper's CNN with state-sized FC layers: the image default of `offrl workflow --obs image`.
    "cnn_fc256x3": dict(critic_hidden_dims=(256, 256, 256), actor_hidden_dims=(256, 256, 256)),
    # The reference code's FC stack after the CNN: [1024, 512, 256].
    "cnn_fc_reference": dict(critic_hidden_dims=(1024, 512, 256), actor_hidden_dims=(1024, 512, 256)),
    # The capacity increase (Guideline 4.2): the 9-conv residual encoder for the actor, or for both.
    "resnet_actor": dict(critic_hidden_dims=(256, 256, 256), actor_hidden_dims=(256, 256, 256),
                         actor_encoder="resnet"),
    "resnet_both": dict(critic_hidden_dims=(256, 256, 256), actor_hidden_dims=(256, 256, 256),
                        actor_encoder="resnet", critic_encoder="resnet"),
}


def measure(
    agent: cql.CQLConfig, steps: int, size: int, batch_size: int = 256, loop: str = "auto", n: int = 5000,
    act_dim: int = 4,
) -> dict:
    rng = np.random.default_rng(0)
    frames = np.arange(n)
    data = {
        "observations": jnp.zeros((n, 0), jnp.float32),
        "next_observations": jnp.zeros((n, 0), jnp.float32),
        "actions": jnp.asarray(rng.uniform(-1, 1, (n, act_dim)), jnp.float32),
        "rewards": jnp.asarray(rng.integers(0, 2, n), jnp.float32),
        "terminals": jnp.zeros(n, jnp.float32),
        "images": jnp.asarray(rng.integers(0, 256, (n + 1, size, size, 3)), jnp.uint8),
        "obs_frames": jnp.asarray(frames[:, None], jnp.int32),
        "next_obs_frames": jnp.asarray(frames[:, None] + 1, jnp.int32),
    }
    state = cql.init(agent, {"image": [size, size, 3], "state": 0}, act_dim, jax.random.PRNGKey(0))
    chunk = make_train_chunk("cql", agent, batch_size, steps, loop=loop)
    state, timing = time_chunk(chunk, state, data, steps)
    return {**timing, "params": cql.param_counts(state)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--settings", nargs="*", default=list(SETTINGS))
    p.add_argument("--compare-loops", action="store_true",
                   help="time the first setting with a Python loop of jitted steps and with one lax.scan")
    args = p.parse_args()
    if args.compare_loops:
        cfg = cql.CQLConfig(**SETTINGS[args.settings[0]])
        out = {loop: measure(cfg, args.steps, args.size, args.batch_size, loop) for loop in ("python", "scan")}
        out["ratio_python_over_scan"] = round(out["python"]["steps_per_s"] / out["scan"]["steps_per_s"], 2)
    else:
        out = {
            name: measure(cql.CQLConfig(**SETTINGS[name]), args.steps, args.size, args.batch_size)
            for name in args.settings
        }
    out["batch_size"] = args.batch_size
    out["image"] = [args.size, args.size, 3]
    out["machine"] = {"cpu": platform.processor() or platform.machine(), "devices": [str(d) for d in jax.devices()]}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
