"""Offline RL algorithms, one file each, as pure functions over an immutable state.

Every agent module has the same functions: ``init(config, obs_dim, act_dim, key) -> state``,
``update(state, batch, key, config) -> (state, metrics)``, ``evaluate(state, batch, key, config) -> per-transition
metrics``, ``deterministic_action(actor_params, obs, act_dim, config)`` and ``param_counts(state)``.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any

from offrl.agents import awac, bc, bear, brac, combo, cql, dqn, iql, mopo
from offrl.agents import trajectory_transformer as tt

# The actor warm start of a run (CQL's behaviour cloning, BEAR's MMD-only start) is a fact of its config.json,
# defined beside the run directory, which imports no jax, so that diagnosing a run needs no agent code.
from offrl.training.run_dir import WARMUP_FIELD, warmup_steps  # noqa: F401

AGENTS: dict[str, ModuleType] = {
    "cql": cql, "brac": brac, "bc": bc, "iql": iql, "awac": awac, "bear": bear, "tt": tt, "dqn": dqn,
    "mopo": mopo, "combo": combo,
}
CONFIGS: dict[str, type] = {
    "cql": cql.CQLConfig, "brac": brac.BRACConfig, "bc": bc.BCConfig, "iql": iql.IQLConfig, "awac": awac.AWACConfig,
    "bear": bear.BEARConfig, "tt": tt.TTConfig, "dqn": dqn.DQNConfig, "mopo": mopo.MOPOConfig,
    "combo": combo.COMBOConfig,
}
# Algorithms of discrete actions (datasets whose metadata says action_space "discrete"); the others act continuously.
DISCRETE = ("dqn",)
# Model-based algorithms (offrl.agents.model_based): a model phase first, selected on held-out episodes.
MODEL_BASED = ("mopo", "combo")


def get_agent(algo: str) -> ModuleType:
    """The module of an algorithm by name ('cql', 'brac', 'bc', 'iql', 'awac', 'bear', 'tt', 'dqn', 'mopo',
    'combo')."""
    if algo not in AGENTS:
        raise ValueError(f"unknown algorithm {algo!r}: choose one of {sorted(AGENTS)}")
    return AGENTS[algo]


# Fields renamed since runs were first written: (algo, old name) -> new name (config.json of older runs).
RENAMED = {("cql", "beta"): "vib_beta"}


def config_from_dict(algo: str, d: dict[str, Any]) -> Any:
    """Rebuild an agent config from its JSON form (lists back to tuples); renamed fields are read under their
    new names (:data:`RENAMED`); unknown keys are ignored."""
    d = {RENAMED.get((algo, k), k): v for k, v in d.items()}
    cls = CONFIGS[algo]
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names})


def legacy_states(algo: str, config: Any, obs_dim: Any, act_dim: int) -> list[tuple[Any, Any]]:
    """Older checkpoint layouts of an agent as ``(like_state, upgrade)`` pairs (empty when it has none)."""
    module = get_agent(algo)
    return module.legacy_states(config, obs_dim, act_dim) if hasattr(module, "legacy_states") else []
