"""`offrl workflow`: collect (if needed) -> train -> diagnose -> select -> evaluate (analysis only) -> report."""

from __future__ import annotations

import dataclasses
import datetime
import time
from pathlib import Path
from typing import Any, Literal

from offrl.agents.awac import AWACConfig
from offrl.agents.bc import BCConfig
from offrl.agents.bear import BEARConfig
from offrl.agents.brac import BRACConfig
from offrl.agents.combo import COMBOConfig
from offrl.agents.cql import CQLConfig
from offrl.agents.iql import IQLConfig
from offrl.agents.mopo import MOPOConfig
from offrl.agents.trajectory_transformer import TTConfig
from offrl.data.collect import collect
from offrl.envs import DEFAULT_HORIZON
from offrl.presets import IQL_SPARSE
from offrl.training import run_dir as rd
from offrl.training.timing import compile_timer
from offrl.training.train import TrainConfig, check_config, train
from offrl.workflow.diagnosis import DIAGNOSIS_FILE, DiagnosisConfig, diagnose_run


@dataclasses.dataclass(frozen=True)
class WorkflowConfig:
    """The whole workflow on one MetaWorld task. The defaults finish in about 10 minutes on a 2-core CPU: IQL with
    its authors' sparse-reward settings on mixed-quality data, the last checkpoint (docs/default-job.md, the
    candidate D12 that passed its pre-registered rule). Fields left at None take the chosen algorithm's values
    from :data:`ALGO_DEFAULTS` (:func:`resolve_workflow_config`)."""

    task: str = "pick-place-v3"
    """MetaWorld v3 task with a scripted policy."""
    episodes: int = 300
    """Episodes to collect when the dataset is missing (300: about 45 s on 2 cores)."""
    preset: str | None = None
    """``paper`` (the workflow paper's CQL(H), budget and data) or ``iql-sparse`` (the default job): algorithm,
    hyperparameters, budget, selector, reward transform and data (offrl/presets.py); explicit flags win."""
    horizon: int | None = DEFAULT_HORIZON
    """Steps per episode (time limit) for collection and evaluation; None: the task's rule-based horizon for
    --reward-mode success-every-step (offrl/envs/reward_modes.py), else 150."""
    reward_mode: Literal["terminal", "success-every-step", "shaped"] = "terminal"
    """Reward structure of the collected data (offrl/envs/reward_modes.py): ``terminal`` 1 at the first success,
    which ends the episode; ``success-every-step`` the paper's, 1 on every step the task is solved, no termination;
    ``shaped`` MetaWorld's own dense reward, no termination."""
    regime: Literal["white", "correlated", "mixed", "paper"] = "mixed"
    """Behaviour of the collected data (docs/dataset-format.md): ``mixed`` expert, partial and exploratory
    episodes; ``correlated`` teleoperation-like deviations; ``white`` Gaussian noise; ``paper`` the paper's."""
    noise_sigma: float | None = None
    """The regime's main std in action units; None: its default (white 0.8, correlated 0.4, mixed 0.1)."""
    dataset: Path | None = None
    """Dataset file; collected if missing. Default: data/TASK_REGIME_EPISODESep_sSEED.h5."""
    out: Path | None = None
    """Run directory to create. Default: runs/TASK_ALGO_sSEED_TIMESTAMP (a new one every time)."""
    steps: int | None = None
    """Gradient steps; None: IQL 60,000 (about 3.5 minutes on 2 cores), the others 15,000."""
    checkpoint_every: int | None = None
    """Gradient steps between checkpoints; None: IQL 6,000, the others 1,000."""
    batch_size: int = 256
    """Transitions per gradient step (the reference code's 256). Image runs on a CPU: 64 is ~4x faster per step
    (6 vs 1.4 steps/s on 2 cores, benchmarks/image_speed.py)."""
    reward_scale: float = 1.0
    """Train on ``reward_scale * r + reward_shift`` (`offrl train --reward-scale`; the dataset file is kept)."""
    reward_shift: float | None = None
    """See --reward-scale; None: IQL -1 (its authors' setting for sparse 0/1 rewards), the others 0."""
    seed: int = 0
    """Seeds collection, training and evaluation."""
    eval_episodes: int = 20
    """Episodes per checkpoint for the analysis-only success rate; 0 to skip evaluation."""
    obs: Literal["state", "image", "image+proprio"] = "state"
    """What the networks see: the simulator state, camera images (48x48 RGB and the paper's CNN), or both."""
    image_size: int = 48
    """Image runs: square camera image size in pixels."""
    camera: str = "corner4"
    """Image runs: the MetaWorld camera."""
    frame_stack: int = 1
    """Image runs: frames stacked along the channel axis."""
    after_peak: bool = False
    """Select the checkpoint after the Q peak (Guideline 3.1's actor-critic variant)."""
    selector: str | None = None
    """Checkpoint rule (offrl/workflow/rules.py); None: IQL ``last`` (its Q falls while values propagate on
    rewards <= 0), the others ``q_peak``; ``fqe`` first fits Q evaluation to every checkpoint."""
    bc_baseline_steps: int = 5_000
    """Also train behaviour cloning for this many steps (run directory OUT_bc) and evaluate it, so that the summary
    shows what imitation alone achieves beside the pick (analysis only); for every algorithm but BC, and for CQL
    only without a warm start (``--cql.bc-steps 0``, the default). BRAC's pi_beta run (OUT_bc, trained anyway)
    is evaluated instead. 0 skips it."""
    progress: bool = True
    """Progress bars."""
    algo: Literal["cql", "brac", "bc", "iql", "awac", "bear", "tt", "mopo", "combo"] = "iql"
    """Algorithm; ``brac`` trains its behaviour policy first (OUT_bc), ``mopo``/``combo`` their dynamics model."""
    auto: bool = False
    """Paper Figure 1 (CQL): re-run with the remedy the verdict calls for (VIB or DR3 + wider critics) and
    decide which run to deploy (OUT/auto.json; runs in OUT/base, OUT/vib, OUT/capacity)."""
    agent: CQLConfig = dataclasses.field(default_factory=CQLConfig)
    """CQL hyperparameters (the reference values; only the number of steps is cut to fit a CPU)."""
    brac: BRACConfig = dataclasses.field(default_factory=BRACConfig)
    """BRAC hyperparameters."""
    bc: BCConfig = dataclasses.field(default_factory=BCConfig)
    """Behaviour-cloning hyperparameters (also for BRAC's pi_beta)."""
    iql: IQLConfig = dataclasses.field(
        default_factory=lambda: IQL_SPARSE.agent_config(IQLConfig()))
    """IQL hyperparameters; here the preset iql-sparse's: its authors' sparse-reward (AntMaze) expectile 0.9 and
    beta 10 (`offrl train` keeps their locomotion values without --preset iql-sparse). --iql.actor-lr-decay-steps 0
    (the default) becomes --steps here: the authors' cosine decay of the actor's learning rate over the whole run."""
    awac: AWACConfig = dataclasses.field(default_factory=AWACConfig)
    """AWAC hyperparameters."""
    bear: BEARConfig = dataclasses.field(default_factory=BEARConfig)
    """BEAR hyperparameters."""
    tt: TTConfig = dataclasses.field(default_factory=TTConfig)
    """Trajectory Transformer hyperparameters (its checkpoint is selected by the held-out next-token loss)."""
    mopo: MOPOConfig = dataclasses.field(default_factory=MOPOConfig)
    """MOPO hyperparameters."""
    combo: COMBOConfig = dataclasses.field(default_factory=COMBOConfig)
    """COMBO hyperparameters."""


