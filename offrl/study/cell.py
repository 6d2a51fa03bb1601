"""One cell of the grid: collect its data (shared between cells), train, diagnose, roll out every checkpoint
for analysis only, FQE, and write cell.json (and its archive copy)."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

from offrl.agents import CONFIGS, warmup_steps
from offrl.presets import PRESETS as NAMED_PRESETS
from offrl.study.config import ALGORITHM_PRESETS, NO_Q_ALGOS, PRESETS, Cell, StudyConfig, algo_for, budget
from offrl.study.store import CELL_FILE, archive_cell, lock
from offrl.training import run_dir as rd
from offrl.workflow.auto import RemedyConfig, remedy_agent


def agent_for(setting: str, config: StudyConfig, steps: int | None = None) -> Any:
    """The agent config of a setting: the package's CQL defaults, a remedy of the automated loop, another
    algorithm's defaults (``iql``, ``awac``, ``bear``), or a named override of the config of :func:`algo_for`'s
    algorithm.

    A named preset that decays its actor over the run (``iql-sparse``: ``decay_actor_over_run``) gets
    ``actor_lr_decay_steps = steps``, the cell's budget, as `offrl train --preset` and the workflow give it,
    unless the setting sets ``actor_lr_decay_steps`` itself; with ``steps`` None it keeps the class default."""
    algo = algo_for(setting, config)
    base = CONFIGS[algo]()
    own: dict[str, Any] = {}
    if setting in NAMED_PRESETS:
        preset = NAMED_PRESETS[setting]
    elif setting in ("base", *ALGORITHM_PRESETS):
        return base
    elif setting in PRESETS:
        return remedy_agent(base, setting, RemedyConfig())
    else:
        own = config.settings[setting]
        preset = NAMED_PRESETS[own["preset"]] if "preset" in own else None  # a setting that extends a preset
    if preset is not None:
        base = preset.agent_config(base)
        if preset.decay_actor_over_run and steps is not None and "actor_lr_decay_steps" not in own:
            base = dataclasses.replace(base, actor_lr_decay_steps=int(steps))
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in own.items() if k not in ("algo", "preset")}
    return dataclasses.replace(base, **overrides)


def _preset_training(setting: str, config: StudyConfig | None = None) -> dict[str, Any]:
    """The TrainConfig fields besides the agent that a named preset sets (its name and reward transform), also for
    a setting of ``config`` that extends one (``preset = NAME``); the study's own budget keys (steps,
    checkpoint_every) stay the study's."""
    if setting not in NAMED_PRESETS:
        extends = (config.settings.get(setting, {}) if config is not None else {}).get("preset")
        if extends is None:
            return {}
        setting = extends
    p = NAMED_PRESETS[setting]
    return {"preset": p.name, "reward_scale": p.reward_scale, "reward_shift": p.reward_shift}


# Each algorithm's Metric 3.2 term and the actor's fit (docs/metrics.md), kept where the run logs them so that
# an archived cell holds the curves the workflow reads, not only the shared Q-value keys.
ALGORITHM_TERMS = ("value_loss", "v_data", "adv_weight", "weighted_nll", "mmd", "mmd_floor", "alpha", "q_std",
                   "kl_estimate", "action_mse", "log_likelihood", "token_log_likelihood", "loss_states",
                   "loss_actions", "loss_rewards", "loss_values", "model_nll", "model_mse", "model_rollout_mse",
                   "model_reward_mse", "model_reward_mse_rewarded",
                   "model_reward_share_rewarded")


def _algorithm_keys() -> tuple[str, ...]:
    return tuple(k for t in ALGORITHM_TERMS for k in (t, f"heldout/{t}"))


def softopc_facts(softopc: dict[str, Any]) -> dict[str, Any]:
    """What cell.json keeps of softopc.json besides the per-checkpoint values: the data's facts or why SoftOPC is
    undefined; not its seconds (in ``timings_s``), so that the record of a cell is the same wherever it ran."""
    return {k: v for k, v in softopc.items() if k not in ("results", "seconds")}


