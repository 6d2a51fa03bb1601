"""The pre-registered reading of "Faithful methods, measured again" (issue 43) on synthetic cells with a known answer:
the per-run numbers, BEAR's constraint, COMBO's value bounds, and the per-method reading."""

from __future__ import annotations

import math

import pytest

from offrl.study.faithful import faithful_lines, method_reading, run_numbers


def _cell(success, algo="mopo", task="t", q_last=0.5, agent=None, last=None, warmup=0, setting=None):
    cps = []
    for i, p in enumerate(success):
        k = int(round(p * 80))
        outcomes = [1] * k + [0] * (80 - k)
        cps.append({"step": 1000 * (i + 1), "successes": k, "episodes": 80, "success_rate": k / 80,
                    "episode_successes": outcomes,  # the halves (even, odd) split the k successes evenly
                    "q_data": q_last})
    cps[-1].update(last or {})
    return {"cell": {"task": task, "regime": "correlated", "episodes": 300, "seed": 0, "setting": setting or algo},
            "algo": algo, "agent": agent or {}, "checkpoints": cps, "warmup_steps": warmup,
            "diagnosis": {"selected_step": 2000}, "q_range": [0.0, 1.0],
            "dataset": {"transitions": 100, "episodes": 300, "behaviour_success_rate": 0.5}}


def test_run_numbers_by_hand():
    n = run_numbers(_cell([0.0, 0.25, 0.05], q_last=1.2))
    assert n["pick_step"] == 2000 and n["pick"] == 0.25 and n["learns"] is True
    assert n["value_sane"] is False and run_numbers(_cell([0.0, 0.05, 0.05], q_last=1.09))["value_sane"] is True
    assert run_numbers(_cell([0.0, 0.0875, 0.05]))["learns"] is False      # 7 of 80 is below 0.10
    bear = run_numbers(_cell([0.5, 0.5, 0.5], "bear", agent={"epsilon": 0.05, "log_alpha_max": 10.0},
                             last={"mmd": 0.04, "alpha": math.exp(10.0)}))["bear"]
    assert bear["met"] is True and bear["at_ceiling"] is True


def _row(best, pick, bc, learns=True):
    return {"numbers": {"best": best, "pick": pick, "learns": learns}, "bc": bc}


@pytest.mark.parametrize(("rows", "answer"), [
    ([_row(0.5, 0.4, 0.45), _row(0.2, 0.2, 0.25), _row(0.9, 0.8, 0.7), _row(0.0, 0.0, 0.3, False)], "learns here"),
    ([_row(0.5, 0.2, 0.45), _row(0.2, 0.2, 0.25), _row(0.9, 0.8, 0.7), _row(0.0, 0.0, 0.3, False)], "mixed"),
    ([_row(0.05, 0.0, 0.4, False)] * 3 + [_row(0.5, 0.5, 0.4)], "fails here"),
    ([_row(0.5, 0.5, None)] * 4, "mixed"),                                 # no BC pick to compare with
])
def test_the_method_reading_is_the_pre_registered_rule(rows, answer):
    assert method_reading(rows)["answer"] == answer


def test_the_section_pairs_with_the_earlier_cell_and_bc_and_reads_only_the_pre_registered_grids(tmp_path):
    import json

    earlier = tmp_path / "model-based"
    earlier.mkdir()
    (earlier / "old.json").write_text(json.dumps(_cell([0.0, 0.0, 0.0], q_last=9.0)))
    (earlier / "bc.json").write_text(json.dumps(_cell([0.3, 0.3, 0.3], "bc")))
    new = [_cell([0.1, 0.6, 0.5], task="t")]
    from offrl.study import faithful

    grids = {"faithful": {"methods": ("mopo",), "earlier": {"mopo": str(earlier)}, "bc": {"mopo": str(earlier)}}}
    old_grids, faithful.GRIDS = faithful.GRIDS, grids
    try:
        text = "\n".join(faithful_lines(new, "studies/archive/faithful"))
    finally:
        faithful.GRIDS = old_grids
    assert "| t | 0.60 [" in text and "| 0.00 / 0.00 | 0.30 |" in text and "MOPO: mixed" in text
    assert faithful_lines(new, "studies/archive/dev") == []