ALGO_DEFAULTS: dict[str, dict[str, Any]] = {
    # docs/default-job.md addendum 6 (D12): judged on fresh seeds 18-20 of pick-place-v3 and 3 other dev tasks.
    # One source: the preset iql-sparse (offrl/presets.py), which `offrl train --preset iql-sparse` trains.
    "iql": {"steps": IQL_SPARSE.steps, "checkpoint_every": IQL_SPARSE.checkpoint_every,
            "reward_shift": IQL_SPARSE.reward_shift},
    # D0: the workflow's defaults before D12 (docs/default-job.md, candidate D0; docs/results.md).
    "other": {"steps": 15_000, "checkpoint_every": 1_000, "reward_shift": 0.0},
}
"""The values the fields left at None take, by algorithm."""


def resolve_workflow_config(config: WorkflowConfig) -> WorkflowConfig:
    """``config`` with every None field of :data:`ALGO_DEFAULTS` filled for its algorithm, and IQL's actor
    schedule set to span the run when --iql.actor-lr-decay-steps is 0."""
    if config.after_peak:  # one rule, one name: --after-peak is --selector q_after_peak
        if config.selector not in (None, "q_peak", "q_after_peak"):
            raise ValueError(f"--after-peak is the rule q_after_peak and cannot be combined with --selector "
                             f"{config.selector}: pass one of the two")
        config = dataclasses.replace(config, selector="q_after_peak", after_peak=False)
    preset = ALGO_DEFAULTS.get(config.algo, ALGO_DEFAULTS["other"])
    filled = {k: v for k, v in preset.items() if getattr(config, k) is None}
    if config.selector is None:  # the same rule `offrl train` records for the algorithm (one source)
        from offrl.workflow.rules import default_selector

        filled["selector"] = default_selector(config.algo)
    config = dataclasses.replace(config, **filled)
    # Only a valid --steps is copied into the schedule: a bad one is reported once, under the flag the user typed.
    if config.algo == "iql" and config.iql.actor_lr_decay_steps == 0 and config.steps >= 1:
        config = dataclasses.replace(config, iql=dataclasses.replace(config.iql, actor_lr_decay_steps=config.steps))
    return config


