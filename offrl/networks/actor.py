"""The tanh-Gaussian policy of SAC/CQL: ``a = tanh(u)``, ``u ~ N(mu(s), sigma(s)^2)``."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from offrl.networks.encoders import EncoderKind, ObservationEncoder
from offrl.networks.mlp import MLP

# Clamp of log sigma used by the reference code (rlkit TanhGaussianPolicy).
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
# Actions are pulled this far inside (-1, 1) before atanh so the log-density of dataset actions at the bounds
# stays finite (behaviour-cloning warm start, log-likelihood of dataset actions).
_ATANH_EPS = 1e-6


class TanhGaussianActor(nn.Module):
    """Outputs the mean and log-std of the pre-tanh Gaussian.

    Input observations (B, obs_dim), or image observations ``{"image": (B, H, W, C) uint8, "state": (B, d)}``
    encoded by its own ``encoder`` ('cnn' or 'resnet', see :mod:`offrl.networks.encoders`) ->
    ``(mean, log_std)``, each (B, act_dim) float32, with log_std clamped to [-5, 2].
    """

    hidden_dims: Sequence[int]
    act_dim: int
    encoder: EncoderKind = "cnn"

    @nn.compact
    def __call__(self, observations) -> tuple[jnp.ndarray, jnp.ndarray]:
        # The encoder has parameters only for image observations: state actors keep offrl 0.1.0's names.
        h = ObservationEncoder(self.encoder, name="encoder")(observations)
        h = MLP(self.hidden_dims, activate_final=True)(h)
        mean = nn.Dense(self.act_dim)(h)
        log_std = jnp.clip(nn.Dense(self.act_dim)(h), LOG_STD_MIN, LOG_STD_MAX)
        return mean, log_std


def _gaussian_log_prob(u: jnp.ndarray, mean: jnp.ndarray, log_std: jnp.ndarray) -> jnp.ndarray:
    z = (u - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z**2 - log_std - 0.5 * jnp.log(2 * jnp.pi), axis=-1)


def _tanh_log_det(u: jnp.ndarray) -> jnp.ndarray:
    # log |d tanh(u)/du| = log(1 - tanh(u)^2), written in the numerically stable softplus form.
    return jnp.sum(2.0 * (jnp.log(2.0) - u - jax.nn.softplus(-2.0 * u)), axis=-1)


def sample_tanh_gaussian(
    key: jax.Array, mean: jnp.ndarray, log_std: jnp.ndarray, num_samples: int | None = None
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Reparameterised sample ``a = tanh(mean + std * eps)`` and its log-density.

    Args:
        key: PRNG key.
        mean, log_std: (..., act_dim).
        num_samples: draw this many samples per input, giving (num_samples, ..., act_dim); None for one.

    Returns:
        actions (..., act_dim) in (-1, 1) and log pi(a|s) (...,), with the tanh change of variables.
    """
    shape = mean.shape if num_samples is None else (num_samples, *mean.shape)
    u = mean + jnp.exp(log_std) * jax.random.normal(key, shape, mean.dtype)
    return jnp.tanh(u), _gaussian_log_prob(u, mean, log_std) - _tanh_log_det(u)


def tanh_gaussian_log_prob(actions: jnp.ndarray, mean: jnp.ndarray, log_std: jnp.ndarray) -> jnp.ndarray:
    """log pi(a|s) of given actions (..., act_dim) in [-1, 1] (clipped just inside for atanh) -> (...,)."""
    a = jnp.clip(actions, -1.0 + _ATANH_EPS, 1.0 - _ATANH_EPS)
    u = jnp.arctanh(a)
    return _gaussian_log_prob(u, mean, log_std) - _tanh_log_det(u)
