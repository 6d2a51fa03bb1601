"""The averaged actor (issue 45): a Polyak average of the actor's parameters kept beside them in the agent state,
updated inside the compiled chunk, checkpointed, resumed exactly, and what evaluate/export act with when recorded."""

from __future__ import annotations

import dataclasses
import json
import shutil

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import chain_arrays
from conftest import tiny_train_config as _config

from offrl import export as ex
from offrl.agents import common, cql, get_agent
from offrl.agents.cql import CQLConfig
from offrl.data import Normalizer, make_dataset, save_dataset
from offrl.training import run_dir as rd
from offrl.training.policy import actor_params, checkpoint_policy, load_state
from offrl.training.train import make_train_chunk, train
from offrl.workflow.rules import run_actor

DECAY = 0.9
TINY = CQLConfig(critic_hidden_dims=(16, 16), actor_hidden_dims=(16, 16), num_action_samples=2, bc_steps=20)
AVERAGED = dataclasses.replace(TINY, actor_ema_decay=DECAY)


@flax.struct.dataclass
class _Toy:
    step: jnp.ndarray
    actor_params: dict


def _toy_update(state, batch, key, config):
    # The actor moves by a known amount each step: p_k = p_{k-1} + batch["g"] * (k + 1).
    new = state.replace(step=state.step + 1, actor_params={"w": state.actor_params["w"] + batch["g"] * (state.step + 1)})
    return new, {"loss": jnp.float32(0.0)}


def test_average_after_k_updates_equals_the_hand_computed_value():
    g = jnp.asarray([1.0, -2.0, 0.5], jnp.float32)
    config = dataclasses.replace(TINY, actor_ema_decay=0.8)
    state = common.with_actor_average(_Toy(jnp.int32(0), {"w": jnp.zeros(3, jnp.float32)}))
    # Inside lax.scan, as the training loop's compiled chunk runs it.
    def body(s, _):
        return common.averaged_update(_toy_update, s, {"g": g}, jax.random.PRNGKey(0), config)[0], None
    scanned, _ = jax.jit(lambda s: jax.lax.scan(body, s, None, length=4))(state)
    # By hand: p_ema <- d * p_ema + (1 - d) * p after every step, from p_ema = p_0 = 0.
    p, ema = np.zeros(3), np.zeros(3)
    for k in range(4):
        p = p + np.asarray(g) * (k + 1)
        ema = 0.8 * ema + 0.2 * p
    np.testing.assert_allclose(scanned.agent.actor_params["w"], p, rtol=1e-6)
    np.testing.assert_allclose(scanned.actor_average_params["w"], ema, rtol=1e-6)
    assert scanned.actor_average_params["w"].dtype == jnp.float32
    # The values themselves: p = g * (1, 3, 6, 10); ema = 0.2 * (0.8^3 * 1 + 0.8^2 * 3 + 0.8 * 6 + 10) g.
    np.testing.assert_allclose(scanned.actor_average_params["w"], 0.2 * (0.512 + 1.92 + 4.8 + 10) * np.asarray(g),
                               rtol=1e-6)


def test_a_bare_state_is_updated_by_the_agent_alone():
    state = _Toy(jnp.int32(0), {"w": jnp.ones(2)})
    new, _ = common.averaged_update(_toy_update, state, {"g": jnp.ones(2)}, jax.random.PRNGKey(0), AVERAGED)
    assert isinstance(new, _Toy) and common.actor_of(new) is new.actor_params
    with pytest.raises(ValueError, match="keeps no averaged actor"):
        common.actor_of(new, "averaged")
    with pytest.raises(ValueError, match="unknown actor 'best'"):
        common.actor_of(new, "best")


