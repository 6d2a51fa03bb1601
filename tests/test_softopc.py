"""SoftOPC (Irpan et al. 2019): the success labels of episodes, the sets it scores, its value against the critic
computed by hand, the rule it gives, and the cases where it is undefined."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import chain_arrays, tiny_train_config

from offrl.data import make_dataset
from offrl.workflow.softopc import softopc_run, softopc_sets, successful_episodes

META = {"task": "toy", "action_low": [-1, -1], "action_high": [1, 1]}


def _every_step(episodes: int = 4, length: int = 5) -> dict[str, np.ndarray]:
    """The paper's reward structure: 1 on every step from the first success on, never terminal; episodes 0 and 2
    succeed (from step 2 on), 1 and 3 never do."""
    arrays = chain_arrays(episodes=episodes, length=length)
    r = np.zeros((episodes, length), np.float32)
    r[0::2, 2:] = 1.0
    arrays["rewards"] = r.reshape(-1)
    arrays["terminals"] = np.zeros(episodes * length, bool)
    arrays["timeouts"] = np.zeros((episodes, length), bool)
    arrays["timeouts"][:, -1] = True
    arrays["timeouts"] = arrays["timeouts"].reshape(-1)
    return arrays


def test_success_labels_from_terminal_and_every_step_rewards():
    terminal = make_dataset(chain_arrays(episodes=6, length=4), META)  # every 2nd episode ends in success
    assert successful_episodes(terminal).tolist() == [True, False, True, False, True, False]
    every = make_dataset(_every_step(), META)
    assert successful_episodes(every).tolist() == [True, False, True, False]
    pos, everything, facts = softopc_sets(every)
    assert pos.tolist() == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14] and everything.tolist() == list(range(20))
    assert facts == {"episodes": 4, "successful_episodes": 2, "positive_share": 0.5}


def test_the_sets_are_drawn_once_and_capped():
    ds = make_dataset(chain_arrays(episodes=10, length=30), META)
    a = softopc_sets(ds, max_transitions=50)
    b = softopc_sets(ds, max_transitions=50)
    assert len(a[0]) == len(a[1]) == 50 and np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    successful_rows = np.concatenate([np.arange(e * 30, e * 30 + 30) for e in range(0, 10, 2)])
    assert np.isin(a[0], successful_rows).all() and np.all(np.diff(a[0]) > 0)


def test_undefined_without_both_classes_or_on_shaped_rewards():
    all_good = chain_arrays(episodes=3, length=4, success_every=1)
    with pytest.raises(ValueError, match="no failed episode"):
        softopc_sets(make_dataset(all_good, META))
    none_good = chain_arrays(episodes=3, length=4)
    none_good["rewards"][:] = 0.0
    with pytest.raises(ValueError, match="no successful episode"):
        softopc_sets(make_dataset(none_good, META))
    shaped = chain_arrays(episodes=3, length=4)
    shaped["rewards"] = np.linspace(0, 2, 12).astype(np.float32)
    with pytest.raises(ValueError, match="binary 0/1 success rewards"):
        successful_episodes(make_dataset(shaped, META))


def test_softopc_of_a_run_equals_the_critic_by_hand_and_drives_the_rule(tmp_path, chain_dataset):
    import jax.numpy as jnp

    from offrl.agents import config_from_dict
    from offrl.agents.cql import _networks
    from offrl.data import Normalizer, save_dataset
    from offrl.training import run_dir as rd
    from offrl.training.policy import load_state
    from offrl.training.train import train
    from offrl.workflow.diagnosis import diagnose_run

    path = tmp_path / "chain.h5"
    save_dataset(path, chain_dataset)
    run = train(tiny_train_config(path, tmp_path / "run"))
    res = softopc_run(run)
    steps = rd.checkpoint_steps(run)
    assert [r["step"] for r in res["results"]] == steps and (run / "softopc.json").is_file()
    assert res["successful_episodes"] == 3 and res["episodes"] == 6 and res["prior"] == 1.0

    # By hand: the mean over the two critics of Q(s, a) on the logged actions, successful episodes vs all.
    cfg = rd.read_json(run / rd.CONFIG_FILE)
    critic, _ = _networks(config_from_dict("cql", cfg["agent"]), 2)
    state, _ = load_state(run, steps[-1])
    norm = Normalizer.from_dict(cfg["normalizer"])
    obs, act = jnp.asarray(norm(chain_dataset.observations)), jnp.asarray(chain_dataset.actions)
    q = np.asarray(critic.apply(state.critic_params, obs, act)).mean(axis=0)
    good = np.repeat(successful_episodes(chain_dataset), 10)
    last = res["results"][-1]
    assert last["q_successful"] == pytest.approx(q[good].mean(), rel=1e-4, abs=1e-5)
    assert last["q_all"] == pytest.approx(q.mean(), rel=1e-4, abs=1e-5)
    assert last["value"] == pytest.approx(last["q_successful"] - last["q_all"], abs=1e-6)

    # The rule picks the highest score among the candidates (after the warm start), through diagnose/select.
    picked = diagnose_run(run, selector="softopc")["selected_step"]
    candidates = [r for r in res["results"] if r["step"] > 20]
    assert picked == max(candidates, key=lambda r: r["value"])["step"]


def test_select_softopc_without_scores_says_what_to_run(tmp_path, chain_dataset):
    from offrl.data import save_dataset
    from offrl.training.train import train
    from offrl.workflow.diagnosis import diagnose_run

    path = tmp_path / "chain.h5"
    save_dataset(path, chain_dataset)
    run = train(tiny_train_config(path, tmp_path / "run"))
    with pytest.raises(ValueError, match=r"softopc needs softopc.json \(offrl softopc RUN\)"):
        diagnose_run(run, selector="softopc")


def test_the_cli_refuses_data_without_failures_in_one_line(tmp_path, capsys):
    from offrl.cli import main
    from offrl.data import save_dataset
    from offrl.training.train import train

    path = save_dataset(tmp_path / "all-good.h5", make_dataset(chain_arrays(episodes=6, success_every=1), META))
    run = train(tiny_train_config(path, tmp_path / "run"))
    assert main(["softopc", str(run)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("offrl: error:") and "no failed episode among its 6" in err and err.count("\n") == 1
    assert not (run / "softopc.json").exists()
