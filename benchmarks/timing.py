"""Shared by the speed benchmarks: random datasets of MetaWorld's shapes, the device arrays `offrl train` would
build from them, and timing a compiled chunk (compilation excluded)."""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from offrl.data import Dataset, Normalizer, make_dataset
from offrl.data.images import obs_spec, resolve_obs_mode, state_columns
from offrl.training.train import ALGO_FIELD, Inputs, TrainConfig, _calibration_gamma, _device_arrays

EPISODE_LEN = 500
"""Transitions per episode of the random datasets (MetaWorld's time limit)."""


def random_dataset(
    n: int = 7500, obs_dim: int = 39, act_dim: int = 4, image_size: int | None = None,
    episode_len: int = EPISODE_LEN, seed: int = 0,
) -> Dataset:
    """A validated offrl dataset of ``n`` random transitions: ``obs_dim``-d observations, ``act_dim``-d actions in
    [-1, 1], rewards 0 or 1, episodes of ``episode_len`` transitions ended by a timeout (the last one may be
    shorter), never terminal. With ``image_size`` also (image_size, image_size, 3) uint8 frames, one per state
    (an episode of T transitions has T + 1 frames), as `offrl collect --obs image` stores them."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    episode, step = t // episode_len, t % episode_len
    state_row = episode + t  # each episode has one more state than transitions: its final s'
    states = rng.normal(size=(int(state_row[-1]) + 2, obs_dim)).astype(np.float32)
    timeouts = (step == episode_len - 1) | (t == n - 1)
    arrays: dict[str, Any] = {
        "observations": states[state_row],
        "next_observations": states[state_row + 1],
        "actions": rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
        "rewards": rng.integers(0, 2, n).astype(np.float32),
        "terminals": np.zeros(n, bool),
        "timeouts": timeouts,
    }
    if image_size is not None:
        arrays["images"] = rng.integers(0, 256, (states.shape[0], image_size, image_size, 3), dtype=np.uint8)
        arrays["image_index"], arrays["next_image_index"] = state_row, state_row + 1
    return make_dataset(arrays, {"task": "benchmark"})


def device_data(ds: Dataset, algo: str, agent: Any, obs: str = "auto") -> tuple[dict[str, jnp.ndarray], Any]:
    """The device arrays `offrl train --algo ALGO --obs OBS` trains ``agent`` on (observations unnormalised, one
    frame per stack), built by the same code (``offrl.training.train._device_arrays``), so the data carry every
    key training adds, such as Cal-QL's ``mc_returns``; and the agent's observation spec for ``init``."""
    mode = resolve_obs_mode(obs, ds)
    columns = state_columns(mode, ds)
    config = TrainConfig(out=".", algo=algo, **{ALGO_FIELD[algo]: agent})
    inputs = Inputs(mode, tuple(columns), Normalizer.identity(len(columns)), 1, _calibration_gamma(config))
    return _device_arrays(ds, inputs), obs_spec(mode, ds, 1)


def state_data(n: int = 7500, obs_dim: int = 39, act_dim: int = 4, algo: str = "cql", agent: Any = None
               ) -> dict[str, jnp.ndarray]:
    """Random transitions with MetaWorld's state shapes (39-d observations, 4-d actions) as the device arrays
    `offrl train --algo ALGO` builds for ``agent`` (default: the algorithm's defaults, calibrated CQL's
    ``mc_returns`` included)."""
    from offrl.agents import CONFIGS

    agent = CONFIGS[algo]() if agent is None else agent
    return device_data(random_dataset(n, obs_dim, act_dim), algo, agent, "state")[0]


def time_chunk(chunk: Any, state: Any, data: dict[str, Any], steps: int) -> tuple[Any, dict[str, float]]:
    """Run ``chunk`` once to compile (timed separately), then once more timed: ``{"steps_per_s",
    "compile_plus_first_call_s"}`` for a chunk of ``steps`` gradient steps, and the final state."""
    t = time.perf_counter()
    state, _ = chunk(state, data, jax.random.PRNGKey(1))
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    state, _ = chunk(state, data, jax.random.PRNGKey(2))
    jax.block_until_ready(state)
    return state, {"steps_per_s": round(steps / (time.perf_counter() - t), 2),
                   "compile_plus_first_call_s": round(compile_s, 1)}
