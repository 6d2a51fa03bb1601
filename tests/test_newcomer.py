"""A newcomer's check of README.md: the "What `make run` does, by hand" block, run line by line on a tiny budget,
deploys the checkpoint `offrl workflow` deploys on the same data (issue "One story": by hand `offrl select` used to
print the Q peak where the workflow deployed the last checkpoint)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from offrl.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
# Appended to each README line (a later flag overrides an earlier one): minutes of training become seconds.
TINY = {
    "collect": ["--episodes", "10"],  # mixed-quality data of 10 episodes hold successes (a reward to learn)
    "train": ["--steps", "80", "--checkpoint-every", "40", "--iql.critic-hidden-dims", "16",
              "--iql.value-hidden-dims", "16", "--iql.actor-hidden-dims", "16", "--no-progress"],
    "evaluate": ["--eval-episodes", "1"],
}


def by_hand_block() -> list[list[str]]:
    """The offrl commands of README's by-hand block, each as its argv (comments dropped)."""
    text = README.read_text()
    block = re.search(r"### What `make run` does, by hand\s+```bash\n(.*?)```", text, re.S)
    assert block, "README.md lost its by-hand block"
    lines = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("offrl ")]


def test_readme_by_hand_block_is_short_and_complete():
    commands = [argv[0] for argv in by_hand_block()]
    assert len(commands) <= 5 and commands[:2] == ["collect", "train"] and "diagnose" in commands


@pytest.mark.sim
def test_readme_by_hand_block_deploys_what_the_workflow_deploys(tmp_path, monkeypatch, capsys):
    pytest.importorskip("metaworld")
    monkeypatch.chdir(tmp_path)
    for argv in by_hand_block():
        assert main([*argv, *TINY.get(argv[0], [])]) == 0, argv
    run = Path(by_hand_block()[1][by_hand_block()[1].index("--out") + 1])
    dataset = by_hand_block()[0][by_hand_block()[0].index("--out") + 1]
    assert (run / "report.html").is_file() and (run / "evaluation.json").is_file()
    capsys.readouterr()
    (run / "diagnosis.json").unlink()  # what a newcomer who only trained would have: no earlier choice to reuse
    assert main(["select", str(run)]) == 0
    by_hand = int(capsys.readouterr().out.strip())
    # The workflow on the same data, the same tiny budget.
    flow = ["workflow", "--dataset", dataset, "--out", "runs/wf", "--eval-episodes", "0", "--bc-baseline-steps", "0",
            *TINY["train"]]
    assert main(flow) == 0
    workflow = json.loads((tmp_path / "runs/wf/diagnosis.json").read_text())
    assert by_hand == workflow["selected_step"]
    hand_cfg = json.loads((run / "config.json").read_text())
    flow_cfg = json.loads((tmp_path / "runs/wf/config.json").read_text())
    assert hand_cfg["deployment"] == {**flow_cfg["deployment"], "preset": hand_cfg["deployment"]["preset"]}
    assert hand_cfg["deployment"]["selector"] == workflow["selector"] == "last"
    assert hand_cfg["agent"] == flow_cfg["agent"] and hand_cfg["training"]["reward_shift"] == -1.0
    # Then README's robot check, rehearsed in the simulator, on the same run.
    assert main(["check", str(run), "--simulate", "--budget", "3"]) == 0
    answer = json.loads((run / "check" / "check.json").read_text())
    assert answer["episodes_used"] == 3 and answer["budget"] == 3
