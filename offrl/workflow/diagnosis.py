"""Diagnosis of a run from its logged metrics alone: overfitting, underfitting, and which checkpoint to deploy.

Rules (Kumar et al. 2021, "A Workflow for Offline Model-Free Robotic RL"):

- **Overfitting, Metric 3.1**: the average dataset Q-value ``q_data`` rises, then falls with more gradient
  steps and stays down. Implemented on a smoothed curve with a noise-aware threshold (``detect_decline``).
- **Underfitting**: the critic leaves much of its TD targets' variance unexplained (``td_error_over_target_var``,
  blind to CQL's level offset; runs without it fall back to the paper's ``q_error_estimate = td_error * H``
  against the Q range); and, **Metric 3.2**, the training TD error and/or CQL regularizer drop when an
  otherwise identical run with more capacity is compared (``--compare``). A falling Q outranks it (paper Sec. 3).
- **Over-estimation** (paper App. G): Q above the largest return the rewards allow, short of divergence.
- **Selection, Guideline 3.1**: deploy the checkpoint at the peak of the smoothed ``q_data`` (optionally the
  one after, since the actor lags the critic); on a curve that still rises that is the last checkpoint.
- **Recommendations**: Guideline 4.1 (capacity-decreasing regularization: VIB, dropout) for overfitting,
  Guideline 4.2 (capacity-increasing: bigger/ResNet policy, DR3) for underfitting.

Every threshold is a field of :class:`DiagnosisConfig` and documented in docs/metrics.md.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from offrl.data import divergence_limit
from offrl.stats import smooth
from offrl.training import run_dir as rd
from offrl.training.run_dir import DIAGNOSIS_FILE, WARMUP_PHASE
from offrl.workflow.comparison import attach_comparison
from offrl.workflow.rules import RULES, select_step

VERDICTS = ("overfitting", "underfitting", "over-estimation", "healthy", "inconclusive", "diverged")
# Per algorithm: the curve of Metric 3.1 / Guideline 3.1, and the regularizer compared by Metric 3.2.
DEFAULT_METRIC = {"cql": "q_data", "brac": "q_regularized", "bc": "heldout/log_likelihood", "iql": "q_data",
                  "awac": "q_data", "bear": "q_data", "tt": "heldout/token_log_likelihood", "dqn": "q_data",
                  "mopo": "q_data", "combo": "q_data"}
# The DQN family's regularizer is discrete CQL's; the other variants log none (Metric 3.2 then compares TD errors).
REGULARIZER = {"cql": "cql_regularizer", "brac": "kl_estimate", "bc": None, "iql": "value_loss", "awac": "weighted_nll",
               "bear": "mmd", "tt": None, "dqn": "cql_regularizer", "mopo": None,
               "combo": "cql_regularizer"}
# Algorithms without a Q-function: their curve is a held-out likelihood (a validation loss, negated), and the
# Q-range rules (divergence, over-estimation, underfitting from the TD error) do not apply.
NO_Q = ("bc", "tt")


@dataclasses.dataclass(frozen=True)
class DiagnosisConfig:
    """Thresholds of the diagnosis. Units: checkpoints (counts along the metric curve) and ratios."""

    metric: str = "auto"
    """Curve read by Metric 3.1 and Guideline 3.1. ``auto``: ``q_data`` for CQL (training transitions, as in
    the paper), ``q_regularized`` for BRAC (Appendix F), ``heldout/log_likelihood`` for BC,
    ``heldout/token_log_likelihood`` for the Trajectory Transformer; or any logged key such as
    ``heldout/q_data``."""
    smoothing_window: int = 3
    """Width of the centred moving average applied to the curve before finding the peak, in checkpoints."""
    min_checkpoints: int = 4
    """Fewer checkpoints than this give the verdict ``inconclusive``."""
    min_after_peak: int = 2
    """A decline needs at least this many checkpoints after the peak that lie below it by the threshold."""
    tail: int = 3
    """The end of the curve is the mean of the last ``tail`` checkpoints after the peak (fewer if fewer)."""
    min_relative_drop: float = 0.1
    """A decline must be at least this fraction of the peak's size, ``max(|peak|, peak - lowest value before
    it)``."""
    noise_z: float = 3.0
    """... and at least this many standard deviations of the drop's noise (the curve's noise, estimated
    robustly from the curve itself, propagated through the smoothing and the tail mean), plus the upward bias
    of taking the maximum of a noisy curve."""
    min_drop_of_q_range: float = 0.01
    """... and at least this fraction of the width of the Q range the rewards allow."""
    require_rise: bool = True
    """Metric 3.1 as the paper writes it (Kumar et al. 2021, Metric 3.1: "the average dataset Q-value first
    increases, then decreases"): a decline counts only after a rise beyond the curve's noise, i.e. the smoothed
    peak lies above the lowest smoothed value before it by more than the rise threshold (``detect_decline``). A
    curve that falls from its first checkpoint on is then not overfitting. False: the rule before 2026-12 (any
    material fall after the highest point), kept to reproduce archived verdicts. Pre-registered in
    docs/selection.md ("The paper's regime") and docs/metrics.md."""
    underfit_unexplained: float = 0.5
    """Underfitting when ``td_error_over_target_var`` at the end (mean of the last ``tail`` checkpoints) exceeds
    this: the critic leaves more than this fraction of its targets' spread unexplained. Scale-free and blind to
    CQL's level offset (docs/metrics.md); candidates 0.25, 0.5 and 1.0 are compared in docs/selection.md."""
    underfit_q_error_ratio: float = 1.0
    """Runs that do not log ``td_error_over_target_var`` (older runs, BRAC): underfitting when
    ``q_error_estimate`` at the end exceeds this multiple of the Q range's width (the paper calls an error as
    large as the range "large"; with CQL's level far below the range it fires on nearly every run)."""
    overestimation_tolerance: float = 0.1
    """Over-estimation when the smoothed ``q_data`` of a checkpoint after the warm start exceeds the largest
    return the rewards allow by more than this fraction of the Q range's width (paper App. G: too little
    conservatism)."""
    underestimation_tolerance: float = 0.1
    """A reason (never a verdict) when ``q_data`` at the last checkpoint ends below the smallest return the
    rewards allow by more than this fraction of the Q range's width: no policy can score that low, so the critic's
    targets are biased down (CQL's push on sampled actions, or AWAC's twin minimum at the policy's actions). The
    same fraction as ``overestimation_tolerance``, mirrored."""
    capacity_improvement: float = 0.1
    """Metric 3.2: the run with more capacity fits better when its TD error drops by this fraction (or its
    regularizer by this fraction of max(|R|, |R'|, 1)) and the other error does not rise by as much."""
    heldout_gap_ratio: float = 10.0
    """Report memorisation when the held-out TD error exceeds this multiple of the training TD error (evidence
    beyond the paper; it does not change the verdict)."""
    divergence_factor: float = 10.0
    """``q_data`` above ``q_max + divergence_factor * max(q range width, |q_max|, 1)`` means the run diverged
    (over-estimation far beyond any return the rewards allow)."""


@dataclasses.dataclass
class Decline:
    """Result of Metric 3.1 on one curve (indices are positions along the curve)."""

    declining: bool
    peak_index: int
    peak_value: float
    end_value: float
    drop: float
    threshold: float
    noise_std: float
    smoothed: np.ndarray
    rise: float = 0.0
    """Smoothed peak minus the lowest smoothed value at or before it (0 when the peak is the first point)."""
    rise_threshold: float = 0.0
    """What ``rise`` must exceed for the peak to count as one the curve rose to (``detect_decline``)."""
    rose: bool = True
    """Whether the curve rose to its peak beyond the noise (always True with ``require_rise`` off)."""
    falls: bool = False
    """Whether it falls materially after its peak, risen to or not (``declining`` is ``falls and rose``)."""


def noise_std(values: np.ndarray) -> float:
    """Robust noise estimate of a curve: MAD of second differences, scaled so that i.i.d. Gaussian noise of
    standard deviation sigma gives sigma (var of a second difference is 6 sigma^2). Linear trends cancel."""
    if len(values) < 3:
        return 0.0
    d2 = values[2:] - 2 * values[1:-1] + values[:-2]
    mad = np.median(np.abs(d2 - np.median(d2)))
    return float(1.4826 * mad / math.sqrt(6.0))


def detect_decline(values: Sequence[float], config: DiagnosisConfig, q_range_width: float = 0.0) -> Decline:
    """Metric 3.1 on one curve: did it rise to a peak and then fall, materially, and stay down?

    The peak is the maximum of the smoothed curve. The end value is the mean of the raw values of the last
    ``tail`` checkpoints after the peak. The fall ``drop = peak - end`` counts when at least ``min_after_peak``
    checkpoints after the peak lie below it by the threshold and ``drop`` exceeds every one of: ``min_relative_drop`` times
    the peak's size; ``sigma * (noise_z * sqrt(1/w + 1/t) + sqrt(2 ln n / w))`` with sigma the curve's noise,
    w the smoothing window, t the tail length and n the number of checkpoints (the drop's noise plus the bias
    of a maximum); and ``min_drop_of_q_range`` of the Q range.

    With ``config.require_rise`` (Metric 3.1 as written: "first increases, then decreases") the curve must also
    have risen to its peak: ``rise = s[peak] - min(s[:peak + 1])`` (s the smoothed curve) must exceed
    ``rise_threshold = max(sigma * (noise_z * sqrt(2 / w) + sqrt(2 ln n / w)), min_drop_of_q_range * width)``:
    the difference of two w-point means has std ``sigma * sqrt(2 / w)``, and the maximum's upward bias is the
    same as for the drop. Sigma is the curve's noise, the robust scale of its second differences
    (:func:`noise_std`: linear trends cancel, so a steady fall or rise is not counted as noise). A monotone
    fall has its peak at the first checkpoint (rise 0) and is never a decline; a flat noisy curve rarely passes
    both the rise and the drop thresholds.

    Args:
        values: (n,) the metric at each checkpoint, in step order.
        config: thresholds.
        q_range_width: width of the Q range the rewards allow (0 when unknown).
    """
    x = np.asarray(values, np.float64)
    s = smooth(x, config.smoothing_window)
    peak = int(np.argmax(s))
    after = x[peak + 1 :]
    tail = after[-config.tail :] if len(after) else after
    end = float(tail.mean()) if len(tail) else float(s[peak])
    drop = float(s[peak] - end)
    size = max(abs(s[peak]), s[peak] - float(s[: peak + 1].min()))
    sigma = noise_std(x)
    w = max(1, min(config.smoothing_window, len(x)))
    t = max(1, len(tail))
    # Under pure noise the drop "smoothed max - tail mean" is positive by itself: the maximum of n smoothed
    # values sits about sqrt(2 ln n) of their std above the level, and the difference of a w-point and a
    # t-point mean has std sigma * sqrt(1/w + 1/t). The noise threshold covers both.
    noise_threshold = sigma * (
        config.noise_z * math.sqrt(1.0 / w + 1.0 / t) + math.sqrt(2.0 * math.log(max(len(x), 2)) / w)
    )
    threshold = max(
        config.min_relative_drop * size,
        noise_threshold,
        config.min_drop_of_q_range * q_range_width,
        1e-12,
    )
    # "Stays down": enough checkpoints after the peak lie below it by the threshold, not one low point at the end.
    below = int(np.sum(after < s[peak] - threshold))
    declining = below >= config.min_after_peak and drop > threshold
    # "First increases": the peak must sit above the lowest point before it by more than the noise of a
    # difference of two smoothed values plus the maximum's bias (docstring). Without it, a curve that only falls
    # (CQL's regularizer relaxing from its first push) reads as overfitting with its peak at the first checkpoint.
    rise = float(s[peak] - s[: peak + 1].min())
    rise_threshold = max(
        sigma * (config.noise_z * math.sqrt(2.0 / w) + math.sqrt(2.0 * math.log(max(len(x), 2)) / w)),
        config.min_drop_of_q_range * q_range_width,
        1e-12,
    )
    rose = rise > rise_threshold if config.require_rise else True
    return Decline(bool(declining and rose), peak, float(s[peak]), end, drop, threshold, sigma, s, rise,
                   rise_threshold, bool(rose), bool(declining))


def _tail_mean(values: Sequence[float], n: int) -> float:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return float(v[-n:].mean()) if len(v) else float("nan")


# What each verdict means for an actor-critic algorithm whose networks have none of CQL's remedy options (VIB,
# dropout, DR3 exist for CQL's critic only, offrl.agents.cql): its own flags, so that no advice names a setting
# the run cannot take (docs/metrics.md, each algorithm's section).
_WHAT = {
    "overfitting": "the dataset Q-value peaks, then falls: the critic memorises its training transitions",
    "underfitting": "the critic does not fit its training objective",
    "over-estimation": "the dataset Q-value rose above the largest return the rewards allow",
    "diverged": "the Q-values left the range the rewards allow, or became NaN/inf",
}
_LESS_DATA_FIT = ("more data or fewer gradient steps (offrl's VIB and dropout remedies, Guideline 4.1, are built for "
                  "CQL's critic: --algo cql)")
_CONFIRM = ("; confirm with Metric 3.2: train the same setup with more capacity and run `offrl diagnose RUN_DIR "
            "--compare BIGGER_RUN_DIR`")
_OWN_REMEDIES: dict[str, dict[str, str]] = {
    "iql": {
        "underfitting": "wider or deeper critics and V (--iql.critic-hidden-dims, --iql.value-hidden-dims; image "
                        "runs: --iql.critic-encoder resnet)" + _CONFIRM,
    },
    "awac": {
        "overfitting": _LESS_DATA_FIT,
        "underfitting": "wider or deeper critics and policy (--awac.critic-hidden-dims, --awac.actor-hidden-dims; "
                        "image runs: --awac.actor-encoder resnet)" + _CONFIRM,
    },
    "bear": {
        "overfitting": _LESS_DATA_FIT + "; check heldout/vae_loss too: a memorising behaviour model misplaces the "
                       "support the MMD keeps the policy on",
        "underfitting": "wider or deeper critics and actor (--bear.critic-hidden-dims, --bear.actor-hidden-dims; "
                        "image runs: --bear.actor-encoder resnet)" + _CONFIRM,
        "over-estimation": "tighten the support constraint: a smaller --bear.epsilon or a narrower --bear.mmd-sigma "
                           "(Kumar et al. 2019, Alg. 1)",
        "diverged": "lower --bear.critic-lr (1e-3 by default), tighten the constraint (--bear.epsilon, "
                    "--bear.mmd-sigma), and check the rewards' scale and the terminals",
    },
    "brac": {
        "overfitting": _LESS_DATA_FIT,
        "underfitting": "wider or deeper critics and actor (--brac.critic-hidden-dims, --brac.actor-hidden-dims; "
                        "image runs: --brac.actor-encoder resnet)" + _CONFIRM,
        "over-estimation": "more conservatism: a larger --brac.beta (the behaviour policy's weight, paper App. F), "
                           "chosen with `offrl tune`",
        "diverged": "lower --brac.critic-lr, a larger --brac.beta, and check the rewards' scale and the terminals",
    },
}
for _algo, _knob in (("mopo", "a larger --mopo.penalty-coef (lambda of Yu et al. 2020, Eq. 10) or a shorter "
                              "--mopo.rollout-horizon"),
                     ("combo", "a larger --combo.conservative-weight (beta of Yu et al. 2021, Eq. 2) or a shorter "
                               "--combo.rollout-horizon")):
    _OWN_REMEDIES[_algo] = {
        "overfitting": _LESS_DATA_FIT,
        "underfitting": f"wider or deeper critics and actor (--{_algo}.critic-hidden-dims, "
                        f"--{_algo}.actor-hidden-dims)" + _CONFIRM,
        "over-estimation": "more pessimism about the model's transitions: " + _knob,
        "diverged": f"lower --{_algo}.critic-lr, add pessimism ({_knob}), and check the rewards' scale and the "
                    "terminals",
    }


def _recommendation(verdict: str, selected_step: int | None, algo: str = "cql", falls_by_propagation: bool = False
                    ) -> str:
    if algo == "bc":
        if verdict == "overfitting":
            return (
                f"The held-out log-likelihood peaks, then falls: the policy memorises its training episodes. Use "
                f"step {selected_step} (as pi_beta for BRAC too); more data, a smaller network or fewer steps help."
            )
        if verdict in ("healthy", "underfitting"):
            return f"The held-out log-likelihood does not fall: use step {selected_step}."
    if algo == "tt":
        if verdict == "overfitting":
            return (
                f"The held-out next-token log-likelihood peaks, then falls: the Trajectory Transformer memorises its "
                f"training sequences. Use step {selected_step}; more data, a smaller model (--tt.embed-dim, "
                f"--tt.num-layers), more --tt.dropout or fewer steps help."
            )
        if verdict in ("healthy", "underfitting"):
            return f"The held-out next-token log-likelihood does not fall: use step {selected_step}."
    if algo == "iql" and verdict in ("overfitting", "over-estimation", "diverged"):
        # IQL's critic only sees dataset actions; its optimism comes from the expectile (docs/metrics.md, IQL).
        what = {
            "overfitting": "the dataset Q-value peaks, then falls: the critic and V memorise their training "
                           "transitions",
            "over-estimation": "the dataset Q-value rose above the largest return the rewards allow: the upper "
                               "expectile is too optimistic for this data",
            "diverged": "the Q-values left the range the rewards allow, or became NaN/inf",
        }[verdict]
        return (
            f"IQL: {what}. Deploy step {selected_step}, the peak before it (Guideline 3.1). A lower "
            f"--iql.expectile (0.5 fits the data's average action, 0.7 is the default) makes the values more "
            f"conservative; more data or fewer gradient steps reduce memorisation."
        )
    if algo == "awac" and verdict in ("over-estimation", "diverged"):
        # AWAC constrains only its actor: its critic's target queries the policy's own actions unpenalised.
        return (
            f"AWAC: the dataset Q-value left the range the rewards allow. AWAC has no conservative term in its "
            f"critic (only the actor is constrained), so a run of CQL or IQL on the same data is the remedy; a "
            f"smaller --awac.awac-lambda keeps the actor closer to the best dataset actions. Deploy step "
            f"{selected_step} meanwhile."
        )
    if algo == "dqn" and verdict in ("overfitting", "underfitting", "over-estimation"):
        # The DQN family has no actor, VIB or DR3 here: its remedies are its own capacity and conservatism.
        fix = {
            "overfitting": "fewer gradient steps, more data, a smaller --dqn.hidden-dims, or discrete CQL "
                           "(--dqn.variant cql) for conservatism",
            "underfitting": "wider or deeper --dqn.hidden-dims, or more heads for --dqn.variant ensemble|rem; confirm "
                            "with Metric 3.2 (`offrl diagnose RUN_DIR --compare BIGGER_RUN_DIR`)",
            "over-estimation": "discrete CQL (--dqn.variant cql) or a larger --dqn.cql-alpha",
        }[verdict]
        return f"{verdict.capitalize()} ({algo}): {fix}. Deploy step {selected_step} meanwhile."
    fix = _OWN_REMEDIES.get(algo, {}).get(verdict)
    if fix is not None:
        deploy = {"overfitting": f"Deploy step {selected_step}, the peak before the fall (Guideline 3.1)",
                  "over-estimation": f"Until then, prefer a checkpoint whose Q stays within the range (evidence "
                                     f"in_range_peak_step) over step {selected_step}"}.get(
            verdict, f"Meanwhile the best available checkpoint is step {selected_step}" if selected_step else "")
        return f"{algo.upper()}: {_WHAT[verdict]}. Remedy: {fix}." + (f" {deploy}." if deploy else "")
    if verdict == "overfitting":
        return (
            f"Deploy the checkpoint at step {selected_step}, at the peak of the dataset Q-value before it falls "
            f"(Guideline 3.1; for BRAC the regularised objective Q + beta log pi_beta). To fix the overfitting, add capacity-decreasing regularization to the Q-function: "
            f"a variational information bottleneck (paper Eq. 3) or dropout (Guideline 4.1); more data or "
            f"fewer gradient steps also help."
        )
    if verdict == "underfitting":
        return (
            "The critic does not fit its training objective. Increase capacity (Guideline 4.2): a bigger or "
            "residual policy network and the DR3 regularizer (paper Eq. 4) on the Q-function, or wider/deeper "
            "critics. Confirm with Metric 3.2: train the same setup with more capacity and run `offrl diagnose "
            "RUN_DIR --compare BIGGER_RUN_DIR`; lower TD error or regularizer there confirms underfitting."
            + (f" Meanwhile the best available checkpoint is step {selected_step}." if selected_step else "")
        )
    if verdict == "over-estimation":
        return (
            f"The dataset Q-value rose above the largest return the rewards allow: the critic over-estimates, the "
            f"sign of too little conservatism (paper App. G). Make it more conservative: a larger CQL alpha (or "
            f"BRAC beta), chosen with `offrl tune`. Until then, prefer a checkpoint whose Q stays within the range "
            f"(evidence in_range_peak_step) over step {selected_step}."
        )
    if verdict == "healthy" and falls_by_propagation:
        # With rewards <= 0 the dataset Q-value falls as returns propagate; Metric 3.1 says nothing here.
        return (
            f"No overfitting or underfitting detected: the rewards are <= 0, so the dataset Q-value falls as "
            f"returns propagate and its fall is not read as overfitting (Metric 3.1 does not apply), and the "
            f"estimated Q error is small against the Q range. Deploy step {selected_step}; watch held-out "
            f"TD error for memorisation."
        )
    if verdict == "healthy":
        return (
            f"No overfitting or underfitting detected: the dataset Q-value does not fall and the estimated Q "
            f"error is small against the Q range. Deploy step {selected_step}; training longer may still help "
            f"while the dataset Q-value rises."
        )
    if verdict == "diverged":
        return (
            "The Q-values left the range the rewards allow, or became NaN/inf. Lower the learning rates, check "
            "the rewards' scale and the terminals, or make the method more conservative (a larger CQL alpha "
            "or BRAC beta)."
            + (f" The last sound checkpoint is step {selected_step}." if selected_step else "")
        )
    return (
        "Too few checkpoints to judge the trend: train longer or checkpoint more often "
        "(--checkpoint-every), then diagnose again."
    )


def bear_constraint(mmd: np.ndarray, floor: np.ndarray, alpha: np.ndarray, agent: dict[str, Any],
                    tail: int = 3) -> dict[str, Any] | None:
    """BEAR's support constraint, read from its checkpoints (Kumar et al. 2019, Alg. 1: MMD <= epsilon through the
    multiplier alpha): None when it holds, else the evidence and a one-line reason.

    Not met with alpha at its ceiling (``log_alpha_max``, 99 % of it) means the actor minimises alpha x MMD and its
    Q term counts for about 1/alpha: the policy imitates the behaviour model's samples. When the MMD of two sample
    sets of the behaviour model itself (``mmd_floor``, :func:`offrl.agents.bear.mmd_floor`) is above epsilon, no
    policy can meet the constraint: epsilon is below what the estimate resolves with ``num_samples`` samples.

    Args:
        mmd, floor, alpha: per checkpoint (after the warm start), any may hold NaN (floor is absent in runs made
            before it was logged).
        agent: the run's BEAR settings (``epsilon``, ``log_alpha_max``).
    """
    epsilon = float(agent.get("epsilon", 0.05))
    ceiling = math.exp(float(agent.get("log_alpha_max", 10.0)))
    m, f, a = _tail_mean(mmd, tail), _tail_mean(floor, tail), _tail_mean(alpha, tail)
    if not np.isfinite(m) or m <= epsilon:
        return None
    at_ceiling = bool(np.isfinite(a) and a >= 0.99 * ceiling)
    out: dict[str, Any] = {"mmd_end": m, "mmd_floor_end": f if np.isfinite(f) else None, "epsilon": epsilon,
                           "alpha_end": a if np.isfinite(a) else None, "alpha_at_ceiling": at_ceiling}
    text = f"BEAR's MMD ends at {m:.3g}, above --bear.epsilon {epsilon:g}"
    if at_ceiling:
        text += (f", with alpha at its ceiling (e^{math.log(ceiling):g}): the constraint is never met, so the actor "
                 f"imitates the behaviour model and its Q term counts for ~1/alpha")
    if np.isfinite(f) and f > epsilon:
        text += (f"; two sample sets of the behaviour model itself score {f:.3g} (the estimate's floor with "
                 f"--bear.num-samples {int(agent.get('num_samples', 10))}), so no policy can meet this epsilon: "
                 f"raise --bear.epsilon above {f:.3g} or --bear.num-samples")
    out["reason"] = text
    return out


def diagnose_metrics(
    records: list[dict[str, Any]],
    q_range: tuple[float, float],
    config: DiagnosisConfig = DiagnosisConfig(),
    *,
    after_peak: bool = False,
    compare: Sequence[dict[str, Any]] = (),
    num_params: dict[str, int] | None = None,
    warmup_steps: int = 0,
    algo: str = "cql",
    selector: str = "q_peak",
    agent: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Diagnose a run from its checkpoint records (the lines of metrics.jsonl).

    Args:
        records: one dict per checkpoint with ``step`` and the metrics of docs/metrics.md, any order.
        q_range: ``(q_min, q_max)`` the rewards allow (config.json ``dataset.q_range``).
        config: thresholds.
        after_peak: select the checkpoint after the peak (actor-critic variant of Guideline 3.1).
        compare: Metric 3.2: for each run with more capacity, ``{"run_dir", "records", "num_params"}``.
        num_params: this run's parameter counts, for the evidence.
        warmup_steps: the actor's behaviour-cloning warm start (``agent.bc_steps``). Checkpoints at or before
            it hold behaviour-cloned policies, not CQL policies, and the Q curve restarts when the actor starts
            maximising Q, so they are left out of Metric 3.1, the error estimates and the selection.
        algo: ``cql``, ``brac``, ``bc``, ... (:data:`DEFAULT_METRIC`): decides the default curve, the regularizer
            compared by Metric 3.2, and (for ``bc`` and ``tt``, which have no Q-function) that the Q-range rules do
            not apply.
        selector: the selection rule (:data:`offrl.workflow.rules.RULES`): ``q_peak`` (Guideline 3.1 on the
            diagnosis's curve, the default) or another rule measured by the study (``fqe`` needs each record's
            ``fqe_value``). It changes the pick only, never the verdict; ``after_peak`` means ``q_after_peak``.
        agent: the run's agent settings (config.json ``agent``), for checks of an algorithm's own constraint
            (BEAR: :func:`bear_constraint`); None skips them.

    Raises:
        ValueError: an unknown selector, or one whose curve the records lack.

    Returns:
        ``{"verdict", "selected_step", "peak_step", "selection_rule", "q_range", "evidence", "reasons",
        "recommendation", "compared_runs"}``; ``verdict`` is one of ``VERDICTS``.
    """
    if selector not in RULES:
        raise ValueError(f"unknown selector {selector!r}: choose one of {', '.join(RULES)}")
    by_step = {int(r["step"]): r for r in records if "step" in r}
    metric = DEFAULT_METRIC[algo] if config.metric == "auto" else config.metric
    has_q = algo not in NO_Q
    if not has_q and metric not in next(iter(by_step.values()), {}):
        metric = metric.removeprefix("heldout/")  # no held-out episodes
    config = dataclasses.replace(config, metric=metric)
    q_min, q_max = float(q_range[0]), float(q_range[1])
    width = q_max - q_min if has_q else 0.0
    reasons: list[str] = []
    evidence: dict[str, Any] = {"metric": config.metric, "algo": algo}
    out: dict[str, Any] = {
        "verdict": "inconclusive",
        "selected_step": None,
        "peak_step": None,
        "selection_rule": "none",
        "q_range": [q_min, q_max],
        "evidence": evidence,
        "reasons": reasons,
        "compared_runs": [c.get("run_dir") for c in compare],
        "selector": "q_after_peak" if after_peak else selector,
    }

    if _divergence(by_step, config, (q_min, q_max), has_q, warmup_steps, algo, out):
        return out

    warmup = [s for s in sorted(by_step) if s <= warmup_steps]
    steps = [s for s in sorted(by_step) if s > warmup_steps]
    records = [by_step[s] for s in steps]
    evidence["checkpoints"] = len(steps)
    if warmup:
        evidence["warmup_checkpoints_ignored"] = warmup
        phase = WARMUP_PHASE.get(algo, WARMUP_PHASE["cql"])
        evidence["warmup_phase"] = phase
        reasons.append(
            f"{len(warmup)} checkpoint(s) at or before step {warmup_steps} are {phase}, not "
            f"{(algo or 'cql').upper()} policies: left out of the diagnosis and the selection"
        )

    def series(key: str) -> np.ndarray:
        return np.array([r.get(key, np.nan) if r.get(key) is not None else np.nan for r in records], np.float64)

    q = series(config.metric)
    if len(steps) == 0 or not np.isfinite(q).any():
        reasons.append(
            f"no checkpoint after the warm start has a finite '{config.metric}'" if warmup
            else f"no checkpoint has a finite '{config.metric}'"
        )
        out["recommendation"] = _recommendation("inconclusive", None, algo)
        return out

    _below_range(q, config, (q_min, q_max), width, algo, evidence, reasons)
    dec = detect_decline(q, config, width)
    out["peak_step"] = steps[dec.peak_index]
    evidence.update(
        {
            "peak_step": steps[dec.peak_index],
            "peak_q_data_smoothed": dec.peak_value,
            "end_q_data": dec.end_value,
            "q_data_drop": dec.drop,
            "drop_threshold": dec.threshold,
            "q_data_noise_std": dec.noise_std,
            "q_data_rise": dec.rise,
            "rise_threshold": dec.rise_threshold,
            "rose_before_peak": dec.rose,
            "checkpoints_after_peak": len(steps) - 1 - dec.peak_index,
        }
    )
    if f"heldout/{config.metric}" in records[-1]:
        held = detect_decline(series(f"heldout/{config.metric}"), config, width)
        evidence["heldout_q_data_declining"] = bool(held.declining)
        evidence["heldout_peak_step"] = steps[held.peak_index]

    td, reg, large_error = _training_error(series, records[-1], config, algo, agent, width, evidence, reasons)
    if num_params:
        evidence["num_params"] = num_params
    capacity_helps = _metric_3_2(compare, td, reg, REGULARIZER[algo], config, evidence, reasons)
    underfitting = bool(capacity_helps) if capacity_helps is not None else large_error
    if capacity_helps is False and large_error:
        reasons.append(
            "the Q error is large, but more capacity did not reduce the training errors, so by Metric 3.2 the "
            "run is not underfitting: the data or the objective limit it, not the model"
        )

    # Metric 3.1 reads a fall of Q as memorisation because with rewards >= 0 the values rise from their initial
    # ~0 as returns propagate. With rewards <= 0 (e.g. IQL's `r - 1`, --reward-shift -1) propagation itself
    # lowers them, so a fall is what learning looks like and is not read as overfitting.
    falls_by_propagation = has_q and q_max <= 0.0 and q_min < 0.0
    reasons.append(_metric_3_1_reason(dec, steps, config, (q_min, q_max), falls_by_propagation))

    if not has_q:
        underfitting = False
    over = has_q and _overestimation(dec, steps, config, (q_min, q_max), width, evidence, reasons)
    if len(steps) < config.min_checkpoints:
        verdict = "inconclusive"
        reasons.append(f"only {len(steps)} checkpoint(s); at least {config.min_checkpoints} are needed")
    elif over:
        verdict = "over-estimation"
    elif dec.declining and not falls_by_propagation:
        # Paper Sec. 3: under underfitting the dataset Q-value should not fall with more training, so a material
        # fall is overfitting even when the training error is also large (reported among the reasons).
        verdict = "overfitting"
    elif underfitting:
        verdict = "underfitting"
    else:
        verdict = "healthy"
    out["verdict"] = verdict
    out["selected_step"], out["selection_rule"], out["selector"] = _select(
        selector, after_peak, has_q, dec, steps, records, (q_min, q_max), config)
    out["recommendation"] = _recommendation(verdict, out["selected_step"], algo, falls_by_propagation)
    return out


def _divergence(by_step: dict[int, dict[str, Any]], config: DiagnosisConfig, q_range: tuple[float, float],
                has_q: bool, warmup_steps: int, algo: str, out: dict[str, Any]) -> bool:
    """Divergence, over every checkpoint (the warm start included): a record that training marked diverged, a
    non-finite value, or Q far *above* what the rewards allow (extrapolation error blowing up). Q below the range
    is not divergence: CQL's over-minimisation of Q on sampled actions biases every backup downwards, and with 0/1
    rewards that bias sets the level (paper Sec. 3); a falling q_data there is Metric 3.1's. When it finds one it
    fills ``out`` (verdict ``diverged``, the highest Q before it as the pick) and returns True."""
    q_min, q_max = q_range
    limit = divergence_limit(q_min, q_max, config.divergence_factor) if has_q else float("inf")

    def value(r: dict[str, Any]) -> float:
        v = r.get(config.metric)
        return float("nan") if v is None else float(v)

    bad = [s for s in sorted(by_step)
           if bool(by_step[s].get("diverged")) or (config.metric in by_step[s] and not value(by_step[s]) <= limit)]
    if not bad:
        return False
    first = bad[0]
    r = by_step[first]
    out["evidence"].update({"first_unsound_step": first, "divergence_limit": limit})
    out["reasons"].append(
        r.get("divergence_reason")
        or f"{config.metric} = {value(r):.4g} at step {first} is non-finite or above {limit:.4g}, far beyond "
        f"the largest return the rewards allow ({q_max:.4g})"
    )
    before = [s for s in sorted(by_step) if s < first and np.isfinite(value(by_step[s]))]
    after_warmup = [s for s in before if s > warmup_steps] or before
    out["verdict"] = "diverged"
    out["selected_step"] = max(after_warmup, key=lambda s: value(by_step[s])) if after_warmup else None
    out["selection_rule"] = "highest dataset Q-value before divergence"
    out["recommendation"] = _recommendation("diverged", out["selected_step"], algo)
    return True


def _below_range(q: np.ndarray, config: DiagnosisConfig, q_range: tuple[float, float], width: float, algo: str,
                 evidence: dict[str, Any], reasons: list[str]) -> None:
    """A reason when the curve ends below the lowest return the rewards allow, with the algorithm's cause. Only a
    Q-value has the reward range as its scale (BRAC's q_regularized adds beta * log pi_beta)."""
    q_min = q_range[0]
    if config.metric.removeprefix("heldout/") != "q_data" or not q[-1] < q_min - config.underestimation_tolerance * width:
        return
    evidence["q_data_below_q_range_by"] = float(q_min - q[-1])
    why = {"cql": "CQL is pushing Q down on sampled actions harder than the data supports it",
           "awac": "AWAC's target, the twin critics' minimum at the policy's own actions, is biased down and "
                   "the bias compounds over the discount",
           "combo": "COMBO pushes Q down on the model's states, which no dataset action anchors, and its "
                    "regularizer has no floor (offrl's CQL is calibrated, COMBO is not): a smaller "
                    "--combo.conservative-weight or a larger --combo.real-ratio",
           "mopo": "MOPO's penalised model rewards sit below the data's (train/model_reward against the "
                   "rewards): the uncertainty penalty outweighs the task's reward"}.get(
                       algo, "the critic's targets are biased down")
    reasons.append(f"{config.metric} ends at {q[-1]:.4g}, below the lowest return the rewards allow ({q_min:.4g}): {why}")


def _training_error(series: Any, last: dict[str, Any], config: DiagnosisConfig, algo: str,
                    agent: dict[str, Any] | None, width: float, evidence: dict[str, Any],
                    reasons: list[str]) -> tuple[float, float, bool]:
    """The training errors at the end of the run (mean of the last ``config.tail`` checkpoints): TD error, the
    algorithm's regularizer, the held-out TD error's gap, BEAR's constraint, and whether the error is large by
    the unexplained share of the TD targets' variance (else the Q error against the Q range). Returns
    ``(td_error, regularizer, large_error)``; ``series(key)`` gives a metric's (n,) curve."""
    tail_n = config.tail
    td = _tail_mean(series("td_error"), tail_n)
    q_err = _tail_mean(series("q_error_estimate"), tail_n)
    reg_key = REGULARIZER[algo]
    reg = _tail_mean(series(reg_key), tail_n) if reg_key else float("nan")
    evidence.update({"td_error_end": td, f"{reg_key or 'regularizer'}_end": reg, "q_error_estimate_end": q_err})
    if algo == "bear" and agent is not None:
        constraint = bear_constraint(series("mmd"), series("mmd_floor"), series("alpha"), agent, tail_n)
        if constraint is not None:
            evidence["bear_constraint"] = constraint
            reasons.append(constraint["reason"])
    if "heldout/td_error" in last:
        held_td = _tail_mean(series("heldout/td_error"), tail_n)
        evidence["heldout_td_error_end"] = held_td
        # Beyond the paper: the held-out episodes play the role of a validation set. A TD error far larger on
        # them than on training transitions means the critic memorises transitions instead of generalising.
        gap = held_td / td if td > 0 else float("inf")
        evidence["heldout_over_train_td_error"] = gap
        if gap > config.heldout_gap_ratio:
            reasons.append(
                f"the TD error on held-out episodes is {gap:.3g} x the training one ({held_td:.3g} vs {td:.3g}): "
                f"the critic memorises its training transitions; capacity-decreasing regularization "
                f"(Guideline 4.1) or more data targets this"
            )
    evidence["q_range_width"] = width
    q_error_ratio = q_err / width if width > 0 else float("inf") if q_err > 0 else 0.0
    evidence["q_error_over_q_range"] = q_error_ratio
    unexplained = _tail_mean(series("td_error_over_target_var"), tail_n)
    if np.isfinite(unexplained):
        # The TD error against the spread of the targets: a constant offset of every Q-value (CQL's level far
        # below the reward range) changes neither, unlike td_error * H against the range.
        evidence["td_error_over_target_var_end"] = unexplained
        large_error = unexplained > config.underfit_unexplained
        if large_error:
            reasons.append(
                f"the TD error leaves {unexplained:.0%} of the TD targets' variance unexplained at the end "
                f"(threshold {config.underfit_unexplained:.0%}): the critic does not fit its own targets"
            )
    else:
        large_error = q_error_ratio > config.underfit_q_error_ratio
        if large_error:
            reasons.append(
                f"estimated Q error {q_err:.3g} (TD error {td:.3g} x effective horizon) is {q_error_ratio:.2g} x "
                f"the Q range width {width:.3g} allowed by the rewards (threshold {config.underfit_q_error_ratio:g} x)"
            )
    return td, reg, bool(large_error)


def _metric_3_2(compare: Sequence[dict[str, Any]], td: float, reg: float, reg_key: str | None,
                config: DiagnosisConfig, evidence: dict[str, Any], reasons: list[str]) -> bool | None:
    """Metric 3.2 (paper Sec. 3): against each run with more capacity, whether one training error drops by
    ``config.capacity_improvement`` while the other does not get worse by as much. Returns whether any
    comparison shows that (None without comparisons); the comparisons go to ``evidence["metric_3_2"]``."""
    tail_n = config.tail
    capacity_helps: bool | None = None
    comparisons = []
    for c in compare:
        c_records = sorted(c["records"], key=lambda r: int(r["step"]))
        c_td = _tail_mean([r.get("td_error", np.nan) for r in c_records], tail_n)
        c_reg = _tail_mean([r.get(reg_key, np.nan) if reg_key else np.nan for r in c_records], tail_n)
        td_rel = (td - c_td) / abs(td) if td else 0.0
        # The regularizer carries an arbitrary offset (log of the number of samples) and can sit near 0 or
        # below, so its change is scaled by max(|R|, |R'|, 1), not by |R| (which made -0.15 -> -2.6 a "1,650%
        # reduction" on pick-place-v3).
        reg_rel = (reg - c_reg) / max(abs(reg), abs(c_reg), 1.0) if np.isfinite(reg) else 0.0
        thr = config.capacity_improvement
        # Metric 3.2: one training error drops with more capacity, and the other does not get worse by as
        # much (the same pick-place run lowered R while its TD error tripled: that is not a better fit).
        helps = bool((td_rel >= thr and reg_rel > -thr) or (reg_rel >= thr and td_rel > -thr))
        comparisons.append(
            {
                "run_dir": c.get("run_dir"),
                "num_params": c.get("num_params"),
                "td_error_end": c_td,
                "regularizer_end": c_reg,
                "td_error_reduction": td_rel,
                "regularizer_reduction": reg_rel,
                "capacity_reduces_error": helps,
            }
        )
        capacity_helps = helps if capacity_helps is None else (capacity_helps or helps)
        reasons.append(
            f"Metric 3.2 vs {c.get('run_dir')}: TD error {td:.3g} -> {c_td:.3g} ({td_rel:+.0%} reduction), "
            f"regularizer {reg:.3g} -> {c_reg:.3g} ({reg_rel:+.0%} reduction): "
            + ("more capacity reduces the training errors" if helps else "more capacity does not reduce them")
        )
    if comparisons:
        evidence["metric_3_2"] = comparisons
    return capacity_helps


def _metric_3_1_reason(dec: Decline, steps: list[int], config: DiagnosisConfig, q_range: tuple[float, float],
                       falls_by_propagation: bool) -> str:
    """The sentence that says what Metric 3.1 read on the curve (paper Sec. 3: a rise, then a fall)."""
    q_min, q_max = q_range
    peak = steps[dec.peak_index]
    if dec.falls and falls_by_propagation:
        return (f"{config.metric} falls from step {peak} ({dec.peak_value:.4g}, smoothed) to {dec.end_value:.4g}, "
                f"but the rewards are <= 0 (Q range [{q_min:.4g}, {q_max:.4g}]): values fall as returns propagate, "
                f"so Metric 3.1 is not read")
    if dec.declining:
        return (f"{config.metric} peaks at step {peak} ({dec.peak_value:.4g}, smoothed) and falls to "
                f"{dec.end_value:.4g} by the end, a drop of {dec.drop:.3g} > threshold {dec.threshold:.3g} "
                f"(Metric 3.1)")
    if len(steps) - 1 - dec.peak_index < config.min_after_peak:
        # Guideline 3.1 then reduces to "the last checkpoint": say so, since it is not evidence that the last
        # checkpoint is good (IQL's q_data still rose at 15,000 steps on every dev run while success fell).
        return (f"{config.metric} is highest at the end of training (step {peak}): it has not peaked yet, so "
                f"Guideline 3.1's pick is simply the last checkpoint; a longer run (offrl train --resume --steps N) "
                f"shows whether it falls")
    if dec.falls and not dec.rose:
        return (f"{config.metric} falls after step {peak} ({dec.peak_value:.4g} -> {dec.end_value:.4g}) but never "
                f"rose to that point beyond its noise (rise {dec.rise:.3g} <= {dec.rise_threshold:.3g}): Metric 3.1 "
                f"asks for a rise, then a fall, so this is not read as overfitting")
    return (f"{config.metric} after its peak at step {peak} changes by {-dec.drop:+.3g}, within the threshold "
            f"{dec.threshold:.3g}: no material decline")


def _overestimation(dec: Decline, steps: list[int], config: DiagnosisConfig, q_range: tuple[float, float],
                    width: float, evidence: dict[str, Any], reasons: list[str]) -> bool:
    """Over-estimation (paper App. G): the smoothed Q above the largest return the rewards allow plus
    ``config.overestimation_tolerance`` of the range, short of divergence. Only for a Q-value curve."""
    if config.metric.removeprefix("heldout/") != "q_data" or width <= 0:
        return False
    from offrl.workflow.rules import in_range_peak, within_range

    inside = within_range(dec.smoothed, q_range, config.overestimation_tolerance)
    above = [steps[i] for i in range(len(steps)) if not inside[i]]
    if not above:
        return False
    evidence["overestimation_steps"] = above
    evidence["in_range_peak_step"] = in_range_peak(steps, dec.smoothed, q_range, config.overestimation_tolerance)
    reasons.append(
        f"{config.metric} (smoothed) exceeds the largest return the rewards allow ({q_range[1]:.4g}) by more "
        f"than {config.overestimation_tolerance:.0%} of the Q range at step(s) "
        f"{', '.join(map(str, above[:5]))}{' ...' if len(above) > 5 else ''}: the critic over-estimates"
    )
    return True


def _select(selector: str, after_peak: bool, has_q: bool, dec: Decline, steps: list[int],
            records: list[dict[str, Any]], q_range: tuple[float, float],
            config: DiagnosisConfig) -> tuple[int, str, str]:
    """The pick: ``(step, the rule in words, the rule's name)``. Guideline 3.1 is the highest (smoothed) value of
    the diagnosis's curve, before any fall (on a curve that still rises, the last checkpoint); the other rules
    are offrl.workflow.rules'."""
    after_peak = after_peak or selector == "q_after_peak"
    name = "q_after_peak" if after_peak else selector
    if selector in ("q_peak", "q_after_peak") or not has_q:
        idx = min(dec.peak_index + (1 if after_peak else 0), len(steps) - 1)
        text = (f"checkpoint after the peak of {config.metric} (Guideline 3.1, actor-critic variant)" if after_peak
                else f"peak of {config.metric} (Guideline 3.1)")
        return steps[idx], text, name
    step = select_step(selector, records, q_range, config.smoothing_window)
    return step, RULES[selector], name  # the measured record of the rule is the trust statement's (trust.py)


MODEL_VERDICTS = ("overfitting", "underfitting", "healthy", "inconclusive")
REWARD_SHARE_FLOOR = 0.5
"""Below this share of the data's rewards, on the transitions it rewards, the model's rollouts are said not to pay
for success (``diagnose_model``'s ``reward_warning``): the midpoint, as the termination rule's (docs/model-based.md,
pre-registered 2026-12-04 on the measured cause of MOPO's failure; not fitted to any run)."""


def diagnose_model(records: Sequence[dict[str, Any]], model_steps: int, config: DiagnosisConfig = DiagnosisConfig(),
                   still_improving: float = 0.01) -> dict[str, Any]:
    """The dynamics model's own workflow (MOPO/COMBO runs, :mod:`offrl.agents.model_based`), as Metric 3.1 reads
    the critic's: the held-out MSE of the model over the checkpoints of the model phase is a validation loss.

    - ``overfitting``: the held-out MSE rose after its minimum, materially (:func:`detect_decline` on its negation,
      the thresholds of ``config``), while the training MSE did not: the model memorises its training episodes.
      The run already rolls out each member's snapshot of lowest held-out MSE (early stopping).
    - ``underfitting``: the held-out MSE still fell by more than ``still_improving`` (relative, MBPO's stopping
      criterion of 1 %) over the last checkpoints (up to 3) of the model phase: the model phase was too short.
    - ``healthy``: neither; ``inconclusive``: fewer than 3 checkpoints in the model phase.

    Beside the verdict, ``reward_warning`` (a sentence, or None) when the model predicts less than
    :data:`REWARD_SHARE_FLOOR` of the data's reward on the transitions the data rewards (the last checkpoint's
    ``model_reward_share_rewarded``, held-out where defined): the sparse-reward failure docs/model-based.md
    measured, which the one-step MSE hides.

    Args:
        records: metrics.jsonl records with ``model_mse`` and ``heldout/model_mse`` (and ``model_rollout_mse``).
        model_steps: the model phase's length in gradient steps (the agent's ``model_steps``).

    Returns:
        ``{"verdict", "reason", "recommendation", "best_step", "evidence", "reward_share", "reward_warning"}``;
        the evidence holds the curves; ``reward_share`` is None where no checkpoint logged it.
    """
    phase = [r for r in _by_step_model(records) if r["step"] <= model_steps]
    evidence: dict[str, Any] = {
        "steps": [r["step"] for r in phase],
        "model_mse": [r.get("model_mse") for r in phase],
        "heldout/model_mse": [r.get("heldout/model_mse") for r in phase],
        "heldout/model_rollout_mse": [r.get("heldout/model_rollout_mse") for r in phase],
    }
    if len(phase) < 3 or any(v is None for v in evidence["heldout/model_mse"]):
        return {"verdict": "inconclusive", "best_step": None, "evidence": evidence,
                "reason": f"{len(phase)} checkpoint(s) with the model's held-out error in the model phase; 3 are needed",
                "recommendation": "lower --checkpoint-every so that the model phase holds at least 3 checkpoints"}
    held = np.asarray(evidence["heldout/model_mse"], np.float64)
    train = np.asarray(evidence["model_mse"], np.float64)
    best = int(np.argmin(held))
    best_step = int(phase[best]["step"])
    rise = detect_decline(-held, config)
    last = min(3, len(held) - 1)
    gain = float((held[-1 - last] - held[-1]) / max(abs(held[-1 - last]), 1e-12))
    if rise.declining and train[-1] <= train[rise.peak_index] * (1 + still_improving):
        verdict = "overfitting"
        reason = (f"held-out model MSE rose from {held[best]:.4g} (step {best_step}) to {held[-1]:.4g} while the "
                  f"training MSE went from {train[rise.peak_index]:.4g} to {train[-1]:.4g}")
        rec = ("the policy rolls out each member's snapshot of lowest held-out error (early stopping); to do better, "
               "add episodes, shrink the model (model-hidden-dims) or shorten model-steps")
    elif gain > still_improving and best == len(held) - 1:
        verdict = "underfitting"
        reason = (f"held-out model MSE still fell by {100 * gain:.1f}% over the last {last} checkpoints of the model "
                  f"phase (to {held[-1]:.4g})")
        rec = "raise model-steps (the model phase ended before the model converged)"
    else:
        verdict = "healthy"
        reason = (f"held-out model MSE levelled off at {held[best]:.4g} (step {best_step}; last {held[-1]:.4g}, "
                  f"training {train[-1]:.4g})")
        rec = "none for the model; read the policy's diagnosis"
    share, where = _reward_share(records)
    return {"verdict": verdict, "reason": reason, "recommendation": rec, "best_step": best_step,
            "evidence": evidence, "reward_share": share, "reward_warning": _reward_warning(share, where)}


def _reward_share(records: Sequence[dict[str, Any]]) -> tuple[float | None, str]:
    """The last checkpoint's ``model_reward_share_rewarded``, held-out when its set has a rewarded transition."""
    for key, where in (("heldout/model_reward_share_rewarded", "held-out"), ("model_reward_share_rewarded", "training")):
        values = [r[key] for r in _by_step_model(records) if r.get(key) is not None]
        if values:
            return float(values[-1]), where
    return None, ""


def _reward_warning(share: float | None, where: str) -> str | None:
    if share is None or share >= REWARD_SHARE_FLOOR:
        return None
    return (f"the model predicts {100 * share:.0f}% of the reward on the {where} transitions the data rewards "
            f"(below {100 * REWARD_SHARE_FLOOR:.0f}%): its rollouts barely pay for success, so a critic trained "
            f"mostly on them learns the model's reward, not the task's; its q_data says little about the task "
            f"(docs/model-based.md); compare with CQL on the same data")


def _by_step_model(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((r for r in records if "step" in r and not r.get("diverged")), key=lambda r: int(r["step"]))


def _run_inputs(run_dir: Path) -> dict[str, Any]:
    cfg = rd.read_json(run_dir / rd.CONFIG_FILE) if (run_dir / rd.CONFIG_FILE).is_file() else None
    if cfg is None:
        raise FileNotFoundError(f"{run_dir / rd.CONFIG_FILE} not found: is {run_dir} a run made by `offrl train`?")
    return {"run_dir": str(run_dir), "records": rd.read_metrics(run_dir), "config": cfg,
            "num_params": cfg.get("num_params")}


def _warmup(config: dict[str, Any]) -> int:
    from offrl.training.run_dir import warmup_steps  # not offrl.agents: that pulls in jax, flax and optax

    return warmup_steps(config.get("algo", "cql"), config.get("agent", {}))


def diagnose_run(
    run_dir: str | Path,
    compare: Sequence[str | Path] = (),
    config: DiagnosisConfig = DiagnosisConfig(),
    *,
    after_peak: bool = False,
    selector: str | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Diagnose a run directory from its config.json and metrics.jsonl; write diagnosis.json (atomically).

    `offrl diagnose` and `offrl select` are this one computation. Without ``compare``, the runs an earlier
    diagnosis compared with (``compared_runs`` of diagnosis.json) are compared again, and without ``selector``
    the rule an earlier diagnosis used, else the one the run recorded when it was trained (config.json
    ``deployment.selector``, :func:`offrl.workflow.rules.run_selector`), so a later command never silently drops
    a Metric 3.2 result or changes the pick, and `offrl select RUN` picks what `offrl workflow` picked. The ``fqe`` selector reads RUN_DIR/fqe.json (:mod:`offrl.workflow.fqe`).

    Raises:
        FileNotFoundError: a run directory lacks config.json or metrics.jsonl, or a compared run is gone.
        ValueError: an unknown selector, one whose curve the run lacks (``fqe`` without fqe.json), or
            ``after_peak`` with another selector than the Q peak's.
    """
    run_dir = Path(run_dir)
    main = _run_inputs(run_dir)
    previous = rd.read_json(run_dir / DIAGNOSIS_FILE) if (run_dir / DIAGNOSIS_FILE).is_file() else {}
    if not compare and previous.get("compared_runs"):
        compare = [Path(c) for c in previous["compared_runs"] if c]
    if after_peak and selector not in (None, "q_peak", "q_after_peak"):
        raise ValueError(f"--after-peak is the rule q_after_peak and cannot be combined with --selector {selector}: "
                         f"pass one of the two")
    if selector is None:
        from offrl.workflow.rules import run_selector

        # The user's choice at an earlier diagnose/select, else the rule the run recorded when it was trained:
        # the pick by hand is then the workflow's.
        selector = "q_after_peak" if after_peak else previous.get("selector") or run_selector(main["config"])
    others = [_run_inputs(Path(c)) for c in compare]
    q_range = main["config"]["dataset"]["q_range"]
    records = rd.with_scores(run_dir, main["records"])  # fqe.json, softopc.json: the rules fqe and softopc
    result = diagnose_metrics(
        records,
        (q_range[0], q_range[1]),
        config,
        after_peak=after_peak,
        compare=others,
        num_params=main["num_params"],
        warmup_steps=_warmup(main["config"]),
        algo=main["config"].get("algo", "cql"),
        selector=selector,
        agent=main["config"].get("agent"),
    )
    result["config"] = dataclasses.asdict(config)
    if main["config"].get("algo") in ("mopo", "combo"):
        result["model"] = diagnose_model(records, _warmup(main["config"]), config)
        if result["model"].get("reward_warning"):
            result["reasons"] = [*result["reasons"], result["model"]["reward_warning"]]
    from offrl.workflow.trust import trust_statement

    result["trust"] = trust_statement(result["selector"], main["config"])
    if write:
        rd.write_json(run_dir / DIAGNOSIS_FILE, result)
        # Analysis only, after the selection above: the evaluated success of the pick beside the alternatives,
        # with the behaviour-cloning baseline an earlier workflow recorded.
        comparison = attach_comparison(run_dir, bc_run=(previous.get("analysis_only") or {}).get("bc_run"))
        if comparison is not None:
            result["analysis_only"] = comparison
    return result
