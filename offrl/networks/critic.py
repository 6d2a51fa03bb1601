"""Q-function critics: ``Q(s, a)`` from a state MLP, and an ensemble built with one call (``nn.vmap``)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from offrl.networks.encoders import EncoderKind, ObservationEncoder, is_image_observation
from offrl.networks.mlp import MLP


class Critic(nn.Module):
    """``Q(s, a)``: an MLP on the concatenation ``[phi(s), a]``, with the paper's optional regularizers.

    ``phi(s)`` is the state itself for state observations, or the flat features of an image encoder
    (:class:`~offrl.networks.encoders.ObservationEncoder`) for image observations; the action is concatenated to
    the flat conv features, as in the reference code.

    Attributes:
        hidden_dims: hidden widths.
        dropout_rate, layer_norm: see :class:`MLP` (Guideline 4.1 / a common stabiliser).
        vib_dim: > 0 inserts a variational information bottleneck (paper Eq. 3): the MLP predicts the mean and
            log-std of a ``vib_dim``-dimensional Gaussian code z, sampled as ``mu + sigma * eps`` (eps from a
            'vib' PRNG stream; z = mu when deterministic), and a head MLP of the same widths maps z to Q.
        encoder: image encoder, 'cnn' (the paper's) or 'resnet' (Guideline 4.2); unused for state observations.

    ``__call__(observations, actions (..., act_dim), encoded=None, deterministic=True, return_aux=False,
    encode_only=False)`` returns Q (...,) and, with ``return_aux=True``, also ``{"features": penultimate features
    (..., width), "kl": (...,) KL of the code to N(0, I), 0 without VIB}``; the features feed DR3 (paper Eq. 4)
    and the srank diagnostic. ``encode_only=True`` returns phi(s) (B, F) alone; passing it back as ``encoded``
    (with ``observations=None``) skips the encoder, so CQL's sampled actions at a state reuse one encoding.
    ``encoded`` (B, F) broadcasts against actions with extra leading axes, e.g. (n, B, act_dim).
    """

    hidden_dims: Sequence[int]
    dropout_rate: float = 0.0
    layer_norm: bool = False
    vib_dim: int = 0
    encoder: EncoderKind = "cnn"

    @nn.compact
    def __call__(
        self,
        observations,
        actions: jnp.ndarray | None,
        encoded: jnp.ndarray | None = None,
        deterministic: bool = True,
        return_aux: bool = False,
        encode_only: bool = False,
    ):
        if encoded is None:
            # Created only for image observations, so state critics keep the parameter names of offrl 0.1.0.
            encoded = ObservationEncoder(self.encoder, self.dropout_rate, name="encoder")(observations, deterministic)
            if encode_only:
                return encoded
        encoded = jnp.broadcast_to(encoded, (*actions.shape[:-1], encoded.shape[-1]))
        x = jnp.concatenate([encoded, actions], axis=-1)
        kl = jnp.zeros(x.shape[:-1], x.dtype)
        if self.vib_dim > 0:
            h = MLP(self.hidden_dims, activate_final=True, dropout_rate=self.dropout_rate,
                    layer_norm=self.layer_norm)(x, deterministic)
            mu = nn.Dense(self.vib_dim)(h)
            log_std = jnp.clip(nn.Dense(self.vib_dim)(h), -10.0, 2.0)
            if deterministic:
                z = mu
            else:
                z = mu + jnp.exp(log_std) * jax.random.normal(self.make_rng("vib"), mu.shape, mu.dtype)
            # KL(N(mu, sigma^2) || N(0, I)) summed over the code's dimensions.
            kl = 0.5 * jnp.sum(mu**2 + jnp.exp(2 * log_std) - 1.0 - 2 * log_std, axis=-1)
            x = z
        # The output layer stays inside the MLP so that parameter names match checkpoints of offrl 0.1.0.
        q, features = MLP(self.hidden_dims, output_dim=1, dropout_rate=self.dropout_rate,
                          layer_norm=self.layer_norm)(x, deterministic, return_features=True)
        q = q[..., 0]
        return (q, {"features": features, "kl": kl}) if return_aux else q


class CriticEnsemble(nn.Module):
    """``num_critics`` independent critics with stacked parameters, evaluated in one vectorised call.

    Building the ensemble with ``nn.vmap`` guarantees every member has the same architecture (a second
    hand-written critic can silently differ, as happened in CORL). Dropout and VIB noise are drawn
    independently per member. Each member has its own image encoder (as the reference code's two Q-networks),
    ``encoder_0``, ``encoder_1``, ... beside the vmapped heads; with ``shared_encoder`` one encoder,
    ``encoder_0``, feeds every member (DrQ's design).

    Input observations (B, ...) and actions (B, act_dim) -> Q (num_critics, B) float32 (and the aux dict of
    :class:`Critic`, stacked the same way, with ``return_aux``). ``encode_only=True`` gives each member's
    phi(s), (num_critics, B, F); pass it back as ``encoded`` (observations None) with actions of any leading
    shape (..., B, act_dim) to get Q (num_critics, ..., B) without running the encoders again.
    """

    hidden_dims: Sequence[int]
    num_critics: int = 2
    dropout_rate: float = 0.0
    layer_norm: bool = False
    vib_dim: int = 0
    encoder: EncoderKind = "cnn"
    shared_encoder: bool = False

    @nn.compact
    def __call__(
        self,
        observations,
        actions=None,
        encoded=None,
        deterministic: bool = True,
        return_aux: bool = False,
        encode_only: bool = False,
    ):
        if encoded is None:
            if is_image_observation(observations):
                # One encoder module per member, outside the vmap: XLA turns a vmapped convolution into a
                # grouped one whose gradient is ~8x slower on the CPU than two plain convolutions
                # (0.36 s vs 2.8 s per batch of 256 48x48 images, measured on 2 cores).
                n_encoders = 1 if self.shared_encoder else self.num_critics
                encoded = jnp.stack([
                    ObservationEncoder(self.encoder, self.dropout_rate, name=f"encoder_{i}")(
                        observations, deterministic
                    )
                    for i in range(n_encoders)
                ])
                encoded = jnp.broadcast_to(encoded, (self.num_critics, *encoded.shape[1:]))
            else:
                encoded = jnp.broadcast_to(observations, (self.num_critics, *observations.shape))
            if encode_only:
                return encoded
        ensemble = nn.vmap(
            Critic,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True, "vib": True},
            # Each member maps over its own slice of ``encoded``; the actions are shared.
            in_axes=(None, None, 0, None, None, None),
            out_axes=0,
            axis_size=self.num_critics,
            methods=["__call__"],
        )
        return ensemble(self.hidden_dims, self.dropout_rate, self.layer_norm, self.vib_dim, self.encoder)(
            None, actions, encoded, deterministic, return_aux, False
        )


class ValueNetwork(nn.Module):
    """State value ``V(s)``: an MLP on ``phi(s)`` (the state itself, or an image encoder's flat features).

    Input observations (B, obs_dim) or image observations (see
    :class:`~offrl.networks.encoders.ObservationEncoder`) -> V (B,) float32. IQL's value function (Kostrikov et
    al. 2022, Eq. 5).
    """

    hidden_dims: Sequence[int]
    encoder: EncoderKind = "cnn"

    @nn.compact
    def __call__(self, observations) -> jnp.ndarray:
        h = ObservationEncoder(self.encoder, name="encoder")(observations)
        return MLP(self.hidden_dims, output_dim=1)(h)[..., 0]
