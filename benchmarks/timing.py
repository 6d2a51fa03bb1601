"""Shared by the speed benchmarks: time a compiled training chunk, compilation excluded."""

from __future__ import annotations

import time
from typing import Any

import jax


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
