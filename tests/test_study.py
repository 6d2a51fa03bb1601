"""The validation study: selectors, regret and rank correlation on synthetic runs with a known answer, the
success-curve label, the study file's checks, and a tiny study end to end in the simulator (resumable)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from offrl.stats import bootstrap_mean, spearman, wilson_interval
from offrl.study.cell import agent_for
from offrl.study.config import Cell, StudyConfigError, cells_of, load_study_config, study_config_from_dict
from offrl.study.selectors import analyse, evaluate_selectors, success_label


def _cell(q, success, td=None, fqe=None, verdict="overfitting", selected=None, warmup=0, setting="base"):
    steps = [1000 * (i + 1) for i in range(len(q))]
    td = td if td is not None else [0.01] * len(q)
    fqe = fqe if fqe is not None else [0.0] * len(q)
    cps = [{"step": s, "q_data": qv, "td_error": t, "heldout/td_error": t, "fqe_value": f, "success_rate": p,
            "successes": int(round(p * 20)), "episodes": 20}
           for s, qv, t, f, p in zip(steps, q, td, fqe, success, strict=True)]
    return {"cell": {"scenario": "s", "task": "t", "episodes": 10, "seed": 0, "setting": setting},
            "checkpoints": cps, "warmup_steps": warmup, "verdict": verdict,
            "diagnosis": {"selected_step": selected}, "q_range": [0.0, 1.0]}


def test_selectors_on_a_run_whose_q_peak_is_the_best_checkpoint():
    q = [0.1, 0.3, 0.5, 0.4, 0.2, 0.1]
    success = [0.2, 0.5, 0.9, 0.6, 0.3, 0.1]
    td = [0.5, 0.4, 0.3, 0.2, 0.1, 0.05]          # falling TD error: the held-out TD selector picks the last
    fqe = [0.0, 0.1, 0.2, 0.3, 0.25, 0.1]          # FQE peaks one checkpoint late
    res = evaluate_selectors(_cell(q, success, td, fqe, selected=3000))
    assert res["workflow"]["step"] == 3000 and res["workflow"]["regret"] == 0.0
    assert res["workflow_after_peak"]["step"] == 4000
    assert res["workflow_after_peak"]["regret"] == pytest.approx((0.9 - 0.6) / (0.9 - 0.1))
    assert res["last"]["step"] == 6000 and res["last"]["regret"] == pytest.approx(1.0)
    assert res["heldout_td"]["step"] == 6000
    assert res["fqe"]["step"] == 4000 and res["fqe"]["abs_regret"] == pytest.approx(0.3)
    assert res["random"]["success"] == pytest.approx(np.mean(success))
    # success and the last checkpoint's score (the step): one rise, then a long fall
    assert res["last"]["spearman"] == pytest.approx(spearman(np.arange(6), np.array(success)))
    assert res["workflow"]["spearman"] > 0.8


def test_candidates_skip_the_warm_start_and_constant_success_has_no_regret():
    q = [0.9, 0.1, 0.2, 0.3]
    res = evaluate_selectors(_cell(q, [1.0, 0.4, 0.4, 0.4], warmup=1000, selected=4000))
    assert res["workflow"]["step"] == 4000          # the BC checkpoint at 1000 is not a candidate
    assert res["workflow"]["regret"] is None and res["workflow"]["spearman"] is None
    assert res["workflow"]["best"] == 0.4


def test_success_label_rule():
    assert success_label(_cell([0] * 8, [0.1, 0.4, 0.8, 0.8, 0.5, 0.3, 0.2, 0.2])) == "overfitting"
    assert success_label(_cell([0] * 8, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.6, 0.7])) == "no overfitting"
    # a dip smaller than 0.15 is noise, not overfitting
    assert success_label(_cell([0] * 8, [0.5, 0.6, 0.6, 0.6, 0.5, 0.5, 0.5, 0.5])) == "no overfitting"
    assert success_label(_cell([0] * 3, [0.1, 0.9, 0.0])) == "too short"


def test_analysis_aggregates_and_diagnosis_accuracy():
    over = [0.1, 0.4, 0.8, 0.8, 0.5, 0.3, 0.2, 0.2]
    flat = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.6, 0.7]
    q = [0.1, 0.3, 0.5, 0.45, 0.3, 0.2, 0.1, 0.0]
    cells = [
        _cell(q, over, verdict="overfitting", selected=3000),
        _cell(q, flat, verdict="healthy", selected=3000, setting="vib"),
        _cell(q, over, verdict="healthy", selected=3000, setting="dropout"),  # a miss
    ]
    a = analyse(cells, type("C", (), {"bootstrap_samples": 500})())
    da = a["diagnosis_accuracy"]
    assert da["labelled_runs"] == 3 and da["accuracy"]["mean"] == pytest.approx(2 / 3)
    assert da["precision"] == 1.0 and da["recall"] == 0.5
    assert a["headline"]["workflow"]["regret"]["n"] == 3
    assert a["headline"]["last"]["success"]["mean"] == pytest.approx(np.mean([0.2, 0.7, 0.2]))
    eff = {e["remedy"]: e for e in a["remedies"]["all"]}
    assert set(eff) == {"vib", "dropout"}
    assert eff["vib"]["late_success"] == [pytest.approx(np.mean([0.3, 0.2, 0.2])), pytest.approx(np.mean([0.6, 0.6, 0.7]))]


def test_bootstrap_and_wilson_intervals():
    b = bootstrap_mean([0.0, 1.0, 0.5, 0.5], samples=2000)
    assert b["mean"] == 0.5 and b["n"] == 4 and b["ci"][0] < 0.5 < b["ci"][1]
    assert bootstrap_mean([0.3])["ci"] is None
    assert bootstrap_mean([None, float("nan")])["n"] == 0
    lo, hi = wilson_interval(10, 20)
    assert lo == pytest.approx(0.299, abs=1e-3) and hi == pytest.approx(0.701, abs=1e-3)


def test_study_config_is_checked(tmp_path):
    good = {"scenario": [{"name": "a", "tasks": ["reach-v3"], "episodes": [5], "settings": ["base", "vib"]}]}
    config = study_config_from_dict(good, out=tmp_path)
    assert cells_of(config) == [Cell("a", "reach-v3", 5, 0, "base"), Cell("a", "reach-v3", 5, 0, "vib")]
    assert agent_for("vib", config).vib_dim == 16 and agent_for("base", config).vib_dim == 0
    bad = [
        ({**good, "stepz": 3}, "unknown keys"),
        ({}, "no \\[\\[scenario\\]\\]"),
        ({"scenario": [{**good["scenario"][0], "settings": ["mine"]}]}, "neither a preset"),
        ({**good, "settings": {"wide": {"critic_width": 3}}}, "unknown CQL fields"),
        ({"scenario": [{**good["scenario"][0], "episodes": [1]}]}, ">= 2 episodes"),
        ({**good, "steps": 0}, "steps must be >= 1"),
    ]
    for raw, msg in bad:
        with pytest.raises(StudyConfigError, match=msg):
            study_config_from_dict(raw)
    with pytest.raises(FileNotFoundError, match="studies/cpu.toml"):
        load_study_config(tmp_path / "missing.toml")


def test_shipped_study_files_parse():
    for name in ("cpu", "gpu", "dev", "algorithms"):
        config = load_study_config(f"studies/{name}.toml")
        assert cells_of(config)


TINY_STUDY = """
out = "{out}"
results = "{out}/results.md"
steps = 60
checkpoint_every = 10
eval_episodes = 2
horizon = 60
noise_sigma = 0.3
fqe_steps = 50
bootstrap_samples = 200

