"""Networks: MLPs, critics and actors."""

from offrl.networks.actor import TanhGaussianActor, sample_tanh_gaussian, tanh_gaussian_log_prob
from offrl.networks.critic import Critic, CriticEnsemble, ValueNetwork
from offrl.networks.mlp import MLP
from offrl.networks.vae import BehaviorVAE

__all__ = ["MLP", "BehaviorVAE", "Critic", "CriticEnsemble", "TanhGaussianActor", "ValueNetwork", "sample_tanh_gaussian",
           "tanh_gaussian_log_prob"]
