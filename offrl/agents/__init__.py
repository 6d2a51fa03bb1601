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


def _legacy(algo: str, d: dict[str, Any]) -> dict[str, Any]:
    """The settings a config.json written before a field existed trained with, so that ``--resume`` continues the
    run it started and reading an archived run describes what it did (issue 43 changed two agents' defaults)."""
    if algo == "bear" and "behaviour_tau" not in d:
        d = {**d, "behaviour_tau": 1.0}  # the VAE just trained, as before the Polyak-averaged behaviour model
    if algo == "dqn" and "grid_shape" not in d:
        # Before issue 43: the variant named "dqn" used Double DQN's target, and the flat grids went through an MLP.
        d = {**d, "encoder": "mlp", "variant": "double_dqn" if d.get("variant", "dqn") == "dqn" else d["variant"]}
    return d


def config_from_dict(algo: str, d: dict[str, Any]) -> Any:
    """Rebuild an agent config from its JSON form (lists back to tuples); renamed fields are read under their
    new names (:data:`RENAMED`); fields a config.json predates take the value it trained with (:func:`_legacy`);
    unknown keys are ignored."""
    d = _legacy(algo, {RENAMED.get((algo, k), k): v for k, v in d.items()})
    cls = CONFIGS[algo]
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names})


def legacy_states(algo: str, config: Any, obs_dim: Any, act_dim: int) -> list[tuple[Any, Any]]:
    """Older checkpoint layouts of an agent as ``(like_state, upgrade)`` pairs (empty when it has none)."""
    module = get_agent(algo)
    return module.legacy_states(config, obs_dim, act_dim) if hasattr(module, "legacy_states") else []
