"""docs/tutorial.md runs: its python blocks are executed in order, in one namespace, in a temporary folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"


@pytest.mark.sim
def test_tutorial_runs(tmp_path, monkeypatch):
    pytest.importorskip("metaworld")
    blocks = re.findall(r"```python\n(.*?)```", TUTORIAL.read_text(), flags=re.S)
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(TUTORIAL), "exec"), namespace)
    assert (tmp_path / "runs/pp/report.html").exists()
    assert (tmp_path / "policy/policy.json").exists()
    assert 0.0 <= namespace["result"]["success_rate"] <= 1.0
