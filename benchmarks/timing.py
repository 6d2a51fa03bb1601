"""Shared by the speed benchmarks: the random state dataset, and timing a compiled chunk (compilation excluded)."""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def state_data(n: int = 7500, obs_dim: int = 39, act_dim: int = 4) -> dict[str, jnp.ndarray]:
    """Random transitions with MetaWorld's state shapes (39-d observations, 4-d actions), on the device."""
    rng = np.random.default_rng(0)
    return {
        "observations": jnp.asarray(rng.normal(size=(n, obs_dim)), jnp.float32),
        "actions": jnp.asarray(rng.uniform(-1, 1, (n, act_dim)), jnp.float32),
        "rewards": jnp.asarray(rng.integers(0, 2, n), jnp.float32),
        "terminals": jnp.zeros(n, jnp.float32),
        "next_observations": jnp.asarray(rng.normal(size=(n, obs_dim)), jnp.float32),
        # Cal-QL's floor (the CQL default is calibrated=True) reads each transition's discounted return-to-go.
        "mc_returns": jnp.asarray(rng.uniform(0, 1, n), jnp.float32),
    }


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
