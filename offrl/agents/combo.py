"""COMBO, conservative offline model-based policy optimisation (Yu et al. 2021): Q pushed down on the model's
state-actions and up on the dataset's, ``beta (E_{s,a~rho} Q(s, a) - E_{(s,a)~D} Q(s, a))`` with rho the model
rollouts' state-action distribution (Eq. 2), plus the Bellman error on the mixture of real and model transitions;
no uncertainty penalty. The push-down is estimated at the model rows' states by CQL's log-sum-exp over actions
(:func:`offrl.agents.model_based.critic_terms`, which names its source: the authors' code is not public).

The model, its selection on held-out episodes, the rollouts and the update are shared with MOPO in
:mod:`offrl.agents.model_based`; this module gives COMBO's defaults (Yu et al. 2021, Appendix C).
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
class COMBOConfig(ModelBasedConfig):
    """COMBO's hyperparameters: beta = 1 (the paper tunes beta in {0.5, 1, 5}; offrl's CQL weight alpha is 1 too),
    f = 0.5, h = 5, CQL's deterministic backup (OfflineRL-Kit's COMBO default too), the model replay buffer and
    unclipped model rewards of MOPO's code, which COMBO builds on (:mod:`offrl.agents.model_based`)."""

    FLAGS: ClassVar[str] = "--combo"

    conservative_weight: float = 1.0
    """beta of Eq. 2."""
    penalty_coef: float = 0.0
    """No reward penalty: COMBO's pessimism is the regularizer."""
    real_ratio: float = 0.5
    """f, the fraction of real transitions (the paper: 0.5)."""
    rollout_horizon: int = 5
    """h (the paper: 5 on most tasks, 1 on some)."""