def run_workflow(config: WorkflowConfig) -> dict[str, Any]:
    """Run the whole workflow and return a summary (also printed by the CLI). ``summary["timings_s"]`` gives
    seconds per stage (collect_s, train_s, evaluate_s, total_s) and ``compile_s``, the part of them JAX spent
    tracing and compiling (:func:`offrl.training.timing.compile_timer`).

    Raises:
        ValueError: an unknown ``selector`` (before anything runs).
        whatever the steps raise: FileExistsError (never overwrites a run or dataset), DatasetError,
        TrainingDiverged, RuntimeError (MetaWorld missing for collection).
    """
    from offrl.workflow.rules import RULES

    config = resolve_workflow_config(config)
    if config.selector not in RULES:
        raise ValueError(f"unknown --selector {config.selector!r}: choose one of {', '.join(RULES)}")
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    with compile_timer() as compiled:
        summary = _run_workflow(config, timings, t_start)
    # Part of the other timings, shown apart: the time to answer on a warm machine with a compilation cache.
    summary["timings_s"]["compile_s"] = round(compiled["compile_s"], 1)
    return summary


def _run_workflow(config: WorkflowConfig, timings: dict[str, float], t_start: float) -> dict[str, Any]:
    images = config.obs != "state"
    suffix = f"_img{config.image_size}_{config.camera}" if images else ""
    sigma = "" if config.noise_sigma is None else f"_sigma{config.noise_sigma:g}"
    mode = "" if config.reward_mode == "terminal" else f"_{config.reward_mode}"
    horizon = "" if config.horizon in (None, DEFAULT_HORIZON) else f"_h{config.horizon}"
    name = f"{config.task}_{config.regime}{sigma}{mode}{horizon}_{config.episodes}ep_s{config.seed}{suffix}.h5"
    dataset = config.dataset or Path("data") / name
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    tag = f"{config.algo}_{config.obs.replace('+', '_')}" if images else config.algo
    out = Path(config.out or Path("runs") / f"{config.task}_{tag}_s{config.seed}_{stamp}")
    base = TrainConfig(
        dataset=Path(dataset), out=out, steps=config.steps, checkpoint_every=config.checkpoint_every,
        seed=config.seed, progress=config.progress, algo=config.algo, agent=config.agent, brac=config.brac,
        bc=config.bc, iql=config.iql, awac=config.awac, bear=config.bear, tt=config.tt, mopo=config.mopo,
        combo=config.combo, obs=config.obs, frame_stack=config.frame_stack, batch_size=config.batch_size,
        reward_scale=config.reward_scale, reward_shift=config.reward_shift, preset=config.preset,
        selector="q_after_peak" if config.after_peak else config.selector,  # recorded: `offrl select` reads it
    )
    bc_out = out.with_name(out.name + "_bc")
    # Settings that cannot work are refused before minutes of data collection, not after (BRAC's behaviour run
    # is the one this workflow trains first).
    check_config(dataclasses.replace(base, behavior_run=bc_out) if config.algo == "brac" else base)
    if not Path(dataset).exists():
        print(f"[1/5] collecting {config.episodes} episodes of {config.task} -> {dataset}", flush=True)
        t = time.perf_counter()
        from offrl.envs.render import RenderConfig

        collect(
            config.task, config.episodes, dataset, horizon=config.horizon, noise_sigma=config.noise_sigma,
            seed=config.seed, progress=config.progress, regime=config.regime, reward_mode=config.reward_mode,
            render=RenderConfig(size=config.image_size, camera=config.camera) if images else None,
        )
        timings["collect_s"] = time.perf_counter() - t
    else:
        # A malformed or unreadable file is refused in one line before any stage header, not after "[2/5]".
        from offrl.data import load_dataset

        load_dataset(Path(dataset))
        print(f"[1/5] using existing dataset {dataset}", flush=True)
    if images:
        _warn_image_budget(config)
    if config.auto:
        return _run_auto(dataclasses.replace(config, dataset=Path(dataset), out=out), timings, t_start)
    t = time.perf_counter()
    if config.algo == "brac":
        print(f"[2/5] training pi_beta (behaviour cloning) for {config.steps} steps -> {bc_out}", flush=True)
        train(dataclasses.replace(base, algo="bc", out=bc_out))
        base = dataclasses.replace(base, behavior_run=bc_out)
    print(f"[2/5] training {config.algo.upper()} for {config.steps} steps -> {out}", flush=True)
    train(base)
    timings["train_s"] = time.perf_counter() - t
    if config.selector == "fqe":
        from offrl.workflow.fqe import FQEConfig, fqe_run

        print("[3/5] fitted Q evaluation of every checkpoint (--selector fqe)", flush=True)
        t = time.perf_counter()
        fqe_run(out, config=FQEConfig(steps=5_000, seed=config.seed))  # the dev grid's setting
        timings["fqe_s"] = time.perf_counter() - t
    print("[3/5] diagnosing", flush=True)
    diagnosis = diagnose_run(out, config=DiagnosisConfig(), after_peak=config.after_peak, selector=config.selector)
    evaluation = None
    if config.eval_episodes > 0:
        print(f"[4/5] analysis-only evaluation: {config.eval_episodes} episodes per checkpoint", flush=True)
        t = time.perf_counter()
        from offrl.workflow.evaluate import evaluate_run

        evaluation = evaluate_run(out, episodes=config.eval_episodes, seed=config.seed, progress=config.progress)
        timings["evaluate_s"] = time.perf_counter() - t
        diagnosis = rd.read_json(out / DIAGNOSIS_FILE)  # evaluate_run added the analysis-only comparison
        if _wants_bc_baseline(config):
            t = time.perf_counter()
            diagnosis = _bc_baseline(config, base, out, trained=base.behavior_run)
            timings["bc_baseline_s"] = time.perf_counter() - t
    else:
        print("[4/5] evaluation skipped (--eval-episodes 0)", flush=True)
    from offrl.report import write_report  # matplotlib: ~0.8 s to import, not needed before this point

    report = write_report(out)
    print(f"[5/5] report written: {report}", flush=True)
    timings["total_s"] = time.perf_counter() - t_start
    return summarize(out, diagnosis, evaluation, report, timings)


