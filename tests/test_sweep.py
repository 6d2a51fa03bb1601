"""`offrl sweep`: K runs vectorised in one process match K separate `offrl train` runs."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from conftest import chain_arrays, tiny_train_config

from offrl.agents.cql import CQLConfig
from offrl.data import make_dataset, save_dataset
from offrl.training import run_dir as rd
from offrl.training.policy import load_state
from offrl.training.sweep import SweepConfig, check_sweep, member_name, sweep
from offrl.training.train import train

KEYS = ("q_data", "td_error", "cql_regularizer", "heldout/q_data", "heldout/td_error", "train/critic_loss")


def _records(run):
    return {r["step"]: r for r in rd.read_metrics(run)}


def _compare(a, b, rtol=2e-3, atol=2e-4):
    ra, rb = _records(a), _records(b)
    assert ra.keys() == rb.keys()
    for step in ra:
        for k in KEYS:
            assert ra[step][k] == pytest.approx(rb[step][k], rel=rtol, abs=atol), (step, k)


@pytest.fixture
def dataset_path(tmp_path):
    return save_dataset(tmp_path / "d.h5", make_dataset(chain_arrays(episodes=12), {"task": "toy"}))


def _base(dataset_path, out, **kw):
    return tiny_train_config(dataset_path, out, steps=60, checkpoint_every=20, **kw)


def test_sweep_over_seeds_and_alpha_matches_separate_runs(tmp_path, dataset_path):
    base = _base(dataset_path, tmp_path / "sweep", seed=0)
    runs = sweep(SweepConfig(base, seeds=(0, 1), param="alpha", values=(0.5, 5.0)))
    assert [r.name for r in runs] == ["alpha=0.5_s0", "alpha=5_s0", "alpha=0.5_s1", "alpha=5_s1"]
    for run in (runs[1], runs[2]):
        cfg = json.loads((run / "config.json").read_text())
        seed, alpha = cfg["seed"], cfg["agent"]["alpha"]
        alone = tmp_path / f"alone_{run.name}"
        train(dataclasses.replace(base, out=alone, seed=seed, split_seed=0,
                                  agent=dataclasses.replace(base.agent, alpha=alpha)))
        _compare(run, alone)
        a, _ = load_state(run, 60)
        b, _ = load_state(alone, 60)
        la = np.concatenate([np.ravel(v) for v in jax.tree.leaves(a.critic_params)])
        lb = np.concatenate([np.ravel(v) for v in jax.tree.leaves(b.critic_params)])
        np.testing.assert_allclose(la, lb, rtol=1e-3, atol=1e-4)
    # Different members really differ: alpha weighs the CQL term of the critic loss.
    r0, r1 = _records(runs[0]), _records(runs[1])
    assert r1[20]["train/critic_loss"] - r0[20]["train/critic_loss"] > 0.1


def test_sweep_over_dr3_including_zero(tmp_path, dataset_path):
    base = _base(dataset_path, tmp_path / "sweep")
    runs = sweep(SweepConfig(base, seeds=(0,), param="dr3_coef", values=(0.0, 0.1)))
    alone = tmp_path / "alone"
    train(dataclasses.replace(base, out=alone, split_seed=0))  # dr3_coef 0: no DR3 term at all
    _compare(runs[0], alone)
    assert "train/dr3_dot" in _records(runs[1])[60]


def test_sweep_refuses_what_it_cannot_vectorise(tmp_path, dataset_path):
    base = _base(dataset_path, tmp_path / "sweep")
    with pytest.raises(ValueError, match="changes the networks"):
        check_sweep(SweepConfig(base, param="vib_dim", values=(0.0, 4.0)))
    with pytest.raises(ValueError, match="not a CQL hyperparameter"):
        check_sweep(SweepConfig(base, param="alfa", values=(1.0,)))
    with pytest.raises(ValueError, match="repeats a seed"):
        check_sweep(SweepConfig(base, seeds=(1, 1)))
    with pytest.raises(ValueError, match="needs --param"):
        check_sweep(SweepConfig(base, values=(1.0,)))
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "x").write_text("keep me")
    with pytest.raises(FileExistsError, match="already exists"):
        sweep(SweepConfig(base, seeds=(0, 1)))
    assert (tmp_path / "sweep" / "x").read_text() == "keep me"
    assert member_name(2, "alpha", 3.0) == "alpha=3_s2" and member_name(0, None, None) == "s0"


def test_sweep_members_are_ordinary_runs(tmp_path, dataset_path):
    from offrl.workflow.diagnosis import diagnose_run

    runs = sweep(SweepConfig(_base(dataset_path, tmp_path / "sweep"), seeds=(0, 3)))
    for run in runs:
        assert rd.checkpoint_steps(run) == [20, 40, 60]
        assert diagnose_run(run)["verdict"]
    assert json.loads((runs[1] / "config.json").read_text())["seed"] == 3
    assert CQLConfig().alpha == json.loads((runs[0] / "config.json").read_text())["agent"]["alpha"]


def test_other_algorithms_are_swept_one_run_after_another(tmp_path, dataset_path):
    from offrl.agents.mopo import MOPOConfig

    mopo = MOPOConfig(model_hidden_dims=(16,), critic_hidden_dims=(16,), actor_hidden_dims=(16,), num_members=3,
                      num_elites=2, model_steps=20, rollout_horizon=2, rollout_error_steps=2, rollout_batch_size=8,
                      model_retain_steps=20)
    base = dataclasses.replace(_base(dataset_path, tmp_path / "sweep"), algo="mopo", mopo=mopo, steps=40)
    with pytest.raises(ValueError, match="not a float hyperparameter of MOPO; one of: .*penalty_coef"):
        check_sweep(SweepConfig(base, param="num_members", values=(2.0,)))
    runs = sweep(SweepConfig(base, seeds=(0,), param="penalty_coef", values=(0.0, 2.0)))
    assert [r.name for r in runs] == ["penalty_coef=0_s0", "penalty_coef=2_s0"]
    for run, value in zip(runs, (0.0, 2.0), strict=True):
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["algo"] == "mopo" and cfg["agent"]["penalty_coef"] == value and cfg["sweep"]["members"] == 2
        assert rd.checkpoint_steps(run) == [20, 40]
    # the penalty is what differs: the model phase (steps <= 20) is the same, the penalised rewards are not
    r0, r2 = _records(runs[0]), _records(runs[1])
    assert r0[20]["heldout/model_mse"] == r2[20]["heldout/model_mse"]
    assert r2[40]["train/model_reward"] < r0[40]["train/model_reward"]


def test_offrl_sweep_command(tmp_path, dataset_path, capsys):
    from offrl.cli import main

    tiny = ["--train.cql.critic-hidden-dims", "16", "16", "--train.cql.actor-hidden-dims", "16", "16",
            "--train.cql.bc-steps", "10", "--train.batch-size", "32", "--train.no-progress"]
    argv = ["sweep", "--train.dataset", str(dataset_path), "--train.out", str(tmp_path / "sw"), "--train.steps",
            "40", "--train.checkpoint-every", "20", "--train.chunk-steps", "20", "--seeds", "0", "1",
            "--param", "alpha", "--values", "1", "3", *tiny]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("verdict") == 4 and "alpha=3_s1" in out
    assert main(argv) == 1  # never overwrites
    assert "already exists" in capsys.readouterr().err
