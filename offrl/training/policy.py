"""Loading a checkpoint back as a policy: raw observations in, actions out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from offrl.agents import cql
from offrl.data import Normalizer
from offrl.training import run_dir as rd
from offrl.training.train import agent_config_from_dict, load_run_config


def load_state(run_dir: str | Path, step: int) -> tuple[cql.CQLState, dict]:
    """Restore the agent state of a run at a checkpoint step, with the run's config.json.

    Raises:
        FileNotFoundError: not a run directory, or no checkpoint at that step.
    """
    cfg = load_run_config(run_dir)
    agent = agent_config_from_dict(cfg["agent"])
    like = cql.init(agent, cfg["dataset"]["obs_dim"], cfg["dataset"]["act_dim"], jax.random.PRNGKey(0))
    state, _ = rd.restore_checkpoint(rd.checkpoint_manager(run_dir), step, like)
    return state, cfg


def load_policy(run_dir: str | Path, step: int) -> Callable[[np.ndarray], np.ndarray]:
    """The deterministic policy ``tanh(mu(s))`` of a checkpoint (the reference code's evaluation action).

    The returned function maps raw observations (B, obs_dim) float to actions (B, act_dim) float32 in [-1, 1];
    the run's observation normalisation is applied inside it.
    """
    state, cfg = load_state(run_dir, step)
    agent = agent_config_from_dict(cfg["agent"])
    normalizer = Normalizer.from_dict(cfg["normalizer"])
    act_dim = int(cfg["dataset"]["act_dim"])

    def policy(observations: np.ndarray) -> np.ndarray:
        obs = normalizer(np.asarray(observations, np.float32))
        return np.asarray(cql.deterministic_action(state.actor_params, obs, act_dim, agent))

    return policy
