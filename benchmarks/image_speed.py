"""Gradient steps per second of image CQL (48x48x3 pixels, batch 256) for the paper's encoders.

Usage: python benchmarks/image_speed.py [--steps 20] [--size 48] [--batch-size 256] [--transitions 5000]
       [--settings cnn_fc256x3 ...]
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
from timing import device_data, random_dataset, time_chunk

from offrl.agents import cql, get_agent
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
    agent, steps: int, size: int, batch_size: int = 256, loop: str = "auto", n: int = 5000, act_dim: int = 4,
    algo: str = "cql", dataset=None,
) -> dict:
    """Steps/s of ``algo``'s image update for ``agent`` on ``n`` random transitions with (size, size, 3) frames:
    ``{"steps_per_s", "compile_plus_first_call_s", "params"}``. The data are the device arrays `offrl train --obs
    image` builds (timing.device_data), so they hold whatever the agent's batches need (Cal-QL's mc_returns).
    ``dataset``: an offrl image dataset to use instead (``n``, ``size`` and ``act_dim`` are then ignored)."""
    ds = random_dataset(n, 39, act_dim, image_size=size) if dataset is None else dataset
    data, spec = device_data(ds, algo, agent, "image")
    module = get_agent(algo)
    state = module.init(agent, spec, ds.act_dim, jax.random.PRNGKey(0))
    chunk = make_train_chunk(algo, agent, batch_size, steps, loop=loop)
    state, timing = time_chunk(chunk, state, data, steps)
    return {**timing, "params": module.param_counts(state)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--transitions", type=int, default=5000, help="random transitions held on the device")
    p.add_argument("--settings", nargs="*", default=list(SETTINGS))
    p.add_argument("--compare-loops", action="store_true",
                   help="time the first setting with a Python loop of jitted steps and with one lax.scan")
    args = p.parse_args()
    if args.compare_loops:
        cfg = cql.CQLConfig(**SETTINGS[args.settings[0]])
        out = {loop: measure(cfg, args.steps, args.size, args.batch_size, loop, args.transitions) for loop in ("python", "scan")}
        out["ratio_python_over_scan"] = round(out["python"]["steps_per_s"] / out["scan"]["steps_per_s"], 2)
    else:
        out = {
            name: measure(cql.CQLConfig(**SETTINGS[name]), args.steps, args.size, args.batch_size, n=args.transitions)
            for name in args.settings
        }
    out["batch_size"] = args.batch_size
    out["image"] = [args.size, args.size, 3]
    out["machine"] = {"cpu": platform.processor() or platform.machine(), "devices": [str(d) for d in jax.devices()]}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
