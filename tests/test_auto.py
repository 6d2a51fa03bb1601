"""The automated workflow's decisions on synthetic runs with a known answer (paper Figure 1)."""

from __future__ import annotations

import json

import numpy as np
from conftest import chain_arrays

from offrl.agents.cql import CQLConfig
from offrl.data import make_dataset, save_dataset
from offrl.workflow.auto import RemedyConfig, decide, next_action, remedy_agent
from offrl.workflow.diagnosis import diagnose_metrics


def _records(q, td=1e-3, reg=1.0):
    return [{"step": 1000 * (i + 1), "q_data": float(v), "td_error": td, "cql_regularizer": reg,
             "q_error_estimate": td * 100} for i, v in enumerate(q)]


RISE_FALL = np.concatenate([np.linspace(0, 0.4, 6), np.linspace(0.37, 0.1, 8)])
RISE = np.linspace(0, 0.4, 14)


def _diag(records, run, **kw):
    return {**diagnose_metrics(records, (0.0, 1.0), **kw), "run_dir": run}


def test_overfitting_remedy_is_chosen_when_it_stops_the_decline():
    base = _diag(_records(RISE_FALL), "base")
    assert base["verdict"] == "overfitting" and next_action(base) == "vib"
    vib = _diag(_records(RISE), "vib")
    d = decide(base, "vib", vib)
    assert (d["run_dir"], d["step"]) == ("vib", 14000)
    assert "stops the decline" in d["reasons"][0]


def test_overfitting_remedy_that_still_declines_keeps_the_base_peak():
    base = _diag(_records(RISE_FALL), "base")
    still = _diag(_records(RISE_FALL * 0.9), "vib")
    d = decide(base, "vib", still)
    assert (d["run_dir"], d["step"]) == ("base", base["selected_step"])
    assert "does not stop the decline" in d["reasons"][0]


def test_underfitting_where_capacity_helps_chooses_the_bigger_run():
    base_recs = _records(RISE, td=0.05, reg=2.0)  # Q error 5x the range: underfitting
    big_recs = _records(RISE, td=0.01, reg=1.0)
    base = _diag(base_recs, "base")
    assert base["verdict"] == "underfitting" and next_action(base) == "capacity"
    big = _diag(big_recs, "capacity")
    compared = diagnose_metrics(base_recs, (0.0, 1.0), compare=[{"run_dir": "capacity", "records": big_recs}])
    d = decide(base, "capacity", big, compared)
    assert (d["run_dir"], d["step"]) == ("capacity", 14000)
    assert "Metric 3.2" in d["reasons"][0]


def test_underfitting_where_capacity_does_not_help_says_so():
    base_recs = _records(RISE, td=0.05, reg=2.0)
    same = _records(RISE, td=0.0499, reg=1.99)
    base = _diag(base_recs, "base")
    compared = diagnose_metrics(base_recs, (0.0, 1.0), compare=[{"run_dir": "capacity", "records": same}])
    d = decide(base, "capacity", _diag(same, "capacity"), compared)
    assert d["run_dir"] == "base"
    assert "capacity is not what limits this run" in d["reasons"][0]


def test_healthy_runs_need_no_remedy():
    base = _diag(_records(RISE), "base")
    assert next_action(base) is None
    assert decide(base)["run_dir"] == "base"


def test_remedy_configs():
    base = CQLConfig()
    assert remedy_agent(base, "vib").vib_dim == 16 and remedy_agent(base, "vib").vib_beta == 1e-3
    assert remedy_agent(base, "dropout", RemedyConfig(dropout=0.2)).critic_dropout == 0.2
    cap = remedy_agent(base, "capacity")
    assert cap.critic_hidden_dims == (512, 512, 512) and cap.dr3_coef == 1e-3
    assert (cap.actor_encoder, cap.critic_encoder) == ("cnn", "cnn")  # state runs have no encoder to change
    img = remedy_agent(base, "capacity", images=True)
    assert (img.actor_encoder, img.critic_encoder) == ("resnet", "cnn")  # the paper's ResNet-actor fix
    both = remedy_agent(base, "capacity", RemedyConfig(residual="both"), images=True)
    assert (both.actor_encoder, both.critic_encoder) == ("resnet", "resnet")


def test_workflow_auto_end_to_end(tmp_path, monkeypatch, capsys):
    from offrl.cli import main

    monkeypatch.chdir(tmp_path)
    data = save_dataset(tmp_path / "d.h5", make_dataset(chain_arrays(episodes=10), {"task": "toy"}))
    assert main(["workflow", "--auto", "--algo", "cql", "--dataset", str(data), "--out", "runs/a", "--steps", "160",
                 "--checkpoint-every", "40", "--eval-episodes", "0", "--cql.critic-hidden-dims", "8",
                 "--cql.actor-hidden-dims", "8", "--cql.bc-steps", "0", "--no-progress"]) == 0
    result = json.loads((tmp_path / "runs/a/auto.json").read_text())
    assert result["runs"]["base"]["verdict"] in ("overfitting", "underfitting", "healthy", "inconclusive",
                                                 "diverged")
    assert result["decision"]["step"] is not None and result["decision"]["path"][0].startswith("base run")
    assert "deploy:" in capsys.readouterr().out
    html = (tmp_path / "runs/a/report.html").read_text()
    assert "Decision path" in html and "data:image/png;base64," in html and "base run:" in html
