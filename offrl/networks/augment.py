"""Image augmentation inside the compiled update: random crop after padding (the reference code's, as in DrQ).

Each image is padded by ``pad`` pixels on every side, repeating its border pixels, and an H x W window is cut
at an offset drawn uniformly from {0, ..., 2 * pad}^2, independently per image. The result is the image shifted
by up to ``pad`` pixels. Used only while training; evaluation sees the original images.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from offrl.networks.encoders import is_image_observation


def random_crop(key: jax.Array, images: jnp.ndarray, pad: int = 4) -> jnp.ndarray:
    """Randomly shifted crops of a batch of images.

    Args:
        key: PRNG key.
        images: (B, H, W, C), any dtype (kept).
        pad: padding in pixels on each side (>= 0); 0 returns the images unchanged.

    Returns:
        (B, H, W, C), each image a window of its edge-padded copy at a random offset in [0, 2 * pad].
    """
    if pad <= 0:
        return images
    b, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    offsets = jax.random.randint(key, (b, 2), 0, 2 * pad + 1)

    def crop(img: jnp.ndarray, off: jnp.ndarray) -> jnp.ndarray:
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


def augment_observations(key: jax.Array, observations: Any, pad: int = 4) -> Any:
    """Random-crop the image of an image observation (see :func:`random_crop`); state arrays pass through."""
    if not is_image_observation(observations) or pad <= 0:
        return observations
    return {**observations, "image": random_crop(key, observations["image"], pad)}