def test_the_real_agent_average_in_the_compiled_chunk_follows_its_actor_step_by_step():
    ds = chain_arrays(episodes=4)
    data = {k: jnp.asarray(v, jnp.float32) for k, v in ds.items() if k != "timeouts"}
    module = get_agent("iql")
    agent = dataclasses.replace(module.IQLConfig(critic_hidden_dims=(8,), value_hidden_dims=(8,),
                                                 actor_hidden_dims=(8,)), actor_ema_decay=0.5)
    state = common.with_actor_average(module.init(agent, 3, 2, jax.random.PRNGKey(1)))
    key = jax.random.PRNGKey(2)
    chunk, _ = make_train_chunk("iql", agent, 16, 3, loop="scan")(state, data, key)
    update = jax.jit(lambda s, k: module.update(s, _batch(data, k), jax.random.split(k)[1], agent))
    ema, inner = state.actor_average_params, state.agent
    for k in jax.random.split(key, 3):  # the chunk's keys, one step at a time, averaged by hand
        inner, _ = update(inner, k)
        ema = jax.tree.map(lambda a, p: 0.5 * a + 0.5 * p, ema, inner.actor_params)
    for x, y in zip(jax.tree.leaves(chunk.actor_average_params), jax.tree.leaves(ema), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    for x, y in zip(jax.tree.leaves(chunk.agent), jax.tree.leaves(inner), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def _batch(data, k):
    # The minibatch offrl.training.train.sample_and_update draws with key k.
    from offrl.training.train import make_batch

    idx = jax.random.randint(jax.random.split(k)[0], (16,), 0, data["rewards"].shape[0])
    return make_batch(data, idx)


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory):
    return save_dataset(tmp_path_factory.mktemp("data") / "toy.h5", make_dataset(chain_arrays(episodes=10),
                                                                                   {"task": "toy"}))


@pytest.fixture(scope="module")
def averaged_run(tmp_path_factory, dataset_path):
    """80 steps with an averaged actor, uninterrupted (checkpoints at 40 and 80). Read it, never write it."""
    return train(_config(dataset_path, tmp_path_factory.mktemp("avg") / "run", steps=80, agent=AVERAGED))


@pytest.fixture(scope="module")
def bare_run(tmp_path_factory, dataset_path):
    """The same run without the flag."""
    return train(_config(dataset_path, tmp_path_factory.mktemp("bare") / "run", steps=80, agent=TINY))


def test_the_choice_is_recorded_and_the_checkpoint_keeps_the_average(averaged_run):
    cfg = json.loads((averaged_run / "config.json").read_text())
    assert cfg["deployment"]["actor"] == "averaged" and cfg["agent"]["actor_ema_decay"] == DECAY
    assert run_actor(cfg) == "averaged" and run_actor(cfg, "trained") == "trained"
    assert [r["actor"] for r in rd.read_metrics(averaged_run)] == ["averaged", "averaged"]
    state, cfg = load_state(averaged_run, 80)
    assert isinstance(state, common.ActorAveraged) and int(state.agent.step) == 80
    avg, trained = jax.tree.leaves(state.actor_average_params), jax.tree.leaves(state.agent.actor_params)
    assert all(a.shape == t.shape and a.dtype == t.dtype for a, t in zip(avg, trained, strict=True))
    assert not np.array_equal(avg[0], trained[0])
    assert actor_params(state, cfg) is state.actor_average_params
    assert actor_params(state, cfg, "trained") is state.agent.actor_params
    state40, _ = load_state(averaged_run, 40)
    assert not np.array_equal(jax.tree.leaves(state40.actor_average_params)[0], avg[0])


def test_the_average_does_not_change_training_and_off_changes_nothing(averaged_run, bare_run):
    bare, cfg = load_state(bare_run, 80)
    assert not isinstance(bare, common.ActorAveraged)
    assert "actor" not in cfg["deployment"] and cfg["agent"]["actor_ema_decay"] == 0.0
    assert all("actor" not in r for r in rd.read_metrics(bare_run))
    assert "actor" not in json.loads((bare_run / "config.json").read_text())["deployment"]
    with pytest.raises(ValueError, match="keeps no averaged actor"):
        checkpoint_policy(bare_run, 80, actor="averaged")
    # The trained networks of the averaged run are bit-identical to the run without it.
    averaged, _ = load_state(averaged_run, 80)
    for x, y in zip(jax.tree.leaves(averaged.agent), jax.tree.leaves(bare), strict=True):
        np.testing.assert_array_equal(x, y)
    # The training losses too; the workflow metrics differ where they read the (averaged) actor.
    ra, rb = rd.read_metrics(averaged_run)[-1], rd.read_metrics(bare_run)[-1]
    assert ra["train/critic_loss"] == rb["train/critic_loss"] and ra["train/actor_loss"] == rb["train/actor_loss"]


def test_resume_continues_the_average_exactly(averaged_run, dataset_path, tmp_path):
    part = train(_config(dataset_path, tmp_path / "part", steps=40, agent=AVERAGED))
    train(_config(dataset_path, part, steps=80, resume=True))
    a, _ = load_state(averaged_run, 80)
    b, _ = load_state(part, 80)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    for ra, rb in zip(rd.read_metrics(averaged_run), rd.read_metrics(part), strict=True):
        for k in ("q_data", "td_error", "cql_regularizer", "heldout/q_data", "train/actor_loss"):
            assert ra[k] == rb[k], (k, ra["step"])


def test_policy_and_export_act_with_the_recorded_actor(averaged_run, tmp_path):
    state, cfg = load_state(averaged_run, 80)
    obs = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    norm_obs = Normalizer.from_dict(cfg["normalizer"])(obs)
    by_hand = np.asarray(cql.deterministic_action(state.actor_average_params, norm_obs, 2, AVERAGED))
    deployed = checkpoint_policy(averaged_run, 80)(obs)
    np.testing.assert_array_equal(deployed, by_hand)
    trained = checkpoint_policy(averaged_run, 80, actor="trained")(obs)
    assert not np.allclose(trained, deployed)
    copy = shutil.copytree(averaged_run, tmp_path / "run")
    out = ex.export_policy(copy, step=80, out=tmp_path / "policy", compiled=False)
    assert ex.read_policy_spec(out)["source"]["actor"] == "averaged"
    np.testing.assert_allclose(ex.load_policy(out)(obs), by_hand, rtol=1e-6, atol=1e-6)
    out_t = ex.export_policy(copy, step=80, out=tmp_path / "trained", compiled=False, actor="trained")
    assert ex.read_policy_spec(out_t)["source"]["actor"] == "trained"
    np.testing.assert_allclose(ex.load_policy(out_t)(obs), trained, rtol=1e-6, atol=1e-6)


def test_a_decay_outside_0_1_is_refused_naming_the_flag(dataset_path, tmp_path):
    bad = dataclasses.replace(TINY, actor_ema_decay=1.0)
    with pytest.raises(ValueError, match=r"--agent\.actor-ema-decay must be in \[0, 1\), got 1\.0"):
        train(_config(dataset_path, tmp_path / "run", agent=bad))
    assert not (tmp_path / "run").exists()


def test_a_study_setting_extends_a_preset_with_the_average():
    from offrl.study.cell import _preset_training, agent_for
    from offrl.study.config import StudyConfigError, algo_for, load_study_config, study_config_from_dict

    config = load_study_config("studies/averaged-actor.toml")
    averaged = agent_for("iql-sparse-averaged", config)
    assert algo_for("iql-sparse-averaged", config) == "iql"
    assert (averaged.expectile, averaged.inverse_temperature, averaged.actor_lr_decay_steps) == (0.9, 10.0, 60000)
    assert averaged.actor_ema_decay == 0.999 and agent_for("iql-sparse-decayed", config).actor_ema_decay == 0.0
    assert _preset_training("iql-sparse-averaged", config)["reward_shift"] == -1.0
    assert agent_for("base-averaged", config).actor_ema_decay == 0.999
    scenario = {"name": "s", "tasks": ["pick-place-v3"], "episodes": [10], "settings": ["x"]}
    # The preset's actor decay spans the cell's run, as `offrl train --preset iql-sparse` gives it, unless set.
    plain = study_config_from_dict({"scenario": [{**scenario, "settings": ["iql-sparse", "y"]}],
                                    "settings": {"y": {"preset": "iql-sparse", "actor_ema_decay": 0.999}}})
    assert agent_for("iql-sparse", plain, 15000).actor_lr_decay_steps == 15000
    assert agent_for("y", plain, 15000).actor_lr_decay_steps == 15000
    assert agent_for("iql-sparse-averaged", config, 15000).actor_lr_decay_steps == 60000  # its own value wins
    with pytest.raises(StudyConfigError, match="extends preset 'nope'"):
        study_config_from_dict({"scenario": [scenario], "settings": {"x": {"preset": "nope"}}})


# ------------------------------------------------------------------------------ evaluate and report both actors


def _probe_env():
    """A gymnasium environment that records the actions it gets (3-d observations from the episode's seed, 2-d
    actions; success when the first action component is positive at the second step, so that with horizon 2 every
    episode has two steps), so that a test can tell which actor acted."""
    gym = pytest.importorskip("gymnasium")

    class Probe(gym.Env):
        seen: list[tuple[np.ndarray, np.ndarray]] = []

        def __init__(self):
            self.observation_space = gym.spaces.Box(-10.0, 10.0, (3,), np.float32)
            self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
            self.obs = np.zeros(3, np.float32)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.obs, self.t = np.random.default_rng(seed).normal(size=3).astype(np.float32), 0
            return self.obs, {}

        def step(self, action):
            Probe.seen.append((self.obs.copy(), np.asarray(action, np.float32).copy()))
            self.obs, self.t = self.obs + 0.1, self.t + 1
            return self.obs, 0.0, False, False, {"success": bool(self.t >= 2 and action[0] > 0)}

    return Probe


def _acted_with(probe, run, actor):
    # The actions the environment got are those of each checkpoint's `actor` (rolled out in step order, 4 episodes
    # of 2 steps each), and not those of the other actor.
    obs = np.stack([o for o, _ in probe.seen])
    got = np.stack([a for _, a in probe.seen])
    other = "trained" if actor == "averaged" else "averaged"
    steps, n = rd.checkpoint_steps(run), 4 * 2
    assert len(obs) == len(steps) * n
    for i, step in enumerate(steps):
        rows = slice(i * n, (i + 1) * n)
        np.testing.assert_allclose(got[rows], checkpoint_policy(run, step, actor=actor)(obs[rows]), rtol=1e-5,
                                   atol=1e-6)
        assert not np.allclose(got[rows], checkpoint_policy(run, step, actor=other)(obs[rows]), atol=1e-4)


def test_evaluate_both_actors_keeps_evaluation_json_the_deployed_ones_and_the_report_draws_both(
        averaged_run, tmp_path, monkeypatch, capsys):
    import sys
    import types

    from offrl.cli import main
    from offrl.report import write_report
    from offrl.workflow.evaluate import evaluate_run

    probe = _probe_env()
    sim = types.ModuleType("offrl_test_probe")
    sim.make = probe
    monkeypatch.setitem(sys.modules, "offrl_test_probe", sim)
    run = shutil.copytree(averaged_run, tmp_path / "run")
    flags = ["--env", "offrl_test_probe:make", "--horizon", "2", "--eval-episodes", "4"]

    # The default: the deployed (averaged) actor, in evaluation.json.
    probe.seen.clear()
    deployed = evaluate_run(run, env="offrl_test_probe:make", horizon=2, episodes=4, progress=False)
    _acted_with(probe, run, "averaged")
    assert deployed["actor"] == "averaged" and not (run / "evaluation-trained.json").exists()
    before = (run / "evaluation.json").read_bytes()

    # --actor trained: evaluation-trained.json beside it; evaluation.json is left as it was.
    probe.seen.clear()
    assert main(["evaluate", str(run), *flags, "--actor", "trained"]) == 0
    out = capsys.readouterr().out
    assert "evaluation-trained.json" in out and "evaluation.json, the deployed actor's, is unchanged" in out
    _acted_with(probe, run, "trained")
    assert (run / "evaluation.json").read_bytes() == before
    trained = json.loads((run / "evaluation-trained.json").read_text())
    assert trained["actor"] == "trained" and trained["used_for_selection"] is False
    assert [r["step"] for r in trained["results"]] == [40, 80] and trained["episodes"] == 4
    # Rewritten on every call, as evaluation.json is.
    assert main(["evaluate", str(run), *flags, "--actor", "trained", "--seed", "1"]) == 0
    assert json.loads((run / "evaluation-trained.json").read_text())["seed"] == 1
    assert (run / "evaluation.json").read_bytes() == before

    # --actor averaged is the deployed one: evaluation.json, as without the flag.
    assert main(["evaluate", str(run), *flags, "--actor", "averaged"]) == 0
    assert "evaluation.json" in capsys.readouterr().out
    again = json.loads((run / "evaluation.json").read_text())
    assert again["actor"] == "averaged" and again["results"] == deployed["results"]

    # The report: both curves' labels, and the trained actor's column at the table's checkpoints.
    text = write_report(run).read_text(encoding="utf-8")
    table = text[text.index("Selected vs best vs last"):text.index("Figure 1:")]
    assert "<th>success rate (averaged actor, deployed)</th>" in table
    assert "<th>success rate (trained actor)</th>" in table
    last = trained["results"][-1]
    assert f"<td>{last['success_rate']:.0%} ({last['successes']}/4)</td></tr>" in table.split("last checkpoint")[1]
    assert ("success rate of the averaged actor (deployed), from evaluation.json; green dashed line: the trained "
            "actor&#x27;s, from evaluation-trained.json") in text


def test_evaluate_refuses_the_average_of_a_run_without_one_in_one_line(bare_run, tmp_path, capsys):
    from offrl.cli import main
    from offrl.workflow.evaluate import evaluate_run

    run = shutil.copytree(bare_run, tmp_path / "run")
    with pytest.raises(ValueError, match="keeps no averaged actor"):
        evaluate_run(run, env=_probe_env(), horizon=2, episodes=2, actor="averaged", progress=False)
    assert main(["evaluate", str(run), "--actor", "averaged"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("offrl: error: this run keeps no averaged actor")
    assert "--agent.actor-ema-decay" in err
    assert not list(run.glob("evaluation*.json"))
    # The trained actor is the deployed one there: evaluation.json, without an "actor" key, as always.
    evaluate_run(run, env=_probe_env(), horizon=2, episodes=2, actor="trained", progress=False)
    assert [p.name for p in run.glob("evaluation*.json")] == ["evaluation.json"]
    assert "actor" not in json.loads((run / "evaluation.json").read_text())
