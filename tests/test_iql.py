"""IQL: the expectile loss and the advantage weights against hand-computed values, the settings refused before
training, a bandit where the policy keeps to the data and prefers its better action (and V lands on the
expectile), and a run end to end through train, resume, diagnose, select, report and export."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import chain_arrays, two_action_bandit

from offrl.agents import common, iql
from offrl.cli import main
from offrl.data import make_dataset, save_dataset
from offrl.training import run_dir as rd
from offrl.training.train import make_train_chunk


def test_expectile_loss_by_hand():
    diff = jnp.array([-2.0, -1.0, 0.5, 3.0])
    # |0.7 - 1(u < 0)| u^2: 0.3 * 4, 0.3 * 1, 0.7 * 0.25, 0.7 * 9
    np.testing.assert_allclose(iql.expectile_loss(diff, 0.7), [1.2, 0.3, 0.175, 6.3], rtol=1e-6)
    # 0.5 is half the squared error, symmetric
    np.testing.assert_allclose(iql.expectile_loss(diff, 0.5), [2.0, 0.5, 0.125, 4.5], rtol=1e-6)


def test_advantage_weights_by_hand_with_the_clip():
    w = common.advantage_weights(jnp.array([-1.0, 0.0, 1.0, 10.0]), 3.0, 100.0)
    np.testing.assert_allclose(w, [np.exp(-3.0), 1.0, np.exp(3.0), 100.0], rtol=1e-6)
    # no gradient reaches the critic or V through the weights
    g = jax.grad(lambda a: common.advantage_weights(a, 3.0, 100.0).sum())(jnp.array([0.5]))
    assert float(g[0]) == 0.0


@pytest.mark.parametrize("bad, match", [
    ({"expectile": 0.0}, "expectile"), ({"expectile": 1.0}, "expectile"), ({"expectile": 1.5}, "expectile"),
    ({"inverse_temperature": 0.0}, "inverse_temperature"), ({"inverse_temperature": -1.0}, "inverse_temperature"), ({"max_weight": 0.0}, "max_weight"),
    ({"actor_lr_decay_steps": -1}, "actor_lr_decay_steps"),
])
def test_settings_that_cannot_work_are_refused(bad, match):
    config = iql.IQLConfig(**bad)
    assert len(iql.config_problems(config)) == 1 and match.replace("_", "-") in iql.config_problems(config)[0]
    with pytest.raises(ValueError, match=match.replace("_", "-")):
        iql.init(config, 3, 2, jax.random.PRNGKey(0))
    assert iql.config_problems(iql.IQLConfig()) == []


def test_bandit_policy_keeps_to_the_data_and_prefers_its_better_action():
    data = two_action_bandit()  # one state: a = -0.5 pays 0, a = +0.5 pays 1, half the data each
    config = iql.IQLConfig(critic_hidden_dims=(32, 32), value_hidden_dims=(32, 32), actor_hidden_dims=(32, 32),
                           critic_lr=1e-3, value_lr=1e-3, actor_lr=1e-3)
    state = iql.init(config, 2, 1, jax.random.PRNGKey(0))
    state, metrics = make_train_chunk("iql", config, 128, 3000)(state, data, jax.random.PRNGKey(1))
    assert all(np.isfinite(float(v)) for v in jax.tree.leaves(metrics))
    ev = iql.evaluate(state, data, jax.random.PRNGKey(2), config)
    q_good = float(ev["q_data"][1::2].mean())
    q_bad = float(ev["q_data"][::2].mean())
    assert q_good == pytest.approx(1.0, abs=0.05) and q_bad == pytest.approx(0.0, abs=0.05)
    # The 0.7-expectile of Q over the data's actions (0 and 1, half each) solves
    # 0.7 * (1 - v) = 0.3 * v: v = 0.7.
    assert float(ev["v_data"].mean()) == pytest.approx(0.7, abs=0.05)
    # The policy prefers the better dataset action and stays on the data's support.
    a = float(iql.deterministic_action(state.actor_params, jnp.ones((1, 2)), 1, config)[0, 0])
    assert a == pytest.approx(0.5, abs=0.1)


def test_cosine_actor_schedule_stops_the_policy_after_its_decay_steps_and_only_the_policy():
    data = two_action_bandit()
    config = iql.IQLConfig(critic_hidden_dims=(8,), value_hidden_dims=(8,), actor_hidden_dims=(8,),
                           actor_lr_decay_steps=5)
    init = iql.init(config, 2, 1, jax.random.PRNGKey(0))
    chunk = make_train_chunk("iql", config, 32, 5)
    state, _ = chunk(init, data, jax.random.PRNGKey(1))  # steps 1-5: the policy learns
    assert any(np.abs(np.asarray(a) - np.asarray(b)).max() > 0 for a, b in
               zip(jax.tree.leaves(init.actor_params), jax.tree.leaves(state.actor_params), strict=True))
    before = state
    state, _ = chunk(state, data, jax.random.PRNGKey(2))  # steps 6-10: the schedule is at 0
    for a, b in zip(jax.tree.leaves(before.actor_params), jax.tree.leaves(state.actor_params), strict=True):
        np.testing.assert_array_equal(a, b)
    moved = [np.abs(np.asarray(a) - np.asarray(b)).max()
             for a, b in zip(jax.tree.leaves(before.critic_params), jax.tree.leaves(state.critic_params), strict=True)]
    assert max(moved) > 0  # the critics keep their constant rate


TINY = ["--checkpoint-every", "40", "--chunk-steps", "20", "--batch-size", "32", "--no-progress",
        "--iql.critic-hidden-dims", "16", "16", "--iql.value-hidden-dims", "16", "16",
        "--iql.actor-hidden-dims", "16", "16"]


def test_iql_end_to_end_train_resume_diagnose_select_report_export(tmp_path, capsys):
    data = save_dataset(tmp_path / "d.h5", make_dataset(chain_arrays(episodes=10), {"task": "toy"}))
    run = tmp_path / "iql"
    # A setting that cannot work fails before training, with the flag to change.
    assert main(["train", "--algo", "iql", "--dataset", str(data), "--out", str(run), "--steps", "80",
                 "--iql.expectile", "1.2", *TINY]) == 1
    assert "--iql.expectile" in capsys.readouterr().err and not run.exists()
    assert main(["train", "--algo", "iql", "--dataset", str(data), "--out", str(run), "--steps", "80", *TINY]) == 0
    assert main(["train", "--resume", "--out", str(run), "--steps", "160", "--no-progress"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["algo"] == "iql" and cfg["agent"]["expectile"] == 0.7 and cfg["agent"]["critic_hidden_dims"] == [16, 16]
    recs = rd.read_metrics(run)
    assert [r["step"] for r in recs] == [40, 80, 120, 160]
    for k in ("q_data", "v_data", "advantage", "value_loss", "adv_weight", "log_likelihood", "q_policy",
              "td_error", "td_error_over_target_var", "heldout/q_data", "heldout/value_loss"):
        assert np.isfinite(recs[-1][k]), k
    assert main(["diagnose", str(run)]) == 0
    d = json.loads((run / "diagnosis.json").read_text())
    assert d["evidence"]["metric"] == "q_data" and d["selected_step"] in (40, 80, 120, 160)
    capsys.readouterr()
    assert main(["select", str(run)]) == 0
    assert str(d["selected_step"]) in capsys.readouterr().out
    assert main(["report", str(run)]) == 0
    assert "value_loss" in (run / "report.html").read_text()
    assert main(["export", str(run), "--out", str(tmp_path / "policy")]) == 0

    from offrl.training.policy import checkpoint_policy

    act = checkpoint_policy(run, d["selected_step"])(np.zeros((4, 3), np.float32))
    assert np.asarray(act).shape == (4, 2) and np.all(np.abs(np.asarray(act)) < 1)


@pytest.mark.sim
def test_iql_workflow_shows_the_behaviour_cloning_baseline(tmp_path, monkeypatch, capsys):
    """`offrl workflow --algo iql` trains and evaluates the BC baseline beside IQL, as for CQL without a warm
    start, so the summary compares the pick with imitation (analysis only)."""
    pytest.importorskip("metaworld")
    monkeypatch.chdir(tmp_path)
    argv = ["workflow", "--algo", "iql", "--episodes", "4", "--horizon", "100", "--regime", "white",
            "--noise-sigma", "0.2", "--steps", "80", "--checkpoint-every", "40", "--eval-episodes", "1",
            "--bc-baseline-steps", "50", "--out", "runs/i", "--iql.critic-hidden-dims", "16",
            "--iql.value-hidden-dims", "16", "--iql.actor-hidden-dims", "16", "--bc.actor-hidden-dims", "16",
            "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "BC, best checkpoint" in out and "BC, offline pick" in out
    side = json.loads((tmp_path / "runs/i/diagnosis.json").read_text())["analysis_only"]
    assert side["bc_best"]["episodes"] == 1 and side["bc_selected"]["step"] in (10, 20, 30, 40, 50)
    assert json.loads((tmp_path / "runs/i_bc/config.json").read_text())["algo"] == "bc"
    # The workflow's IQL (docs/default-job.md, D12): rewards - 1, the sparse-reward expectile and beta, the
    # actor's cosine schedule over the run's 80 steps, the last checkpoint.
    cfg = json.loads((tmp_path / "runs/i/config.json").read_text())
    assert cfg["training"]["reward_shift"] == -1.0 and cfg["dataset"]["q_range"][1] == 0.0
    assert (cfg["agent"]["expectile"], cfg["agent"]["inverse_temperature"]) == (0.9, 10.0)
    assert cfg["agent"]["actor_lr_decay_steps"] == 80
    assert json.loads((tmp_path / "runs/i/diagnosis.json").read_text())["selected_step"] == 80


def test_workflow_defaults_follow_the_algorithm():
    from offrl.workflow.pipeline import WorkflowConfig, resolve_workflow_config

    d = resolve_workflow_config(WorkflowConfig())
    assert (d.algo, d.regime, d.steps, d.checkpoint_every, d.selector, d.reward_shift) == (
        "iql", "mixed", 60_000, 6_000, "last", -1.0)
    assert d.iql.actor_lr_decay_steps == 60_000 and d.iql.expectile == 0.9
    c = resolve_workflow_config(WorkflowConfig(algo="cql"))
    assert (c.steps, c.checkpoint_every, c.selector, c.reward_shift) == (15_000, 1_000, "q_peak", 0.0)
    short = resolve_workflow_config(WorkflowConfig(steps=30_000, selector="q_peak"))
    assert short.iql.actor_lr_decay_steps == 30_000 and short.selector == "q_peak"  # given values are kept
