"""The averaged-actor comparison of docs/selection.md (issue 45): jumps and their binomial expectation by hand, the
pairing, the per-run numbers, and the pre-registered reading on synthetic slices with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from offrl.study.averaging import (
    jump_probability,
    jumps,
    pair_cells,
    reading,
    run_metrics,
    same_training,
    slice_analysis,
)


def _cell(success, task="t", seed=0, setting="base", q=None, n=80, transitions=1000):
    """A finished cell whose checkpoints score ``success`` over ``n`` episodes (outcomes spread evenly, so both halves
    score alike)."""
    cps = []
    for i, p in enumerate(success):
        k, m = int(round(p * n)), n // 2

        def spread(ones: int, length: int = m) -> list[int]:  # ``ones`` ones evenly spread over ``length``
            return [int((j * ones) // length != ((j + 1) * ones) // length) for j in range(length)]

        outcomes = [0] * n
        outcomes[0::2], outcomes[1::2] = spread(k // 2), spread(k - k // 2)  # halves A (even) and B (odd) alike
        cps.append({"step": 1000 * (i + 1), "successes": sum(outcomes), "episodes": n, "success_rate": sum(outcomes) / n,
                    "episode_successes": outcomes, "q_data": (q or [0.0] * len(success))[i]})
    return {"cell": {"task": task, "regime": "mixed", "episodes": 300, "seed": seed, "setting": setting},
            "checkpoints": cps, "warmup_steps": 0, "diagnosis": {"selected_step": None}, "q_range": [0.0, 1.0],
            "dataset": {"transitions": transitions, "episodes": 300, "behaviour_success_rate": 0.4}}


def test_jump_probability_by_enumeration():
    n, p = 4, 0.5
    pmf = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
    by_hand = sum(pmf[x] * pmf[y] for x in range(n + 1) for y in range(n + 1) if abs(x - y) >= 2)
    assert jump_probability(p, n, jump=0.5) == pytest.approx(by_hand)
    assert jump_probability(0.0, 80) == 0.0 and jump_probability(1.0, 80) == 0.0
    # At 80 episodes a 0.3 jump between two equally good checkpoints is rare: about 1e-4 at p = 0.5.
    assert 1e-5 < jump_probability(0.5, 80) < 1e-3


def test_jumps_count_neighbours_at_least_point_three_apart():
    cell = _cell([0.5, 0.9, 0.5, 0.8, 0.85])          # 0.4, 0.4, 0.3 (24 of 80: counted), 0.05
    j = jumps(cell)
    assert j["jumps"] == 3 and j["checkpoints"] == 5
    expected = (jump_probability(0.7, 80) + jump_probability(0.7, 80) + jump_probability(0.65, 80)
                + jump_probability(0.825, 80))
    assert j["expected"] == pytest.approx(expected)
    m = run_metrics(cell)
    assert m["last_success"] == pytest.approx(0.85) and m["last_regret"] == pytest.approx(0.05 / 0.4)
    assert m["best_success"] == pytest.approx(0.9)


def test_pairs_need_the_same_task_seed_and_data():
    avg = [_cell([0.5] * 3, "a", 0, "base-averaged"), _cell([0.5] * 3, "a", 1, "base-averaged"),
           _cell([0.5] * 3, "b", 0, "base-averaged")]
    raw = [_cell([0.5] * 3, "a", 0), _cell([0.5] * 3, "b", 0, transitions=999)]
    pairs, problems = pair_cells(avg, raw)
    assert [(a["cell"]["task"], a["cell"]["seed"]) for a, _ in pairs] == [("a", 0)]
    assert any("no raw run" in p for p in problems) and any("data differ (transitions)" in p for p in problems)
    assert same_training(_cell([0.5] * 3, q=[1.0, 2.0, 3.0]), _cell([0.5] * 3, q=[1.0, 2.0, 3.0])) == 0.0
    assert same_training(_cell([0.5] * 3, q=[1.0, 2.0, 3.0]), _cell([0.5] * 3, q=[1.0, 2.5, 3.0])) == 0.5


def test_a_smooth_averaged_actor_that_keeps_the_best_becomes_the_default():
    rng = np.random.default_rng(0)
    pairs = []
    for task in ("a", "b", "c", "d"):
        for seed in range(3):
            smooth = list(np.clip(0.66 + 0.02 * np.arange(10) + rng.normal(0, 0.01, 10), 0, 1))
            jumpy = [0.8, 0.3, 0.8, 0.3, 0.7, 0.2, 0.8, 0.3, 0.8, 0.4]
            pairs.append((_cell(smooth, task, seed, "base-averaged"), _cell(jumpy, task, seed)))
    s = slice_analysis(pairs, samples=500)
    assert s["averaged"]["share_with_a_jump"] == 0.0 and s["raw"]["share_with_a_jump"] == 1.0
    assert s["difference"]["jumps"]["mean"] == -9
    assert s["reading"]["answer"] == "default", s["reading"]
    # The raw partner as the "averaged" side: more jumps, a worse last checkpoint: averaging stays off.
    assert slice_analysis([(r, a) for a, r in pairs], samples=500)["reading"]["answer"] == "off"


def _slice(jumps_d, last_d, best_d, share=0.1, last_regret=0.1):
    def s(mean, ci):
        return {"mean": mean, "ci": ci, "n": 12}

    return {"difference": {"jumps": s(*jumps_d), "last_success": s(*last_d), "best_success": s(*best_d)},
            "averaged": {"share_with_a_jump": share, "last_regret": {"mean": last_regret}}}


@pytest.mark.parametrize(("sl", "answer"), [
    (_slice((-2, [-3, -1]), (0.05, [-0.02, 0.1]), (0.0, [-0.05, 0.05])), "default"),
    (_slice((0.5, [-0.5, 1.5]), (0.0, [-0.1, 0.1]), (0.0, [-0.05, 0.05])), "off"),      # (1) fails, mean >= 0
    (_slice((-2, [-3, -1]), (-0.1, [-0.2, -0.01]), (0.0, [-0.05, 0.05])), "off"),       # (4) entirely below 0
    (_slice((-2, [-3, -1]), (0.05, [-0.02, 0.1]), (-0.1, [-0.2, -0.02])), "off"),       # (5) entirely below 0
    (_slice((-0.5, [-1.5, 0.2]), (0.0, [-0.1, 0.1]), (0.0, [-0.05, 0.05])), "open"),    # (1) mean < 0, ci has 0
    (_slice((-2, [-3, -1]), (0.05, [-0.02, 0.1]), (0.0, [-0.05, 0.05]), share=0.3), "open"),   # (2) missed
    (_slice((-2, [-3, -1]), (-0.01, [-0.05, 0.03]), (0.0, [-0.05, 0.05])), "open"),    # (4) mean below 0
])
def test_the_reading_is_the_pre_registered_rule(sl, answer):
    assert reading(sl)["answer"] == answer
