"""The huge-page malloc restart of command-line entry points (offrl.runtime)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from offrl import runtime


def test_env_appends_the_tunable_once_and_respects_opt_outs(monkeypatch):
    monkeypatch.setattr(runtime.sys, "platform", "linux")
    monkeypatch.setattr(runtime.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(runtime, "_THP", type("P", (), {"read_text": lambda self: "always [madvise] never"})())
    assert runtime.hugepage_malloc_env({})["GLIBC_TUNABLES"] == runtime.TUNABLE
    kept = runtime.hugepage_malloc_env({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F", "X": "1"})
    assert kept["GLIBC_TUNABLES"] == f"glibc.cpu.hwcaps=-AVX512F:{runtime.TUNABLE}" and kept["X"] == "1"
    assert runtime.hugepage_malloc_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None  # the user decided
    assert runtime.hugepage_malloc_env({"OFFRL_HUGEPAGES": "0"}) is None
    monkeypatch.setattr(runtime.platform, "libc_ver", lambda: ("glibc", "2.31"))  # tunable unknown before 2.35
    assert runtime.hugepage_malloc_env({}) is None
    monkeypatch.setattr(runtime.platform, "libc_ver", lambda: ("", ""))  # musl and others
    assert runtime.hugepage_malloc_env({}) is None
    monkeypatch.setattr(runtime.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(runtime, "_THP", type("P", (), {"read_text": lambda self: "always madvise [never]"})())
    assert runtime.hugepage_malloc_env({}) is None


def test_reexec_restarts_once_with_the_tunable():
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "OFFRL_HUGEPAGES")}
    if runtime.hugepage_malloc_env(env) is None:
        pytest.skip("huge-page malloc does not apply on this machine (C library or kernel setting)")
    child = "import os; print(os.environ['GLIBC_TUNABLES'])"
    code = (
        "import os; from offrl.runtime import reexec_with_hugepage_malloc as r; "
        f"r(['-c', {child!r}]); print('not restarted')"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [runtime.TUNABLE]  # the child ran, with the tunable, and replaced the parent
