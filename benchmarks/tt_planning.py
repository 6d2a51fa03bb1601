"""The Trajectory Transformer's cost on this machine: planning milliseconds per action, and training steps/s.

Usage: python benchmarks/tt_planning.py [--repeats 5] [--paper] [--train-steps 20] [--smoke]
Prints one JSON object. Shapes match MetaWorld state datasets: 39-d observations, 4-d actions, so a transition
is 45 tokens. Planning is timed for one observation and for a batch of 8 (what `offrl evaluate` hands the
policy: 8 simulators in lockstep), compilation excluded (each shape is compiled and run once before timing);
``ms_per_action`` is the time of one call over the batch size. The model is untrained (random weights, bins
fitted to random data): planning does the same work whatever the weights. ``--paper`` also times the paper's
planner (horizon 15 cropped to the 10-transition model here, beam 128 x 2, 4 x 4 x 128 model): slow on a CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import numpy as np

from offrl.agents import trajectory_transformer as tt
from offrl.data import Normalizer, make_dataset
from offrl.training.train import Inputs, _device_arrays, make_train_chunk

OBS_DIM, ACT_DIM = 39, 4


def dataset(episodes: int = 20, length: int = 150):
    rng = np.random.default_rng(0)
    n = episodes * length
    last = (np.arange(n) % length) == length - 1
    states = rng.normal(size=(n + 1, OBS_DIM)).astype(np.float32)
    nxt = states[1:].copy()
    nxt[last] = rng.normal(size=(int(last.sum()), OBS_DIM))  # each episode's final state is its own
    return make_dataset({
        "observations": states[:-1],
        "next_observations": nxt,
        "actions": rng.uniform(-1, 1, (n, ACT_DIM)).astype(np.float32),
        "rewards": (last & (rng.random(n) < 0.5)).astype(np.float32),
        "terminals": np.zeros(n, bool),
        "timeouts": last,
    }, {"task": "benchmark"})


def setup(config: tt.TTConfig, episodes: int = 20):
    ds = dataset(episodes)
    inputs = Inputs("state", tuple(range(OBS_DIM)), Normalizer.identity(OBS_DIM), gamma=config.gamma,
                    window=config.context_transitions)
    data = _device_arrays(ds, inputs)
    state = tt.init(config, OBS_DIM, ACT_DIM, jax.random.PRNGKey(0))
    state = tt.fit_data(state, jax.device_get(data), config)
    return state, data


def time_planning(state, config: tt.TTConfig, batch: int, repeats: int) -> dict:
    obs = jax.numpy.asarray(np.random.default_rng(1).normal(size=(batch, OBS_DIM)), np.float32)
    t = time.perf_counter()
    jax.block_until_ready(tt.deterministic_action(state.actor_params, obs, ACT_DIM, config))
    compile_s = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(tt.deterministic_action(state.actor_params, obs, ACT_DIM, config))
        times.append(time.perf_counter() - t)
    call = float(np.median(times))
    return {"batch": batch, "ms_per_call": round(1e3 * call, 1), "ms_per_action": round(1e3 * call / batch, 1),
            "compile_plus_first_call_s": round(compile_s, 1)}


def time_training(state, data, config: tt.TTConfig, batch: int, steps: int) -> dict:
    chunk = make_train_chunk("tt", config, batch, steps)
    t = time.perf_counter()
    jax.block_until_ready(chunk(state, data, jax.random.PRNGKey(1)))
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    jax.block_until_ready(chunk(state, data, jax.random.PRNGKey(2)))
    return {"batch": batch, "steps_per_s": round(steps / (time.perf_counter() - t), 2),
            "compile_plus_first_call_s": round(compile_s, 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--train-steps", type=int, default=20, help="gradient steps per timed chunk (0: skip training)")
    p.add_argument("--paper", action="store_true", help="also time the paper's planner and model (slow on a CPU)")
    p.add_argument("--smoke", action="store_true",
                   help="a 1-layer, 16-wide model, beam 2, batches 1 (planning) and 16 (training), 2 episodes: "
                        "checks that the script runs (numbers meaningless)")
    args = p.parse_args()
    settings = {"default": tt.TTConfig()}
    plan_batches, train_batches, episodes = (1, 8), (64, 256), 20
    if args.smoke:
        settings = {"default": tt.TTConfig(num_layers=1, num_heads=2, embed_dim=16, num_bins=16, beam_width=2)}
        plan_batches, train_batches, episodes = (1,), (16,), 2
    if args.paper:
        settings["paper"] = tt.TTConfig(context_transitions=10, num_layers=4, num_heads=4, embed_dim=128,
                                        horizon=10, beam_width=128, expand=2)
    out: dict = {"shapes": {"obs_dim": OBS_DIM, "act_dim": ACT_DIM, "tokens_per_transition": OBS_DIM + ACT_DIM + 2}}
    for name, config in settings.items():
        state, data = setup(config, episodes)
        row: dict = {"config": {k: getattr(config, k) for k in ("num_layers", "num_heads", "embed_dim", "num_bins",
                                                                "context_transitions", "horizon", "beam_width",
                                                                "expand")},
                     "params": tt.param_counts(state)["transformer"]}
        row["planning"] = [time_planning(state, config, b, args.repeats)
                           for b in (plan_batches if name == "default" else (1,))]
        if args.train_steps and name == "default":
            row["training"] = [time_training(state, data, config, b, args.train_steps) for b in train_batches]
        out[name] = row
    out["machine"] = {"cpu": platform.processor() or platform.machine(), "devices": [str(d) for d in jax.devices()]}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
