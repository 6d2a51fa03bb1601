"""MOPO, model-based offline policy optimisation (Yu et al. 2020): SAC on real and model transitions whose model
rewards are penalised by the ensemble's uncertainty, ``r~ = r^ - lambda max_i ||sigma_i(s, a)||_2`` (Eq. 10, as
MOPO's code computes it: :func:`offrl.networks.dynamics.mopo_penalty`).

The model, its selection on held-out episodes, the rollouts, the model replay buffer and the update are shared with
COMBO in :mod:`offrl.agents.model_based`; this module gives MOPO's defaults (Yu et al. 2020, Appendix, and the
code's ``examples/config/d4rl/base.py`` of tianheyu927/mopo).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from offrl.agents.model_based import (  # noqa: F401  (the agent interface of offrl.agents)
    STATE_OBSERVATIONS_ONLY,
    ModelBasedConfig,
    ModelBasedState,
    config_problems,
    deterministic_action,
    evaluate,
    fit_data,
    init,
    param_counts,
    select_model,
    sequence_window,
    split_sizes,
    update,
)


@dataclasses.dataclass(frozen=True)
class MOPOConfig(ModelBasedConfig):
    """MOPO's hyperparameters: lambda = 1 and h = 5 (the paper's most common setting), 5 % real transitions,
    50 rollouts per step kept for 5,000 steps (MOPO's code, after MBPO), SAC's soft backup, unclipped model
    rewards."""

    FLAGS: ClassVar[str] = "--mopo"

    penalty_coef: float = 1.0
    """lambda of Eq. 10 (the paper: 1 on most D4RL tasks, up to 5)."""
    conservative_weight: float = 0.0
    """No conservative term: MOPO's pessimism is the reward penalty alone."""
    real_ratio: float = 0.05
    """Fraction of real transitions per minibatch (MBPO and MOPO: 0.05)."""
    rollout_horizon: int = 5
    """h (the paper: 5, or 1 on some tasks)."""
    deterministic_backup: bool = False
    """SAC's soft backup, as MOPO's code (``_get_Q_target`` of ``mopo/algorithms/mopo.py``: ``min Q' - alpha log
    pi``). ``True`` leaves the entropy term out (CQL's reference code). offrl's earlier MOPO ran with ``True``: on
    the model-based grid's first MOPO runs with the soft backup (and with clipped model rewards and fresh
    branches per step, since replaced) `q_data` reached 3.4 (pick-place-v3) and 5.6 (drawer-open-v3) on a [0, 1]
    range, the soft backup's bonus about alpha * H / (1 - gamma) (0.04 * 2.2 / 0.01 = 9 measured); a rerun of the
    faithful MOPO is pending (docs/model-based.md)."""
