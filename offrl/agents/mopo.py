"""MOPO, model-based offline policy optimisation (Yu et al. 2020): SAC on real and model transitions whose model
rewards are penalised by the ensemble's uncertainty, ``r~ = r^ - lambda max_i ||Sigma_i(s, a)||_F`` (Eq. 10).

The model, its selection on held-out episodes, the rollouts and the update are shared with COMBO in
:mod:`offrl.agents.model_based`; this module gives MOPO's defaults (Yu et al. 2020, Appendix; MBPO's real ratio).
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
    """MOPO's hyperparameters: lambda = 1 and h = 5 (the paper's most common setting), 5 % real transitions
    (MBPO, which MOPO builds on); the deterministic backup of offrl's CQL and COMBO instead of SAC's soft one
    (``deterministic_backup``: a deviation, docs/model-based.md)."""

    FLAGS: ClassVar[str] = "--mopo"

    penalty_coef: float = 1.0
    """lambda of Eq. 10 (the paper: 1 on most D4RL tasks, up to 5)."""
    conservative_weight: float = 0.0
    """No conservative term: MOPO's pessimism is the reward penalty alone."""
    real_ratio: float = 0.05
    """Fraction of real transitions per minibatch (MBPO and MOPO: 0.05)."""
    rollout_horizon: int = 5
    """h (the paper: 5, or 1 on some tasks)."""
    deterministic_backup: bool = True
    """Deviation from MOPO's SAC (soft backup, ``False``): the entropy term stays out of the TD target, as in
    CQL's reference code. With 0/1 rewards the soft backup's bonus, about alpha * H / (1 - gamma) (0.04 * 2.2 /
    0.01 = 9 measured), outweighs every reward: on the model-based grid's first MOPO runs `q_data` reached 3.4
    (pick-place-v3) and 5.6 (drawer-open-v3) on a [0, 1] range, and no checkpoint succeeded (0/80)."""
