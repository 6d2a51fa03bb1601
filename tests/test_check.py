"""The robot check: allocation rules on synthetic Bernoulli arms, the trial log, resuming, refusals, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types

import numpy as np
import pytest

from offrl.workflow.allocation import RULES, Arms, make_rule, summarise

P = np.array([0.3, 0.5, 0.2, 0.6, 0.45, 0.75, 0.35, 0.55, 0.4, 0.5])  # the best: arm 5


def _replay(rule_name: str, budget: int, p: np.ndarray, reps: int, seed: int = 0) -> tuple[np.ndarray, Arms]:
    """``reps`` synthetic checks of ``budget`` Bernoulli episodes; returns the picks and the final state."""
    rng = np.random.default_rng(seed)
    rule = make_rule(rule_name, budget, prior_scores=p, positions=np.arange(len(p)))
    counts, sums = np.zeros((reps, len(p)), np.int64), np.zeros((reps, len(p)))
    rows = np.arange(reps)
    for _ in range(budget):
        arm = rule.propose(Arms(counts, sums), rng)
        counts[rows, arm] += 1
        sums[rows, arm] += rng.random(reps) < p[arm]
    arms = Arms(counts, sums)
    return rule.recommend(arms, rng), arms


@pytest.mark.parametrize("rule", list(RULES))
def test_regret_falls_with_budget_for_every_rule(rule):
    regret = [float((P.max() - P[_replay(rule, b, P, 300)[0]]).mean()) for b in (10, 80)]
    assert regret[1] < regret[0] - 0.03
    assert regret[1] < (P.max() - P.mean())  # better than a random checkpoint


def test_interval_coverage_is_near_nominal_on_arms_from_a_common_prior():
    # Arms whose success rates are drawn from a Beta (the model's own assumption): the 90% interval of the pick
    # covers its true success about 90% of the time, the winner's curse corrected.
    rng = np.random.default_rng(1)
    hits, raw_bias, shrunk_bias = [], [], []
    for i in range(30):
        p = rng.beta(2, 3, 8)
        pick, arms = _replay("thompson", 30, p, 40, seed=i)
        sm = summarise(arms, pick, rng, samples=1000)
        hits += list((sm["low"] <= p[pick]) & (p[pick] <= sm["high"]))
        raw_bias += list(sm["raw_mean"] - p[pick])
        shrunk_bias += list(sm["estimate"] - p[pick])
    assert 0.84 <= np.mean(hits) <= 0.96
    assert abs(np.mean(shrunk_bias)) < np.mean(raw_bias)  # the shrinkage removes part of the upward bias


def test_successive_halving_follows_its_schedule():
    from offrl.workflow.allocation import halving_schedule

    survivors, cumulative = halving_schedule(8, 24)
    assert survivors == [8, 4, 2, 1] and cumulative == [1, 3, 7]
    pick, arms = _replay("successive_halving", 24, P[:8], 5)
    assert (arms.counts.sum(axis=1) == 24).all()
    assert ((arms.counts == 1).sum(axis=1) == 4).all()  # half the arms eliminated after one round


def test_rules_are_deterministic_given_the_seed():
    for rule in RULES:
        a, _ = _replay(rule, 20, P, 7, seed=3)
        b, _ = _replay(rule, 20, P, 7, seed=3)
        assert (a == b).all()


def test_cluster_bootstrap_resamples_tasks():
    from offrl.workflow.check_replay import cluster_bootstrap

    v = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    res = cluster_bootstrap(v, ["a", "a", "a", "b", "b", "b"], samples=2000)
    assert res["mean"] == 0.5 and res["ci"][0] == 0.0 and res["ci"][1] == 1.0  # two clusters: all or nothing
    assert cluster_bootstrap(v, list("abcdef"), samples=2000)["ci"][0] > 0.0


# -- the trial log and the CLI, on tiny trained runs -------------------------------------------------------------

gym = pytest.importorskip("gymnasium")


class Line(gym.Env):
    """A point on a line starting at ``seed % 3``; it succeeds at x >= 3 (tests/test_gym_envs.py's)."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-10.0, 10.0, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.x = 0.0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = float(seed % 3) if seed is not None else 0.0
        return np.array([self.x], np.float32), {}

    def step(self, action):
        self.x += float(np.clip(action[0], -1.0, 1.0))
        success = self.x >= 3
        return np.array([self.x], np.float32), float(success), self.x <= -2, False, {"success": success}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two behaviour-cloning runs of 1-d observations and actions, 5 checkpoints each (seeds 0 and 1)."""
    from conftest import chain_arrays, tiny_train_config

    from offrl.agents.bc import BCConfig
    from offrl.data import make_dataset, save_dataset
    from offrl.training.train import train

    tmp = tmp_path_factory.mktemp("check")
    data = save_dataset(tmp / "d.h5", make_dataset(chain_arrays(episodes=4, obs_dim=1, act_dim=1),
                                                   {"task": "toy", "action_low": [-1], "action_high": [1]}))
    return [train(tiny_train_config(data, tmp / f"run{s}", algo="bc", bc=BCConfig(actor_hidden_dims=(8,)), seed=s,
                                    steps=50, checkpoint_every=10, chunk_steps=10)) for s in (0, 1)]


def _answer(cand, n):
    # A deterministic stand-in for the robot: later checkpoints succeed more often.
    return float((cand.step * 7 + n * 13) % 50 < cand.step)


def test_a_resumed_check_proposes_what_a_straight_one_does(runs, tmp_path):
    from offrl.workflow.check import Check

    straight = Check(runs[:1], tmp_path / "a.jsonl", rule="thompson", budget=12, confidence=0.999)
    while straight.status() == "running":
        c = straight.propose()
        straight.record(_answer(c, len(straight.trials)), c.id)
    seq = [t["checkpoint"] for t in straight.trials]
    assert len(seq) == 12 and len(set(seq)) > 1
    for stop in (1, 5):  # interrupted after `stop` episodes: a new process reads the log and goes on
        check = Check(runs[:1], tmp_path / f"b{stop}.jsonl", rule="thompson", budget=12, confidence=0.999)
        for _ in range(stop):
            c = check.propose()
            check.record(_answer(c, len(check.trials)), c.id)
        check = Check(runs[:1], tmp_path / f"b{stop}.jsonl")  # settings come from the log
        while check.status() == "running":
            c = check.propose()
            check.record(_answer(c, len(check.trials)), c.id)
        assert [t["checkpoint"] for t in check.trials] == seq
        assert check.answer()["deploy"] == straight.answer()["deploy"]


def test_the_log_survives_a_kill_mid_write_and_a_torn_line(runs, tmp_path):
    from offrl.workflow.check import Check, read_log

    log = tmp_path / "t.jsonl"
    Check(runs[:1], log, budget=10**9).record("success", "10")
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(os.getcwd())!r})
        from offrl.workflow.check import Check
        c = Check([{str(runs[0])!r}], {str(log)!r})
        print("ready", flush=True)
        while True:
            c.record("failure", "20", note="x" * 2000)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    header, trials, _ = read_log(log)
    assert header is not None and len(trials) >= 2 and trials[0]["outcome"] == 1.0
    assert [t["n"] for t in trials] == list(range(1, len(trials) + 1))  # every whole line, in order
    # A line torn by a crash (no newline): skipped with a note, and the next record stays whole.
    with open(log, "ab") as f:
        f.write(b'{"type":"trial","n":')
    check = Check(runs[:1], log)
    assert len(check.trials) == len(trials) and any("torn" in n for n in check.notes)
    check.record("success", "30")
    _, again, notes = read_log(log)
    assert len(again) == len(trials) + 1 and again[-1]["step"] == 30 and len(notes) == 1


def _cli(args, capsys):
    from offrl.cli import main

    rc = main(["check", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_bad_input_is_refused_in_one_line_and_changes_nothing(runs, tmp_path, capsys):
    log = tmp_path / "bad.jsonl"
    assert _cli([runs[0], "--log", log, "--record", "1", "--checkpoint", "20"], capsys)[0] == 0
    before = log.read_bytes()
    for args, says in (
        (["--record", "1", "--checkpoint", "25"], "not a candidate"),
        (["--record", "1.5"], "outside the outcome range"),
        (["--record", "maybe"], "neither success"),
        (["--record", "1", "--rule", "uniform"], "was started with --rule"),
    ):
        rc, out, err = _cli([runs[0], "--log", log, *args], capsys)
        assert rc == 1 and err.startswith("offrl: error:") and says in err and err.count("\n") == 1, err
        assert log.read_bytes() == before
    rc, _, err = _cli([runs[1], "--log", log, "--record", "1"], capsys)  # the log of another run
    assert rc == 1 and "another check" in err and err.count("\n") == 1 and log.read_bytes() == before
    rc, _, err = _cli([runs[0], "--log", tmp_path / "new.jsonl", "--record", "1", "--budget", "0"], capsys)
    assert rc == 1 and "budget" in err and not (tmp_path / "new.jsonl").exists()


def test_offrl_check_end_to_end_by_hand_and_with_a_simulator(runs, tmp_path, capsys, monkeypatch):
    rc, out, _ = _cli([*runs, "--budget", "3"], capsys)  # two runs: ids RUN:STEP
    assert rc == 0 and "try checkpoint run" in out and "load_policy" in out
    for outcome in ("success", "failure", "1"):
        assert _cli([*runs, "--record", outcome, "--operator", "ann"], capsys)[0] == 0
    rc, out, _ = _cli([*runs], capsys)
    assert rc == 0 and "deploy checkpoint" in out and "budget is spent" in out
    ans = json.loads((runs[0] / "check" / "check.json").read_text())
    assert ans["episodes_used"] == 3 and ans["status"] == "budget" and 0 <= ans["interval"][0] <= ans["estimate"]
    assert ans["estimate"] <= ans["interval"][1] <= 1 and 0 <= ans["prob_best"] <= 1
    assert _cli([*runs, "--record", "1"], capsys)[0] == 1  # beyond the budget

    sim = types.ModuleType("offrl_test_check_line")  # stands for the user's module with a factory
    sim.make = Line
    monkeypatch.setitem(sys.modules, "offrl_test_check_line", sim)
    log = tmp_path / "sim.jsonl"
    rc, out, _ = _cli([runs[0], "--log", log, "--env", "offrl_test_check_line:make", "--horizon", "4",
                       "--budget", "8", "--rule", "successive_halving"], capsys)
    assert rc == 0 and "deploy checkpoint" in out, out
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert lines[0]["type"] == "header" and lines[0]["rule"] == "successive_halving"
    assert all(t["operator"] == "simulator" and t["outcome"] in (0.0, 1.0) for t in lines[1:])
    ans = json.loads((tmp_path / "check.json").read_text())
    assert ans["episodes_used"] <= 8 and ans["deploy"]["step"] in (10, 20, 30, 40, 50)
