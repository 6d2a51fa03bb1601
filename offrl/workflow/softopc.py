"""SoftOPC: off-policy classification of the critic, a checkpoint score for sparse binary success rewards.

Irpan, Rao, Bousmalis, Harris, Ibarz & Levine, 2019, "Off-Policy Evaluation via Off-Policy Classification"
(NeurIPS): with a binary success reward, every state-action pair of a successful episode is *feasible* (it can
still lead to success), so a good Q-function should rank the logged actions of successful episodes above the
rest. Their soft score replaces OPC's indicator ``Q > threshold`` with Q itself:

    SoftOPC(Q) = p * mean_{(s,a) in D+} Q(s, a) - mean_{(s,a) in D} Q(s, a)

with ``D+`` the transitions of the successful episodes, ``D`` all transitions, and ``p = p(y = 1)`` the prior of
feasible pairs. A log does not give that prior; offrl sets **p = 1** (as d3rlpy's ``SoftOPCEvaluator`` does), so
the score is ``(1 - f) (mean_D+ Q - mean_D- Q)``, f the share of positive transitions: it ranks checkpoints by how
far the critic lifts the successful episodes' actions above the failed ones'. Pre-registered as a secondary rule
in docs/selection.md ("SoftOPC, a further candidate"), with every choice below fixed there.

``Q(s, a)`` is ``q_data``'s definition: the run's critic on the logged action, averaged over its critics, computed
by the agent's own evaluation (:func:`offrl.training.train.make_evaluator`). Offline: reads the dataset and the
checkpoints, never a simulator.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from offrl.agents import config_from_dict
from offrl.data import Dataset, Normalizer, load_dataset
from offrl.training import run_dir as rd
from offrl.training.policy import load_state
from offrl.training.run_dir import SOFTOPC_FILE

__all__ = ["SOFTOPC_FILE", "softopc_run", "softopc_sets", "successful_episodes"]

MAX_TRANSITIONS = 20_000
"""Transitions of each set (D+ and D) scored at every checkpoint, drawn once with :data:`SEED` (docs/selection.md)."""
SEED = 0
PRIOR = 1.0
"""``p(y = 1)`` of Irpan et al.: not known from a log; 1 as d3rlpy (the deviation is stated in the module doc)."""


def successful_episodes(dataset: Dataset) -> np.ndarray:
    """(E,) bool: the episodes that reached success, i.e. whose return is positive, on binary 0/1 rewards (terminal
    at success, or a reward on every step the task is solved: both give a positive return exactly when the
    episode succeeded).

    Raises:
        ValueError: the rewards are not binary 0/1 (shaped or transformed rewards: success cannot be read from
            them, and SoftOPC is defined for binary success rewards)."""
    values = np.unique(dataset.rewards)
    if not np.isin(values, (0.0, 1.0)).all():
        shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if len(values) > 6 else "")
        raise ValueError(f"SoftOPC needs binary 0/1 success rewards; this dataset's rewards take the values "
                         f"{shown}: score it with another rule (fqe, q_peak)")
    return dataset.episode_returns() > 0


def softopc_sets(dataset: Dataset, max_transitions: int = MAX_TRANSITIONS,
                 seed: int = SEED) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The transition indices of ``D+`` and ``D`` (each (m,) int64, sorted, at most ``max_transitions``, drawn once
    with ``seed``) and the facts about them (``episodes``, ``successful_episodes``, ``positive_share``: f, the
    share of all transitions that lie in successful episodes).

    Raises:
        ValueError: rewards not binary (:func:`successful_episodes`), or no successful or no failed episode: the
            classification needs both classes."""
    ok = successful_episodes(dataset)
    if ok.all() or not ok.any():
        which = "failed" if ok.all() else "successful"
        raise ValueError(f"SoftOPC is undefined on this dataset: it has no {which} episode among its "
                         f"{len(ok)} (it compares the critic on successful and failed episodes)")
    positive = np.concatenate([np.arange(sl.start, sl.stop) for sl, good in zip(dataset.episode_slices(), ok,
                                                                                 strict=True) if good])
    everything = np.arange(len(dataset))
    rng = np.random.default_rng(seed)

    def draw(idx: np.ndarray) -> np.ndarray:
        return idx if len(idx) <= max_transitions else np.sort(rng.choice(idx, max_transitions, replace=False))

    facts = {"episodes": int(len(ok)), "successful_episodes": int(ok.sum()),
             "positive_share": float(len(positive) / len(dataset))}
    return draw(positive), draw(everything), facts