def cell_softopc(run: Path, cfg: dict[str, Any], steps: list[int], dataset: Any,
                 timings: dict[str, float] | None = None) -> dict[str, Any]:
    """SoftOPC of a cell's candidate checkpoints (:mod:`offrl.workflow.softopc`), reusing the run's softopc.json when
    it covers ``steps``; ``{"undefined": reason}`` when the rule has no score here (no critic, an image run, rewards
    that are not binary, data without a failed or a successful episode). Adds ``softopc_s`` to ``timings``."""
    from offrl.workflow.softopc import SOFTOPC_FILE, softopc_run

    if cfg.get("algo", "cql") in NO_Q_ALGOS:
        return {"undefined": f"{cfg.get('algo')} has no critic"}
    kept = rd.read_json(run / SOFTOPC_FILE) if (run / SOFTOPC_FILE).is_file() else None
    if kept is not None and [r["step"] for r in kept["results"]] == list(steps):
        return kept
    t = time.perf_counter()
    try:
        out = softopc_run(run, steps, dataset=dataset)
    except ValueError as e:
        return {"undefined": str(e)}
    if timings is not None:
        timings["softopc_s"] = time.perf_counter() - t
    return out


def run_cell(cell: Cell, config: StudyConfig, progress: bool = False) -> dict[str, Any]:
    """Collect (if needed), train (resuming), diagnose, evaluate every checkpoint, FQE, SoftOPC; write cell.json.

    The caller holds the cell's lock; the dataset is collected under its own lock (two cells may share it)."""
    from offrl.data import load_dataset
    from offrl.data.collect import collect
    from offrl.training.train import ALGO_FIELD, TrainConfig, TrainingDiverged, train
    from offrl.workflow.diagnosis import diagnose_run
    from offrl.workflow.evaluate import EVALUATION_FILE, evaluate_run
    from offrl.workflow.fqe import FQE_FILE, FQEConfig, fqe_run

    run = config.out / "cells" / cell.name
    b = budget(config, cell)
    timings: dict[str, float] = {}
    data = config.out / "data" / cell.dataset_name
    with lock(config, data.stem, wait=True):
        if not data.is_file():
            t = time.perf_counter()
            every_step = config.reward_mode == "success-every-step"  # the task's rule-based horizon
            collect(cell.task, cell.episodes, data, horizon=None if every_step else config.horizon, seed=cell.seed,
                    progress=progress, regime=cell.regime, reward_mode=config.reward_mode,
                    noise_sigma=config.noise_sigma if cell.regime == "white" else None)
            timings["collect_s"] = time.perf_counter() - t
    dataset = load_dataset(data)
    resume = (run / rd.CONFIG_FILE).is_file()
    if run.exists() and not resume:
        # A folder without config.json holds no training: an interrupted start. Set it aside, never delete.
        aside = run.with_name(run.name + f".incomplete-{int(time.time())}")
        shutil.move(str(run), str(aside))
    t = time.perf_counter()
    try:
        train(TrainConfig(
            dataset=data, out=run, steps=b["steps"], checkpoint_every=b["checkpoint_every"], seed=cell.seed,
            batch_size=b["batch_size"],
            progress=progress, resume=resume, algo=algo_for(cell.setting, config),
            **{ALGO_FIELD[algo_for(cell.setting, config)]: agent_for(cell.setting, config, b["steps"])},
            **_preset_training(cell.setting, config),
        ), dataset)
    except TrainingDiverged as e:
        # A diverged run is a result too: its checkpoints before the divergence are diagnosed and evaluated.
        if not rd.checkpoint_steps(run):
            raise
        print(f"  {cell.name}: {e}; analysing the checkpoints written before", flush=True)
    timings["train_s"] = time.perf_counter() - t
    diagnosis = diagnose_run(run)
    steps = rd.checkpoint_steps(run)
    evaluation = rd.read_json(run / EVALUATION_FILE) if (run / EVALUATION_FILE).is_file() else None
    if evaluation is None or [r["step"] for r in evaluation["results"]] != steps or \
            evaluation["episodes"] != b["eval_episodes"]:
        t = time.perf_counter()
        evaluation = evaluate_run(run, episodes=b["eval_episodes"], seed=cell.seed, progress=progress)
        timings["evaluate_s"] = time.perf_counter() - t
    cfg = rd.read_json(run / rd.CONFIG_FILE)
    # FQE only scores the checkpoints selectors choose among (after the BC warm start): a third less work.
    warmup = warmup_steps(cfg.get("algo", "cql"), cfg["agent"])
    fqe_steps = [s for s in steps if s > warmup] or steps
    fqe = rd.read_json(run / FQE_FILE) if (run / FQE_FILE).is_file() else None
    if cfg.get("algo", "cql") in NO_Q_ALGOS:
        fqe = {"results": []}  # a reference without a Q-based selection; FQE would only cost its time
    elif fqe is None or [r["step"] for r in fqe["results"]] != fqe_steps or fqe["config"]["steps"] != config.fqe_steps \
            or fqe["config"].get("tolerance") != config.fqe_tolerance \
            or (config.fqe_tolerance is not None and "min_steps" not in fqe["config"]):
        t = time.perf_counter()
        fqe = fqe_run(run, fqe_steps, config=FQEConfig(steps=config.fqe_steps, seed=cell.seed,
                                                       tolerance=config.fqe_tolerance), dataset=dataset)
        timings["fqe_s"] = time.perf_counter() - t
    softopc = cell_softopc(run, cfg, fqe_steps, dataset, timings)
    records = {int(r["step"]): r for r in rd.read_metrics(run)}
    success = {r["step"]: r for r in evaluation["results"]}
    fqe_by = {r["step"]: r["value"] for r in fqe["results"]}
    softopc_by = {r["step"]: r["value"] for r in softopc.get("results", [])}
    keys = ("q_data", "td_error", "cql_regularizer", "q_error_estimate", "heldout/q_data", "heldout/td_error",
            "heldout/q_error_estimate", "srank", "q_policy", "heldout/q_policy", "td_error_over_target_var",
            "heldout/td_error_over_target_var", "heldout/log_likelihood")
    checkpoints = [
        {
            "step": s,
            **{k: records.get(s, {}).get(k) for k in keys},
            **{k: records[s][k] for k in _algorithm_keys() if k in records.get(s, {}) and k not in keys},
            "fqe_value": fqe_by.get(s),
            "softopc_value": softopc_by.get(s),
            "successes": success[s]["successes"],
            "episodes": success[s]["episodes"],
            "success_rate": success[s]["success_rate"],
            "episode_successes": success[s].get("episode_successes"),
        }
        for s in steps
    ]
    out = {
        "cell": dataclasses.asdict(cell),
        "run_dir": str(run),
        "dataset": {
            "path": str(data),
            "transitions": len(dataset),
            "episodes": dataset.num_episodes,
            "behaviour_success_rate": dataset.metadata.get("behaviour_success_rate"),
            "horizon": dataset.metadata.get("horizon"),
        },
        "algo": cfg.get("algo", "cql"),
        "agent": cfg["agent"],
        "num_params": cfg.get("num_params"),
        "q_range": cfg["dataset"]["q_range"],
        "warmup_steps": warmup,
        "verdict": diagnosis["verdict"],
        # "model": the dynamics model's own verdict and curves (MOPO, COMBO; docs/model-based.md).
        "diagnosis": {k: diagnosis[k] for k in ("verdict", "selected_step", "peak_step", "reasons", "evidence", "model")
                      if k in diagnosis},
        "checkpoints": checkpoints,
        # FQE's stopping rule and bounds check (offrl.workflow.fqe), so an archived cell says whether its FQE
        # estimates are fair competitors.
        "fqe": {k: fqe.get(k) for k in ("steps_taken", "min_steps", "converged", "stopping_rule", "value_bounds",
                                        "out_of_bounds")
                if k in fqe},
        # SoftOPC's data facts, or why it is undefined (docs/selection.md, "SoftOPC, a further candidate").
        "softopc": softopc_facts(softopc),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "offrl_version": rd.offrl_version(),
    }
    rd.write_json(run / CELL_FILE, out)
    archive_cell(config, cell)
    return out
