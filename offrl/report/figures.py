"""The run report's figures: matplotlib PNGs, base64-encoded, that offrl/report/html.py hands to the templates.

Its helpers keep their leading underscore: they are offrl.report's own, not an API.

Figures are drawn with matplotlib's Agg canvas through the object-oriented API (``Figure`` +
``FigureCanvasAgg``), so the report never touches pyplot's global state or the user's
interactive backend, and nothing needs closing afterwards.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogFormatter

from offrl.stats import wilson_interval

HELDOUT = "heldout/"
TRAIN_LOSS = "train/"
FIG_WIDTH_IN = 9.0
FIG_DPI = 100

TRAIN_COLOUR = "#1f77b4"
HELDOUT_COLOUR = "#ff7f0e"
PEAK_COLOUR = "#8e44ad"
SELECTED_COLOUR = "#1e8449"
SUCCESS_COLOUR = "#555555"
OTHER_ACTOR_COLOUR = "#17a589"  # the success of the actor a run does not deploy (evaluation-<actor>.json)
Q_RANGE_COLOUR = "#2e86c1"
# Figure 1 draws the Q range inside the axes only while the curve keeps at least this share of the height;
# CQL's q_data often sits far below the range, and a range drawn to scale would flatten the curve to a line.
Q_RANGE_MIN_SHARE = 0.25


# --------------------------------------------------------------------------------------------
# values of metrics.jsonl and evaluation.json


def _num(value: Any) -> float:
    """A float for numbers, NaN for null / strings / booleans / anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    try:
        return float(value)
    except OverflowError:  # an int too large for a float
        return math.nan