def softopc_run(run_dir: str | Path, steps: Sequence[int] | None = None, dataset: Dataset | None = None,
                write: bool = True) -> dict[str, Any]:
    """SoftOPC of every checkpoint (or ``steps``) of a run; writes softopc.json in the run directory.

    ``dataset``: the run's dataset already loaded (default: the file config.json names, whose fingerprint must
    match the run's). All of its episodes count, training and held-out, as for FQE.

    Returns:
        ``{"results": [{"step", "value", "q_successful", "q_all"}], "prior", "episodes", "successful_episodes",
        "positive_share", "transitions": {"successful", "all"}, "seconds", "note"}``; ``value`` =
        ``prior * q_successful - q_all`` (reward units, as Q), the mean Q on the logged actions of D+ and D.

    Raises:
        FileNotFoundError: not a run directory, no checkpoints, or the dataset file is missing.
        ValueError: an image run, an algorithm without a critic (BC, TT), a dataset that is not the run's, or a
            dataset on which SoftOPC is undefined (:func:`softopc_sets`).
    """
    from offrl.training.train import Inputs, eval_chunks, make_evaluator

    run_dir = Path(run_dir)
    cfg, steps = rd.state_run(run_dir, steps, "SoftOPC")
    if dataset is None:
        path = Path(cfg["dataset"]["path"])
        if not path.is_file():
            raise FileNotFoundError(f"the dataset of {run_dir} is missing: {path}")
        from offrl.data.hdf5 import fingerprint

        if cfg["dataset"].get("fingerprint") and fingerprint(path) != cfg["dataset"]["fingerprint"]:
            raise ValueError(f"{path} changed since {run_dir} was trained (its fingerprint differs): restore the "
                             f"run's dataset")
        dataset = load_dataset(path)
    positive, everything, facts = softopc_sets(dataset)
    algo = cfg.get("algo", "cql")
    agent = config_from_dict(algo, cfg["agent"])
    # The batches as training built them: the run's columns and normaliser; Cal-QL's Monte-Carlo returns.
    calibrated = bool(getattr(agent, "calibrated", False))
    inputs = Inputs("state", tuple(cfg["dataset"].get("state_columns") or range(int(cfg["dataset"]["obs_dim"]))),
                    Normalizer.from_dict(cfg["normalizer"]), 1, float(agent.gamma) if calibrated else None)
    sets = {"q_successful": eval_chunks(dataset, inputs, positive), "q_all": eval_chunks(dataset, inputs, everything)}
    evaluate = make_evaluator(algo, agent)
    key = jax.random.PRNGKey(SEED)
    t = time.perf_counter()
    results = []
    for s in steps:
        state, _ = load_state(run_dir, s)
        row: dict[str, Any] = {"step": int(s)}
        for name, (chunks, mask) in sets.items():
            metrics = jax.device_get(evaluate(state, chunks, mask, key))
            if "q_data" not in metrics:
                raise ValueError(f"{run_dir} is a {algo} run, which has no critic on the logged actions: SoftOPC "
                                 f"scores Q-learning runs only")
            row[name] = float(metrics["q_data"])
        row["value"] = PRIOR * row["q_successful"] - row["q_all"]
        results.append(row)
    out = {
        "note": "SoftOPC (Irpan et al. 2019) with p(y=1) = 1: mean Q on the logged actions of the successful "
                "episodes minus mean Q on all transitions (docs/selection.md, 'SoftOPC, a further candidate')",
        "prior": PRIOR,
        **facts,
        "transitions": {"successful": int(len(positive)), "all": int(len(everything))},
        "seconds": round(time.perf_counter() - t, 2),
        "results": [{k: row[k] for k in ("step", "value", "q_successful", "q_all")} for row in results],
    }
    if write:
        rd.write_json(run_dir / SOFTOPC_FILE, out)
    return out
