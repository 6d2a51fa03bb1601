"""Diagnosis on synthetic metric curves with a known answer (Metric 3.1, Q-error underfitting, Metric 3.2)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from offrl.workflow.diagnosis import DiagnosisConfig, detect_decline, diagnose_metrics, noise_std


def _records(q, td=1e-3, reg=1.0, horizon=100.0):
    steps = [5000 * (i + 1) for i in range(len(q))]
    td = np.broadcast_to(td, len(q))
    reg = np.broadcast_to(reg, len(q))
    return [
        {"step": s, "q_data": float(v), "td_error": float(t), "cql_regularizer": float(g),
         "q_error_estimate": float(t) * horizon}
        for s, v, t, g in zip(steps, q, td, reg, strict=True)
    ]


def test_rise_then_fall_is_overfitting_at_the_right_peak():
    rng = np.random.default_rng(0)
    x = np.arange(20)
    q = np.where(x <= 7, 0.05 * x, 0.35 - 0.03 * (x - 7)) + 0.005 * rng.normal(size=20)
    d = diagnose_metrics(_records(q), (0.0, 1.0))
    assert d["verdict"] == "overfitting"
    assert d["peak_step"] in (35000, 40000, 45000)  # true peak at index 7 -> step 40000
    assert d["selected_step"] == d["peak_step"]
    assert "Guideline 4.1" in d["recommendation"] and "VIB" not in d["recommendation"].split("(")[0]
    after = diagnose_metrics(_records(q), (0.0, 1.0), after_peak=True)
    assert after["selected_step"] == d["peak_step"] + 5000


def test_a_fall_of_q_under_rewards_at_most_zero_is_propagation_not_overfitting():
    # IQL on r - 1 (--reward-shift -1): q_data falls from ~0 towards the values' level as returns propagate.
    q = -60.0 * (1.0 - np.exp(-np.arange(10) / 3.0)) + 1.0
    d = diagnose_metrics(_records(q), (-100.0, 0.0))
    assert d["verdict"] != "overfitting" and any("Metric 3.1 is not read" in r for r in d["reasons"])
    assert d["verdict"] == "healthy"  # and its recommendation must not claim a rise the curve does not show
    assert "does not fall" not in d["recommendation"] and "returns propagate" in d["recommendation"]
    # The same shape on rewards >= 0 falls from its first checkpoint: it never rose, so Metric 3.1 as written
    # ("first increases, then decreases") does not call it overfitting; the rule before require_rise did.
    pos = diagnose_metrics(_records(q / 60.0 + 1.0), (0.0, 1.0))
    assert pos["verdict"] != "overfitting" and any("never rose" in r for r in pos["reasons"])
    old = diagnose_metrics(_records(q / 60.0 + 1.0), (0.0, 1.0), DiagnosisConfig(require_rise=False))
    assert old["verdict"] == "overfitting"


def test_steady_rise_is_not_overfitting_and_selects_the_last_checkpoint():
    rng = np.random.default_rng(1)
    q = 0.03 * np.arange(15) + 0.01 * rng.normal(size=15)
    d = diagnose_metrics(_records(q), (0.0, 1.0))
    assert d["verdict"] == "healthy"
    assert d["selected_step"] == 75000
    # The reason says the pick is the last checkpoint only because no peak was seen.
    assert any("has not peaked yet" in r and "last checkpoint" in r for r in d["reasons"])


@pytest.mark.parametrize("seed", range(10))
def test_noisy_plateau_raises_no_false_alarm(seed):
    rng = np.random.default_rng(seed)
    q = np.concatenate([np.linspace(0, 0.5, 5), 0.5 + 0.03 * rng.normal(size=15)])
    d = diagnose_metrics(_records(q), (0.0, 1.0))
    assert d["verdict"] == "healthy", d["reasons"]


def test_large_q_error_against_the_range_is_underfitting_and_takes_precedence():
    q = 0.03 * np.arange(10)
    d = diagnose_metrics(_records(q, td=0.05), (0.0, 1.0))  # q error 5 vs range 1
    assert d["verdict"] == "underfitting"
    assert "Guideline 4.2" in d["recommendation"]
    assert d["evidence"]["q_error_over_q_range"] == pytest.approx(5.0)


def test_metric_3_2_capacity_comparison():
    q = 0.03 * np.arange(10)
    base = _records(q, td=0.005, reg=2.0)  # q error 0.5 < range 1: not underfitting on its own
    bigger = {"run_dir": "big", "records": _records(q, td=0.002, reg=1.0), "num_params": {"critic": 9}}
    same = {"run_dir": "same", "records": _records(q, td=0.0049, reg=1.98), "num_params": {"critic": 9}}
    assert diagnose_metrics(base, (0.0, 1.0))["verdict"] == "healthy"
    d = diagnose_metrics(base, (0.0, 1.0), compare=[bigger])
    assert d["verdict"] == "underfitting"
    assert d["evidence"]["metric_3_2"][0]["td_error_reduction"] == pytest.approx(0.6)
    # a large Q error that more capacity does not reduce is not underfitting by Metric 3.2
    d2 = diagnose_metrics(_records(q, td=0.05, reg=2.0), (0.0, 1.0),
                          compare=[{**same, "records": _records(q, td=0.0495, reg=1.99)}])
    assert d2["verdict"] == "healthy"
    assert any("does not reduce" in r for r in d2["reasons"])


def test_too_few_checkpoints_is_inconclusive():
    d = diagnose_metrics(_records([0.1, 0.3, 0.2]), (0.0, 1.0))
    assert d["verdict"] == "inconclusive"


def test_q_far_above_the_reward_range_is_divergence():
    q = [0.1, 0.2, 0.3, 50.0, 900.0]
    d = diagnose_metrics(_records(q), (0.0, 1.0))
    assert d["verdict"] == "diverged"
    assert d["selected_step"] == 15000  # the best checkpoint before it diverged
    assert diagnose_metrics(_records([0.1, 0.2, float("nan"), 0.3]), (0.0, 1.0))["verdict"] == "diverged"


def test_q_falling_far_below_the_range_is_not_divergence():
    # CQL's over-minimisation on sampled actions: q_data falls far below the lowest possible return. Not a
    # divergence (only over-estimation is), and, falling from its first checkpoint without a rise, not Metric
    # 3.1's overfitting either (it was, before require_rise: the old rule read any fall after the maximum).
    q = [-1.0, -2.0, -5.0, -12.0, -25.0, -40.0, -60.0]
    d = diagnose_metrics(_records(q), (0.0, 1.0))
    assert d["verdict"] not in ("diverged", "overfitting")
    assert diagnose_metrics(
        _records(q), (0.0, 1.0), DiagnosisConfig(require_rise=False))["verdict"] == "overfitting"
    assert d["selected_step"] == 5000
    assert d["evidence"]["q_data_below_q_range_by"] == pytest.approx(60.0)
    assert any("CQL is pushing Q down" in r for r in d["reasons"])
    # The same curve from AWAC names AWAC's own downward bias, not CQL's.
    a = diagnose_metrics(_records(q), (0.0, 1.0), algo="awac")
    assert any("AWAC's target" in r for r in a["reasons"]) and not any("CQL" in r for r in a["reasons"])
    # COMBO's own cause and flags (its model states have no floor), MOPO's penalty.
    c = diagnose_metrics(_records(q), (0.0, 1.0), algo="combo")
    assert any("COMBO pushes Q down on the model's states" in r and "--combo.real-ratio" in r for r in c["reasons"])
    m = diagnose_metrics(_records(q), (0.0, 1.0), algo="mopo")
    assert any("penalised model rewards" in r for r in m["reasons"])


def test_q_slightly_below_the_range_is_a_reason_and_leaves_the_verdict_alone():
    # AWAC on 0/1 rewards (docs/metrics.md): q_data settles at -0.3, which no policy's return can reach.
    base = [0.1, 0.3, 0.5, 0.6, 0.62, 0.63, 0.63]
    low = diagnose_metrics(_records([x - 0.93 for x in base]), (0.0, 1.0), algo="awac")
    ok = diagnose_metrics(_records(base), (0.0, 1.0), algo="awac")
    assert low["evidence"]["q_data_below_q_range_by"] == pytest.approx(0.3)
    assert any("below the lowest return the rewards allow" in r and "AWAC's target" in r for r in low["reasons"])
    assert "q_data_below_q_range_by" not in ok["evidence"]
    assert low["verdict"] == ok["verdict"] and low["selected_step"] == ok["selected_step"]
    # Within 10 % of the range's width below it (the mirror of the over-estimation tolerance): no reason.
    near = diagnose_metrics(_records([x - 0.68 for x in base]), (0.0, 1.0), algo="awac")
    assert "q_data_below_q_range_by" not in near["evidence"]


def test_noise_estimate_ignores_linear_trends():
    assert noise_std(np.linspace(0, 10, 30)) == pytest.approx(0.0, abs=1e-9)
    rng = np.random.default_rng(0)
    assert noise_std(rng.normal(0, 0.2, 2000)) == pytest.approx(0.2, rel=0.1)


def test_decline_needs_checkpoints_after_the_peak():
    cfg = DiagnosisConfig()
    dec = detect_decline([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.2], cfg, 1.0)  # one point after the peak
    assert not dec.declining
    dec2 = detect_decline([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.2, 0.1, 0.1], cfg, 1.0)
    assert dec2.declining


def test_behaviour_cloning_warm_start_checkpoints_are_left_out():
    # Q falls during the BC warm start (steps <= 25000), then rises once the actor maximises Q: the run is
    # not overfitting, and no BC checkpoint may be selected.
    q = [-8.0, -25.0, -53.0, -91.0, -136.0, -111.0, -95.0, -79.0, -64.0, -54.0, -45.0]
    # What ignoring BC gets wrong: the Q peak is the first (behaviour-cloned) checkpoint. Under the old rule it was
    # also "overfitting"; Metric 3.1 as written asks for a rise first, and this curve starts at its maximum.
    plain = diagnose_metrics(_records(q), (0.0, 1.0))
    assert plain["selected_step"] <= 10000 and plain["verdict"] != "overfitting"
    old = diagnose_metrics(_records(q), (0.0, 1.0), DiagnosisConfig(require_rise=False))
    assert old["verdict"] == "overfitting"
    d = diagnose_metrics(_records(q), (0.0, 1.0), warmup_steps=25000)
    assert d["verdict"] == "healthy"
    assert d["selected_step"] == 55000
    assert d["evidence"]["warmup_checkpoints_ignored"] == [5000, 10000, 15000, 20000, 25000]
    assert d["evidence"]["warmup_phase"] == "the actor's behaviour-cloning warm start"
    assert any("behaviour-cloning warm start, not CQL policies" in r for r in d["reasons"])
    # A model-based run's first checkpoints are its model phase, and the reason says so, not "behaviour cloning".
    mb = diagnose_metrics(_records(q), (0.0, 1.0), warmup_steps=25000, algo="mopo")
    assert any("dynamics model's training phase" in r and "MOPO policies" in r for r in mb["reasons"])
    assert not any("behaviour-cloning" in r for r in mb["reasons"])


def test_heldout_td_error_gap_is_reported_as_memorisation():
    recs = _records(0.03 * np.arange(10))
    for r in recs:
        r["heldout/td_error"] = 50 * r["td_error"]
        r["heldout/q_data"] = r["q_data"]
    d = diagnose_metrics(recs, (0.0, 1.0))
    assert d["evidence"]["heldout_over_train_td_error"] == pytest.approx(50.0)
    assert any("memorises" in r for r in d["reasons"])
    for r in recs:
        r["heldout/td_error"] = 2 * r["td_error"]
    assert not any("memorises" in r for r in diagnose_metrics(recs, (0.0, 1.0))["reasons"])


def test_metric_3_2_is_not_fooled_by_a_lower_regularizer_with_a_worse_td_error():
    # Measured on pick-place-v3: more capacity pushed R from -0.15 to -2.6 while the TD error tripled.
    q = 0.03 * np.arange(10)
    base = _records(q, td=1.57, reg=-0.148)
    bigger = {"run_dir": "big", "records": _records(q, td=4.94, reg=-2.59)}
    d = diagnose_metrics(base, (0.0, 1.0), compare=[bigger])
    m = d["evidence"]["metric_3_2"][0]
    assert not m["capacity_reduces_error"]
    assert m["regularizer_reduction"] == pytest.approx((-0.148 + 2.59) / 2.59)
    # a lower regularizer with a TD error that holds steady does count
    steady = {"run_dir": "big", "records": _records(q, td=1.5, reg=-2.59)}
    assert diagnose_metrics(base, (0.0, 1.0), compare=[steady])["evidence"]["metric_3_2"][0][
        "capacity_reduces_error"]


def test_a_falling_q_is_overfitting_even_with_a_large_error():
    # Paper Sec. 3: under underfitting Q should not fall with more training; a material fall wins.
    x = np.arange(16)
    q = np.where(x <= 6, 0.05 * x, 0.3 - 0.05 * (x - 6))
    d = diagnose_metrics(_records(q, td=0.05), (0.0, 1.0))  # q error 5 x the range
    assert d["verdict"] == "overfitting"
    assert any("Q error" in r for r in d["reasons"])  # the large error is still reported


def _with_unexplained(records, fraction):
    return [{**r, "td_error_over_target_var": fraction} for r in records]


def test_underfitting_is_judged_without_cqls_level_offset():
    q = -40.0 + 0.03 * np.arange(10)  # CQL's level far below [0, 1], still rising
    # td_error * H = 100 x the range, but the critic explains 90% of its targets' spread: not underfitting.
    fits = diagnose_metrics(_with_unexplained(_records(q, td=1.0), 0.1), (0.0, 1.0))
    assert fits["verdict"] == "healthy", fits["reasons"]
    assert fits["evidence"]["td_error_over_target_var_end"] == pytest.approx(0.1)
    # The same curves with 80% of the spread unexplained are underfitting.
    poor = diagnose_metrics(_with_unexplained(_records(q, td=1.0), 0.8), (0.0, 1.0))
    assert poor["verdict"] == "underfitting"
    assert any("unexplained" in r for r in poor["reasons"])


def test_q_above_the_largest_return_is_over_estimation():
    # Success fell while q_data rose past the largest return (1.0) to 4: not divergence (limit 11), but flagged.
    q = np.concatenate([np.linspace(0.1, 0.8, 6), np.linspace(1.2, 4.0, 6)])
    d = diagnose_metrics(_records(q), (0.0, 1.0))
    assert d["verdict"] == "over-estimation"
    assert d["evidence"]["overestimation_steps"][0] >= 30000
    assert d["evidence"]["in_range_peak_step"] in (25000, 30000)
    assert "alpha" in d["recommendation"] and "offrl tune" in d["recommendation"]
    # Within the tolerance (10% of the range above 1) nothing is flagged.
    ok = diagnose_metrics(_records(np.linspace(0.1, 1.05, 12)), (0.0, 1.0))
    assert ok["verdict"] == "healthy"


def test_another_selector_changes_the_pick_and_nothing_else():
    from offrl.workflow.rules import RULES

    x = np.arange(10)
    q = np.where(x <= 3, 0.1 * x, 0.3 - 0.05 * (x - 3))  # peaks at index 3 (step 20000), then falls
    records = _records(q)
    for r, v in zip(records, [0.1, 0.2, 0.3, 0.2, 0.9, 0.5, 0.4, 0.3, 0.2, 0.1], strict=True):
        r["fqe_value"] = v
        r["heldout/td_error"] = 1.0 - v
        r["softopc_value"] = -v  # highest at the first checkpoint (step 5000)
    base = diagnose_metrics(records, (0.0, 1.0))
    assert base["selected_step"] == 20000 and base["selector"] == "q_peak"
    held = ("heldout_q_peak", "heldout_q_policy_peak")  # these records have no held-out Q curves
    picks = {name: diagnose_metrics(records, (0.0, 1.0), selector=name) for name in RULES if name not in held}
    assert {n: d["selected_step"] for n, d in picks.items()
            if n in ("q_after_peak", "last", "fqe", "heldout_td", "softopc")} \
        == {"q_after_peak": 25000, "last": 50000, "fqe": 25000, "heldout_td": 25000, "softopc": 5000}
    assert all(d["verdict"] == base["verdict"] == "overfitting" for d in picks.values())
    assert picks["fqe"]["selector"] == "fqe" and "fitted-Q" in picks["fqe"]["selection_rule"]
    with pytest.raises(ValueError, match="heldout_q_peak needs heldout/q_data"):
        diagnose_metrics(records, (0.0, 1.0), selector="heldout_q_peak")
    with pytest.raises(ValueError, match="unknown selector 'best'"):
        diagnose_metrics(records, (0.0, 1.0), selector="best")
    with pytest.raises(ValueError, match=r"selector fqe needs fqe.json \(offrl fqe RUN\)"):
        diagnose_metrics(_records(q), (0.0, 1.0), selector="fqe")


def test_the_cli_offers_exactly_the_rules():
    import typing

    from offrl.cli import SelectorName
    from offrl.workflow.rules import RULES

    assert typing.get_args(SelectorName) == tuple(RULES)


def test_bear_constraint_never_met_at_the_ceiling_and_below_the_estimates_floor():
    """BEAR with epsilon 0.05 on data whose behaviour model's own MMD floor is 0.15: the MMD stays at 0.2 with
    alpha at e^10. The diagnosis says the constraint is never met and that no policy could meet this epsilon; a run
    whose MMD is below epsilon gets no such reason."""
    q = 0.02 * np.arange(8)
    agent = {"epsilon": 0.05, "log_alpha_max": 10.0, "num_samples": 10}
    stuck = [{**r, "mmd": 0.2, "mmd_floor": 0.15, "alpha": math.exp(10.0)} for r in _records(q)]
    d = diagnose_metrics(stuck, (0.0, 1.0), algo="bear", agent=agent)
    c = d["evidence"]["bear_constraint"]
    assert c["alpha_at_ceiling"] and c["mmd_end"] == pytest.approx(0.2) and c["mmd_floor_end"] == pytest.approx(0.15)
    text = " ".join(d["reasons"])
    assert "never met" in text and "raise --bear.epsilon above 0.15" in text
    assert d["verdict"] == diagnose_metrics(_records(q), (0.0, 1.0), algo="bear")["verdict"]  # a reason, not a verdict
    held = [{**r, "mmd": 0.03, "mmd_floor": 0.01, "alpha": 2.0} for r in _records(q)]
    assert "bear_constraint" not in diagnose_metrics(held, (0.0, 1.0), algo="bear", agent=agent)["evidence"]
    # Above epsilon but alpha still climbing and the floor below epsilon: reported, without "never met".
    climbing = [{**r, "mmd": 0.08, "mmd_floor": 0.02, "alpha": 50.0} for r in _records(q)]
    c = diagnose_metrics(climbing, (0.0, 1.0), algo="bear", agent=agent)["evidence"]["bear_constraint"]
    assert not c["alpha_at_ceiling"] and "never met" not in c["reason"] and "no policy" not in c["reason"]


def _agent_configs():
    from offrl.agents.awac import AWACConfig
    from offrl.agents.bear import BEARConfig
    from offrl.agents.brac import BRACConfig
    from offrl.agents.combo import COMBOConfig
    from offrl.agents.iql import IQLConfig
    from offrl.agents.mopo import MOPOConfig

    return {"iql": IQLConfig, "awac": AWACConfig, "bear": BEARConfig, "brac": BRACConfig, "mopo": MOPOConfig,
            "combo": COMBOConfig}


@pytest.mark.parametrize("algo", ["iql", "awac", "bear", "brac", "mopo", "combo"])
@pytest.mark.parametrize("verdict", ["overfitting", "underfitting", "over-estimation", "diverged"])
def test_advice_names_only_settings_the_algorithm_has(algo, verdict):
    """VIB, dropout and DR3 exist for CQL's critic alone: an IQL, AWAC, BEAR, BRAC, MOPO or COMBO run must not be
    told to add them, and every flag its advice names must be a field of its own config."""
    import dataclasses
    import re

    from offrl.workflow.diagnosis import _recommendation

    text = _recommendation(verdict, 4500, algo)
    fields = {f.name.replace("_", "-") for f in dataclasses.fields(_agent_configs()[algo])}
    flags = re.findall(r"--([a-z]+)\.([a-z-]+)", text)
    assert all(group == algo and name in fields for group, name in flags), (flags, text)
    # Advice to add CQL's regularizers reads "a variational information bottleneck" / "the DR3 regularizer".
    assert "information bottleneck" not in text and "DR3 regularizer" not in text, text
    if verdict in ("overfitting", "over-estimation"):
        assert "4500" in text
    if verdict in ("underfitting", "over-estimation") or (verdict == "diverged" and algo != "iql"):
        assert flags, text  # an actionable setting, not only "train differently"


# Metric 3.1 as written (Kumar et al. 2021): "Q first increases, then decreases"; the rise must exceed the noise.
def test_metric_3_1_rise_then_fall_is_detected():
    rng = np.random.default_rng(3)
    q = np.concatenate([np.linspace(0.0, 10.0, 8), np.linspace(9.0, 3.0, 8)]) + rng.normal(0, 0.2, 16)
    dec = detect_decline(q, DiagnosisConfig(), 40.0)
    assert dec.declining and dec.rose and dec.falls and 5 <= dec.peak_index <= 9
    assert dec.rise > dec.rise_threshold


def test_metric_3_1_monotone_fall_is_not_overfitting():
    rng = np.random.default_rng(4)
    q = np.linspace(10.0, 0.0, 16) + rng.normal(0, 0.2, 16)
    dec = detect_decline(q, DiagnosisConfig(), 40.0)
    assert dec.falls and not dec.rose and not dec.declining
    d = diagnose_metrics(_records(q), (0.0, 40.0))
    assert d["verdict"] != "overfitting" and d["evidence"]["rose_before_peak"] is False


def test_metric_3_1_noise_only_curves_are_not_called():
    # Flat curves of pure noise: neither the old nor the new rule should call them (the thresholds cover the
    # maximum's bias); with the rise required, not one of 200 is called.
    rng = np.random.default_rng(5)
    called = sum(detect_decline(rng.normal(5.0, 1.0, 18), DiagnosisConfig(), 40.0).declining for _ in range(200))
    assert called == 0
