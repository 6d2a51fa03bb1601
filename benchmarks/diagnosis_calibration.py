"""How often Metric 3.1 (offrl.workflow.diagnosis) raises a false alarm on noisy plateaus, and how often it
detects a real rise-then-fall, at several noise levels. Prints one JSON object.

Usage: python benchmarks/diagnosis_calibration.py [--trials 1000]
Curves: 20 checkpoints; plateau = linear rise to 0.5 over 5 checkpoints then 0.5 + noise; overfitting = rise
0.05/checkpoint to 0.35 at checkpoint 7, then fall 0.02/checkpoint (a drop of 0.24) + noise. Q range [0, 1].
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from offrl.workflow.diagnosis import diagnose_metrics


def _records(q: np.ndarray) -> list[dict]:
    return [
        {"step": 5000 * (i + 1), "q_data": float(v), "td_error": 1e-3, "cql_regularizer": 1.0,
         "q_error_estimate": 0.1}
        for i, v in enumerate(q)
    ]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=1000)
    args = p.parse_args()
    out = {}
    x = np.arange(20)
    for noise in (0.01, 0.03, 0.05):
        false_alarm = detected = peak_ok = 0
        for seed in range(args.trials):
            rng = np.random.default_rng(seed)
            plateau = np.concatenate([np.linspace(0, 0.5, 5), 0.5 + noise * rng.normal(size=15)])
            false_alarm += diagnose_metrics(_records(plateau), (0.0, 1.0))["verdict"] == "overfitting"
            fall = np.where(x <= 7, 0.05 * x, 0.35 - 0.02 * (x - 7)) + noise * rng.normal(size=20)
            d = diagnose_metrics(_records(fall), (0.0, 1.0))
            detected += d["verdict"] == "overfitting"
            peak_ok += abs(d["peak_step"] - 40000) <= 5000
        out[f"noise_{noise}"] = {
            "plateau_false_alarm_rate": false_alarm / args.trials,
            "rise_fall_detection_rate": detected / args.trials,
            "peak_within_one_checkpoint_rate": peak_ok / args.trials,
        }
    print(json.dumps({"trials": args.trials, **out}, indent=2))


if __name__ == "__main__":
    main()
