"""What drives CQL's q_data slide (docs/metrics.md): a few thousand steps of each variant; prints one JSON object.

    python benchmarks/q_slide.py DATASET [--steps 3000] [--variants reference no_entropy no_warm_start calql]
    python benchmarks/q_slide.py DATASET --smoke   # 6 steps of 16-wide networks: checks that the script runs

Variants: ``reference`` (plain CQL(H), 10,000-step behaviour-cloning warm start, as the workflow paper's code),
``no_entropy`` (the same, the warm start's loss without the entropy term: pure maximum likelihood),
``no_warm_start`` (plain CQL(H) from the first step), ``calql`` (offrl's default: Cal-QL, no warm start) and
``calql_warm_start`` (Cal-QL with a 5,000-step warm start). For each: q_data, q_policy, td_error and the
policy's entropy at every 1,000 steps. Run directories go to a temporary folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

import offrl.agents.cql as cql
from offrl.networks import sample_tanh_gaussian, tanh_gaussian_log_prob
from offrl.training import run_dir as rd
from offrl.training.train import TrainConfig, train

VARIANTS = {
    "reference": {"calibrated": False, "bc_steps": 10_000},
    "no_entropy": {"calibrated": False, "bc_steps": 10_000},
    "no_warm_start": {"calibrated": False, "bc_steps": 0},
    "calql": {"calibrated": True, "bc_steps": 0},
    "calql_warm_start": {"calibrated": True, "bc_steps": 5_000},
}


def _actor_loss_without_entropy_in_warm_start(actor_params, critic_params, log_temperature, batch, key, bc_phase,
                                              config):
    # cql.actor_loss with the warm start's loss reduced to -log pi(a_data|s) (no temperature * log pi).
    critic, actor = cql._networks(config, batch["actions"].shape[-1])
    mean, log_std = actor.apply(actor_params, batch["observations"])
    act, log_pi = sample_tanh_gaussian(key, mean, log_std)
    temperature = jnp.exp(jax.lax.stop_gradient(log_temperature))
    q_pi = critic.apply(critic_params, batch["observations"], act).min(axis=0)
    ll = tanh_gaussian_log_prob(batch["actions"], mean, log_std)
    loss = jnp.where(bc_phase, jnp.mean(-ll), jnp.mean(temperature * log_pi - q_pi))
    return loss, {"log_pi": log_pi.mean(), "bc_log_likelihood": ll.mean()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true",
                        help="6 steps, a checkpoint every 3, 16x16 networks, batch 16, warm starts of at most 2 "
                             "steps: checks that the script runs (numbers meaningless)")
    args = parser.parse_args()
    every, tiny = 1000, {}
    if args.smoke:
        args.steps, every = 6, 3
        tiny = {"critic_hidden_dims": (16, 16), "actor_hidden_dims": (16, 16)}
    out: dict[str, list[dict]] = {}
    original = cql.actor_loss
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants:
            cql.actor_loss = _actor_loss_without_entropy_in_warm_start if name == "no_entropy" else original
            agent = dataclasses.replace(cql.CQLConfig(), **VARIANTS[name], **tiny)
            if args.smoke:
                agent = dataclasses.replace(agent, bc_steps=min(agent.bc_steps, 2))
            run = Path(tmp) / name
            train(TrainConfig(dataset=args.dataset, out=run, steps=args.steps, checkpoint_every=every,
                              chunk_steps=min(every, 1000), progress=False, seed=args.seed, agent=agent,
                              **({"batch_size": 16} if args.smoke else {})))
            out[name] = [{"step": r["step"], "q_data": r["q_data"], "q_policy": r["q_policy"],
                          "td_error": r["td_error"], "entropy": r["train/entropy"]} for r in rd.read_metrics(run)]
    cql.actor_loss = original
    print(json.dumps({"dataset": str(args.dataset), "steps": args.steps, "seed": args.seed, "smoke": args.smoke, "results": out},
                     indent=1))


if __name__ == "__main__":
    main()
