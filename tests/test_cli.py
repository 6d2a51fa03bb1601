"""End to end through the `offrl` command: collect -> train -> diagnose -> select -> evaluate -> report, and
clear errors with a non-zero exit for bad input."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace

import pytest
from conftest import chain_arrays

from offrl import cli
from offrl.cli import main
from offrl.data import make_dataset, save_dataset

TINY = ["--cql.critic-hidden-dims", "16", "16", "--cql.actor-hidden-dims", "16", "16",
        "--cql.bc-steps", "50", "--batch-size", "32", "--no-progress"]


def test_train_diagnose_select_report_on_a_synthetic_dataset(tmp_path, capsys):
    data = save_dataset(tmp_path / "d.h5", make_dataset(chain_arrays(episodes=10), {"task": "toy"}))
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(data), "--out", str(run), "--steps", "200", "--checkpoint-every",
                 "40", "--chunk-steps", "20", *TINY]) == 0
    assert main(["diagnose", str(run)]) == 0
    d = json.loads((run / "diagnosis.json").read_text())
    assert d["verdict"] in ("overfitting", "underfitting", "healthy", "inconclusive", "diverged")
    assert d["selected_step"] in (40, 80, 120, 160, 200)
    assert {"evidence", "recommendation"} <= d.keys()
    capsys.readouterr()
    assert main(["select", str(run), "--after-peak"]) == 0
    assert int(capsys.readouterr().out.strip()) in (40, 80, 120, 160, 200)
    assert main(["select", str(run), "--selector", "last"]) == 0
    assert int(capsys.readouterr().out.strip()) == 200
    assert main(["fqe", str(run), "--steps", "30"]) == 0
    assert main(["select", str(run), "--selector", "fqe"]) == 0
    fqe = json.loads((run / "fqe.json").read_text())["results"]
    after_warm_start = [r for r in fqe if r["step"] > 50]  # after TINY's warm start (--cql.bc-steps 50)
    best = max(after_warm_start, key=lambda r: r["value"])["step"]
    assert capsys.readouterr().out.strip().endswith(str(best))
    assert main(["softopc", str(run)]) == 0 and "5 of 10 episodes successful" in capsys.readouterr().out
    assert main(["select", str(run), "--selector", "softopc"]) == 0
    soft = [r for r in json.loads((run / "softopc.json").read_text())["results"] if r["step"] > 50]
    assert capsys.readouterr().out.strip().endswith(str(max(soft, key=lambda r: r["value"])["step"]))
    assert main(["report", str(run)]) == 0
    html = (run / "report.html").read_text()
    assert d["verdict"] in html and "data:image/png;base64," in html


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--dataset", "missing.h5", "--out", "r"], "not found"),
        (["diagnose", "no-such-run"], "not found"),
        (["report", "no-such-run"], "offrl train"),
    ],
)
def test_bad_input_exits_non_zero_with_one_clear_line(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("offrl: error:") and message in err
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


@pytest.mark.parametrize("argv, flag", [
    (["--algo", "iql", "--iql.expectile", "1.5"], "--iql.expectile"),
    (["--algo", "awac", "--awac.awac-lambda", "0"], "--awac.awac-lambda"),
    (["--algo", "bear", "--bear.num-samples", "1"], "--bear.num-samples"),
    (["--algo", "bear", "--steps", "4000"], "--bear.warmstart-steps"),
])
def test_workflow_refuses_settings_that_cannot_work_before_collecting(tmp_path, monkeypatch, capsys, argv, flag):
    """A bad flag costs one line and no data collection: nothing is written, not even the dataset."""
    monkeypatch.chdir(tmp_path)
    assert main(["workflow", *argv, "--eval-episodes", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("offrl: error:") and flag in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_malformed_dataset_is_refused_before_a_run_is_written(tmp_path, capsys):
    a = chain_arrays()
    a["rewards"][3] = float("nan")
    import h5py

    with h5py.File(tmp_path / "bad.h5", "w") as f:
        for k, v in a.items():
            f[k] = v
    assert main(["train", "--dataset", str(tmp_path / "bad.h5"), "--out", str(tmp_path / "run"), *TINY]) == 1
    assert "'rewards' contains NaN" in capsys.readouterr().err


@pytest.mark.sim
def test_workflow_end_to_end_in_the_simulator(tmp_path, monkeypatch, capsys):
    pytest.importorskip("metaworld")
    monkeypatch.chdir(tmp_path)
    # Low noise so that the 4 episodes contain successes (an all-zero-reward dataset is refused).
    argv = ["workflow", "--algo", "cql", "--episodes", "4", "--horizon", "100", "--regime", "white",
            "--noise-sigma", "0.2", "--steps", "200", "--checkpoint-every", "40",
            "--eval-episodes", "2", "--out", "runs/e2e", "--cql.critic-hidden-dims", "16", "16",
            "--cql.actor-hidden-dims", "16", "16", "--cql.bc-steps", "50", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "verdict:" in out and "analysis-only success" in out and "report.html" in out
    # Side by side, each with its interval and number of episodes (issue: Trust, part 1).
    assert "data (behaviour)" in out and "best warm-start (BC)" in out and "selected" in out
    assert "4 episodes" in out or "/4 episodes" in out
    side = json.loads((tmp_path / "runs/e2e/diagnosis.json").read_text())["analysis_only"]
    assert side["behaviour"]["episodes"] == 4 and side["best_warm_start"]["step"] == 40
    assert side["selected"]["episodes"] == 2 and len(side["selected"]["ci95"]) == 2
    timings = dict(t.split() for t in out.split("timings:")[1].strip().split(", "))
    assert 0 < float(timings["compile_s"]) <= float(timings["total_s"])  # a part of the run, reported apart
    ev = json.loads((tmp_path / "runs/e2e/evaluation.json").read_text())
    assert ev["used_for_selection"] is False and [r["step"] for r in ev["results"]] == [40, 80, 120, 160, 200]
    assert (tmp_path / "data/pick-place-v3_white_sigma0.2_h100_4ep_s0.h5").exists()
    # a second workflow with the same --out refuses to overwrite the run
    assert main(argv) == 1
    assert "already exists" in capsys.readouterr().err


@pytest.mark.sim
def test_image_workflow_end_to_end_in_the_simulator(tmp_path, monkeypatch, capsys):
    """`offrl workflow --obs image`: rendered collection, image CQL, diagnosis, rendered evaluation, report."""
    pytest.importorskip("metaworld")
    if os.environ.get("MUJOCO_GL", "").lower() in ("disable", "disabled", "off"):
        monkeypatch.setenv("MUJOCO_GL", "egl")
    monkeypatch.chdir(tmp_path)
    argv = ["workflow", "--algo", "cql", "--obs", "image+proprio", "--image-size", "16", "--frame-stack", "2", "--episodes", "4",
            "--horizon", "60", "--regime", "white", "--noise-sigma", "0.2", "--steps", "40", "--checkpoint-every", "20",
            "--batch-size", "16", "--eval-episodes", "2", "--out", "runs/img",
            "--cql.critic-hidden-dims", "16", "--cql.actor-hidden-dims", "16", "--cql.bc-steps", "10",
            "--no-progress"]
    try:
        code = main(argv)
    except RuntimeError as err:  # no headless OpenGL on this machine
        pytest.skip(str(err))
    assert code == 0
    out = capsys.readouterr().out
    assert "verdict:" in out and "analysis-only success" in out
    cfg = json.loads((tmp_path / "runs/img/config.json").read_text())
    assert cfg["dataset"]["obs_spec"] == {"image": [16, 16, 6], "state": 4}
    ev = json.loads((tmp_path / "runs/img/evaluation.json").read_text())
    assert [r["step"] for r in ev["results"]] == [20, 40]
    assert (tmp_path / "data/pick-place-v3_white_sigma0.2_h60_4ep_s0_img16_corner4.h5").exists()


def test_import_inspect_train_directly_and_export(tmp_path, capsys):
    import h5py

    a = chain_arrays(episodes=10)
    with h5py.File(tmp_path / "d4rl.hdf5", "w") as f:  # D4RL layout without next_observations
        for k in ("observations", "actions", "rewards", "terminals", "timeouts"):
            f[k] = a[k]
    out = tmp_path / "imported.h5"
    assert main(["import", str(tmp_path / "d4rl.hdf5"), "--format", "d4rl", "--out", str(out)]) == 0
    assert main(["import", str(tmp_path / "d4rl.hdf5"), "--format", "d4rl", "--out", str(out)]) == 1  # exists
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "episodes: 10" in text and "behaviour success rate 0.50" in text
    # `offrl train` reads the other format directly
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(tmp_path / "d4rl.hdf5"), "--dataset-format", "d4rl", "--out",
                 str(run), "--steps", "80", "--checkpoint-every", "40", "--chunk-steps", "20", *TINY]) == 0
    assert json.loads((run / "config.json").read_text())["dataset"]["metadata"]["source_format"] == "d4rl"
    # resuming reads the format from the run's config.json; the flag need not be repeated
    assert main(["train", "--dataset", str(tmp_path / "d4rl.hdf5"), "--out", str(run), "--steps", "80",
                 "--resume", "--no-progress"]) == 0
    assert main(["diagnose", str(run)]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "policy")]) == 0
    import numpy as np

    import offrl
    from offrl.training.policy import checkpoint_policy

    obs = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    np.testing.assert_array_equal(offrl.load_policy(tmp_path / "policy")(obs), checkpoint_policy(run, 80)(obs))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--steps", "100", "--checkpoint-every", "200"], "--checkpoint-every 200 is larger than --steps 100"),
        (["--steps", "40", "--checkpoint-every", "20"], "warm start (--cql.bc-steps 50)"),
    ],
)
def test_settings_that_cannot_work_fail_before_training(tmp_path, capsys, extra, message):
    data = save_dataset(tmp_path / "d.h5", make_dataset(chain_arrays(episodes=4), {"task": "toy"}))
    assert main(["train", "--dataset", str(data), "--out", str(tmp_path / "run"), *TINY, *extra]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_select_without_a_selection_exits_non_zero(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"algo": "cql", "dataset": {"q_range": [0, 1]}}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 10, "q_data": 0.1}) + "\n")
    assert main(["select", str(run)]) == 0  # one checkpoint: inconclusive, but the peak is a pick
    capsys.readouterr()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 10, "q_data": None}) + "\n")
    assert main(["select", str(run)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "no checkpoint" in captured.err


def test_debug_shows_the_traceback(capsys):
    assert main(["diagnose", "no-such-run"]) == 1
    assert "Traceback" not in capsys.readouterr().err
    assert main(["diagnose", "no-such-run", "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("not found: is no-such-run a run made by `offrl train`?")


def test_a_closed_pipe_is_not_an_error(tmp_path, monkeypatch, capsys):
    # `offrl inspect data.h5 | head`: the reader leaves early and the next write raises BrokenPipeError.
    import offrl.cli as cli

    def closed(*_args, **_kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "run", closed)
    data = save_dataset(tmp_path / "d.h5", make_dataset(chain_arrays(episodes=4), {"task": "toy"}))
    assert cli.main(["inspect", str(data)]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.sim
def test_newcomer_path_collect_train_diagnose_select_evaluate_report_export(tmp_path, monkeypatch, capsys):
    pytest.importorskip("metaworld")
    monkeypatch.chdir(tmp_path)
    assert main(["collect", "--episodes", "4", "--horizon", "100", "--regime", "white", "--noise-sigma", "0.2",
                 "--out", "data/d.h5"]) == 0
    assert "behaviour success rate" in capsys.readouterr().out
    assert main(["train", "--dataset", "data/d.h5", "--out", "runs/r", "--steps", "120", "--checkpoint-every",
                 "40", "--chunk-steps", "20", *TINY]) == 0
    assert main(["diagnose", "runs/r"]) == 0
    assert "verdict:" in capsys.readouterr().out
    assert main(["select", "runs/r"]) == 0
    step = int(capsys.readouterr().out.strip())
    assert step in (80, 120)  # the warm-start checkpoint (40 <= 50 BC steps) is never selected
    assert main(["evaluate", "runs/r", "--eval-episodes", "2"]) == 0
    assert "wrote runs/r/evaluation.json" in capsys.readouterr().out
    assert main(["report", "runs/r"]) == 0
    assert main(["export", "runs/r"]) == 0
    spec = json.loads((tmp_path / "runs/r/policy/policy.json").read_text())
    assert spec["source"]["step"] == step
    # After the evaluation, diagnosis.json sets the pick beside the data and the alternatives.
    side = json.loads((tmp_path / "runs/r/diagnosis.json").read_text())["analysis_only"]
    assert side["selected"]["step"] == step and side["behaviour"]["episodes"] == 4


def _help(argv, monkeypatch, capsys, flag="--help-all") -> str:
    """`offrl ARGV --help-all` (or ``flag``) as an 80-column terminal shows it."""
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as exit_:
        main([*argv, flag])
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, shown, hint",
    [
        (["train"], ["--cql.alpha", "--cql.bc-steps"], "offrl train --algo {brac,bc,iql,awac"),
        (["workflow"], ["--iql.expectile", "--bc.actor-lr"], "offrl workflow --algo {cql,brac,bc,awac"),
        (["tune"], ["--train.cql.alpha"], "offrl tune --train.algo {brac,mopo,combo} --help"),
        (["sweep"], ["--train.cql.alpha"], "offrl sweep --train.algo {brac,bc,iql,awac"),
    ],
)
def test_help_shows_the_hyperparameters_of_the_chosen_algorithm_only(monkeypatch, capsys, argv, shown, hint):
    # Issue "A newcomer's first hour": `offrl train --help` was 261 lines, CQL's, BRAC's and BC's groups each
    # repeating the same 13 fields; with IQL and AWAC 373 lines. The other algorithms' groups are hidden now.
    text = _help(argv, monkeypatch, capsys)
    assert len(text.splitlines()) < 260  # each repeated group added about 50 lines (373 with five)
    for flag in shown:
        assert flag in text
    own = "iql" if argv == ["workflow"] else "cql"  # the workflow's default algorithm is IQL
    for group in {"cql", "brac", "iql", "awac"} - {own}:
        # no option line --brac.*, --train.iql.*, ... (a description may still name another group's flag)
        assert not re.search(rf"^[│ ]*--{group}\.", text.replace("train.", ""), re.M), group
    assert "behavior-run {None}|PATH" not in text  # BRAC's only
    if hint:
        assert hint in text and "--help" in text


def test_help_of_another_algorithm(monkeypatch, capsys):
    text = _help(["train", "--algo", "iql"], monkeypatch, capsys)
    assert "--iql.expectile" in text and "--cql." not in text and "--brac." not in text
    assert "offrl train --algo {cql,brac,bc,awac" in text
    text = _help(["tune", "--train.algo", "brac"], monkeypatch, capsys)
    assert "--train.brac.beta" in text and "--train.behavior-run {None}|PATH" in text and "--train.cql." not in text
    text = _help(["workflow", "--algo", "brac"], monkeypatch, capsys)
    assert "--brac.beta" in text and "--bc.actor-lr" in text and "--cql.alpha" not in text  # pi_beta: BC


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--out", "r", "--brac.beta", "2"],
         "--brac.beta belongs to --algo brac, but this command uses --algo cql (the default), which ignores it: "
         "add --algo brac, or drop --brac.beta"),
        (["train", "--algo=iql", "--out", "r", "--cql.alpha=5"], "--cql.alpha belongs to --algo cql, but this "
         "command uses --algo iql"),
        (["train", "--algo", "iql", "--out", "r", "--behavior-run", "bc"], "--behavior-run belongs to --algo brac"),
        (["tune", "--out", "t", "--train.iql.expectile", "0.8"], "--train.iql.expectile belongs to --train.algo iql"),
        (["workflow", "--algo", "awac", "--brac.beta", "2"], "--brac.beta belongs to --algo brac"),
        (["workflow", "--algo", "bc", "--cql.alpha", "2"], "--cql.alpha belongs to --algo cql"),
    ],
)
def test_a_flag_of_another_algorithm_is_an_error(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("offrl: error: ") and message in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_flags_parse_as_before(monkeypatch):
    """Hiding the other algorithms' groups changes the help only: values, defaults and classes are the same."""
    from pathlib import Path

    import offrl.cli as cli
    from offrl.agents.brac import BRACConfig
    from offrl.agents.cql import CQLConfig
    from offrl.training.sweep import SweepConfig
    from offrl.training.train import TrainConfig
    from offrl.workflow.pipeline import WorkflowConfig

    parsed = []
    monkeypatch.setattr(cli, "run", lambda cmd: parsed.append(cmd) or 0)

    def parse(*argv):
        assert main(list(argv)) == 0
        return parsed.pop()

    base = TrainConfig(out=Path("r"), dataset=Path("d.h5"))
    assert parse("train", "--out", "r", "--dataset", "d.h5") == base  # every default as TrainConfig's
    cmd = parse("train", "--out", "r", "--dataset", "d.h5", "--cql.alpha", "5", "--cql.critic-hidden-dims", "8")
    assert type(cmd) is TrainConfig and cmd == replace(base, agent=CQLConfig(alpha=5.0, critic_hidden_dims=(8,)))
    cmd = parse("train", "--algo", "brac", "--out", "r", "--dataset", "d.h5", "--brac.beta", "2", "--behavior-run",
                "bc", "--brac.penalty", "policy")
    assert cmd == replace(base, algo="brac", brac=BRACConfig(beta=2.0, penalty="policy"), behavior_run=Path("bc"))
    assert parse("train", "--algo", "iql", "--out", "r", "--iql.expectile", "0.9").iql.expectile == 0.9
    tune = parse("tune", "--out", "t", "--train.algo", "brac", "--train.brac.beta", "3", "--train.behavior-run", "b")
    assert type(tune) is cli.Tune and type(tune.train) is TrainConfig
    assert (tune.train.steps, tune.train.dataset, tune.train.brac.beta) == (20_000, Path("data/pick-place.h5"), 3.0)
    sweep = parse("sweep", "--train.out", "s", "--train.cql.alpha", "2", "--param", "dr3_coef", "--values", "1")
    assert type(sweep) is SweepConfig and sweep.train.agent.alpha == 2.0 and sweep.values == (1.0,)
    flow = parse("workflow", "--algo", "brac", "--brac.beta", "0.5", "--bc.actor-lr", "0.001")
    assert type(flow) is WorkflowConfig and flow == WorkflowConfig(
        algo="brac", brac=BRACConfig(beta=0.5), bc=replace(WorkflowConfig().bc, actor_lr=0.001))
    assert parse("workflow") == WorkflowConfig()


