"""Conditional variational auto-encoder of the behaviour policy, p(a|s) (BCQ, Fujimoto et al. 2019; BEAR's
sampler of dataset-like actions, Kumar et al. 2019)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from offrl.networks.encoders import EncoderKind, ObservationEncoder
from offrl.networks.mlp import MLP


class BehaviorVAE(nn.Module):
    """Encoder q(z|s, a) = N(mu, sigma^2) and decoder a = tanh(d(s, z)).

    Attributes:
        hidden_dims: widths of the encoder and decoder MLPs (BCQ and BEAR: 750, 750).
        act_dim: action size; latent_dim: size of z (BEAR: 2 x act_dim).
        encoder: image encoder of s ('cnn' or 'resnet'); unused for state observations.

    ``__call__(observations (B, ...), actions (B, act_dim), key)`` returns the reconstruction (B, act_dim), mu and
    log_sigma (B, latent_dim), log_sigma clamped to [-4, 15] as in BCQ. :meth:`decode` maps (B, ...) observations and
    z (..., B, latent_dim) to the pre-tanh actions (..., B, act_dim).
    """

    hidden_dims: Sequence[int]
    act_dim: int
    latent_dim: int
    encoder: EncoderKind = "cnn"

    def setup(self) -> None:
        self.obs_encoder = ObservationEncoder(self.encoder, name="obs_encoder")
        self.enc = MLP(self.hidden_dims, activate_final=True)
        self.mu = nn.Dense(self.latent_dim)
        self.log_sigma = nn.Dense(self.latent_dim)
        self.dec = MLP(self.hidden_dims, output_dim=self.act_dim)

    def __call__(self, observations, actions: jnp.ndarray, key: jax.Array):
        phi = self.obs_encoder(observations)
        h = self.enc(jnp.concatenate([phi, actions], axis=-1))
        mu, log_sigma = self.mu(h), jnp.clip(self.log_sigma(h), -4.0, 15.0)
        z = mu + jnp.exp(log_sigma) * jax.random.normal(key, mu.shape, mu.dtype)
        return jnp.tanh(self._decode(phi, z)), mu, log_sigma

    def _decode(self, phi: jnp.ndarray, z: jnp.ndarray) -> jnp.ndarray:
        phi = jnp.broadcast_to(phi, (*z.shape[:-1], phi.shape[-1]))
        return self.dec(jnp.concatenate([phi, z], axis=-1))

    def decode(self, observations, z: jnp.ndarray) -> jnp.ndarray:
        """Pre-tanh actions d(s, z): observations (B, ...), z (..., B, latent_dim) -> (..., B, act_dim)."""
        return self._decode(self.obs_encoder(observations), z)
