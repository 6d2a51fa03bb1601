"""Wall time spent compiling, apart from the time spent computing ("time to answer" with compilation shown
separately)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax

# JAX reports tracing, lowering to MLIR and XLA's backend compilation as separate, consecutive events under
# this prefix (jax._src.dispatch: jaxpr_trace_duration, jaxpr_to_mlir_module_duration, backend_compile_duration).
COMPILE_EVENT_PREFIX = "/jax/core/compile/"


@contextlib.contextmanager
def compile_timer() -> Iterator[dict[str, float]]:
    """Seconds JAX spends tracing, lowering and compiling while the block runs, in all threads.

    Yields a dict whose ``"compile_s"`` (float, seconds) grows as compilations happen; read it after the block.
    Uses ``jax.monitoring``'s event-duration listeners, so a call served from JAX's compilation cache adds
    nothing.
    """
    total = {"compile_s": 0.0}

    def listener(event: str, duration_secs: float, **_: Any) -> None:
        if event.startswith(COMPILE_EVENT_PREFIX):
            total["compile_s"] += duration_secs

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield total
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
