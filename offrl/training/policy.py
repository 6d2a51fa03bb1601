"""Loading a checkpoint back as a policy: raw observations in, actions out."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from offrl.agents import DISCRETE, common, config_from_dict, get_agent, legacy_states
from offrl.data import Normalizer
from offrl.training import run_dir as rd


def load_state(run_dir: str | Path, step: int) -> tuple[Any, dict]:
    """Restore the agent state of a run at a checkpoint step, with the run's config.json. A run that keeps an
    averaged actor (agent ``actor_ema_decay`` > 0) restores as :class:`offrl.agents.common.ActorAveraged`; read the
    acting actor's parameters with :func:`actor_params`.

    Raises:
        FileNotFoundError: not a run directory, or no checkpoint at that step.
    """
    cfg = rd.load_run_config(run_dir)
    algo = cfg.get("algo", "cql")
    agent = config_from_dict(algo, cfg["agent"])
    module = get_agent(algo)
    # Discrete agents were built with the number of actions, continuous ones with the action dimension.
    dims = (run_obs_spec(cfg), cfg["dataset"].get("metadata", {}).get("num_actions") or cfg["dataset"]["act_dim"])
    like = module.init(agent, *dims, jax.random.PRNGKey(0))
    if common.actor_ema_decay(agent) > 0:
        like = common.with_actor_average(like)
    legacy = [] if common.actor_ema_decay(agent) > 0 else legacy_states(algo, agent, *dims)
    state, _ = rd.restore_checkpoint(rd.checkpoint_manager(run_dir), step, like, legacy)
    return state, cfg


def actor_params(state: Any, cfg: dict[str, Any], actor: str | None = None) -> Any:
    """The parameters of the actor a run deploys, from a state of :func:`load_state` and the run's config.json:
    ``actor`` ("trained" or "averaged") if given, else the run's recorded choice
    (:func:`offrl.workflow.rules.run_actor`). The one place evaluation, export, check and FQE read the actor from.

    Raises:
        ValueError: an unknown actor, or "averaged" for a run that keeps no average.
    """
    from offrl.workflow.rules import run_actor

    return common.actor_of(state, run_actor(cfg, actor))


def run_obs_spec(cfg: dict[str, Any]) -> Any:
    """The observation spec a run's networks were built for (runs before image support: obs_dim)."""
    return cfg["dataset"].get("obs_spec", cfg["dataset"]["obs_dim"])


def checkpoint_policy(run_dir: str | Path, step: int, actor: str | None = None) -> Callable[[Any], np.ndarray]:
    """The deterministic policy ``tanh(mu(s))`` of a checkpoint (the reference code's evaluation action), of the
    run's deployed actor, or of ``actor`` ("trained", "averaged") when given (:func:`actor_params`).

    The returned function maps raw observations (B, obs_dim) float to actions (B, act_dim) float32 in [-1, 1];
    the run's observation normalisation is applied inside it. Image runs take
    ``{"image": (B, H, W, C * frame_stack) uint8, "state": (B, obs_dim) float}`` (the simulator's full state;
    the run's state columns are picked inside), as :func:`offrl.envs.evaluate_policy` hands them out.
    """
    cfg = rd.load_run_config(run_dir)
    if cfg.get("algo", "cql") in DISCRETE:
        raise ValueError(f"{run_dir} is a discrete-action run (--algo {cfg['algo']}): it has no continuous policy; "
                         f"`offrl evaluate` rolls it out in MinAtar (offrl.envs.minatar.evaluate_greedy)")
    state, cfg = load_state(run_dir, step)
    params = actor_params(state, cfg, actor)
    algo = cfg.get("algo", "cql")
    module = get_agent(algo)
    agent = config_from_dict(algo, cfg["agent"])
    normalizer = Normalizer.from_dict(cfg["normalizer"])
    act_dim = int(cfg["dataset"]["act_dim"])

    mode = cfg["dataset"].get("obs_mode", "state")
    columns = list(cfg["dataset"].get("state_columns", []))

    def policy(observations: Any) -> np.ndarray:
        if mode == "state":
            obs = normalizer(np.asarray(observations, np.float32))
        else:
            state_in = np.asarray(observations["state"], np.float32)
            obs = {"image": np.asarray(observations["image"], np.uint8), "state": normalizer(state_in[:, columns])}
        return np.asarray(module.deterministic_action(params, obs, act_dim, agent))

    return policy


def best_step_by(run_dir: str | Path, key: str, fallback: str | None = None) -> int:
    """The checkpoint step whose metrics record has the highest ``key`` (``fallback`` when no record has it),
    among steps that have a complete checkpoint.

    Raises:
        FileNotFoundError: the run has no checkpoint with that metric.
    """
    saved = set(rd.checkpoint_steps(run_dir))
    records = [r for r in rd.read_metrics(run_dir) if int(r["step"]) in saved]
    for k in (key, fallback):
        scored = [(r[k], int(r["step"])) for r in records if k and isinstance(r.get(k), (int, float))
                  and math.isfinite(r[k])]
        if scored:
            return max(scored)[1]
    raise FileNotFoundError(f"{run_dir} has no checkpoint with a finite '{key}'")
