"""Dataset inspection: the numbers, and the problems it flags."""

from __future__ import annotations

import numpy as np
import pytest

from offrl.data import make_dataset
from offrl.data.inspect import format_inspection, inspect_dataset


def _troubled_dataset():
    """4 episodes (lengths 5, 5, 9, 1), all by timeout, zero rewards, feature 1 constant, actions often at
    the declared bounds [-1, 1]."""
    rng = np.random.default_rng(0)
    lengths = [5, 5, 9, 1]
    n = sum(lengths)
    obs_chain, next_chain = [], []
    for length in lengths:
        s = rng.normal(size=(length + 1, 3))
        s[:, 1] = 7.0  # constant feature
        obs_chain.append(s[:-1])
        next_chain.append(s[1:])
    actions = rng.uniform(-0.5, 0.5, (n, 2))
    actions[:10, 0] = 1.0  # 10 of 20 steps at the upper bound in dim 0
    actions[10:12, 1] = -1.0 + 5e-4  # 2 more steps within 1e-3 of the lower bound in dim 1
    timeouts = np.zeros(n, bool)
    timeouts[np.cumsum(lengths) - 1] = True
    arrays = {
        "observations": np.concatenate(obs_chain),
        "next_observations": np.concatenate(next_chain),
        "actions": actions,
        "rewards": np.zeros(n),
        "terminals": np.zeros(n, bool),
        "timeouts": timeouts,
    }
    return make_dataset(arrays, {"task": "toy", "action_low": [-1.0, -1.0], "action_high": [1.0, 1.0]})


def test_inspection_flags_constant_features_saturated_actions_no_reward_no_terminals_short_episodes():
    report = inspect_dataset(_troubled_dataset())
    assert report["transitions"] == 20 and report["episodes"] == 4
    assert report["episode_length"] == {"min": 1, "mean": 5.0, "max": 9}
    assert report["terminals"] == 0 and report["timeouts"] == 4
    assert report["successes"]["episodes"] == 0 and report["successes"]["behaviour_success_rate"] == 0.0
    assert report["rewards"]["all_zero"]
    assert report["observations"]["dim"] == 3 and report["observations"]["constant_features"] == [1]
    assert report["observations"]["min"][1] == report["observations"]["max"][1] == 7.0
    acts = report["actions"]
    assert acts["bounds"] == "declared" and acts["low"] == [-1.0, -1.0]
    assert acts["at_bound_fraction"] == [0.5, 0.1]
    assert acts["steps_at_bound_fraction"] == pytest.approx(0.6)
    assert acts["max"][0] == 1.0
    assert report["metadata_keys"] == ["action_high", "action_low", "task"]

    problems = "\n".join(report["problems"])
    assert len(report["problems"]) == 3
    # Padding features and a saturating controller are facts to know, not problems to fix.
    notes = "\n".join(report["notes"])
    assert "observation features are constant" in notes and "indices [1]" in notes
    assert "60.0% of steps have an action at its declared bound" in notes
    assert "features are constant" not in problems and "at its declared bound" not in problems
    assert "all rewards are zero" in problems
    assert "terminals are never set" in problems
    assert "1 episode(s) have length 1 (episode indices [3])" in problems


def test_formatted_inspection_contains_the_numbers():
    text = format_inspection(inspect_dataset(_troubled_dataset()))
    assert "transitions: 20" in text
    assert "episodes: 4 (length min 1 / mean 5.0 / max 9 steps; 0 end terminal, 4 by timeout)" in text
    assert "successful episodes (a positive reward): 0 of 4 (behaviour success rate 0.00)" in text
    assert "60.0% of steps have a component within 0.001 of a bound" in text
    assert "constant features: [1]" in text
    assert "50.0%" in text and "10.0%" in text  # per-dimension at-bound fractions
    assert "metadata keys: action_high, action_low, task" in text
    assert "problems (3):" in text and "  - all rewards are zero" in text
    assert "note: 2 of 3 observation features" not in text and "note: 1 of 3 observation features" in text


def test_healthy_dataset_has_no_problems(chain_dataset):
    report = inspect_dataset(chain_dataset)
    assert report["problems"] == []
    assert report["successes"] == {"episodes": 3, "behaviour_success_rate": 0.5, "positive_reward_steps": 3}
    assert report["returns"] == {"min": 0.0, "mean": 0.5, "max": 1.0}
    assert "problems: none found" in format_inspection(report)


def test_observed_bounds_report_constant_action_dims_not_saturation(chain_dataset):
    arrays = chain_dataset.arrays()
    arrays["actions"] = arrays["actions"].copy()
    arrays["actions"][:, 1] = 0.3
    report = inspect_dataset(make_dataset(arrays, {}))
    assert report["actions"]["bounds"] == "observed"
    assert report["actions"]["constant_dims"] == [1]
    assert report["actions"]["at_bound_fraction"][1] == 0.0
    assert report["actions"]["steps_at_bound_fraction"] == pytest.approx(2 / len(arrays["rewards"]))
    assert report["problems"] == [
        "action dimensions [1] never vary: the data says nothing about their effect"
    ]
    # No declared bounds: saturation is not judged against the data's own min/max.
    assert any("no action bounds are declared" in n for n in report["notes"])
    assert not any("at its" in n for n in report["notes"] + report["problems"])
