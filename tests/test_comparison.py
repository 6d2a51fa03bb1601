"""The analysis-only comparison (data, warm start / BC baseline, selected, best, last): values and isolation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scipy.stats import binomtest

from offrl.workflow.comparison import analysis_only_comparison, attach_comparison, format_comparison
from offrl.workflow.diagnosis import diagnose_run

STEPS = [1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000]


def _evaluation(successes: list[int], episodes: int = 20, steps: list[int] = STEPS) -> dict:
    return {"used_for_selection": False, "episodes": episodes,
            "results": [{"step": s, "successes": k, "episodes": episodes, "success_rate": k / episodes}
                        for s, k in zip(steps, successes, strict=True)]}


def _wilson(k: int, n: int) -> list[float]:
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return [ci.low, ci.high]


def test_rows_by_hand():
    ev = _evaluation([9, 2, 4, 12, 11, 14, 6, 5])
    c = analysis_only_comparison(ev, selected_step=5000, warmup_steps=2000,
                                 dataset_metadata={"behaviour_success_rate": 0.4, "episodes": 50})
    assert c["behaviour"] == {"step": None, "success_rate": 0.4, "successes": 20, "episodes": 50,
                              "ci95": pytest.approx(_wilson(20, 50))}
    # Warm start: steps 1000 and 2000; the best of them is 1000 (9/20).
    assert c["best_warm_start"]["step"] == 1000 and c["best_warm_start"]["successes"] == 9
    assert c["selected"]["step"] == 5000 and c["selected"]["success_rate"] == pytest.approx(0.55)
    assert c["selected"]["ci95"] == pytest.approx(_wilson(11, 20))
    # Best among the candidates after the warm start: 6000 (14/20); the warm start's 9/20 is not a candidate.
    assert c["best"]["step"] == 6000 and c["last"]["step"] == 8000 and c["last"]["successes"] == 5
    assert "bc_best" not in c
    # A warm-up that is not behaviour cloning (a model phase: the actor untrained) gives no BC-named row; the
    # candidates stay those after it.
    model = analysis_only_comparison(ev, 5000, 2000, {}, warmup_is_bc=False)
    assert model["best_warm_start"] is None and model["best"]["step"] == 6000
    assert not any("warm-start" in line for line in format_comparison(model))
    lines = format_comparison(c)
    assert any(line.strip().startswith("selected") and "55%" in line and "11/20" in line for line in lines)
    assert any("data (behaviour)" in line and "20/50" in line for line in lines)


def test_bc_baseline_rows_and_missing_entries():
    ev = _evaluation([1, 2, 3, 4, 5, 6, 7, 8])
    bc = _evaluation([3, 7, 5], steps=[1000, 2000, 3000])
    c = analysis_only_comparison(ev, None, 0, {}, bc_evaluation=bc, bc_selected_step=3000)
    assert c["behaviour"] is None and c["best_warm_start"] is None and c["selected"] is None
    assert c["bc_selected"]["step"] == 3000 and c["bc_selected"]["successes"] == 5
    assert c["bc_best"]["step"] == 2000 and c["bc_best"]["successes"] == 7
    # Ties go to the earlier checkpoint.
    tied = analysis_only_comparison(_evaluation([5, 5, 1, 1, 1, 1, 1, 1]), 1000, 0, {})
    assert tied["best"]["step"] == 1000


def _run(tmp_path: Path, successes: list[int]) -> Path:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    config = {"algo": "cql", "agent": {"bc_steps": 0},
              "dataset": {"q_range": [0.0, 1.0], "metadata": {"behaviour_success_rate": 0.3, "episodes": 10}}}
    (run / "config.json").write_text(json.dumps(config))
    q = [0.1, 0.3, 0.5, 0.7, 0.6, 0.4, 0.3, 0.2]  # rises to 4000, then falls
    with open(run / "metrics.jsonl", "w") as f:
        for s, v in zip(STEPS, q, strict=True):
            f.write(json.dumps({"step": s, "q_data": v, "td_error": 0.001, "q_error_estimate": 0.1,
                                "cql_regularizer": 0.5}) + "\n")
    (run / "evaluation.json").write_text(json.dumps(_evaluation(successes)))
    return run


def test_selection_never_reads_the_evaluation(tmp_path):
    run = _run(tmp_path, [0, 0, 0, 20, 0, 0, 0, 0])
    first = diagnose_run(run)
    run = _run(tmp_path, [20, 20, 20, 0, 20, 20, 20, 20])  # the opposite success curve
    second = diagnose_run(run)
    for key in ("verdict", "selected_step", "peak_step", "reasons", "evidence"):
        assert first[key] == second[key], key
    assert first["selected_step"] == 4000
    assert first["analysis_only"]["selected"]["successes"] == 20
    assert second["analysis_only"]["selected"]["successes"] == 0
    on_disk = json.loads((run / "diagnosis.json").read_text())
    assert on_disk["analysis_only"]["behaviour"]["successes"] == 3


def test_a_recorded_bc_baseline_survives_a_later_diagnosis(tmp_path):
    run = _run(tmp_path, [1, 2, 3, 4, 5, 6, 7, 8])
    bc = tmp_path / "run_bc"
    bc.mkdir()
    (bc / "evaluation.json").write_text(json.dumps(_evaluation([4, 9], steps=[1000, 2000])))
    (bc / "diagnosis.json").write_text(json.dumps({"selected_step": 1000}))
    diagnose_run(run)
    attach_comparison(run, bc_run=bc)
    again = diagnose_run(run)  # `offrl diagnose` later: the baseline is kept, not dropped
    assert again["analysis_only"]["bc_selected"]["successes"] == 4
    assert again["analysis_only"]["bc_best"]["successes"] == 9
    assert again["analysis_only"]["bc_run"] == str(bc)


def _cell(task: str, seed: int, q: list[float], success: list[float], algo: str = "cql") -> dict:
    """An archived study cell whose checkpoints succeed in exactly the given share of 20 episodes (alternating
    outcomes, so that both halves see the same rate)."""
    def episodes(p: float) -> list[int]:
        k = round(p * 10)
        return [1 if i < k else 0 for i in range(10) for _ in (0, 1)]

    return {"cell": {"task": task, "regime": "mixed", "episodes": 300, "seed": seed}, "algo": algo,
            "agent": {"calibrated": True}, "q_range": [0.0, 1.0], "warmup_steps": 0,
            "diagnosis": {"selected_step": 1000 * (1 + max(range(len(q)), key=q.__getitem__))},
            "checkpoints": [{"step": 1000 * (i + 1), "q_data": qi, "td_error": 0.1, "success_rate": p,
                             "episode_successes": episodes(p)} for i, (qi, p) in enumerate(zip(q, success, strict=True))]}


def test_trust_records_per_method_with_random_and_noise_floor(tmp_path):
    from offrl.workflow import trust

    archive = tmp_path / "dev"
    archive.mkdir()
    # The (smoothed) Q peak picks the best checkpoint on every run (regret 0), the last the worst (1); a random
    # pick's regret is (0.8 - mean success 0.38) / 0.8.
    for task in ("a", "b"):
        for seed in (0, 1):
            cell = _cell(task, seed, [0.1, 0.5, 0.9, 0.5, 0.1], [0.2, 0.5, 0.8, 0.4, 0.0])
            (archive / f"{task}_{seed}.json").write_text(json.dumps(cell))
    (archive / f"bc_{task}.json").write_text(json.dumps(_cell("a", 0, [0, 0, 0], [0, 1, 0], algo="bc")))
    [record] = trust.grid_records(archive, samples=200)
    assert record["method"] == "Cal-QL" and record["runs"] == 4 and record["tasks"] == ["a", "b"]
    assert record["rules"]["q_peak"]["regret"] == 0 and record["rules"]["last"]["regret"] == 1
    assert record["random"]["mean"] == pytest.approx(0.525) and record["noise_floor"]["mean"] == 0
    assert record["rules"]["q_peak"]["minus_random"] == pytest.approx(-0.525)
    inside = {"algo": "cql", "agent": {"calibrated": True}, "training": {"reward_shift": 0.0},
              "dataset": {"obs_mode": "state", "num_episodes": 300, "metadata": {"regime": "mixed", "task": "a"}}}
    t = trust.trust_statement("q_peak", inside, [record])
    assert t["outside_grid"] == [] and t["measured"]["regret"] == 0
    assert "a random checkpoint 0.53" in t["statement"] and "noise floor" in t["statement"]
    assert "better than a random pick" in t["statement"]
    assert "worse than a random pick" in trust.trust_statement("last", inside, [record])["statement"]
    # Another method, or another rule, is "not measured", never quoted from Cal-QL's record.
    iql = {**inside, "algo": "iql", "agent": {"expectile": 0.9, "inverse_temperature": 10.0},
           "training": {"reward_shift": -1.0}}
    t = trust.trust_statement("last", iql, [record])
    assert t["measured"] is None and t["statement"].startswith("Not measured") and "rewards -1" in t["statement"]
    assert trust.trust_statement("fqe", inside, [record])["measured"] is None
    outside = {**inside, "dataset": {"obs_mode": "image", "num_episodes": 1000, "metadata": {"task": "door"}}}
    t = trust.trust_statement("q_peak", outside, [record])
    assert len(t["outside_grid"]) == 4 and "outside what was measured" in t["statement"]
    assert trust.main([str(archive), "--out", str(tmp_path / "measured.json")]) == 0
    assert trust.load_measured(tmp_path / "measured.json")[0]["method"] == "Cal-QL"
    assert trust.main([str(tmp_path / "missing")]) == 2
    # diagnose writes it beside the verdict
    run = _run(tmp_path, [1, 2, 3, 4, 5, 6, 7, 8])
    assert "statement" in diagnose_run(run)["trust"]


def test_a_compare_result_is_not_dropped_by_a_later_select(tmp_path):
    run = _run(tmp_path, [1, 2, 3, 4, 5, 6, 7, 8])
    big = tmp_path / "big"
    big.mkdir()
    (big / "config.json").write_text((run / "config.json").read_text())
    (big / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text().replace('"td_error": 0.001',
                                                                                   '"td_error": 0.0001'))
    first = diagnose_run(run, compare=[big])
    assert first["compared_runs"] == [str(big)] and "metric_3_2" in first["evidence"]
    again = diagnose_run(run)  # what `offrl select RUN` does later
    assert again["compared_runs"] == [str(big)]
    assert again["evidence"]["metric_3_2"] == first["evidence"]["metric_3_2"]
    assert again["verdict"] == first["verdict"] and again["selected_step"] == first["selected_step"]


@pytest.mark.parametrize(
    ("successes", "reason"),
    [([0] * 8, "none: no checkpoint succeeded (6 evaluated, all at 0%)"),
     ([7] * 8, "none: all 6 checkpoints tied at 35%")],
)
def test_no_best_checkpoint_is_named_when_all_are_tied(successes, reason):
    from offrl.workflow.comparison import tie_reason

    c = analysis_only_comparison(_evaluation(successes), 5000, warmup_steps=2000, dataset_metadata={},
                                 bc_evaluation=_evaluation(successes[:3], steps=STEPS[:3]))
    # The 6 candidates after the warm start are tied: the row says so and counts them.
    assert c["best"]["tied"] is True and c["best"]["tied_checkpoints"] == 6 and tie_reason(c["best"]) == reason
    assert c["best"]["successes"] == successes[0] and c["best"]["ci95"] == pytest.approx(_wilson(successes[0], 20))
    # The 2 warm-start checkpoints and the 3 BC ones are tied among themselves too.
    assert c["best_warm_start"]["tied"] and c["best_warm_start"]["tied_checkpoints"] == 2
    assert c["bc_best"]["tied"] and c["bc_best"]["tied_checkpoints"] == 3
    # Rows that are not maxima carry no flag.
    assert "tied" not in c["selected"] and "tied" not in c["last"]
    lo, hi = _wilson(successes[0], 20)
    lines = format_comparison(c)
    best = [line for line in lines if line.strip().startswith("best checkpoint")]
    assert best == [f"  {'best checkpoint':22s} {reason}  [{lo:.0%}, {hi:.0%}] each, {successes[0]}/20 episodes each"]
    assert not any("step" in line for line in lines if line.strip().startswith(("best", "BC, best")))
    assert any(line.strip().startswith("selected") and "step 5000" in line for line in lines)
    # A single warm-start checkpoint at 0% names no best either; one that succeeded is the best.
    one = analysis_only_comparison(_evaluation([0, 3, 5], steps=STEPS[:3]), None, 1000, {})
    assert tie_reason(one["best_warm_start"]) == "none: no checkpoint succeeded (1 evaluated, all at 0%)"
    one = analysis_only_comparison(_evaluation([2, 3, 5], steps=STEPS[:3]), None, 1000, {})
    assert one["best_warm_start"]["tied"] is False and tie_reason(one["best_warm_start"]) is None


def test_a_real_best_is_named_and_written_to_the_diagnosis(tmp_path):
    from offrl.workflow.comparison import tie_reason

    # One checkpoint better than the others (the rest tied at 0%): it is the best, not a tie.
    c = analysis_only_comparison(_evaluation([0, 0, 0, 0, 3, 0, 0, 0]), 4000, 0, {})
    assert c["best"]["step"] == 5000 and c["best"]["tied"] is False and "tied_checkpoints" not in c["best"]
    assert tie_reason(c["best"]) is None
    lines = format_comparison(c)
    assert any(line.strip().startswith("best checkpoint") and "15%" in line and "3/20" in line
               and line.endswith("step 5000") for line in lines)
    assert not any("none:" in line for line in lines)
    # attach_comparison records the flag in diagnosis.json, where the report reads it.
    run = _run(tmp_path, [0] * 8)
    diagnose_run(run)
    on_disk = json.loads((run / "diagnosis.json").read_text())["analysis_only"]
    assert on_disk["best"]["tied"] is True and on_disk["best"]["tied_checkpoints"] == 8


def test_the_fqe_selector_reads_fqe_json_and_a_later_diagnosis_keeps_the_selector(tmp_path):
    run = _run(tmp_path, [1, 2, 3, 4, 5, 6, 7, 8])
    with pytest.raises(ValueError, match=r"needs fqe.json \(offrl fqe RUN\)"):
        diagnose_run(run, selector="fqe")
    values = [0.1, 0.2, 0.3, 0.2, 0.1, 0.6, 0.2, 0.1]  # FQE's highest estimate: step 6000
    (run / "fqe.json").write_text(json.dumps({"results": [{"step": s, "value": v, "td_error": 0.0}
                                                          for s, v in zip(STEPS, values, strict=True)]}))
    d = diagnose_run(run, selector="fqe")
    assert d["selected_step"] == 6000 and d["selector"] == "fqe" and d["trust"]["selector"] == "fqe"
    assert diagnose_run(run)["selected_step"] == 6000  # `offrl diagnose RUN` later: the same rule, the same pick
    assert diagnose_run(run, selector="q_peak")["selected_step"] == 4000
    assert diagnose_run(run, after_peak=True)["selected_step"] == 5000


def test_an_earlier_implementation_is_named_so_and_its_record_is_not_quoted_for_the_faithful_method():
    from offrl.workflow import trust

    old_mopo = {"penalty_coef": 1.0, "rollout_horizon": 5}  # archived before issue 43: no clip_model_rewards field
    assert trust.method_label("mopo", old_mopo).startswith("MOPO (earlier implementation: clipped model rewards")
    assert trust.method_label("mopo", {**old_mopo, "clip_model_rewards": False}) == "MOPO"
    assert trust.method_label("bear", {"epsilon": 0.05}).startswith("BEAR (earlier implementation")
    assert trust.method_label("bear", {"epsilon": 0.05, "behaviour_tau": 0.005}) == "BEAR"
    record = {"method": trust.method_label("mopo", old_mopo), "rules": {"q_peak": {"regret": 1.0}}}
    faithful = {"algo": "mopo", "agent": {**old_mopo, "clip_model_rewards": False}, "dataset": {}}
    t = trust.trust_statement("q_peak", faithful, [record])
    assert t["measured"] is None and t["statement"].startswith("Not measured")


def test_the_reward_structure_of_an_archived_cell_is_read_from_its_study_settings():
    from offrl.workflow.trust import cell_reward_mode

    assert cell_reward_mode({"study_settings": {"reward_mode": "success-every-step"}}) == "success-every-step"
    assert cell_reward_mode({"reward_mode": "shaped", "study_settings": {}}) == "shaped"
    assert cell_reward_mode({"study_settings": {"steps": 15000}}) == "terminal"
