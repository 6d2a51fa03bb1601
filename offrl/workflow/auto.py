"""The automated workflow (paper Figure 1): train, diagnose, apply the remedy the diagnosis calls for, decide.

- **Overfitting** (Metric 3.1) -> re-run with capacity-decreasing regularization on the Q-function
  (Guideline 4.1: VIB, paper Eq. 3, by default; dropout as the alternative) and check that q_data no longer
  falls. The remedy run is chosen when it stops the decline; otherwise the base run's Q peak (Guideline 3.1).
- **Underfitting** -> re-run with more capacity (Guideline 4.2: DR3, paper Eq. 4, plus wider critics, and for
  image runs the residual encoder, by default for the actor as in the paper's Sawyer fix) and apply
  Metric 3.2: if the bigger run lowers the TD error or the regularizer, the base run was underfitting and the
  bigger run is chosen (unless it diverged); otherwise the report says that capacity does not help.
- **Healthy / inconclusive / diverged** -> no re-run; the base run's selection stands, with the advice.

Every run is an ordinary run directory under OUT/ (``base``, ``vib`` or ``dropout``, ``capacity``); the
decision path is written to OUT/auto.json and drawn in OUT/report.html.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from offrl.agents.cql import CQLConfig
from offrl.training import run_dir as rd

AUTO_FILE = "auto.json"


@dataclasses.dataclass(frozen=True)
class RemedyConfig:
    """What the automated loop changes. Units: widths in units, coefficients as in CQLConfig."""

    overfitting_remedy: Literal["vib", "dropout"] = "vib"
    """Capacity-decreasing regularization for overfitting (Guideline 4.1)."""
    vib_dim: int = 16
    """VIB bottleneck size (the release's 16)."""
    vib_beta: float = 1e-3
    """VIB weight (the release README's value for the overfitting regime)."""
    dropout: float = 0.1
    """Dropout rate when the remedy is dropout."""
    dr3_coef: float = 1e-3
    """DR3 weight of the capacity run (the release's value)."""
    width_factor: int = 2
    """The capacity run's critics are this many times wider."""
    residual: Literal["actor", "critic", "both", "none"] = "actor"
    """Image runs: which networks the capacity run gives the 9-conv residual encoder (Guideline 4.2; the paper's
    fix on the Sawyer tasks is the ResNet actor)."""


def remedy_agent(
    base: CQLConfig, kind: str, remedies: RemedyConfig = RemedyConfig(), images: bool = False
) -> CQLConfig:
    """The agent config of a remedy run: ``kind`` in {"vib", "dropout", "capacity"}; ``images``: the run
    learns from pixels, so capacity also means residual encoders (``remedies.residual``)."""
    if kind == "vib":
        return dataclasses.replace(base, vib_dim=remedies.vib_dim, vib_beta=remedies.vib_beta)
    if kind == "dropout":
        return dataclasses.replace(base, critic_dropout=remedies.dropout)
    if kind == "capacity":
        wider = tuple(w * remedies.width_factor for w in base.critic_hidden_dims)
        bigger = dataclasses.replace(base, dr3_coef=remedies.dr3_coef, critic_hidden_dims=wider)
        if images and remedies.residual in ("actor", "both"):
            bigger = dataclasses.replace(bigger, actor_encoder="resnet")
        if images and remedies.residual in ("critic", "both"):
            bigger = dataclasses.replace(bigger, critic_encoder="resnet")
        return bigger
    raise ValueError(f"unknown remedy {kind!r}: vib, dropout or capacity")


def next_action(base_diagnosis: dict[str, Any], remedies: RemedyConfig = RemedyConfig()) -> str | None:
    """Which run the base diagnosis calls for: the overfitting remedy, "capacity", or None."""
    verdict = base_diagnosis["verdict"]
    if verdict == "overfitting":
        return remedies.overfitting_remedy
    if verdict == "underfitting":
        return "capacity"
    return None


def decide(
    base: dict[str, Any], remedy_kind: str | None = None, remedy: dict[str, Any] | None = None,
    base_vs_remedy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The run and checkpoint to deploy, with the reasons (pure: reads diagnoses only).

    Args:
        base: diagnosis of the base run (``diagnose_metrics`` output plus ``run_dir``).
        remedy_kind: the re-run made ("vib", "dropout", "capacity") or None.
        remedy: diagnosis of the re-run (plus ``run_dir``).
        base_vs_remedy: for "capacity", the base run's diagnosis with the capacity run compared (Metric 3.2).

    Returns:
        ``{"run_dir", "step", "reasons": [...], "path": [...]}``.
    """
    path = [f"base run: {base['verdict']} (selected step {base['selected_step']})"]
    reasons: list[str] = []
    choice = (base.get("run_dir"), base["selected_step"])
    if remedy_kind in ("vib", "dropout") and remedy is not None:
        path.append(f"overfitting -> re-run with {remedy_kind} (Guideline 4.1): {remedy['verdict']}")
        if remedy["verdict"] in ("healthy", "underfitting") or (
            remedy["verdict"] == "inconclusive" and remedy["selected_step"] is not None
        ):
            choice = (remedy.get("run_dir"), remedy["selected_step"])
            reasons.append(
                f"{remedy_kind} stops the decline of q_data (verdict {remedy['verdict']}): deploy its checkpoint "
                f"{remedy['selected_step']}"
            )
        else:
            reasons.append(
                f"{remedy_kind} does not stop the decline (verdict {remedy['verdict']}): deploy the base run's "
                f"checkpoint at its Q peak, step {base['selected_step']} (Guideline 3.1); try a stronger "
                f"regularization or more data"
            )
    elif remedy_kind == "capacity" and remedy is not None:
        m32 = (base_vs_remedy or {}).get("evidence", {}).get("metric_3_2", [])
        helps = any(c.get("capacity_reduces_error") for c in m32)
        path.append(
            "underfitting -> re-run with more capacity (Guideline 4.2: DR3 + wider critics), Metric 3.2: "
            + ("errors drop" if helps else "errors do not drop")
        )
        if helps and remedy["verdict"] != "diverged":
            choice = (remedy.get("run_dir"), remedy["selected_step"])
            reasons.append(
                f"more capacity lowers the training errors (Metric 3.2): the base run was underfitting; deploy "
                f"the bigger run's checkpoint {remedy['selected_step']}"
            )
        else:
            reasons.append(
                "more capacity does not lower the training errors"
                + (" (or the bigger run diverged)" if helps else "")
                + f": capacity is not what limits this run; keep the base run's step {base['selected_step']}"
            )
    else:
        reasons.append(f"no remedy needed for verdict {base['verdict']}: {base['recommendation']}")
    path.append(f"deploy: {choice[0]} at step {choice[1]}")
    return {"run_dir": choice[0], "step": choice[1], "reasons": reasons, "path": path}


def run_auto(config: Any, remedies: RemedyConfig = RemedyConfig()) -> dict[str, Any]:
    """Run the automated workflow for a :class:`offrl.workflow.pipeline.WorkflowConfig` (CQL).

    The dataset is read once per run from the same file (its fingerprint is checked by every run).

    Returns:
        the decision (also in OUT/auto.json), with each run's diagnosis.
    """
    from offrl.data import load_dataset
    from offrl.training.train import TrainConfig, train
    from offrl.workflow.diagnosis import diagnose_run

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    base_cfg = TrainConfig(
        dataset=Path(config.dataset), out=out / "base", steps=config.steps,
        checkpoint_every=config.checkpoint_every, seed=config.seed, progress=config.progress, agent=config.agent,
        obs=getattr(config, "obs", "auto"), frame_stack=getattr(config, "frame_stack", 1),
        batch_size=getattr(config, "batch_size", 256), reward_scale=getattr(config, "reward_scale", 1.0),
        reward_shift=getattr(config, "reward_shift", 0.0),
    )
    # Loaded once for every run of the loop (image datasets take a while to decompress).
    dataset = load_dataset(base_cfg.dataset)
    print(f"[auto] base run -> {base_cfg.out}", flush=True)
    train(base_cfg, dataset)
    base = {**diagnose_run(base_cfg.out, after_peak=config.after_peak), "run_dir": str(base_cfg.out)}
    kind = next_action(base, remedies)
    remedy = comparison = None
    runs = {"base": base}
    if kind is not None:
        run = out / kind
        print(f"[auto] verdict {base['verdict']} -> {kind} run -> {run}", flush=True)
        images = rd.read_json(base_cfg.out / rd.CONFIG_FILE)["dataset"].get("obs_mode", "state") != "state"
        train(dataclasses.replace(base_cfg, out=run, agent=remedy_agent(config.agent, kind, remedies, images)),
              dataset)
        remedy = {**diagnose_run(run, after_peak=config.after_peak), "run_dir": str(run)}
        runs[kind] = remedy
        if kind == "capacity":
            comparison = diagnose_run(base_cfg.out, compare=[run], after_peak=config.after_peak, write=False)
    decision = decide(base, kind, remedy, comparison)
    result = {"decision": decision, "runs": {k: {"run_dir": v["run_dir"], "verdict": v["verdict"],
                                                 "selected_step": v["selected_step"]} for k, v in runs.items()}}
    rd.write_json(out / AUTO_FILE, result)
    return result