def _step(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return int(value)


def _by_step(records: list[dict]) -> list[dict]:
    """Records with a usable step, sorted by step; for a repeated step (resumed run) the last wins."""
    out: dict[int, dict] = {}
    for rec in records:
        s = _step(rec.get("step"))
        if s is not None:
            out[s] = rec
    return [out[s] for s in sorted(out)]


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Finite (step, value) pairs for ``key``."""
    xs, ys = [], []
    for rec in records:
        y = _num(rec.get(key))
        if math.isfinite(y):
            xs.append(int(rec["step"]))
            ys.append(y)
    return xs, ys


# --------------------------------------------------------------------------------------------
# figures


def _fmt_step_tick(x: float, _pos: Any = None) -> str:
    ax = abs(x)
    if ax >= 1e6:
        return f"{x / 1e6:g}M"
    if ax >= 1e3:
        return f"{x / 1e3:g}k"
    return f"{x:g}"


class _PlainLogFormatter(LogFormatter):
    """LogFormatter's choice of which ticks to label, but "0.6" instead of "6e-01"."""

    def __call__(self, x: float, pos: Any = None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


def _new_figure(height_in: float, nrows: int = 1, ncols: int = 1) -> tuple[Figure, Any]:
    fig = Figure(figsize=(FIG_WIDTH_IN, height_in), dpi=FIG_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _style_axes(ax: Any, ylabel: str | None = None) -> None:
    ax.xaxis.set_major_formatter(FuncFormatter(_fmt_step_tick))
    ax.set_xlabel("gradient steps")
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _legend_below(fig: Figure, handles: list, labels: list) -> None:
    """Legend outside the axes, under them, so it never hides data."""
    if handles:
        fig.legend(
            handles,
            labels,
            loc="outside lower center",
            ncols=min(3, len(handles)),
            fontsize="small",
            frameon=False,
        )


def _to_png_b64(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=FIG_DPI)
    fig.clear()
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plot_pair(ax: Any, records: list[dict], key: str) -> int:
    """Training and held-out lines for ``key``; returns how many lines were drawn."""
    drawn = 0
    for k, label, colour in (
        (key, "training transitions", TRAIN_COLOUR),
        (HELDOUT + key, "held-out", HELDOUT_COLOUR),
    ):
        xs, ys = _series(records, k)
        if xs:
            ax.plot(xs, ys, marker="o", markersize=3.5, linewidth=1.6, color=colour, label=label)
            drawn += 1
    return drawn


def _mark_steps(ax: Any, diagnosis: dict | None) -> None:
    if not diagnosis:
        return
    warmup = (diagnosis.get("evidence") or {}).get("warmup_checkpoints_ignored") or []
    if warmup:
        # The phase's name: "BC warm start" was the label for MOPO's and COMBO's model phase too until 2026-12-04.
        phase = (diagnosis.get("evidence") or {}).get("warmup_phase") or "the BC warm start"
        ax.axvspan(0, max(warmup), color="#999999", alpha=0.12, label=f"{phase}: not diagnosed")
    peak, selected = _step(diagnosis.get("peak_step")), _step(diagnosis.get("selected_step"))
    if selected is not None:
        ax.axvline(
            selected,
            color=SELECTED_COLOUR,
            linewidth=2.2,
            alpha=0.8,
            label=f"selected checkpoint ({selected})",
        )
    if peak is not None:
        ax.axvline(peak, color=PEAK_COLOUR, linewidth=1.5, linestyle="--", label=f"peak step ({peak})")


def _metric_figure(
    records: list[dict],
    key: str,
    title: str,
    diagnosis: dict | None,
    log_if_positive: bool = False,
    hline: tuple[float, str] | None = None,
) -> str | None:
    fig, axes = _new_figure(3.6)
    ax = axes[0][0]
    if not _plot_pair(ax, records, key):
        fig.clear()
        return None
    if log_if_positive:
        ys = _series(records, key)[1] + _series(records, HELDOUT + key)[1]
        if ys and min(ys) > 0:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
            ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    if hline is not None:
        ax.axhline(hline[0], color="#c0392b", linestyle=":", linewidth=1.8, label=hline[1])
    _mark_steps(ax, diagnosis)
    _style_axes(ax, key)
    ax.set_title(title, loc="left", fontsize=11)
    _legend_below(fig, *ax.get_legend_handles_labels())
    return _to_png_b64(fig)


# Per algorithm: the curve the diagnosis reads (Metric 3.1) with its axis label and title, and the regularizer.
MAIN_CURVE = {
    "cql": ("q_data", "average Q on dataset actions", "q_data: average Q-value of dataset actions"),
    "brac": ("q_regularized", "Q + beta log pi_beta", "q_regularized: BRAC's objective on dataset states"),
    "bc": ("log_likelihood", "log pi(a|s) of dataset actions", "log_likelihood of dataset actions (nats)"),
    "iql": ("q_data", "average Q on dataset actions", "q_data: average Q-value of dataset actions (IQL)"),
    "awac": ("q_data", "average Q on dataset actions", "q_data: average Q-value of dataset actions (AWAC)"),
    "bear": ("q_data", "average Q on dataset actions", "q_data: average Q-value of dataset actions (BEAR)"),
    "tt": ("token_log_likelihood", "log p(next token), nats per token",
           "token_log_likelihood: minus the next-token loss of dataset sequences (Trajectory Transformer)"),
    "mopo": ("q_data", "average Q on dataset actions", "q_data: average Q-value of dataset actions (MOPO)"),
    "combo": ("q_data", "average Q on dataset actions", "q_data: average Q-value of dataset actions (COMBO)"),
}
REGULARIZER_CURVE = {
    "cql": ("cql_regularizer", "cql_regularizer: Q on sampled actions minus Q on dataset actions"),
    "brac": ("kl_estimate", "kl_estimate: log pi - log pi_beta on the policy's actions"),
    "iql": ("value_loss", "value_loss: IQL's expectile loss of V against Q on dataset actions"),
    "awac": ("weighted_nll", "weighted_nll: AWAC's advantage-weighted negative log-likelihood of dataset actions"),
    "bear": ("mmd", "mmd: BEAR's MMD between the policy's and the behaviour model's actions"),
    "combo": ("cql_regularizer", "cql_regularizer: COMBO's log-sum-exp of Q minus Q on dataset actions"),
    "mopo": ("train/model_penalty", "train/model_penalty: MOPO's uncertainty u(s, a) on model transitions"),
}


def _q_range(diagnosis: dict | None) -> tuple[float, float] | None:
    """diagnosis.json's ``q_range``: (q_min, q_max), the returns the rewards allow; None if unusable."""
    q_range = (diagnosis or {}).get("q_range")
    if isinstance(q_range, list | tuple) and len(q_range) == 2:
        lo, hi = _num(q_range[0]), _num(q_range[1])
        if math.isfinite(lo) and math.isfinite(hi) and lo <= hi:
            return lo, hi
    return None


def _draw_q_range(ax: Any, q_range: tuple[float, float], data: list[float]) -> None:
    """The Q range as a labelled band between two lines when it fits beside the curve (``data``: its values),
    else a note at the top or bottom edge of the axes saying where it lies and how far (the reasons cite it)."""
    lo, hi = q_range
    label = f"Q range the rewards allow [{lo:.3g}, {hi:.3g}]"
    d_lo, d_hi = min(data), max(data)
    span = max(hi, d_hi) - min(lo, d_lo)
    if span <= 0 or (d_hi - d_lo) / span >= Q_RANGE_MIN_SHARE:
        ax.axhspan(lo, hi, color=Q_RANGE_COLOUR, alpha=0.08, linewidth=0)
        ax.axhline(hi, color=Q_RANGE_COLOUR, linestyle="-.", linewidth=1.3, label=label)
        ax.axhline(lo, color=Q_RANGE_COLOUR, linestyle="-.", linewidth=1.3)
        return
    above = lo > d_hi
    gap = lo - d_hi if above else d_lo - hi
    ax.annotate(
        f"{'↑' if above else '↓'} {label}: {'above' if above else 'below'} the curve by {gap:.3g}",
        xy=(0.01, 0.97 if above else 0.03),
        xycoords="axes fraction",
        va="top" if above else "bottom",
        color=Q_RANGE_COLOUR,
        fontsize=9,
        bbox={"boxstyle": "round,pad=0.25", "facecolor": "white", "edgecolor": Q_RANGE_COLOUR, "alpha": 0.9},
    )


def _success_curves(
    evaluation: dict | None, actors: tuple[str, str, dict | None] | None
) -> list[tuple[list[dict], str, str, str, str]]:
    """The success curves Figure 1 draws, as (counts of :func:`_eval_counts`, label, colour, marker, line style),
    those without counts left out. ``actors`` None: evaluation.json's alone, as always; else (the deployed
    actor, the other actor, the other's evaluation-<actor>.json): both, each labelled with its actor."""
    note = "95% Wilson interval (analysis only: not used for selection)"
    if actors is None:
        curves = [(_eval_counts(evaluation), f"success rate, {note}", SUCCESS_COLOUR, "s", ":")]
    else:
        deployed, other, other_evaluation = actors
        # Shorter labels than the single curve's, so that the legend keeps to the figure's width (the right axis
        # and the caption say "analysis only").
        curves = [(_eval_counts(evaluation), f"{deployed} actor (deployed): success, 95% Wilson interval",
                   SUCCESS_COLOUR, "s", ":"),
                  (_eval_counts(other_evaluation), f"{other} actor: success, 95% Wilson interval",
                   OTHER_ACTOR_COLOUR, "^", "--")]
    return [c for c in curves if c[0]]


def _q_data_axes(
    records: list[dict], diagnosis: dict | None, evaluation: dict | None, algo: str = "cql",
    actors: tuple[str, str, dict | None] | None = None,
) -> Figure | None:
    """Figure 1: the curve the diagnosis reads, the selected and peak steps, the Q range the rewards allow
    (Q-value curves only) and the analysis-only success rate with 95% Wilson intervals; None without data.
    With ``actors`` (deployed actor, other actor, the other's evaluation): both actors' success rates
    (:func:`_success_curves`)."""
    key, ylabel, title = MAIN_CURVE.get(algo, MAIN_CURVE["cql"])
    fig, axes = _new_figure(4.2)
    ax = axes[0][0]
    if not _plot_pair(ax, records, key):
        fig.clear()
        return None
    q_range = _q_range(diagnosis)
    if key == "q_data" and q_range is not None:  # only a Q-value has the rewards' returns as its scale
        _draw_q_range(ax, q_range, _series(records, key)[1] + _series(records, HELDOUT + key)[1])
    _mark_steps(ax, diagnosis)
    _style_axes(ax, ylabel)
    ax.set_title(title, loc="left", fontsize=11)
    handles, labels = ax.get_legend_handles_labels()
    curves = _success_curves(evaluation, actors)
    if curves:
        ax2 = ax.twinx()
        for counts, label, colour, marker, style in curves:
            xs = [r["step"] for r in counts]
            ys = [r["successes"] / r["episodes"] for r in counts]
            cis = [wilson_interval(r["successes"], r["episodes"]) for r in counts]
            below = [y - lo for y, (lo, _) in zip(ys, cis, strict=True)]
            above = [hi - y for y, (_, hi) in zip(ys, cis, strict=True)]
            ax2.errorbar(
                xs,
                ys,
                yerr=[below, above],
                marker=marker,
                markersize=4,
                linestyle=style,
                linewidth=1.4,
                elinewidth=0.9,
                capsize=2.5,
                color=colour,
                label=label,
            )
        ax2.set_ylim(-0.03, 1.03)
        ax2.set_ylabel("success rate\n(analysis only)", color=SUCCESS_COLOUR)
        ax2.tick_params(axis="y", colors=SUCCESS_COLOUR)
        ax2.spines["top"].set_visible(False)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    _legend_below(fig, handles, labels)
    return fig


def _q_data_figure(
    records: list[dict], diagnosis: dict | None, evaluation: dict | None, algo: str = "cql",
    actors: tuple[str, str, dict | None] | None = None,
) -> str | None:
    fig = _q_data_axes(records, diagnosis, evaluation, algo, actors)
    return None if fig is None else _to_png_b64(fig)


def _loss_figure(records: list[dict], diagnosis: dict | None) -> str | None:
    keys = sorted({k for rec in records for k in rec if isinstance(k, str) and k.startswith(TRAIN_LOSS)})
    keys = [k for k in keys if _series(records, k)[0]]
    if not keys:
        return None
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = _new_figure(2.5 * nrows + 0.3, nrows, ncols)
    selected = _step((diagnosis or {}).get("selected_step"))
    for i, ax in enumerate(axes.flat):
        if i >= len(keys):
            ax.set_visible(False)
            continue
        xs, ys = _series(records, keys[i])
        ax.plot(xs, ys, marker="o", markersize=2.5, linewidth=1.3, color=TRAIN_COLOUR)
        if selected is not None:
            ax.axvline(selected, color=SELECTED_COLOUR, linewidth=1.5, alpha=0.6)
        _style_axes(ax)
        ax.set_title(keys[i][len(TRAIN_LOSS) :], fontsize=10)
        ax.tick_params(labelsize=8)
        ax.xaxis.label.set_size(8)
    return _to_png_b64(fig)


def _eval_counts(evaluation: dict | None) -> list[dict]:
    """Evaluated checkpoints as ``{"step", "successes", "episodes"}``, by step. Successes come from the row,
    or from its success rate and episode count (the file's ``episodes`` when the row has none); rows whose
    counts cannot be read are left out."""
    default_n = _step((evaluation or {}).get("episodes"))
    out = []
    for r in _eval_results(evaluation):
        n = _step(r.get("episodes")) or default_n
        k = _step(r.get("successes"))
        if k is None and n and math.isfinite(r["success_rate"]):
            k = round(r["success_rate"] * n)
        if n and n > 0 and k is not None and 0 <= k <= n:
            out.append({"step": r["step"], "successes": k, "episodes": n})
    return out


def _eval_results(evaluation: dict | None) -> list[dict]:
    out = []
    results = (evaluation or {}).get("results")
    for r in results if isinstance(results, list) else []:
        if not isinstance(r, dict) or _step(r.get("step")) is None:
            continue
        out.append({**r, "step": _step(r.get("step")), "success_rate": _num(r.get("success_rate"))})
    return sorted(out, key=lambda r: r["step"])


COMPARISON_CURVES = (("q_data", "q_data"), ("td_error", "td_error"), ("cql_regularizer", "cql_regularizer"),
                     ("srank", "srank (feature rank)"))
RUN_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b")


def _runs_figure(records: dict[str, list[dict]]) -> str:
    """Four panels (COMPARISON_CURVES), one colour per run: training solid with dots, held-out dotted."""
    fig, axes = _new_figure(6.5, nrows=2, ncols=2)
    for ax, (key, label) in zip([a for row in axes for a in row], COMPARISON_CURVES, strict=True):
        for i, (name, recs) in enumerate(records.items()):
            for prefix, style in (("", "-"), (HELDOUT, ":")):
                xs, ys = _series(recs, prefix + key)
                if xs:
                    ax.plot(xs, ys, style, color=RUN_COLOURS[i % len(RUN_COLOURS)], marker="." if not prefix else None,
                            label=f"{name}{' (held-out)' if prefix else ''}")
        if key == "td_error":
            ax.set_yscale("log")
        _style_axes(ax, label)
    handles, labels = axes[0][0].get_legend_handles_labels()
    _legend_below(fig, handles, labels)
    return _to_png_b64(fig)
