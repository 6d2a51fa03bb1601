"""Shared fixtures: small synthetic datasets whose structure is known exactly."""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest

from offrl.data import Dataset, make_dataset


def chain_arrays(
    episodes: int = 6, length: int = 10, obs_dim: int = 3, act_dim: int = 2, seed: int = 0, success_every: int = 2
) -> dict[str, np.ndarray]:
    """Episodes of random observations; every ``success_every``-th episode ends terminal with reward 1, the
    others by timeout with reward 0."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in
                                          ("observations", "next_observations", "actions", "rewards",
                                           "terminals", "timeouts")}
    for e in range(episodes):
        s = rng.normal(size=(length + 1, obs_dim)).astype(np.float32)
        parts["observations"].append(s[:-1])
        parts["next_observations"].append(s[1:])
        parts["actions"].append(rng.uniform(-1, 1, (length, act_dim)).astype(np.float32))
        r = np.zeros(length, np.float32)
        term = np.zeros(length, bool)
        tout = np.zeros(length, bool)
        if e % success_every == 0:
            r[-1] = 1.0
            term[-1] = True
        else:
            tout[-1] = True
        parts["rewards"].append(r)
        parts["terminals"].append(term)
        parts["timeouts"].append(tout)
    return {k: np.concatenate(v) for k, v in parts.items()}



def two_action_bandit(n: int = 512) -> dict:
    """One state, one step (every transition terminal): half the data takes a = -0.5 (reward 0), half a = +0.5
    (reward 1), each with noise 0.02; as device arrays of a training batch's keys (observations 2-d ones)."""
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    act = np.where(np.arange(n) % 2 == 0, -0.5, 0.5).astype(np.float32)[:, None]
    act = act + rng.normal(0, 0.02, act.shape).astype(np.float32)
    obs = np.ones((n, 2), np.float32)
    return {"observations": jnp.asarray(obs), "actions": jnp.asarray(act),
            "rewards": jnp.asarray((act[:, 0] > 0).astype(np.float32)), "terminals": jnp.ones(n),
            "next_observations": jnp.asarray(obs)}

@pytest.fixture
def chain_dataset() -> Dataset:
    return make_dataset(chain_arrays(), {"task": "toy", "action_low": [-1, -1], "action_high": [1, 1]})


def tiny_train_config(dataset, out, **overrides):
    """A TrainConfig small enough for tests: 16x16 networks, 120 steps, a checkpoint every 40."""
    from offrl.agents.cql import CQLConfig
    from offrl.training.train import TrainConfig

    base = dict(dataset=dataset, out=out, steps=120, checkpoint_every=40, chunk_steps=20, batch_size=32,
                progress=False,
                agent=CQLConfig(critic_hidden_dims=(16, 16), actor_hidden_dims=(16, 16), num_action_samples=2,
                                bc_steps=20))
    base.update(overrides)
    return TrainConfig(**base)


def image_chain_arrays(
    episodes: int = 6, length: int = 10, size: int = 16, state_dim: int = 3, act_dim: int = 2, seed: int = 0
) -> dict[str, np.ndarray]:
    """:func:`chain_arrays` plus camera frames stored once per state: an episode of T transitions has T + 1
    frames; frame f is filled with the value f % 251 in channel 0, so a frame's index can be read off it."""
    arrays = chain_arrays(episodes, length, state_dim, act_dim, seed)
    frames_per_episode = length + 1
    m = episodes * frames_per_episode
    images = np.zeros((m, size, size, 3), np.uint8)
    images[..., 0] = (np.arange(m) % 251)[:, None, None]
    images[..., 1] = np.random.default_rng(seed).integers(0, 256, (m, size, size))
    t = np.arange(episodes * length)
    image_index = (t // length) * frames_per_episode + t % length
    arrays.update(images=images, image_index=image_index, next_image_index=image_index + 1)
    return arrays


@pytest.fixture
def image_chain_dataset() -> Dataset:
    return make_dataset(image_chain_arrays(), {"task": "toy", "proprio_dims": [0, 1]})
