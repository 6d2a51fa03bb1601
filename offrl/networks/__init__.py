"""Networks: MLPs, critics and actors."""

from offrl.networks.actor import TanhGaussianActor, sample_tanh_gaussian, tanh_gaussian_log_prob
from offrl.networks.critic import Critic, CriticEnsemble, ValueNetwork
from offrl.networks.mlp import MLP

__all__ = ["MLP", "Critic", "CriticEnsemble", "TanhGaussianActor", "ValueNetwork", "sample_tanh_gaussian",
           "tanh_gaussian_log_prob"]