def test_the_command_starts_without_jax_and_the_plots():
    """`import offrl.cli` (every command pays it) loads neither jax, flax, orbax nor matplotlib: train, tune,
    sweep and workflow load them when they run, `offrl report` its plots (benchmarks/startup.py, docs/speed.md)."""
    import subprocess
    import sys

    code = ("import sys, offrl.cli; "
            "print(sorted(m for m in ('jax', 'flax', 'optax', 'orbax', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_top_level_help_lists_every_command(monkeypatch, capsys):
    text = _help([], monkeypatch, capsys)
    names = re.findall(r"• (\w+) ", text)
    # Every command, one line of summary each, the workflow (the story's start) first.
    assert names == list(cli._SUBCOMMANDS) and names[0] == "workflow"
    assert set(cli._SUMMARIES) == set(cli._SUBCOMMANDS)
    assert "Start here" in text and "Train an agent on a dataset" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--algo", "sac", "--out", "r"], "invalid choice 'sac' for argument '--algo'"),
        (["select"], "missing from offrl select: PATH"),
        (["evaluate", "r", "--eval-episodez", "3"], "perhaps you meant --eval-episodes"),
    ],
)
def test_every_usage_error_is_one_line_with_status_1(tmp_path, monkeypatch, capsys, argv, message):
    # README promises one line and status 1 for every error; tyro's own usage errors were a 6-line box, status 2.
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("offrl: error: ") and err.count("\n") == 1 and message.lower() in err.lower(), err
    assert f"(see offrl {argv[0]} --help)" in err


