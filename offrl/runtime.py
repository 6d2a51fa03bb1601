"""Process set-up that makes XLA's CPU backend faster: glibc's malloc asked to back large buffers with
transparent huge pages.

Why: every call of a compiled function allocates XLA's temporary buffer afresh. On glibc, blocks above 32 MB
are always ``mmap``-ed and returned with ``munmap``, so each call first-touches every 4 KiB page of its
buffers again: a fresh 38 MB ReLU output ran at 6.5 GB/s against 47 GB/s for a 19 MB one (measured on the
2-core CPU machines here). Image CQL steps, which run one compiled call per gradient step (see
:func:`offrl.training.train.make_train_chunk`), paid this on hundreds of MB per step. The glibc tunable
``glibc.malloc.hugetlb=1`` (glibc >= 2.35) makes malloc ``madvise(MADV_HUGEPAGE)`` those blocks, so the kernel
maps them in 2 MiB pages: CQL on 48x48 images went from 2.30 to 3.22 steps/s (batch 256, 2 cores;
``python benchmarks/speed.py`` records both). State runs, one compiled call per chunk of steps, hardly change.

glibc reads tunables only when a process starts, so :func:`reexec_with_hugepage_malloc` restarts the
``offrl`` command once with ``GLIBC_TUNABLES`` extended. It does nothing when the variable already holds a
malloc hugetlb setting, when the kernel's transparent huge pages are ``never``, on other C libraries or
operating systems, or when ``OFFRL_HUGEPAGES=0``.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb=1"
# XLA on one CPU thread: for processes that share a small machine core by core (study workers, Ray cells).
SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
_THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def hugepage_malloc_env(env: dict[str, str] | None = None) -> dict[str, str] | None:
    """The environment to restart with, or None when no restart is needed or possible.

    Args:
        env: the current environment (default ``os.environ``).

    Returns:
        A copy of ``env`` with :data:`TUNABLE` appended to ``GLIBC_TUNABLES`` (``:``-separated), or None when
        the tunable cannot help or is already decided (see the module docstring).
    """
    env = dict(os.environ if env is None else env)
    if env.get("OFFRL_HUGEPAGES", "1") == "0" or "glibc.malloc.hugetlb" in env.get("GLIBC_TUNABLES", ""):
        return None
    if sys.platform != "linux":
        return None
    libc, version = platform.libc_ver()
    try:
        major, minor = (int(p) for p in version.split(".")[:2])
    except ValueError:
        return None
    if libc != "glibc" or (major, minor) < (2, 35):
        return None
    try:
        if "[never]" in _THP.read_text():
            return None
    except OSError:
        return None
    tunables = env.get("GLIBC_TUNABLES")
    env["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
    return env


def reexec_with_hugepage_malloc(command: list[str]) -> None:
    """Replace this process by ``python *command <same arguments>`` with :data:`TUNABLE` set, if
    :func:`hugepage_malloc_env` says so; otherwise return. ``command`` is e.g. ``["-m", "offrl.cli"]`` or
    ``[script_path]``. Call it first thing in a command-line entry point, before any work that a restart would
    repeat."""
    env = hugepage_malloc_env()
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *command, *sys.argv[1:]], env)
