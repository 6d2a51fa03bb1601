"""Choosing alpha / beta offline (paper Appendix G): the soundness rule, and the procedure end to end."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from conftest import chain_arrays

from offrl.agents.cql import CQLConfig
from offrl.cli import main
from offrl.data import make_dataset, save_dataset
from offrl.training import run_dir as rd
from offrl.training.train import TrainConfig
from offrl.workflow.tuning import judge, tune_conservatism


def _recs(qs, **extra):
    return [{"step": 10 * (i + 1), "q_data": q, **extra} for i, q in enumerate(qs)]


def test_judge_flags_overestimation_and_divergence():
    assert judge(_recs([0.1, 0.5, 0.9]), (0.0, 1.0))["sound"]
    assert judge(_recs([-50.0, -20.0]), (0.0, 1.0))["sound"]  # below the range is CQL's bias, not a failure
    over = judge(_recs([0.5, 1.5, 2.0]), (0.0, 1.0))
    assert over["overestimates"] and not over["sound"] and over["max_q_data"] == 2.0
    assert judge(_recs([0.5, 1.05]), (0.0, 1.0))["sound"]  # within the 10% tolerance
    assert judge(_recs([0.5, float("nan")]), (0.0, 1.0))["diverged"]
    assert judge(_recs([0.5]) + [{"step": 20, "diverged": True}], (0.0, 1.0))["diverged"]
    # A warm start's checkpoints (MOPO's and COMBO's model phase: no policy yet) are not read; divergence is.
    warm = judge(_recs([5.0, 0.2, 0.4]), (0.0, 1.0), after_step=10)
    assert warm["sound"] and warm["max_q_data"] == 0.4
    assert not judge(_recs([0.2, 5.0]), (0.0, 1.0), after_step=10)["sound"]
    assert judge(_recs([0.2, 0.3]) + [{"step": 5, "diverged": True}], (0.0, 1.0), after_step=10)["diverged"]


def test_tuning_runs_every_value_and_picks_the_least_conservative_sound_one(tmp_path):
    data = save_dataset(tmp_path / "d.h5", make_dataset(chain_arrays(episodes=10), {"task": "toy"}))
    base = TrainConfig(dataset=data, out=Path("unused"), steps=80, checkpoint_every=40, chunk_steps=20,
                       batch_size=32, progress=False,
                       agent=CQLConfig(critic_hidden_dims=(16,), actor_hidden_dims=(16,), bc_steps=0))
    result = tune_conservatism(base, tmp_path / "tune", values=(3.0, 0.0))
    assert [r["value"] for r in result["runs"]] == [0.0, 3.0]
    for r in result["runs"]:
        cfg = json.loads((Path(r["run_dir"]) / "config.json").read_text())
        assert cfg["agent"]["alpha"] == r["value"]
    sound = [r["value"] for r in result["runs"] if r["sound"]]
    assert result["chosen"] == (min(sound) if sound else None)
    saved = json.loads((tmp_path / "tune" / "tuning.json").read_text())
    assert saved["parameter"] == "alpha" and saved["chosen"] == result["chosen"]
    # a second call resumes the finished runs instead of overwriting them
    again = tune_conservatism(base, tmp_path / "tune", values=(3.0, 0.0))
    assert [r["max_q_data"] for r in again["runs"]] == [r["max_q_data"] for r in result["runs"]]
    assert all(math.isfinite(r["max_q_data"]) for r in again["runs"])


@pytest.mark.parametrize("algo, knob, default", [("mopo", "penalty_coef", 1.0), ("combo", "conservative_weight", 1.0)])
def test_tuning_model_based_algorithms_sets_their_knob_and_skips_the_model_phase(algo, knob, default, tmp_path):
    data = save_dataset(tmp_path / "d.h5", make_dataset(chain_arrays(episodes=10), {"task": "toy"}))
    small = dict(model_hidden_dims=(16,), critic_hidden_dims=(16,), actor_hidden_dims=(16,), num_members=3,
                 num_elites=2, model_steps=80, rollout_horizon=2, rollout_error_steps=2, rollout_batch_size=8,
                 model_retain_steps=20)
    base = TrainConfig(dataset=data, out=Path("unused"), algo=algo, steps=160, checkpoint_every=40, chunk_steps=20,
                       batch_size=32, progress=False)
    base = dataclasses.replace(base, **{algo: dataclasses.replace(getattr(base, algo), **small)})
    result = tune_conservatism(base, tmp_path / "tune", values=(0.0, 3.0))
    assert result["parameter"] == knob and result["algo"] == algo
    for r in result["runs"]:
        run = Path(r["run_dir"])
        assert run.name == f"{knob}_{r['value']:g}"
        assert json.loads((run / "config.json").read_text())["agent"][knob] == r["value"]
        # max q_data is read after the model phase (steps 40, 80) only
        policy_qs = [m["q_data"] for m in rd.read_metrics(run) if m["step"] > 80]
        assert len(policy_qs) == 2 and r["max_q_data"] == pytest.approx(max(policy_qs))
    sound = [r["value"] for r in result["runs"] if r["sound"]]
    assert result["chosen"] == (min(sound) if sound else None)
    if "advice" in result and sound:
        assert f"{knob} = {default:g}" in result["advice"]


def test_tuning_refuses_an_algorithm_without_a_conservatism_knob(tmp_path):
    with pytest.raises(ValueError, match=r"cql \(alpha\), brac \(beta\), mopo \(penalty_coef\), combo"):
        tune_conservatism(TrainConfig(dataset=Path("x"), out=Path("y"), algo="bc"), tmp_path)
    # `offrl tune --help` names the tunable algorithms without importing this module: the two lists agree
    from offrl import cli
    from offrl.workflow.tuning import KNOBS

    assert set(cli._TUNABLE) == set(KNOBS)


@pytest.mark.sim
def test_brac_workflow_end_to_end_in_the_simulator(tmp_path, monkeypatch, capsys):
    pytest.importorskip("metaworld")
    monkeypatch.chdir(tmp_path)
    argv = ["workflow", "--algo", "brac", "--episodes", "4", "--horizon", "100", "--regime", "white", "--noise-sigma", "0.2",
            "--steps", "120", "--checkpoint-every", "40", "--eval-episodes", "1", "--out", "runs/b",
            "--brac.critic-hidden-dims", "16", "--brac.actor-hidden-dims", "16", "--bc.actor-hidden-dims", "16",
            "--no-progress"]
    assert main(argv) == 0
    assert "verdict:" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "runs/b/config.json").read_text())
    assert cfg["algo"] == "brac" and cfg["behavior"]["run"].endswith("runs/b_bc")
    diag = json.loads((tmp_path / "runs/b/diagnosis.json").read_text())
    assert diag["evidence"]["metric"] == "q_regularized"
    # pi_beta's run is BRAC's behaviour-cloning baseline: evaluated (analysis only), not trained a second time
    bc_steps = [r["step"] for r in json.loads((tmp_path / "runs/b_bc/evaluation.json").read_text())["results"]]
    assert bc_steps == [40, 80, 120] and diag["analysis_only"]["bc_best"]["episodes"] == 1
    assert not (tmp_path / "runs/b_bc_bc").exists()
