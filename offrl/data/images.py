"""What the networks see of an image dataset: frame stacks gathered by index, and the state columns beside them.

An image dataset (:class:`offrl.data.Dataset` with ``images``) stores every frame once. A training batch is
assembled on the device from indices: the frame stack of ``s`` is ``images[frames[t]]`` with
``frames[t] = (f_{t-k+1}, ..., f_t)`` (oldest first, the episode's first frame repeated before its start), laid
out along the channel axis, (B, H, W, k * C). Nothing is copied per transition, so one million 48x48x3 frames
take 6.9 GB whatever k is.

Observation modes (``offrl train --obs``):
- ``state``: the ``observations`` array (N, obs_dim), as for any state dataset;
- ``image``: pixels only (the paper's setting);
- ``image+proprio``: pixels and the robot's own state, ``observations[:, metadata["proprio_dims"]]`` (all
  columns when the dataset does not name them, as for real robot logs that store only proprioception);
- ``auto``: ``image`` for image datasets, ``state`` otherwise.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from offrl.data.dataset import Dataset, DatasetError

ObsMode = Literal["auto", "state", "image", "image+proprio"]


def resolve_obs_mode(mode: str, dataset: Dataset) -> str:
    """``auto`` -> ``image`` or ``state``; checks that an image mode has images.

    Raises:
        DatasetError: an image mode on a dataset without images.
        ValueError: an unknown mode.
    """
    if mode not in ("auto", "state", "image", "image+proprio"):
        raise ValueError(f"unknown observation mode {mode!r}: choose auto, state, image or image+proprio")
    if mode == "auto":
        return "image" if dataset.has_images else "state"
    if mode != "state" and not dataset.has_images:
        raise DatasetError(
            f"--obs {mode} needs camera images but the dataset has none: collect with `offrl collect --obs image` "
            f"or train with --obs state"
        )
    return mode


def state_columns(mode: str, dataset: Dataset) -> list[int]:
    """Indices of the ``observations`` columns the networks see in a (resolved) observation mode.

    Raises:
        DatasetError: ``metadata["proprio_dims"]`` names columns the observations do not have.
    """
    if mode == "state":
        return list(range(dataset.obs_dim))
    if mode == "image":
        return []
    dims = dataset.metadata.get("proprio_dims")
    if dims is None:
        return list(range(dataset.obs_dim))
    dims = [int(d) for d in dims]
    if any(d < 0 or d >= dataset.obs_dim for d in dims):
        raise DatasetError(
            f"metadata proprio_dims {dims} name columns outside the {dataset.obs_dim} observation features: "
            f"fix the metadata"
        )
    return dims


def frame_stack_indices(dataset: Dataset, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices of the stacks of ``s`` and ``s'`` of every transition.

    Args:
        dataset: an image dataset.
        k: frames per stack (>= 1).

    Returns:
        ``(obs_frames, next_obs_frames)``, each (N, k) int32, oldest frame first. Before an episode's first
        state the first frame repeats; the stack of ``s'`` is the stack of ``s`` shifted by one step.

    Raises:
        ValueError: ``k < 1`` or the dataset has no images.
    """
    if k < 1:
        raise ValueError(f"--frame-stack must be >= 1 (got {k})")
    if not dataset.has_images:
        raise ValueError("frame stacking needs an image dataset")
    n = len(dataset)
    starts = np.zeros(n, np.int64)
    for sl in dataset.episode_slices():
        starts[sl] = sl.start
    t = np.arange(n)
    obs = np.empty((n, k), np.int64)
    nxt = np.empty((n, k), np.int64)
    for j in range(k):
        back = k - 1 - j  # steps back in time for column j (column k-1 is the newest)
        src = np.maximum(t - back, starts)
        obs[:, j] = dataset.image_index[src]
        # s' is one step after s: its stack holds s' itself and the k-1 most recent states up to s.
        if back == 0:
            nxt[:, j] = dataset.next_image_index
        else:
            nxt[:, j] = dataset.image_index[np.maximum(t - back + 1, starts)]
    return obs.astype(np.int32), nxt.astype(np.int32)


def stack_frames(images: Any, frames: Any) -> Any:
    """Gather frame stacks: images (M, H, W, C), frames (..., k) int -> (..., H, W, k * C), oldest first along
    the channel axis. Works on NumPy and JAX arrays alike (on the device inside the compiled update)."""
    x = images[frames]  # (..., k, H, W, C)
    k, h, w, c = x.shape[-4:]
    lead = x.shape[:-4]
    x = x.reshape(-1, k, h, w, c).transpose(0, 2, 3, 1, 4)
    return x.reshape(*lead, h, w, k * c)


def image_batch(data: dict[str, Any], idx: Any) -> dict[str, Any]:
    """A batch of transitions ``idx`` from device arrays of an image run (see :func:`image_arrays`):
    ``observations`` / ``next_observations`` as ``{"image": (B, H, W, k * C) uint8, "state": (B, d)}``."""
    batch = {k: data[k][idx] for k in ("actions", "rewards", "terminals", "mc_returns") if k in data}
    batch["observations"] = {
        "image": stack_frames(data["images"], data["obs_frames"][idx]),
        "state": data["observations"][idx],
    }
    batch["next_observations"] = {
        "image": stack_frames(data["images"], data["next_obs_frames"][idx]),
        "state": data["next_observations"][idx],
    }
    return batch


def obs_spec(mode: str, dataset: Dataset, frame_stack: int) -> int | dict[str, Any]:
    """The observation spec of the networks (:data:`offrl.agents.common.ObsSpec`) in a resolved mode."""
    cols = state_columns(mode, dataset)
    if mode == "state":
        return len(cols)
    h, w, c = dataset.image_shape
    return {"image": [h, w, c * frame_stack], "state": len(cols)}