[settings.small]
critic_hidden_dims = [32, 32]
actor_hidden_dims = [32, 32]
bc_steps = 10

[settings.small_vib]
critic_hidden_dims = [32, 32]
actor_hidden_dims = [32, 32]
bc_steps = 10
vib_dim = 4

[[scenario]]
name = "tiny"
tasks = ["reach-v3"]
episodes = [4]
settings = ["small", "small_vib"]
"""


def test_tiny_study_end_to_end_and_resume(tmp_path, capsys):
    pytest.importorskip("metaworld")
    from offrl.cli import main

    out = tmp_path / "study"
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_STUDY.format(out=out))
    # Two worker processes share the two cells through the cell locks.
    assert main(["study", str(path), "--workers", "2"]) == 0
    cells = sorted((out / "cells").glob("*/cell.json"))
    assert len(cells) == 2
    cell = json.loads(cells[0].read_text())
    steps = [c["step"] for c in cell["checkpoints"]]
    assert steps == [10, 20, 30, 40, 50, 60]
    assert all(c["episodes"] == 2 for c in cell["checkpoints"])
    fqe = json.loads((cells[0].parent / "fqe.json").read_text())
    assert [r["step"] for r in fqe["results"]] == [20, 30, 40, 50, 60]   # after the 10-step warm start
    assert all(np.isfinite(r["value"]) for r in fqe["results"])
    results = (out / "results.md").read_text()
    assert "| FQE (fitted Q evaluation) |" in results and f"offrl study {path}" in results
    assert (out / "figures" / "results" / "tiny_reach-v3.png").is_file()
    assert (out / "study.toml").read_text() == path.read_text()
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["runs"] == 2 and set(analysis["headline"]) >= {"workflow", "fqe", "last"}

    # Resume: finished cells are not redone; a cell without cell.json picks up its files.
    mtimes = [c.stat().st_mtime_ns for c in cells]
    cells[1].unlink()
    assert main(["study", str(path)]) == 0
    assert cells[0].stat().st_mtime_ns == mtimes[0] and cells[1].is_file()
    again = json.loads(cells[1].read_text())
    assert "train_s" in again["timings_s"] and "evaluate_s" not in again["timings_s"]

    # A different study in the same directory is refused, and nothing is overwritten.
    path.write_text(TINY_STUDY.format(out=out).replace("eval_episodes = 2", "eval_episodes = 3"))
    capsys.readouterr()
    assert main(["study", str(path)]) == 1
    assert "different configuration" in capsys.readouterr().err


def test_new_selectors_on_a_run_that_over_estimates():
    # q_data passes the largest return (1.0 + 10%) from step 4000 on while success collapses.
    q = [0.2, 0.5, 0.8, 1.5, 2.5, 3.0]
    success = [0.3, 0.6, 0.8, 0.4, 0.1, 0.0]
    cell = _cell(q, success, selected=6000)
    for c, hq, hp, u in zip(cell["checkpoints"], [0.1, 0.4, 0.3, 0.2, 0.2, 0.1], [0.0, 0.2, 0.5, 0.9, 1.0, 1.2],
                            [0.2, 0.3, 0.9, 0.2, 0.2, 0.2], strict=True):
        c.update({"heldout/q_data": hq, "heldout/q_policy": hp, "td_error_over_target_var": u})
    res = evaluate_selectors(cell)
    assert res["workflow"]["step"] == 6000 and res["workflow"]["regret"] == pytest.approx(1.0)
    # Smoothed q_data: [0.35, 0.5, 0.93, 1.6, 2.33, 2.75]: in range up to step 3000.
    assert res["q_peak_in_range"]["step"] == 3000 and res["q_peak_in_range"]["regret"] == 0.0
    assert res["heldout_q_peak"]["step"] == 3000  # smoothed [0.25, 0.27, 0.3, 0.23, 0.17, 0.15]
    # heldout/q_policy rises throughout; only in-range checkpoints count: 3000.
    assert res["heldout_q_policy_peak"]["step"] == 3000
    # At 3000 the critic leaves 90% of its targets' spread unexplained: the fitted peak is 2000.
    assert res["q_peak_fitted"]["step"] == 2000
    assert "oracle" not in res  # no per-episode outcomes: no noise floor


def test_oracle_on_held_apart_halves_is_the_noise_floor():
    # Two checkpoints of equal true quality: the oracle's pick on half A is noise, judged on half B.
    q = [0.1, 0.2, 0.3, 0.4]
    cell = _cell(q, [0.5, 0.5, 0.5, 0.5], selected=4000)
    outcomes = [[1, 0, 1, 0], [1, 1, 0, 0], [0, 1, 1, 0], [1, 1, 1, 1]]
    for c, e in zip(cell["checkpoints"], outcomes, strict=True):
        c["episode_successes"] = e
    res = evaluate_selectors(cell)
    # Half A (even episodes) success: [1, 0.5, 0.5, 1]; half B (odd): [0, 0.5, 0.5, 1].
    # Round 1: oracle picks 1000 on A (first maximum), scored on B: 0 -> regret (1 - 0) / (1 - 0) = 1.
    # Round 2: oracle picks 4000 on B, scored on A: 1 -> regret 0. Mean 0.5.
    assert res["oracle"]["regret"] == pytest.approx(0.5)
    # The workflow's pick (4000) is the best on both halves: regret 0, within 0.1 of the best both times.
    assert res["workflow"]["regret"] == 0.0 and res["workflow"]["within_0.1"] == 1.0
    assert res["last"]["success"] == pytest.approx(1.0)


def test_paired_difference_to_the_workflow():
    cells = [_cell([0.1, 0.5, 0.2, 0.1], [0.1, 0.9, 0.3, 0.1], selected=2000),
             _cell([0.1, 0.5, 0.2, 0.1], [0.9, 0.1, 0.3, 0.1], selected=2000),
             _cell([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.9], selected=4000)]
    a = analyse(cells, type("C", (), {"bootstrap_samples": 200})())
    d = a["headline"]["last"]["regret_minus_workflow"]
    # last vs workflow per run: (1 - 0) , (1 - 1), (0 - 0) -> mean 1/3
    assert d["n"] == 3 and d["mean"] == pytest.approx(1 / 3)


def test_regimes_are_a_grid_dimension_and_white_keeps_old_names():
    raw = {"scenario": [{"name": "a", "tasks": ["reach-v3"], "episodes": [5], "regimes": ["white", "mixed"]}]}
    cells = cells_of(study_config_from_dict(raw))
    assert [c.name for c in cells] == ["reach-v3__5ep__s0__base", "reach-v3__mixed__5ep__s0__base"]
    assert [c.dataset_name for c in cells] == ["reach-v3_5ep_s0.h5", "reach-v3_mixed_5ep_s0.h5"]
    bad = {"scenario": [{"name": "a", "tasks": ["reach-v3"], "episodes": [5], "regimes": ["pink"]}]}
    with pytest.raises(StudyConfigError, match="unknown regimes"):
        study_config_from_dict(bad)


def test_cells_run_seed_by_seed():
    raw = {"scenario": [{"name": "a", "tasks": ["reach-v3", "push-v3"], "episodes": [5, 9], "seeds": [0, 1]}]}
    names = [c.name for c in cells_of(study_config_from_dict(raw))]
    # A study stopped part way has covered every task and size with seed 0 first.
    assert names[:4] == ["reach-v3__5ep__s0__base", "push-v3__5ep__s0__base",
                         "reach-v3__9ep__s0__base", "push-v3__9ep__s0__base"]
    assert len(names) == 8 and all("__s1__" in n for n in names[4:])


def test_a_cell_another_process_holds_is_skipped_and_a_failure_is_listed(tmp_path, monkeypatch):
    import fcntl

    from offrl.data import DatasetError
    from offrl.study import cell, run

    raw = {"out": str(tmp_path / "s"), "bootstrap_samples": 50,
           "scenario": [{"name": "a", "tasks": ["reach-v3", "push-v3"], "episodes": [5]}]}
    config = study_config_from_dict(raw)
    held, free = cells_of(config)
    ran = []

    def fake_run_cell(cell, config, progress=False):
        ran.append(cell.name)
        if cell.name == held.name:  # a fault of the cell's own: it fails alone, as a bad dataset does
            raise RuntimeError(f"{cell.name}: out of memory")
        raise DatasetError(f"{cell.name}: no successful episode")

    monkeypatch.setattr(cell, "run_cell", fake_run_cell)
    lock = tmp_path / "s" / "locks" / f"{held.name}.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)   # "another process" (flock locks belong to the open file)
        run._run_cells(config, [held, free])
    assert ran == [free.name]
    # The failure is remembered for the results, and the cell is retried on the next call (the lock is free now).
    analysis = run.run_study(config)
    assert ran == [free.name, held.name, free.name]
    errors = {f["cell"]: f["error"] for f in analysis["failed"]}
    assert errors == {held.name: f"RuntimeError: {held.name}: out of memory",
                      free.name: f"{free.name}: no successful episode"}


def test_a_study_of_which_no_cell_finished_exits_non_zero(tmp_path, monkeypatch, capsys):
    from offrl.cli import main
    from offrl.study import cell

    def fake_run_cell(cell, config, progress=False):
        raise RuntimeError(f"{cell.name}: out of memory")

    monkeypatch.setattr(cell, "run_cell", fake_run_cell)
    toml = tmp_path / "s.toml"
    toml.write_text(f'out = "{tmp_path / "s"}"\nbootstrap_samples = 50\n[[scenario]]\nname = "a"\n'
                    'tasks = ["reach-v3", "push-v3"]\nepisodes = [5]\n')
    assert main(["study", str(toml), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "none of the 2 runs finished" in err and err.strip().endswith(str(tmp_path / "s" / "failed"))


def test_underfitting_threshold_variants_and_the_over_estimation_drop():
    from offrl.study.selectors import overestimation_drop, verdict_with
    from offrl.workflow.diagnosis import DiagnosisConfig

    # A flat, in-range q_data whose critic leaves 60% of its targets' variance unexplained throughout.
    q = [0.3, 0.31, 0.3, 0.31, 0.3, 0.31]
    cell = _cell(q, [0.1] * 6, verdict="underfitting")
    for c in cell["checkpoints"]:
        c["td_error_over_target_var"] = 0.6
    assert verdict_with(cell, DiagnosisConfig(underfit_unexplained=0.5)) == "underfitting"
    assert verdict_with(cell, DiagnosisConfig(underfit_unexplained=1.0)) == "healthy"
    cell["dataset"] = {"behaviour_success_rate": 0.5}   # the policy stays far below the data
    a = analyse([cell], type("C", (), {"bootstrap_samples": 200})())
    variants = a["diagnosis_accuracy"]["underfit_threshold_variants"]
    assert variants["0.25"]["underfitting"]["agreement"]["mean"] == 1.0
    assert variants["1"]["healthy"] == {"runs": 1, "labels": {"never reaches the data": 1},
                                        "claims": "no overfitting", "agreement": variants["1"]["healthy"]["agreement"]}
    assert variants["1"]["healthy"]["agreement"]["mean"] == 0.0

    # Over-estimation flagged from step 4000: best smoothed success up to it, mean success after it.
    over = _cell([0.2, 0.5, 0.8, 1.5, 2.5, 3.0], [0.3, 0.6, 0.8, 0.4, 0.1, 0.0], verdict="over-estimation")
    over["diagnosis"]["evidence"] = {"overestimation_steps": [4000, 5000, 6000]}
    d = overestimation_drop(over)
    # smoothed success [0.45, 0.567, 0.6, 0.433, 0.167, 0.05]: best up to 4000 is 0.6; after: mean(0.1, 0) = 0.05.
    assert d["first_flagged_step"] == 4000
    assert d["success_before"] == pytest.approx(0.6) and d["success_after"] == pytest.approx(0.05)
    assert overestimation_drop(cell) is None


def test_a_study_setting_may_run_another_algorithm():
    from offrl.agents.awac import AWACConfig
    from offrl.agents.bear import BEARConfig
    from offrl.agents.iql import IQLConfig
    from offrl.study.config import algo_for

    raw = {"settings": {"iql_sarsa": {"algo": "iql", "expectile": 0.5}},
           "scenario": [{"name": "a", "tasks": ["reach-v3"], "episodes": [5],
                         "settings": ["base", "iql", "awac", "bear", "iql_sarsa"]}]}
    config = study_config_from_dict(raw)
    assert [algo_for(s, config) for s in ("base", "iql", "awac", "bear", "iql_sarsa")] == [
        "cql", "iql", "awac", "bear", "iql"]
    assert agent_for("iql", config) == IQLConfig() and agent_for("awac", config) == AWACConfig()
    assert agent_for("bear", config) == BEARConfig()
    assert agent_for("iql_sarsa", config) == IQLConfig(expectile=0.5)
    bad = {"settings": {"x": {"algo": "iql", "alpha": 5.0}}, "scenario": raw["scenario"]}
    with pytest.raises(StudyConfigError, match="unknown IQL fields"):
        study_config_from_dict(bad)
    with pytest.raises(StudyConfigError, match="a study runs"):
        study_config_from_dict({"settings": {"x": {"algo": "brac"}}, "scenario": raw["scenario"]})

    # Per-algorithm results, and another algorithm is not counted as a remedy of the base run.
    q = [0.1, 0.3, 0.5, 0.45, 0.3, 0.2]
    cql_cell = _cell(q, [0.1, 0.3, 0.5, 0.4, 0.3, 0.2], selected=3000)
    iql_cell = _cell(q, [0.2, 0.4, 0.6, 0.6, 0.6, 0.6], selected=3000, setting="iql")
    iql_cell["algo"] = "iql"
    # BC, the reference without a Q-function: its pick is its own diagnosis' (held-out log-likelihood peak).
    bc_cell = _cell([0.0] * 6, [0.3, 0.3, 0.4, 0.2, 0.2, 0.2], selected=3000, setting="bc", verdict="healthy")
    bc_cell["algo"] = "bc"
    for c in bc_cell["checkpoints"]:
        c["q_data"] = c["td_error"] = c["heldout/td_error"] = c["fqe_value"] = None
    a = analyse([cql_cell, iql_cell, bc_cell], type("C", (), {"bootstrap_samples": 200})())
    assert set(a["per_algorithm"]) == {"cql", "iql", "bc"}
    iql = a["per_algorithm"]["iql"]
    assert iql["pick_success"]["mean"] == pytest.approx(0.6)
    assert a["per_algorithm"]["cql"]["best_success"]["mean"] == pytest.approx(0.5)
    # Paired on the same run (task t, seed 0): IQL's pick 0.6 vs CQL's 0.5 and BC's 0.4; best 0.6 vs 0.5, 0.4.
    assert iql["pick_minus_cql"]["mean"] == pytest.approx(0.1) and iql["best_minus_cql"]["mean"] == pytest.approx(0.1)
    assert iql["pick_minus_bc"]["mean"] == pytest.approx(0.2) and iql["best_minus_bc"]["mean"] == pytest.approx(0.2)
    assert a["per_algorithm"]["cql"]["pick_minus_cql"] is None
    assert a["per_algorithm"]["bc"]["pick_success"]["mean"] == pytest.approx(0.4)
    # ...and it stays out of the Q-based selector table and the diagnosis accuracy.
    assert a["runs"] == 2 and a["headline"]["workflow"]["success"]["n"] == 2
    assert a["remedies"]["all"] == []


def test_the_archive_carries_finished_cells_to_a_new_study_directory_and_refuses_other_settings(
        tmp_path, monkeypatch):
    from offrl.study import cell, run, store
    from offrl.training import run_dir as rd

    def raw(out, **kw):
        return {"out": str(tmp_path / out), "archive": str(tmp_path / "archive"), "bootstrap_samples": 50,
                "eval_episodes": 4, "scenario": [{"name": "a", "tasks": ["reach-v3", "push-v3"], "episodes": [5]}],
                **kw}

    first = study_config_from_dict(raw("machine1"))
    done_cell, todo_cell = cells_of(first)
    res = _cell([0.1, 0.5, 0.2], [0.2, 0.8, 0.4])
    res["cell"] = {"scenario": "a", "task": "reach-v3", "episodes": 5, "seed": 0, "setting": "base",
                   "regime": "white"}
    res["dataset"] = {"behaviour_success_rate": 0.5}
    (first.out / "cells" / done_cell.name).mkdir(parents=True)
    rd.write_json(first.out / "cells" / done_cell.name / store.CELL_FILE, res)
    ran = []

    def fake_run_cell(cell, config, progress=False):
        ran.append((config.out.name, cell.name))
        raise StudyConfigError("stop")  # not a cell failure the loop catches: the test stops here

    monkeypatch.setattr(cell, "run_cell", fake_run_cell)
    # A finished cell.json from before the archive existed is copied on the next analysis, with its settings.
    assert store.archive_cells(first) == 1 and store.archive_cells(first) == 0
    archived = rd.read_json(tmp_path / "archive" / f"{done_cell.name}.json")
    assert archived["study_settings"]["eval_episodes"] == 4 and archived["checkpoints"] == res["checkpoints"]

    # Another machine: a new study directory, the same archive. The archived cell is done; only the other runs.
    second = study_config_from_dict(raw("machine2"))
    assert store.finished_cell(second, done_cell)["checkpoints"] == res["checkpoints"]
    assert store.finished_cell(second, todo_cell) is None
    with pytest.raises(StudyConfigError, match="stop"):
        run._run_cells(second, cells_of(second))
    assert ran == [("machine2", todo_cell.name)]
    analysis = run.run_study(second, analyse_only=True)
    assert analysis["runs"] == 1

    # The archive never mixes in a cell made under other settings.
    other = study_config_from_dict(raw("machine3", eval_episodes=8))
    with pytest.raises(StudyConfigError, match="eval_episodes"):
        store.finished_cell(other, done_cell)


def test_runs_whose_checkpoints_score_alike_are_set_apart_in_the_secondary_analysis():
    from offrl.study.selectors import distinguishable

    flat = _cell([0.1, 0.5, 0.2, 0.3], [0.10, 0.15, 0.10, 0.10])   # 2, 3, 2, 2 of 20: noise
    apart = _cell([0.1, 0.5, 0.2, 0.3], [0.05, 0.90, 0.50, 0.10], selected=2000)  # 1, 18, 10, 2 of 20
    never = _cell([0.1, 0.5, 0.2, 0.3], [0.0, 0.0, 0.0, 0.0])
    # By hand: the 2 x 4 table [[2, 3, 2, 2], [18, 17, 18, 18]] expects 2.25 and 17.75 per column: chi-square
    # 3 x 0.0278 + 0.25 + 3 x 0.0035 + 0.0317 = 0.376 on 3 degrees of freedom, p = 0.945.
    assert distinguishable(flat)["p_value"] == pytest.approx(0.945, abs=1e-3)
    assert not distinguishable(flat)["distinguishable"] and distinguishable(apart)["distinguishable"]
    assert distinguishable(never) == {"p_value": 1.0, "distinguishable": False}
    analysis = analyse([flat, apart, never], study_config_from_dict(
        {"bootstrap_samples": 50, "scenario": [{"name": "s", "tasks": ["t"], "episodes": [10]}]}))
    assert analysis["distinguishable"]["runs"] == 1
    # Only the distinguishable run: the workflow picks step 2000 (its diagnosis), the best checkpoint: regret 0.
    assert analysis["distinguishable"]["headline"]["workflow"]["regret"]["mean"] == pytest.approx(0.0)
    assert analysis["headline"]["workflow"]["regret"]["n"] == 2  # the all-zero run has no regret at all


def test_the_default_rule_is_applied_as_pre_registered():
    from offrl.study.selectors import default_rule

    def h(mean, lo, hi, regret):
        return {"regret": {"mean": regret}, "regret_minus_workflow": {"mean": mean, "ci": [lo, hi]}}

    # The after-peak interval crosses 0; fqe's and q_peak_in_range's lie below it: the lower mean regret (fqe)
    # wins. The references (last, heldout_td, random, oracle) never qualify, however good.
    headline = {"workflow": h(0.0, 0.0, 0.0, 0.5), "workflow_after_peak": h(-0.2, -0.4, 0.01, 0.3),
                "fqe": h(-0.2, -0.3, -0.05, 0.30), "q_peak_in_range": h(-0.1, -0.2, -0.01, 0.40),
                "last": h(-0.3, -0.5, -0.1, 0.2), "oracle": h(-0.4, -0.6, -0.2, 0.1)}
    rule = default_rule(headline)
    assert rule["default"] == "fqe" and rule["qualifying"] == ["q_peak_in_range", "fqe"]
    assert default_rule({"workflow": h(0, 0, 0, 0.5), "last": h(-0.3, -0.5, -0.1, 0.2)})["default"] == "workflow"


def test_bc_is_a_study_reference_without_fqe(tmp_path):
    """A BC cell trains, is diagnosed on its held-out log-likelihood, is rolled out, gets no FQE, and shows up in
    the per-algorithm table beside CQL, with the paired differences to both."""
    pytest.importorskip("metaworld")
    from offrl.cli import main

    out = tmp_path / "study"
    path = tmp_path / "tiny.toml"
    text = TINY_STUDY.format(out=out).replace('settings = ["small", "small_vib"]', 'settings = ["small", "bc"]')
    assert 'settings = ["small", "bc"]' in text
    path.write_text(text)
    assert main(["study", str(path)]) == 0
    bc = json.loads(next((out / "cells").glob("*__bc/cell.json")).read_text())
    assert bc["algo"] == "bc" and "fqe_s" not in bc["timings_s"] and not (out / "cells" / Path(bc["run_dir"]).name
                                                                          / "fqe.json").exists()
    assert all(c["fqe_value"] is None and c["heldout/log_likelihood"] is not None for c in bc["checkpoints"])
    # Its own terms are archived (the actor's held-out action error), not another algorithm's.
    assert all(isinstance(c["heldout/action_mse"], float) and "mmd" not in c for c in bc["checkpoints"])
    small = json.loads(next((out / "cells").glob("*__small/cell.json")).read_text())
    assert all("heldout/action_mse" not in c for c in small["checkpoints"])
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["runs"] == 1 and set(analysis["per_algorithm"]) == {"bc", "cql"}
    assert analysis["cells_finished"] == analysis["cells_total"] == 2 and "PARTIAL" not in (out / "results.md").read_text()
    assert analysis["per_algorithm"]["cql"]["pick_minus_bc"]["n"] == 1
    assert "| bc | 1 |" in (out / "results.md").read_text()


def test_a_scenario_may_set_its_own_budget_and_conflicts_are_refused():
    from offrl.study.config import budget, cell_settings

    base = {"steps": 100, "checkpoint_every": 10, "eval_episodes": 4}
    one = {"name": "a", "tasks": ["reach-v3"], "episodes": [4], "settings": ["base"]}
    own = {"name": "b", "tasks": ["reach-v3"], "episodes": [4], "settings": ["bc"], "steps": 30, "eval_episodes": 2,
           "batch_size": 16}
    config = study_config_from_dict({**base, "scenario": [one, own]})
    a, b = cells_of(config)
    from offrl.study.config import DEFAULT_BATCH_SIZE
    from offrl.training.train import TrainConfig

    assert DEFAULT_BATCH_SIZE == TrainConfig.batch_size  # the study's default is offrl train's
    assert budget(config, a) == {"steps": 100, "checkpoint_every": 10, "eval_episodes": 4, "batch_size": 256}
    assert budget(config, b) == {"steps": 30, "checkpoint_every": 10, "eval_episodes": 2, "batch_size": 16}
    # The default batch is not listed, so cells archived before batches could change still match.
    assert "batch_size" not in cell_settings(config, a) and cell_settings(config, b)["batch_size"] == 16
    assert cell_settings(config, b)["steps"] == 30 and cell_settings(config, a)["steps"] == 100
    # The same run in two scenarios with different budgets, or a budget that cannot work: one-line errors.
    with pytest.raises(StudyConfigError, match="different budgets"):
        study_config_from_dict({**base, "scenario": [one, {**one, "name": "c", "steps": 50}]})
    with pytest.raises(StudyConfigError, match="batch_size must be an integer >= 1"):
        study_config_from_dict({**base, "scenario": [{**one, "batch_size": 0}]})
    assert len(cells_of(study_config_from_dict({**base, "scenario": [one, {**one, "name": "d"}]}))) == 1


def test_the_trajectory_transformer_is_a_study_reference_with_its_own_budget(tmp_path):
    """A TT cell trains on its scenario's batch and steps, is picked by its held-out token log-likelihood, is
    rolled out by its planner, gets no FQE, and keeps its per-modality losses in the archive."""
    pytest.importorskip("metaworld")
    from offrl.cli import main

    out = tmp_path / "study"
    path = tmp_path / "tiny.toml"
    text = TINY_STUDY.format(out=out).replace('settings = ["small", "small_vib"]', '''settings = ["tiny_tt"]
steps = 20
eval_episodes = 1
batch_size = 8''') + '''
[settings.tiny_tt]
algo = "tt"
num_bins = 8
context_transitions = 2
num_layers = 1
num_heads = 2
embed_dim = 16
horizon = 1
beam_width = 2
expand = 2
'''
    path.write_text(text)
    assert main(["study", str(path)]) == 0
    cell = json.loads(next((out / "cells").glob("*__tiny_tt/cell.json")).read_text())
    assert cell["algo"] == "tt" and "fqe_s" not in cell["timings_s"]
    assert [c["step"] for c in cell["checkpoints"]] == [10, 20]
    assert all(c["episodes"] == 1 and c["fqe_value"] is None and c["q_data"] is None
               and np.isfinite(c["heldout/token_log_likelihood"]) and np.isfinite(c["heldout/loss_actions"])
               for c in cell["checkpoints"])
    assert cell["diagnosis"]["selected_step"] in (10, 20)
    run_cfg = json.loads((Path(cell["run_dir"]) / "config.json").read_text())
    assert run_cfg["training"]["batch_size"] == 8 and run_cfg["training"]["steps"] == 20
    page = (out / "results.md").read_text()
    assert "Scenario `tiny` has its own budget: steps 20, eval episodes 1, batch size 8." in page
    # A grid of references only is finished when its runs are, though no run has a Q-function.
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["runs"] == 0 and analysis["cells_finished"] == analysis["cells_total"] == 1
    assert "PARTIAL" not in page and "Runs finished: **1** of 1 (0 with a Q-function" in page


def test_the_results_page_shows_the_dynamics_models_verdict_per_model_based_run():
    from offrl.study.results import _model_section

    model = {"verdict": "underfitting", "best_step": 3000, "reason": "held-out model MSE still fell by 4.0%",
             "evidence": {"steps": [1000, 2000, 3000], "heldout/model_mse": [0.02, 0.012, 0.0105],
                          "heldout/model_rollout_mse": [0.3, 0.2, 0.15]}}
    cells = [{"algo": "cql", "run_dir": "s/cells/a__base", "diagnosis": {}},
             {"algo": "mopo", "run_dir": "s/cells/a__mopo", "diagnosis": {"model": model},
              "checkpoints": [{"heldout/model_reward_mse_rewarded": 0.9}, {"heldout/model_reward_mse_rewarded": 0.81},
                              {"heldout/model_reward_mse_rewarded": None}]},
             {"algo": "combo", "run_dir": "s/cells/a__combo", "diagnosis": {}}]
    text = "\n".join(_model_section(cells))
    # The reward column: the last checkpoint that has a value (a set without a rewarded transition logs None).
    assert "| a__mopo | underfitting | 0.0105 (3000) | 0.0105 | 0.15 | 0.81 | held-out model MSE still fell" in text
    assert "| a__combo | – |" in text and "a__base" not in text
    assert "Model verdicts: underfitting 1." in text
    assert _model_section(cells[:1]) == []


def test_the_results_page_draws_each_model_once_over_its_training_phase(tmp_path):
    from offrl.study.results import _figure_model, _model_lines

    def cell(algo, seed, mse, task="t"):
        cps = [{"step": s, "heldout/model_mse": m, "heldout/model_rollout_mse": 2 * m,
                "heldout/model_reward_mse_rewarded": None if s == 10 else 0.9}
               for s, m in zip((10, 20, 30), mse, strict=True)]
        cps.append({"step": 40, "heldout/model_mse": mse[-1], "q_data": 0.5})  # after the model phase: not drawn
        return {"algo": algo, "warmup_steps": 30, "checkpoints": cps,
                "cell": {"task": task, "seed": seed, "setting": algo}}

    cells = [cell("mopo", 0, [0.3, 0.2, 0.1]), cell("combo", 0, [0.3, 0.2, 0.1]), cell("combo", 1, [0.4, 0.2, 0.2]),
             cell("mopo", 0, [9.0, 9.0, 9.0], task="other"), {"algo": "cql", "checkpoints": [],
                                                             "cell": {"task": "t", "seed": 0, "setting": "base"}}]
    lines = _model_lines(cells, "t")
    # MOPO and COMBO trained the same model on seed 0: one line, named by both
    assert sorted(lines.values()) == [["combo s0", "mopo s0"], ["combo s1"]]
    for key in lines:
        assert [row[0] for row in key] == [10, 20, 30] and key[0][3] is None
    assert _figure_model(cells, "t", tmp_path / "m.png") and (tmp_path / "m.png").stat().st_size > 0
    assert not _figure_model(cells[-1:], "t", tmp_path / "none.png") and not (tmp_path / "none.png").exists()


def test_a_grid_whose_runs_are_no_longer_than_their_warm_start_is_refused_when_loaded():
    raw = {"steps": 8000, "scenario": [{"name": "a", "tasks": ["reach-v3"], "episodes": [5],
                                        "settings": ["base", "mopo"]}]}
    with pytest.raises(StudyConfigError, match="'mopo' 8000 steps, not more than its warm start .model_steps 10000"):
        study_config_from_dict(raw)
    raw["settings"] = {"short_model": {"algo": "mopo", "model_steps": 2000}}
    raw["scenario"][0]["settings"] = ["base", "short_model"]
    assert study_config_from_dict(raw).scenarios[0].settings == ("base", "short_model")


def test_softopc_is_a_secondary_rule_scored_only_where_the_cell_has_its_values():
    """SoftOPC picks its highest score; a cell without scores (undefined: data without failures) has no pick, and
    the paper-regime table counts the runs with a pick and reports softopc - random."""
    from offrl.study.selectors import regime_checks

    q = [0.1, 0.3, 0.5, 0.4, 0.2, 0.1]
    success = [0.2, 0.5, 0.9, 0.6, 0.3, 0.1]
    scored = _cell(q, success, selected=3000)
    for cp, v in zip(scored["checkpoints"], [0.0, 0.1, 0.0, 0.3, 0.0, 0.0], strict=True):
        cp["softopc_value"] = v
    res = evaluate_selectors(scored)
    assert res["softopc"]["step"] == 4000 and res["softopc"]["regret"] == pytest.approx((0.9 - 0.6) / 0.8)
    unscored = _cell(q, success, selected=3000)
    assert evaluate_selectors(unscored)["softopc"]["step"] is None
    runs = [{"cell": c["cell"], "selectors": evaluate_selectors(c)} for c in (scored, unscored)]
    sec = regime_checks([scored, unscored], runs, samples=200)["secondary"]["softopc"]
    assert (sec["runs_with_a_pick"], sec["runs"], sec["n"]) == (1, 2, 1)
    random_regret = np.mean([(0.9 - s) / 0.8 for s in success])
    assert sec["minus_random"]["mean"] == pytest.approx((0.9 - 0.6) / 0.8 - random_regret)


@pytest.mark.parametrize(("mean", "ci", "tasks", "undefined", "answer"), [
    (-0.2, [-0.3, -0.1], {"a": -0.25, "b": -0.15}, 0, "works"),
    (-0.2, [-0.3, -0.1], {"a": -0.25, "b": 0.05}, 0, "open"),        # below 0, but the tasks disagree in sign
    (0.0, [-0.1, 0.1], {"a": -0.04, "b": 0.03}, 0, "diagnostic"),
    (-0.05, [-0.15, 0.02], {"a": -0.12, "b": 0.02}, 0, "open"),     # a task clearly below -0.05
    (-0.2, [-0.3, -0.1], {"a": -0.25, "b": -0.15}, 5, "open"),      # too many runs without a regret
    (None, None, {}, 0, "undecided"),
])
def test_the_paper_regime_reading_is_the_pre_registered_rule(mean, ci, tasks, undefined, answer):
    from offrl.study.selectors import regime_reading

    reg = {"runs_without_regret": undefined, "paired": {"q_peak - random": {"mean": mean, "ci": ci, "per_task": tasks}}}
    assert regime_reading(reg)["answer"] == answer


def test_the_results_header_names_the_reward_structure_and_the_horizons():
    from types import SimpleNamespace

    from offrl.study.results import _reward_text

    cells = [{"cell": {"task": "pick-place-v3"}, "dataset": {"horizon": 90}},
             {"cell": {"task": "drawer-open-v3"}, "dataset": {"horizon": 140}}, {"cell": {"task": "x"}, "dataset": {}}]
    text = _reward_text(SimpleNamespace(reward_mode="success-every-step", horizon=150), cells)
    assert "never terminal" in text and text.endswith("drawer-open-v3 140, pick-place-v3 90") and "150" not in text
    assert _reward_text(SimpleNamespace(reward_mode="terminal", horizon=150), cells) == \
        "rewards `terminal` (ends the episode at success), horizon 150"


@pytest.mark.sim
def test_stopping_a_study_with_workers_stops_its_workers(tmp_path):
    """`kill PARENT` of `offrl study --workers 2` (how a background grid is stopped) leaves no worker training."""
    import os
    import signal
    import subprocess
    import sys
    import time

    pytest.importorskip("metaworld")
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_STUDY.format(out=tmp_path / "study"))
    proc = subprocess.Popen([sys.executable, "-m", "offrl.cli", "study", str(path), "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "JAX_PLATFORMS": "cpu", "MUJOCO_GL": "egl"})

    def children() -> list[int]:
        found = []
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                text = status.read_text()
            except OSError:
                continue
            if f"\nPPid:\t{proc.pid}\n" in text:
                found.append(int(status.parent.name))
        return found

    deadline = time.time() + 120
    while len(children()) < 3 and time.time() < deadline:  # the resource tracker and the two workers
        time.sleep(0.2)
    workers = children()
    assert len(workers) >= 2, "the study's workers never started"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0

    def alive() -> list[int]:
        out = []
        for pid in workers:
            try:
                if "State:\tZ" not in Path(f"/proc/{pid}/status").read_text():
                    out.append(pid)
            except OSError:
                pass
        return out

    deadline = time.time() + 20
    while alive() and time.time() < deadline:
        time.sleep(0.2)
    assert alive() == [], f"workers {alive()} outlived the study process"


@pytest.mark.parametrize(("picks", "ci", "tasks", "answer"), [
    (12, [-0.3, -0.1], {"a": -0.2, "b": -0.1, "c": -0.3, "d": 0.1}, "worth a confirmation grid"),
    (12, [-0.3, -0.1], {"a": -0.2, "b": 0.1, "c": -0.3, "d": 0.1}, "not better than chance"),
    (12, [-0.3, 0.05], {"a": -0.2, "b": -0.1, "c": -0.3, "d": -0.1}, "not better than chance"),
    (8, [-0.3, -0.1], {"a": -0.2, "b": -0.1}, "worth a confirmation grid"),     # a two-task grid: both tasks
    (8, [-0.3, -0.1], {"a": -0.2, "b": 0.1}, "not better than chance"),
    (7, [-0.3, -0.1], {"a": -0.2, "b": -0.1}, "too few runs"),
])
def test_softopcs_reading_is_the_pre_registered_rule(picks, ci, tasks, answer):
    from offrl.study.selectors import softopc_reading

    sec = {"runs_with_a_pick": picks, "minus_random": {"mean": -0.2, "ci": ci, "per_task": tasks}}
    assert softopc_reading(sec)["answer"] == answer
