"""Offline RL algorithms, one file each, as pure functions over an immutable state.

Every agent module has the same functions: ``init(config, obs_dim, act_dim, key) -> state``,
``update(state, batch, key, config) -> (state, metrics)``, ``evaluate(state, batch, key, config) -> per-transition
metrics``, ``deterministic_action(actor_params, obs, act_dim, config)`` and ``param_counts(state)``.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any

from offrl.agents import awac, bc, bear, brac, cql, iql
from offrl.agents import trajectory_transformer as tt

AGENTS: dict[str, ModuleType] = {
    "cql": cql, "brac": brac, "bc": bc, "iql": iql, "awac": awac, "bear": bear, "tt": tt,
}
CONFIGS: dict[str, type] = {
    "cql": cql.CQLConfig, "brac": brac.BRACConfig, "bc": bc.BCConfig, "iql": iql.IQLConfig, "awac": awac.AWACConfig,
    "bear": bear.BEARConfig, "tt": tt.TTConfig,
}


def get_agent(algo: str) -> ModuleType:
    """The module of an algorithm by name ('cql', 'brac', 'bc', 'iql', 'awac', 'bear', 'tt')."""
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


# The field of each algorithm's config that holds its actor warm start, in gradient steps: CQL's optional
# behaviour-cloning warm start, BEAR's MMD-only start. Checkpoints within it are not the algorithm's policies.
WARMUP_FIELD = {"cql": "bc_steps", "bear": "warmstart_steps"}


def warmup_steps(algo: str, agent: Any) -> int:
    """The actor warm start of a run, in gradient steps, from its agent config (a dataclass, or its dict in
    config.json); 0 for algorithms without one or a config that does not say."""
    field = WARMUP_FIELD.get(algo)
    if field is None:
        return 0
    value = agent.get(field, 0) if isinstance(agent, dict) else getattr(agent, field, 0)
    try:
        return max(int(value or 0), 0)
    except (TypeError, ValueError):
        return 0
