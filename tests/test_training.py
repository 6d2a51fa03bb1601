"""Training loop and run directory: contents, checkpoint round trip, no silent overwrite, exact resume."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import chain_arrays
from conftest import tiny_train_config as _config

from offrl.agents.cql import CQLConfig
from offrl.data import make_dataset, save_dataset
from offrl.training import run_dir as rd
from offrl.training.policy import checkpoint_policy, load_state
from offrl.training.train import train

TINY = CQLConfig(critic_hidden_dims=(16, 16), actor_hidden_dims=(16, 16), num_action_samples=2, bc_steps=20)


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory):
    ds = make_dataset(chain_arrays(episodes=10), {"task": "toy"})
    return save_dataset(tmp_path_factory.mktemp("data") / "toy.h5", ds)


# The same tiny runs, trained once per module: the tests only read `full_run`, and copy `part_run` before changing it.
@pytest.fixture(scope="module")
def full_run(tmp_path_factory, dataset_path):
    """The default tiny run (120 steps, checkpoints at 40, 80, 120), uninterrupted. Read it, never write it."""
    return train(_config(dataset_path, tmp_path_factory.mktemp("full") / "run"))


@pytest.fixture(scope="module")
def _part_run(tmp_path_factory, dataset_path):
    return train(_config(dataset_path, tmp_path_factory.mktemp("part") / "run", steps=80))


@pytest.fixture
def part_run(_part_run, tmp_path):
    """A fresh copy of the same tiny run stopped after 80 steps (checkpoints at 40 and 80), for this test to change."""
    return shutil.copytree(_part_run, tmp_path / "part")




def test_run_directory_contents(full_run):
    out = full_run
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["seed"] == 0 and cfg["algo"] == "cql"
    assert len(cfg["dataset"]["fingerprint"]) == 64 and cfg["offrl_version"]
    assert cfg["versions"]["jax"] == jax.__version__
    assert cfg["platform"]["jax_backend"] == "cpu" and cfg["platform"]["cpu_count"] >= 1 \
        and isinstance(cfg["platform"]["xla_flags"], str)
    assert cfg["dataset"]["q_range"] == [0.0, 1.0]
    assert cfg["dataset"]["heldout_episodes"] == 1 and cfg["dataset"]["train_episodes"] == 9
    records = rd.read_metrics(out)
    assert [r["step"] for r in records] == [40, 80, 120]
    for key in ("q_data", "td_error", "cql_regularizer", "q_error_estimate", "heldout/q_data",
                "heldout/td_error", "heldout/cql_regularizer", "heldout/q_error_estimate", "train/critic_loss"):
        assert all(np.isfinite(r[key]) for r in records), key
    # q_error_estimate = td_error * effective horizon (min(longest episode, 1/(1-gamma)) = 10 here)
    assert records[-1]["q_error_estimate"] == pytest.approx(records[-1]["td_error"] * 10)
    assert rd.checkpoint_steps(out) == [40, 80, 120]


def test_checkpoint_round_trip_and_policy(full_run):
    out = full_run
    state, _ = load_state(out, 120)
    assert int(state.step) == 120
    state80, _ = load_state(out, 80)
    assert int(state80.step) == 80
    assert not np.array_equal(jax.tree.leaves(state.actor_params)[0], jax.tree.leaves(state80.actor_params)[0])
    policy = checkpoint_policy(out, 120)
    a = policy(np.zeros((5, 3), np.float32))
    assert a.shape == (5, 2) and np.all(np.abs(a) <= 1)
    with pytest.raises(FileNotFoundError, match="no checkpoint at step 7"):
        load_state(out, 7)


def test_existing_run_is_never_overwritten_silently(tmp_path, dataset_path):
    out = train(_config(dataset_path, tmp_path / "run", steps=40))
    before = (out / "metrics.jsonl").read_text()
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        train(_config(dataset_path, out, steps=40))
    assert (out / "metrics.jsonl").read_text() == before
    train(_config(dataset_path, out, steps=40, overwrite=True))


def test_resume_matches_an_uninterrupted_run(full_run, part_run, dataset_path):
    full, part = full_run, part_run
    # simulate a crash after the record of step 120 was written but before its checkpoint, then a torn line
    rec80 = rd.read_metrics(part)[-1]
    rd.append_metrics(part, {**rec80, "step": 120, "q_data": 123.0})
    with open(part / "metrics.jsonl", "a") as f:
        f.write('{"step": 12')
    train(_config(dataset_path, part, steps=120, resume=True))
    a, b = rd.read_metrics(full), rd.read_metrics(part)
    assert [r["step"] for r in b] == [40, 80, 120]
    for ra, rb in zip(a, b, strict=True):
        for k in ("q_data", "td_error", "cql_regularizer", "train/critic_loss"):
            assert ra[k] == rb[k], (k, ra["step"])
    sa, _ = load_state(full, 120)
    sb, _ = load_state(part, 120)
    for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb), strict=True):
        np.testing.assert_array_equal(x, y)


def test_resume_refuses_a_different_dataset(tmp_path, dataset_path):
    out = train(_config(dataset_path, tmp_path / "run", steps=40))
    other = save_dataset(tmp_path / "other.h5", make_dataset(chain_arrays(episodes=10, seed=5)))
    with pytest.raises(ValueError, match="differs from the one the run started with"):
        train(_config(other, out, steps=80, resume=True))


def test_torn_metrics_line_is_dropped_but_corruption_elsewhere_is_an_error(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"st')
    assert [r["step"] for r in rd.read_metrics(tmp_path)] == [1, 2]
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nxx\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 2"):
        rd.read_metrics(tmp_path)


def test_compile_timer_counts_compilation_and_not_cached_calls():
    from offrl.training.timing import compile_timer

    f = jax.jit(lambda x: jnp.sin(x) * 3.0 + jnp.cos(x))
    x = jnp.ones(64)
    with compile_timer() as first:
        f(x).block_until_ready()
    with compile_timer() as again:
        f(x).block_until_ready()
    assert first["compile_s"] > 0 and again["compile_s"] == 0


def test_resume_continues_the_recorded_run_without_repeating_its_settings(tmp_path, full_run, part_run):
    from offrl.training.train import TrainConfig

    out, full = part_run, full_run
    # A run of 120 steps interrupted after 80: the recorded total is 120.
    cfg = json.loads((out / "config.json").read_text())
    cfg["training"]["steps"] = 120
    (out / "config.json").write_text(json.dumps(cfg))
    # Neither --dataset nor --steps: the run's own dataset and total (not 100,000).
    train(TrainConfig(out=out, resume=True, progress=False))
    assert [r["step"] for r in rd.read_metrics(out)] == [40, 80, 120]
    assert json.loads((out / "config.json").read_text())["training"]["steps"] == cfg["training"]["steps"] == 120
    assert rd.read_metrics(out)[-1]["q_data"] == rd.read_metrics(full)[-1]["q_data"]
    with pytest.raises(ValueError, match="--dataset is required"):
        train(TrainConfig(out=tmp_path / "new", progress=False))
    with pytest.raises(ValueError, match="below the 120 steps"):
        train(TrainConfig(out=out, resume=True, steps=80, progress=False))


def test_reward_shift_trains_on_shifted_rewards_records_it_and_resume_keeps_it(tmp_path, dataset_path):
    from offrl.training.train import TrainConfig

    out = train(_config(dataset_path, tmp_path / "run", steps=80, reward_shift=-1.0))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["training"]["reward_shift"] == -1.0 and cfg["training"]["reward_scale"] == 1.0
    assert cfg["dataset"]["q_range"] == [pytest.approx(-10.0), 0.0]  # -1 per step over 10-step episodes
    # Every reward is now <= 0, so a critic trained on them has a negative mean Q on the data; on the stored
    # 0/1 rewards it stays in [0, 1] (test_run_directory_contents' range).
    assert rd.read_metrics(out)[-1]["q_data"] < 0
    cfg["training"]["steps"] = 120
    (out / "config.json").write_text(json.dumps(cfg))
    train(TrainConfig(out=out, resume=True, progress=False))  # no --reward-shift: the run's own is restored
    assert json.loads((out / "config.json").read_text())["training"]["reward_shift"] == -1.0
    with pytest.raises(ValueError, match="--reward-scale must be a finite number > 0"):
        train(_config(dataset_path, tmp_path / "bad", reward_scale=0.0))
    assert not (tmp_path / "bad").exists()


def test_resume_of_a_folder_that_is_no_run_says_so(tmp_path):
    from offrl.training.train import TrainConfig

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="cannot resume: .* has no config.json; start a new run"):
        train(TrainConfig(out=tmp_path / "empty", resume=True, progress=False))


def test_progress_bar_says_its_values_are_minibatch_averages(tmp_path, dataset_path, capsys):
    # metrics.jsonl holds q_data on the fixed evaluation set; the bar's differs, so its name says minibatch.
    train(_config(dataset_path, tmp_path / "run", steps=40, progress=True))
    err = capsys.readouterr().err
    assert "q_data(batch)=" in err and "td(batch)=" in err


def test_resume_reads_the_chunk_size_of_a_run_written_when_it_was_called_log_every(tmp_path, dataset_path):
    from offrl.training.train import TrainConfig

    full = train(_config(dataset_path, tmp_path / "full", steps=120, chunk_steps=10))
    out = tmp_path / "old"
    train(_config(dataset_path, out, steps=80, chunk_steps=10))
    cfg = json.loads((out / "config.json").read_text())
    cfg["training"]["log_every"] = cfg["training"].pop("chunk_steps")  # as older offrl wrote it
    cfg["training"]["steps"] = 120
    (out / "config.json").write_text(json.dumps(cfg))
    train(TrainConfig(out=out, resume=True, progress=False))
    # Chunks of 10 steps draw other keys than the default's (gcd(500, 40, 120) = 20): equal only if it was read.
    assert rd.read_metrics(out)[-1]["q_data"] == rd.read_metrics(full)[-1]["q_data"]