@pytest.mark.parametrize("command", ["train", "workflow", "tune", "sweep", "diagnose", "select", "evaluate"])
def test_short_help_shows_the_common_flags_and_points_to_the_rest(monkeypatch, capsys, command):
    # Issue "One story": `offrl diagnose/select --help` were ~90 lines of thresholds, train/tune/sweep 210-240.
    short = _help([command], monkeypatch, capsys, flag="--help")
    full = _help([command], monkeypatch, capsys)
    assert len(short.splitlines()) < 100 < len(full.splitlines()) or command == "evaluate"
    # The workflow's is the first help a newcomer reads: one screen (it was 72 lines).
    assert command != "workflow" or len(short.splitlines()) <= 60
    assert "--help-all" in short or command == "evaluate"
    hidden = {"train": "--cql.alpha", "workflow": "--iql.expectile", "tune": "--train.cql.alpha",
              "sweep": "--train.chunk-steps", "diagnose": "--thresholds.", "select": "--thresholds."}.get(command)
    if hidden:
        assert hidden not in short and hidden in full


@pytest.mark.parametrize("argv, message", [
    (["tune", "--out", "t", "--train.out", "x"], "offrl tune ignores --train.out"),
    (["sweep", "--train.dataset", "d.h5", "--train.out", "s", "--param", "alpha", "--values", "1",
      "--train.overwrite"], "offrl sweep ignores --train.overwrite"),
    (["select", "r", "--after-peak", "--selector", "last"], "cannot be combined with --selector last"),
])
def test_options_that_would_be_ignored_are_refused(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    if argv[0] == "select":  # a run to select from
        (tmp_path / "r").mkdir()
        (tmp_path / "r/config.json").write_text(json.dumps({"algo": "cql", "dataset": {"q_range": [0, 1]}}))
        (tmp_path / "r/metrics.jsonl").write_text("")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == (["r"] if argv[0] == "select" else [])


def test_cql_flags_are_named_after_cql_and_the_old_spelling_is_read_with_a_note(monkeypatch, capsys):
    # Issue "One story": CQL's flags were --agent.*, every other algorithm's --iql.*, --bear.*, ...
    from offrl.cli import _algo_help, _command_type, _parse, _renamed_flags

    args = _renamed_flags("train", ["train", "--out", "r", "--agent.alpha", "3", "--agent.bc-steps=7"])
    assert args == ["train", "--out", "r", "--cql.alpha", "3", "--cql.bc-steps=7"]
    assert capsys.readouterr().err.count("offrl: note: --agent.") == 2
    registry, descriptions = _algo_help("train", args[1:])
    cmd = _parse(_command_type(("train",), descriptions), args, registry, "train")
    assert cmd.agent.alpha == 3.0 and cmd.agent.bc_steps == 7
    assert _renamed_flags("tune", ["tune", "--train.agent.alpha", "2"])[1] == "--train.cql.alpha"


def test_workflow_refuses_a_bad_dataset_before_any_stage(tmp_path, monkeypatch, capsys):
    # Issue "One story": `workflow --dataset bad.h5` printed "[2/5] training" before the load error.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.h5").write_text("not hdf5")
    assert main(["workflow", "--dataset", "bad.h5", "--eval-episodes", "0"]) == 1
    out, err = capsys.readouterr()
    assert "[" not in out and err.startswith("offrl: error: bad.h5") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.h5"]


@pytest.mark.parametrize("command", [[], ["collect"], ["import"], ["inspect"], ["train"], ["workflow"], ["tune"],
                                     ["sweep"], ["diagnose"], ["select"], ["evaluate"], ["export"], ["report"],
                                     ["check"], ["study"], ["fqe"], ["softopc"]])
def test_every_plain_help_fits_a_screen(monkeypatch, capsys, command):
    # Issue "One story": `offrl --help` and each command's help fit a screen for the common flags (collect was 74
    # lines, sweep 92).
    lines = _help(command, monkeypatch, capsys, flag="--help").splitlines()
    assert len(lines) <= 60, f"offrl {' '.join(command)} --help is {len(lines)} lines at 80 columns"
