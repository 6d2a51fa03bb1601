"""Image encoders of the workflow paper (the reference code's CNN and its 9-conv "ResNet"), and the module that
turns an observation -- a state vector, or a camera image with an optional state vector -- into flat features.

Observations are either a float32 array (..., obs_dim) (state-based runs) or a dict
``{"image": uint8 (..., H, W, C), "state": float32 (..., d)}`` (image runs; ``d`` may be 0). Images are scaled
to [0, 1] inside the encoder, so datasets and device memory keep the compact uint8 form.
"""

from __future__ import annotations

from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

EncoderKind = Literal["cnn", "resnet"]


def is_image_observation(observations: Any) -> bool:
    """True for the dict form ``{"image": ..., "state": ...}`` of image observations."""
    return isinstance(observations, dict) and "image" in observations


def _channel_dropout(x: jnp.ndarray, rate: float, deterministic: bool) -> jnp.ndarray:
    # Guideline 4.1's "channel dropout after each conv": one mask per (image, channel), shared over H and W.
    if rate <= 0:
        return x
    return nn.Dropout(rate, broadcast_dims=(-3, -2))(x, deterministic=deterministic)


@jax.custom_vjp
def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
    """Max-pooling over non-overlapping 2x2 windows (``nn.max_pool(x, (2, 2), strides=(2, 2))``, VALID: an odd
    last row or column is dropped), with a faster gradient on CPU.

    (B, H, W, C) float -> (B, H // 2, W // 2, C). The value and the gradient are exactly those of
    ``nn.max_pool``: the gradient goes to the first maximum of each window in row-major order. XLA's CPU backend
    lowers max-pool's gradient to ``select_and_scatter``; four elementwise masks instead cut the CNN's
    gradient from about 220 to 125 ms at batch 256, 48x48 on 2 cores (a CQL image step: 1.26 -> 2.30 steps/s,
    docs/speed.md).
    """
    return nn.max_pool(x, (2, 2), strides=(2, 2))


def _max_pool_fwd(x: jnp.ndarray) -> tuple[jnp.ndarray, tuple[jnp.ndarray, jnp.ndarray]]:
    y = max_pool_2x2(x)
    return y, (x, y)


def _max_pool_bwd(res: tuple[jnp.ndarray, jnp.ndarray], g: jnp.ndarray) -> tuple[jnp.ndarray]:
    x, y = res
    b, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    windows = x[:, : 2 * h2, : 2 * w2].reshape(b, h2, 2, w2, 2, c)
    taken = jnp.zeros(y.shape, bool)
    rows = []
    for i in range(2):
        row = []
        for j in range(2):
            hit = (windows[:, :, i, :, j] == y) & ~taken  # the first maximum wins, as select_and_scatter
            taken = taken | hit
            row.append(jnp.where(hit, g, 0.0).astype(x.dtype))
        rows.append(jnp.stack(row, axis=3))  # (B, H/2, W/2, 2, C)
    dx = jnp.stack(rows, axis=2).reshape(b, 2 * h2, 2 * w2, c)
    return (jnp.pad(dx, ((0, 0), (0, h - 2 * h2), (0, w - 2 * w2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


class ConvEncoder(nn.Module):
    """The reference code's CNN (implementation-notes.md, "Image networks"): conv 3x3 (16 channels, stride 1,
    padding 1) -> ReLU -> max-pool 2; the same again; a third conv 3x3/16 without pooling; flatten.

    Input uint8 or float images (B, H, W, C) -> float32 features (B, 16 * (H // 4) * (W // 4)); 2,304 features
    at 48x48 and 4,096 at 64x64. ``dropout_rate`` > 0 adds channel dropout after each conv (needs a 'dropout'
    PRNG stream when ``deterministic=False``).
    """

    channels: int = 16
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, images: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
        x = _to_unit(images)
        for i in range(3):
            x = nn.relu(nn.Conv(self.channels, (3, 3), strides=1, padding=1)(x))
            x = _channel_dropout(x, self.dropout_rate, deterministic)
            if i < 2:
                x = max_pool_2x2(x)
        return x.reshape(x.shape[0], -1)


class ResidualBlock(nn.Module):
    """ReLU -> conv 3x3 (C -> C / 2) -> ReLU -> conv 1x1 (C / 2 -> C), plus the identity skip (reference code)."""

    channels: int = 128
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
        h = nn.Conv(self.channels // 2, (3, 3), padding=1)(nn.relu(x))
        h = _channel_dropout(h, self.dropout_rate, deterministic)
        h = nn.Conv(self.channels, (1, 1))(nn.relu(h))
        return x + _channel_dropout(h, self.dropout_rate, deterministic)


class ResNetEncoder(nn.Module):
    """The capacity increase of the paper ("3 to 9 conv layers", Guideline 4.2), as in the reference code:
    conv 4x4 stride 2 -> 64, conv 4x4 stride 2 -> 128, conv 3x3 -> 128, then 3 residual blocks
    (:class:`ResidualBlock`), a final ReLU, flatten: 9 conv layers.

    Input images (B, H, W, C) -> float32 features (B, 128 * ceil(H / 4) * ceil(W / 4)) (18,432 at 48x48).
    """

    dropout_rate: float = 0.0
    num_blocks: int = 3

    @nn.compact
    def __call__(self, images: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
        x = _to_unit(images)
        x = nn.relu(nn.Conv(64, (4, 4), strides=2, padding="SAME")(x))
        x = _channel_dropout(x, self.dropout_rate, deterministic)
        x = nn.relu(nn.Conv(128, (4, 4), strides=2, padding="SAME")(x))
        x = _channel_dropout(x, self.dropout_rate, deterministic)
        x = nn.Conv(128, (3, 3), padding=1)(x)
        for _ in range(self.num_blocks):
            x = ResidualBlock(128, self.dropout_rate)(x, deterministic)
        return nn.relu(x).reshape(x.shape[0], -1)


def _to_unit(images: jnp.ndarray) -> jnp.ndarray:
    # Pixels / 255 as in the reference code; float inputs (already scaled) pass through.
    if jnp.issubdtype(images.dtype, jnp.integer):
        return images.astype(jnp.float32) / 255.0
    return images.astype(jnp.float32)


class ObservationEncoder(nn.Module):
    """Flat features of an observation: a state array passes through unchanged; an image observation becomes
    ``concat(encoder(image), state)``.

    Input: (..., obs_dim) float32, or ``{"image": (..., H, W, C) uint8, "state": (..., d) float32}`` with any
    leading batch shape. Output: (..., F) float32.
    """

    kind: EncoderKind = "cnn"
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, observations: Any, deterministic: bool = True) -> jnp.ndarray:
        if not is_image_observation(observations):
            return observations
        image = observations["image"]
        lead = image.shape[:-3]
        flat = image.reshape((-1, *image.shape[-3:]))
        if self.kind == "cnn":
            feats = ConvEncoder(dropout_rate=self.dropout_rate)(flat, deterministic)
        elif self.kind == "resnet":
            feats = ResNetEncoder(dropout_rate=self.dropout_rate)(flat, deterministic)
        else:
            raise ValueError(f"unknown encoder {self.kind!r}: choose 'cnn' or 'resnet'")
        feats = feats.reshape((*lead, feats.shape[-1]))
        state = observations.get("state")
        if state is not None and state.shape[-1] > 0:
            feats = jnp.concatenate([feats, state.astype(jnp.float32)], axis=-1)
        return feats