def _wants_bc_baseline(config: WorkflowConfig) -> bool:
    """Whether the summary gets a behaviour-cloning baseline: for every algorithm but BC itself and a CQL run
    with a warm start (whose first checkpoints are behaviour cloning already); BRAC's pi_beta run is its
    baseline. Analysis only, like everything it feeds."""
    if config.bc_baseline_steps <= 0 or config.algo == "bc":
        return False
    return not (config.algo == "cql" and config.agent.bc_steps > 0)


def _bc_baseline(config: WorkflowConfig, base: TrainConfig, out: Path, trained: Path | None = None) -> dict[str, Any]:
    """Behaviour cloning beside the run, for the analysis-only comparison: trains OUT_bc (or takes ``trained``,
    BRAC's pi_beta run), selects its checkpoint by held-out log-likelihood (its own offline rule), evaluates it,
    and records both BC rows in the run's diagnosis.json. Returns the updated diagnosis."""
    from offrl.workflow.comparison import attach_comparison
    from offrl.workflow.evaluate import evaluate_run

    bc_out = trained or out.with_name(out.name + "_bc")
    if trained is None:
        steps = config.bc_baseline_steps
        every = max(1, min(config.checkpoint_every, steps // 5))
        print(f"[4/5] baseline: behaviour cloning for {steps} steps -> {bc_out} (analysis only)", flush=True)
        train(dataclasses.replace(base, algo="bc", out=bc_out, steps=steps, checkpoint_every=every))
    else:
        print(f"[4/5] baseline: evaluating pi_beta's behaviour-cloning run {bc_out} (analysis only)", flush=True)
    diagnose_run(bc_out)
    evaluate_run(bc_out, episodes=config.eval_episodes, seed=config.seed, progress=config.progress)
    attach_comparison(out, bc_run=bc_out)
    return rd.read_json(out / DIAGNOSIS_FILE)


# Image CQL gradient steps/s on a 2-core CPU at batch 256 (benchmarks/image_speed.py, paper CNN); per-step cost
# scales roughly with the batch size. Used only for the warning below.
_CPU_IMAGE_STEPS_PER_S_AT_256 = 1.4


def _warn_image_budget(config: WorkflowConfig) -> None:
    """Image runs on a CPU are slow: say how long the requested steps will take before starting."""
    import jax

    if jax.default_backend() != "cpu":
        return
    rate = _CPU_IMAGE_STEPS_PER_S_AT_256 * 256 / max(config.batch_size, 1)
    hours = config.steps / rate / 3600 * (2 if config.auto else 1)
    if hours > 0.5:
        print(
            f"note: image CQL runs on the CPU here at about {rate:.1f} gradient steps/s (batch {config.batch_size}); "
            f"{config.steps} steps{' per run' if config.auto else ''} take roughly {hours:.1f} h. On a CPU, "
            f"consider --batch-size 64 --steps 8000 --cql.bc-steps 2000 (docs/images.md), or use a GPU.",
            flush=True,
        )


def _run_auto(config: WorkflowConfig, timings: dict[str, float], t_start: float) -> dict[str, Any]:
    from offrl.workflow.auto import run_auto

    if config.algo != "cql":
        raise ValueError("--auto applies to CQL (the paper's remedies are for its Q-function): pass --algo cql")
    if config.out.exists() and any(config.out.iterdir()):
        raise FileExistsError(f"{config.out} already exists: choose another --out")
    t = time.perf_counter()
    result = run_auto(config)
    timings["train_s"] = time.perf_counter() - t
    summary: dict[str, Any] = {"decision": result["decision"], "runs": result["runs"]}
    from offrl.report import write_report

    for run in result["runs"].values():
        if config.eval_episodes > 0:
            from offrl.workflow.evaluate import evaluate_run

            ev = evaluate_run(run["run_dir"], episodes=config.eval_episodes, seed=config.seed,
                              progress=config.progress)
            res = {r["step"]: r["success_rate"] for r in ev["results"]}
            run["analysis_only_success_selected"] = res.get(run["selected_step"])
            run["analysis_only_success_best"] = max(res.values())
        write_report(run["run_dir"])
    from offrl.report import write_comparison_report

    summary["report"] = str(write_comparison_report(
        config.out, {name: run["run_dir"] for name, run in result["runs"].items()}, result["decision"]
    ))
    timings["total_s"] = time.perf_counter() - t_start
    summary["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    return summary


def summarize(
    out: Path, diagnosis: dict[str, Any], evaluation: dict[str, Any] | None, report: Path, timings: dict[str, float]
) -> dict[str, Any]:
    """Verdict, selected checkpoint, and (analysis only) its success beside the data's, the best warm-start
    checkpoint's, the best and the last (diagnosis.json ``analysis_only``)."""
    summary: dict[str, Any] = {
        "run_dir": str(out),
        "verdict": diagnosis["verdict"],
        "selected_step": diagnosis["selected_step"],
        "peak_step": diagnosis["peak_step"],
        "selector": diagnosis.get("selector"),
        "selection_rule": diagnosis.get("selection_rule"),
        "trust": (diagnosis.get("trust") or {}).get("statement"),
        "report": str(report),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    if diagnosis.get("model"):  # MOPO/COMBO: the dynamics model's own verdict, and its reward warning
        m = diagnosis["model"]
        summary["model"] = {"verdict": m["verdict"], "reason": m["reason"], "recommendation": m["recommendation"],
                            "reward_warning": m.get("reward_warning")}
    if evaluation and diagnosis.get("analysis_only"):
        summary["analysis_only_success"] = diagnosis["analysis_only"]
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a few lines for the terminal."""
    if "decision" in summary:  # the automated workflow
        lines = [*summary["decision"]["path"], *(f"  - {r}" for r in summary["decision"]["reasons"])]
        for name, run in summary["runs"].items():
            extra = ""
            if run.get("analysis_only_success_selected") is not None:
                extra = (f", analysis-only success {run['analysis_only_success_selected']:.0%} "
                         f"(best checkpoint {run['analysis_only_success_best']:.0%})")
            lines.append(f"{name}: {run['verdict']}, selected step {run['selected_step']}{extra} "
                         f"[{run['run_dir']}/report.html]")
        lines.append(f"report (runs side by side): {summary['report']}")
        lines.append("timings:            " + ", ".join(f"{k} {v}" for k, v in summary["timings_s"].items()))
        return "\n".join(lines)
    lines = [
        f"verdict:            {summary['verdict']}",
        f"selected checkpoint: step {summary['selected_step']}, by --selector {summary.get('selector')}: "
        f"{summary.get('selection_rule')}",
    ]
    if summary.get("trust"):
        lines.append(f"trust:              {summary['trust']}")
    m = summary.get("model")
    if m:
        lines.append(f"model:              {m['verdict']} ({m['reason']}); {m['recommendation']}")
        if m.get("reward_warning"):
            lines.append(f"model reward:       {m['reward_warning']}")
    s = summary.get("analysis_only_success")
    if s:
        from offrl.workflow.comparison import format_comparison

        lines.append("analysis-only success (not used for selection; 95% intervals):")
        lines.extend(format_comparison(s))
    lines.append(f"run directory:      {summary['run_dir']}")
    lines.append(f"report:             {summary['report']}")
    lines.append("timings:            " + ", ".join(f"{k} {v}" for k, v in summary["timings_s"].items()))
    return "\n".join(lines)
