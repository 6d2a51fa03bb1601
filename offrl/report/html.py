"""Self-contained HTML report for one training run.

``write_report(run_dir)`` reads only files inside the run directory (``config.json``,
``metrics.jsonl`` and, when present, ``diagnosis.json`` and ``evaluation.json``) and writes a
single ``report.html`` with the figures embedded as base64 PNGs: no external CSS, JS or network
access, so the file can be mailed around or opened from a copied run directory.

Figures are drawn with matplotlib's Agg canvas through the object-oriented API (``Figure`` +
``FigureCanvasAgg``), so the report never touches pyplot's global state or the user's
interactive backend, and nothing needs closing afterwards.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogFormatter

from offrl.stats import wilson_interval
from offrl.training.run_dir import atomic_write_text, read_metrics

__all__ = ["load_metrics", "write_report"]

TRAIN_COMMAND = "offrl train"
DIAGNOSE_COMMAND = "offrl diagnose"
EVALUATE_COMMAND = "offrl evaluate"

HELDOUT = "heldout/"
TRAIN_LOSS = "train/"
FIG_WIDTH_IN = 9.0
FIG_DPI = 100

VERDICT_COLOURS = {
    "healthy": "#1e8449",
    "overfitting": "#c0392b",
    "underfitting": "#d68910",
    "over-estimation": "#a04000",
    "diverged": "#7b241c",
    "inconclusive": "#566573",
}
TRAIN_COLOUR = "#1f77b4"
HELDOUT_COLOUR = "#ff7f0e"
PEAK_COLOUR = "#8e44ad"
SELECTED_COLOUR = "#1e8449"
SUCCESS_COLOUR = "#555555"
Q_RANGE_COLOUR = "#2e86c1"
# Figure 1 draws the Q range inside the axes only while the curve keeps at least this share of the height;
# CQL's q_data often sits far below the range, and a range drawn to scale would flatten the curve to a line.
Q_RANGE_MIN_SHARE = 0.25


# --------------------------------------------------------------------------------------------
# reading the run directory


# One parser of metrics.jsonl for the whole package: a torn last line is dropped, corruption elsewhere raises.
load_metrics = read_metrics


def _read_json(path: Path) -> tuple[dict | None, str | None]:
    """(data, None) for a readable JSON object, (None, error text) otherwise, (None, None) if absent."""
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"{path.name} could not be read ({exc})"
    if not isinstance(data, dict):
        return None, f"{path.name} does not contain a JSON object"
    return data, None


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


def _q_data_axes(
    records: list[dict], diagnosis: dict | None, evaluation: dict | None, algo: str = "cql"
) -> Figure | None:
    """Figure 1: the curve the diagnosis reads, the selected and peak steps, the Q range the rewards allow
    (Q-value curves only) and the analysis-only success rate with 95% Wilson intervals; None without data."""
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
    counts = _eval_counts(evaluation)
    if counts:
        ax2 = ax.twinx()
        xs = [r["step"] for r in counts]
        ys = [r["successes"] / r["episodes"] for r in counts]
        cis = [wilson_interval(r["successes"], r["episodes"]) for r in counts]
        below = [y - lo for y, (lo, _) in zip(ys, cis, strict=True)]
        above = [hi - y for y, (_, hi) in zip(ys, cis, strict=True)]
        ax2.errorbar(
            xs,
            ys,
            yerr=[below, above],
            marker="s",
            markersize=4,
            linestyle=":",
            linewidth=1.4,
            elinewidth=0.9,
            capsize=2.5,
            color=SUCCESS_COLOUR,
            label="success rate, 95% Wilson interval (analysis only: not used for selection)",
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
    records: list[dict], diagnosis: dict | None, evaluation: dict | None, algo: str = "cql"
) -> str | None:
    fig = _q_data_axes(records, diagnosis, evaluation, algo)
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


# --------------------------------------------------------------------------------------------
# HTML


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    """Escaped display text for a value from a file."""
    if value is None:
        return "&ndash;"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _e(f"{value:.4g}") if math.isfinite(value) else _e(str(value))
    if isinstance(value, int | str):
        return _e(value)
    text = json.dumps(value, default=str, allow_nan=True)
    return _e(text if len(text) <= 400 else text[:400] + " ...")


def _table(rows: list[tuple[str, Any]], header: tuple[str, str] | None = None) -> str:
    head = f"<tr><th>{_e(header[0])}</th><th>{_e(header[1])}</th></tr>" if header else ""
    body = "".join(f"<tr><td class='k'>{_e(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in rows)
    return f"<table>{head}{body}</table>"


def _img(b64: str | None, alt: str, missing: str) -> str:
    if b64 is None:
        return f"<p class='note'>{_e(missing)}</p>"
    return f'<img src="data:image/png;base64,{b64}" alt="{_e(alt)}">'


def _not_run(what: str, command: str, run_dir: Path, err: str | None) -> str:
    if err:
        return f"<p class='note'>{_e(err)}; re-run <code>{_e(command)} {_e(run_dir)}</code>.</p>"
    return f"<p class='note'>{_e(what)} not run yet: run <code>{_e(command)} {_e(run_dir)}</code>.</p>"


def _verdict_box(diagnosis: dict | None, diag_err: str | None, run_dir: Path) -> str:
    if diagnosis is None:
        return (
            "<div class='verdict' style='border-color:#999'><div class='v' style='color:#777'>"
            "no diagnosis</div>" + _not_run("Diagnosis", DIAGNOSE_COMMAND, run_dir, diag_err) + "</div>"
        )
    verdict = str(diagnosis.get("verdict") or "unknown")
    colour = VERDICT_COLOURS.get(verdict, "#566573")
    selected = _step(diagnosis.get("selected_step"))
    peak = _step(diagnosis.get("peak_step"))
    parts = [
        f"<div class='verdict' style='border-color:{colour}'>",
        f"<div class='v' style='color:{colour}'>{_e(verdict)}</div>",
        "<p class='sel'>Selected checkpoint: "
        + (f"<b>step {selected}</b>" if selected is not None else "<b>none</b>")
        + (f" &nbsp;&middot;&nbsp; peak step: {peak}" if peak is not None else "")
        + "</p>",
    ]
    if diagnosis.get("selection_rule"):
        parts.append(f"<p class='rule'>Selection rule: {_e(diagnosis['selection_rule'])}</p>")
    if diagnosis.get("recommendation"):
        parts.append(f"<p class='rec'>{_e(diagnosis['recommendation'])}</p>")
    trust = diagnosis.get("trust")
    if isinstance(trust, dict) and trust.get("statement"):
        parts.append(f"<p class='note'>How far to trust the pick: {_e(trust['statement'])}</p>")
    reasons = diagnosis.get("reasons")
    if isinstance(reasons, list) and reasons:
        parts.append("<ul>" + "".join(f"<li>{_e(r)}</li>" for r in reasons) + "</ul>")
    compared = diagnosis.get("compared_runs")
    if isinstance(compared, list) and compared:
        parts.append(
            "<p class='rule'>Compared with: " + ", ".join(f"<code>{_e(c)}</code>" for c in compared) + "</p>"
        )
    parts.append("</div>")
    return "".join(parts)


def _q_range_width(diagnosis: dict | None) -> float | None:
    q_range = _q_range(diagnosis)
    return None if q_range is None else q_range[1] - q_range[0]


def _warmup_steps(config: dict) -> int:
    """The actor's warm start (CQL ``agent.bc_steps``, BEAR ``agent.warmstart_steps``; else 0), read as
    :func:`offrl.workflow.comparison.attach_comparison` reads it."""
    from offrl.training.run_dir import warmup_steps

    agent = config.get("agent")
    return warmup_steps(config.get("algo", "cql"), agent) if isinstance(agent, dict) else 0


def _rate_text(r: dict) -> tuple[str, str]:
    """("60% (12/20)", "[39%, 78%]") for a row of the analysis-only comparison."""
    ci = r.get("ci95")
    ci = ci if isinstance(ci, list | tuple) and len(ci) == 2 else [math.nan, math.nan]
    return (
        f"{_num(r.get('success_rate')):.0%} ({r.get('successes')}/{r.get('episodes')})",
        f"[{_num(ci[0]):.0%}, {_num(ci[1]):.0%}]",
    )


COMPARISON_ROWS = (
    ("behaviour", "data (behaviour policy)"),
    ("best_warm_start", "best warm-start (BC) checkpoint"),
    ("bc_selected", "behaviour cloning, its offline pick"),
    ("bc_best", "behaviour cloning, best checkpoint"),
    ("selected", "selected (workflow)"),
    ("best", "best checkpoint in hindsight"),
    ("last", "last checkpoint"),
)


def _env_text(evaluation: dict) -> str | None:
    """Where the checkpoints were rolled out, from evaluation.json's ``env`` (``offrl evaluate`` records it;
    ``--env`` runs name a gymnasium environment and its success key), else its MetaWorld ``task``."""
    env = evaluation.get("env")
    env = env if isinstance(env, dict) else {}
    kind, task = env.get("kind"), env.get("task") or evaluation.get("task")
    if kind == "gymnasium":
        key = env.get("success_key")
        return f"gymnasium environment {env.get('env')}" + (f" (success: info[{key!r}])" if key else "")
    if kind in (None, "metaworld"):
        return f"MetaWorld task {task}" if task else None
    return f"{kind} environment {env.get('env') or task}"


def _returns_table(evaluation: dict, diagnosis: dict | None) -> str:
    """MinAtar evaluations (``metric: "return"``): the mean return of every checkpoint, the pick marked."""
    picked = (diagnosis or {}).get("selected_step")
    rows = "".join(
        f"<tr><td>{_e(r.get('step'))}{' (selected)' if r.get('step') == picked else ''}</td>"
        f"<td>{_num(r.get('mean_return')):.2f}</td><td>{_e(r.get('episodes'))}</td></tr>"
        for r in (evaluation.get("results") or []) if isinstance(r, dict)
    )
    return ("<table><tr><th>checkpoint</th><th>mean return</th><th>episodes</th></tr>" + rows + "</table>"
            f"<p class='note'>Analysis only: {_e((evaluation.get('env') or {}).get('task'))}, epsilon "
            f"{_e(evaluation.get('epsilon'))}; evaluation results are not used for selection.</p>")


def _comparison_table(evaluation: dict, diagnosis: dict | None, config: dict) -> str:
    """The analysis-only comparison: diagnosis.json's ``analysis_only`` (written by `offrl evaluate` and
    `offrl diagnose`), or the same computation on evaluation.json when the diagnosis has none. A "best"
    checkpoint is not named when the comparison says all candidates are tied (``"tied"``, typically all 0%);
    a diagnosis.json written before offrl recorded ties gets its best rows recomputed from evaluation.json."""
    from offrl.workflow.comparison import analysis_only_comparison, tie_reason

    counts = _eval_counts(evaluation)
    if not counts:
        return "<p class='note'>evaluation.json has no usable results.</p>"
    about = [env] if (env := _env_text(evaluation)) else []
    if _step(evaluation.get("episodes")) is not None:
        about.append(f"{_step(evaluation['episodes'])} episodes per checkpoint")
    if _step(evaluation.get("horizon")) is not None:
        about.append(f"horizon {_step(evaluation['horizon'])} steps")
    about.append(f"{len(counts)} checkpoint(s) evaluated")
    warmup = _warmup_steps(config)
    comparison = (diagnosis or {}).get("analysis_only")
    best_keys = ("best", "best_warm_start")
    if not isinstance(comparison, dict) or any(
        isinstance(comparison.get(k), dict) and "tied" not in comparison[k] for k in best_keys
    ):
        dataset = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
        metadata = dataset.get("metadata") if isinstance(dataset.get("metadata"), dict) else {}
        fresh = analysis_only_comparison(
            {"results": counts}, _step((diagnosis or {}).get("selected_step")), warmup, metadata
        )
        comparison = fresh if not isinstance(comparison, dict) else {
            **comparison, **{k: fresh[k] for k in best_keys}
        }
    rows, tied_best = [], False
    for key, name in COMPARISON_ROWS:
        r = comparison.get(key)
        if key == "selected" and r is None:
            rows.append((name, "&ndash;", "no diagnosis yet" if diagnosis is None else "none selected", ""))
        if not isinstance(r, dict) or r.get("success_rate") is None:
            continue
        tie = tie_reason(r)
        if tie is not None:
            tied_best = tied_best or key == "best"
            rows.append((name, "&ndash;", tie, _rate_text(r)[1] + " each"))
            continue
        rows.append((name, "&ndash;" if r.get("step") is None else _e(r["step"]), *_rate_text(r)))
    body = "".join(f"<tr><td class='k'>{_e(a)}</td><td>{b}</td><td>{_e(c)}</td><td>{_e(d)}</td></tr>"
                   for a, b, c, d in rows)
    hindsight = (
        "No checkpoint is named best in hindsight: every evaluated checkpoint after the warm start has the "
        "same success rate."
        if tied_best
        else "&ldquo;Best in hindsight&rdquo; needs online rollouts the workflow assumes you do not have; it "
        "and the best warm-start checkpoint are maxima of noisy estimates, biased upwards."
    )
    return (
        f"<p class='caption'>Evaluation: {_e(', '.join(about))}.</p>"
        "<table><tr><th>policy</th><th>step</th><th>success rate</th><th>95% Wilson interval</th></tr>"
        + body +
        "</table><p class='note'>Analysis only: evaluation results are not used for selection. " + hindsight +
        " The data's row counts the dataset's own episodes.</p>"
    )


# Readable names of the evidence keys offrl.workflow.diagnosis writes; other keys are shown as they are.
# "The curve" is the one Metric 3.1 reads (evidence "metric": q_data for CQL).
EVIDENCE_LABELS = {
    "metric": "curve diagnosed (Metric 3.1)",
    "algo": "algorithm",
    "first_unsound_step": "first checkpoint that diverged (step)",
    "divergence_limit": "divergence limit on the curve",
    "checkpoints": "checkpoints diagnosed (after the warm start)",
    "warmup_checkpoints_ignored": "warm-start (BC) checkpoints left out (steps)",
    "q_data_below_q_range_by": "curve's end below the lowest return the rewards allow, by",
    "peak_step": "peak of the curve (step)",
    "peak_q_data_smoothed": "curve at its peak (smoothed)",
    "end_q_data": "curve at the end (mean of the last checkpoints)",
    "q_data_drop": "drop from the peak to the end",
    "drop_threshold": "drop needed to call it a decline",
    "q_data_noise_std": "curve's noise (std between checkpoints)",
    "checkpoints_after_peak": "checkpoints after the peak",
    "heldout_q_data_declining": "held-out curve declines too",
    "heldout_peak_step": "peak of the held-out curve (step)",
    "td_error_end": "TD error (end)",
    "cql_regularizer_end": "CQL regularizer (end)",
    "kl_estimate_end": "KL estimate (end)",
    "regularizer_end": "regularizer (end)",
    "q_error_estimate_end": "estimated Q error (end)",
    "heldout_td_error_end": "held-out TD error (end)",
    "heldout_over_train_td_error": "held-out TD error / training TD error",
    "q_range_width": "Q range width allowed by the rewards",
    "q_error_over_q_range": "estimated Q error / Q range width",
    "num_params": "parameter counts",
    "td_error_over_target_var_end": "unexplained share of TD-target variance (end)",
    "metric_3_2": "Metric 3.2: runs with more capacity",
    "overestimation_steps": "steps where Q exceeds the largest return the rewards allow",
    "in_range_peak_step": "peak of the curve within the Q range (step)",
}


def _evidence_table(evidence: dict) -> str:
    """Evidence with readable names; the raw key of diagnosis.json stays visible, small, and in the title."""
    body = "".join(
        f"<tr><td class='k' title='{_e(k)}'>{_e(EVIDENCE_LABELS.get(str(k), k))}"
        + (f" <code class='raw'>{_e(k)}</code>" if str(k) in EVIDENCE_LABELS else "")
        + f"</td><td>{_fmt(v)}</td></tr>"
        for k, v in evidence.items()
    )
    return f"<table class='ev'><tr><th>evidence</th><th>value</th></tr>{body}</table>"


def _config_rows(config: dict) -> list[tuple[str, Any]]:
    def sub(name: str) -> dict:
        v = config.get(name)
        return v if isinstance(v, dict) else {}

    dataset, agent, training = sub("dataset"), sub("agent"), sub("training")
    fingerprint = dataset.get("fingerprint")
    return [
        ("algorithm", config.get("algo")),
        ("dataset path", dataset.get("path")),
        ("dataset task", dataset.get("task")),
        ("dataset fingerprint", fingerprint[:16] if isinstance(fingerprint, str) else fingerprint),
        ("gradient steps", training.get("steps")),
        ("checkpoint every", training.get("checkpoint_every")),
        ("seed", config.get("seed")),
        ("CQL alpha", agent.get("alpha")),
        ("discount gamma", agent.get("gamma")),
        ("target update tau", agent.get("tau")),
    ]


def _version_rows(config: dict) -> list[tuple[str, Any]]:
    """offrl's version once (config.json records it twice: ``offrl_version`` and ``versions.offrl``), then the
    other packages."""
    versions = config.get("versions") if isinstance(config.get("versions"), dict) else {}
    offrl = config.get("offrl_version") or versions.get("offrl")
    return [("offrl", offrl)] + [(str(k), v) for k, v in sorted(versions.items()) if k != "offrl"]


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#222;
margin:0;background:#f6f7f9;line-height:1.45}
main{max-width:1000px;margin:0 auto;padding:24px 28px 48px;background:#fff;min-height:100vh}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.2em;margin:32px 0 8px;border-bottom:1px solid #e3e3e3;
padding-bottom:4px}
.sub{color:#666;margin:0 0 18px;font-size:.92em}
.verdict{border:2px solid;border-left-width:10px;border-radius:6px;padding:14px 18px;margin:12px 0 8px}
.verdict .v{font-size:2.2em;font-weight:700;text-transform:uppercase;letter-spacing:.04em}
.sel{font-size:1.1em;margin:6px 0}.rule{color:#555;font-size:.92em;margin:4px 0}.rec{margin:10px 0 6px}
.verdict ul{margin:6px 0 0;padding-left:22px}
img{width:100%;height:auto;display:block;margin:6px 0}
.note{color:#555;font-size:.92em;background:#f3f4f6;border-radius:4px;padding:6px 10px}
.caption{color:#555;font-size:.92em;margin:2px 0 0}
.warn{color:#8a5a00;font-weight:600}
code.raw{font-size:.75em;font-weight:400;color:#777}
details{margin:8px 0}summary{cursor:pointer;color:#444}table.ev td.k{white-space:normal}
table{border-collapse:collapse;margin:8px 0;font-size:.93em;min-width:50%}
th,td{border:1px solid #ddd;padding:4px 10px;text-align:left;vertical-align:top;word-break:break-word}
th{background:#f0f2f5}td.k{font-weight:600;white-space:nowrap}
code{background:#f0f2f5;padding:1px 4px;border-radius:3px;font-size:.92em}
"""


def _missing(records: list[dict], key: str) -> str:
    """Why there is no figure for ``key``: never recorded, or recorded without a finite value."""
    if any(k in rec for rec in records for k in (key, HELDOUT + key)):
        return (
            f"{key} is in metrics.jsonl but has no finite value (all NaN, null or infinite), as happens when "
            "training diverges, or (null) when no transition of the evaluation sets is one it is defined on."
        )
    return f"No {key} recorded in metrics.jsonl."


def _build_html(
    run_dir: Path,
    config: dict,
    records: list[dict],
    diagnosis: dict | None,
    diag_err: str | None,
    evaluation: dict | None,
    eval_err: str | None,
) -> str:
    # MinAtar runs are scored by returns, not successes: their evaluation has a table of its own, and the success
    # overlays of the figures are left out.
    returns = evaluation if (evaluation or {}).get("metric") == "return" else None
    if returns is not None:
        evaluation = None
    name = run_dir.resolve().name or str(run_dir)
    last = records[-1]
    time_s = _num(last.get("time_s"))
    summary = f"{len(records)} checkpoint(s), last at step {last['step']}"
    if math.isfinite(time_s):
        summary += (
            f", {time_s / 3600:.1f} h elapsed" if time_s >= 7200 else f", {time_s / 60:.1f} min elapsed"
        )
    task = (config.get("dataset") or {}).get("task") if isinstance(config.get("dataset"), dict) else None
    if task:
        summary += f", task {task}"

    q_width = _q_range_width(diagnosis)
    algo = config.get("algo", "cql")
    main_key = MAIN_CURVE.get(algo, MAIN_CURVE["cql"])[0]
    reg_key, reg_title = REGULARIZER_CURVE.get(algo, REGULARIZER_CURVE["cql"])
    figs = [
        (
            "The curve the diagnosis reads (overfitting check, Metric 3.1)",
            _q_data_figure(records, diagnosis, evaluation, algo),
            _missing(records, main_key),
            "With overfitting, the average Q-value on dataset actions rises and then falls as training continues; "
            "the workflow selects a checkpoint near the peak. Held-out data makes the drop easier to see."
            + (
                " Blue dash-dotted lines: the range of returns the rewards allow (diagnosis.json q_range), "
                "which the reasons cite; when the curve lies far outside it, a note at the edge says where."
                if main_key == "q_data" and _q_range(diagnosis) is not None
                else ""
            ),
        ),
        (
            "TD error",
            _metric_figure(
                records, "td_error", "td_error: temporal-difference error", diagnosis, log_if_positive=True
            ),
            _missing(records, "td_error"),
            "A TD error that stays high on the training transitions suggests underfitting.",
        ),
        (
            "Regularizer",
            _metric_figure(records, reg_key, reg_title, diagnosis),
            _missing(records, reg_key),
            "A regularizer that stays high together with a high TD error suggests underfitting; one that "
            "drops with more capacity confirms it (Metric 3.2).",
        ),
        (
            "Q-value error estimate",
            _metric_figure(
                records,
                "q_error_estimate",
                "q_error_estimate",
                diagnosis,
                hline=(q_width, "Q range allowed by rewards") if q_width is not None else None,
            ),
            _missing(records, "q_error_estimate"),
            "An estimated Q error comparable to the Q range allowed by the rewards means the Q-values carry "
            "little information."
            + ("" if q_width is not None else " (No diagnosis yet, so the Q range is not drawn.)"),
        ),
        (
            "Training losses",
            _loss_figure(records, diagnosis),
            "No train/* losses recorded in metrics.jsonl.",
            "Averages of the training losses between checkpoints.",
        ),
    ]
    if "model" in (diagnosis or {}) or any("model_mse" in r for r in records):
        m = (diagnosis or {}).get("model") or {}
        verdict = f" Model verdict: {m['verdict']}: {m['reason']}. {m['recommendation']}." if m else ""
        if m.get("reward_warning"):
            verdict += f" Warning: {m['reward_warning']}."
        figs += [
            ("The dynamics model: held-out error (its validation loss)",
             _metric_figure(records, "model_mse", "model_mse: one-step error of the ensemble's means (normalised "
                            "units)", diagnosis, log_if_positive=True),
             _missing(records, "model_mse"),
             "MOPO/COMBO: the model's one-step squared error on training and held-out transitions, at every "
             "checkpoint. Rising held-out error while training error falls is the model overfitting; the policy "
             "rolls out each member's snapshot of lowest held-out error." + verdict),
            ("The dynamics model: negative log-likelihood",
             _metric_figure(records, "model_nll", "model_nll: Gaussian NLL per output (nats, up to a constant)",
                            diagnosis),
             _missing(records, "model_nll"),
             "The ensemble's training objective (PETS Eq. 2) on training and held-out transitions: unlike the "
             "squared error it also scores the predicted variances, which MOPO's penalty is built from. A "
             "held-out NLL that rises while the training one falls is the variances memorising the data."),
            ("The dynamics model: k-step rollout error",
             _metric_figure(records, "model_rollout_mse", "model_rollout_mse: open-loop k-step error",
                            diagnosis, log_if_positive=True),
             _missing(records, "model_rollout_mse"),
             "The elites' mean prediction fed back k times under the data's actions, against the real "
             "trajectory: the compounding error the policy's rollouts see."),
            ("The dynamics model: reward error where the data is rewarded",
             _metric_figure(records, "model_reward_mse_rewarded", "model_reward_mse_rewarded: squared error of "
                            "the predicted reward on transitions with a non-zero reward", diagnosis),
             _missing(records, "model_reward_mse_rewarded"),
             "With sparse rewards the model's error on the few rewarded transitions is what decides whether its "
             "rollouts pay for success: a value near the reward squared (1 for 0/1 rewards) means the model "
             "predicts almost none of it, however low the one-step error on all transitions is."),
        ]

    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>offrl report: {_e(name)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>offrl report: {_e(name)}</h1>",
        f"<p class='sub'>{_e(summary)}</p>",
        # First screen: the verdict, the pick, why, and how the pick fared; details follow.
        "<h2>Diagnosis</h2>",
        _verdict_box(diagnosis, diag_err, run_dir),
        "<h2>Selected vs best vs last (analysis only: not used for selection)</h2>",
        _returns_table(returns, diagnosis) if returns is not None
        else _comparison_table(evaluation, diagnosis, config) if evaluation is not None
        else _not_run("Evaluation (optional, analysis only)", EVALUATE_COMMAND, run_dir, eval_err),
    ]
    for i, (title, b64, missing, caption) in enumerate(figs, start=1):
        out.append(f"<h2>Figure {i}: {_e(title)}</h2>")
        out.append(_img(b64, title, missing))
        if b64 is not None:
            out.append(f"<p class='caption'>{_e(caption)}</p>")
        if i == 1:
            if evaluation is not None:
                out.append(
                    "<p class='caption warn'>Grey dotted line: success rate from evaluation.json with 95% "
                    "Wilson intervals, analysis only: not used for selection.</p>"
                )
            else:
                out.append(
                    _not_run("Evaluation (optional, analysis only)", EVALUATE_COMMAND, run_dir, eval_err)
                )

    out.append("<h2>Evidence</h2>")
    evidence = (diagnosis or {}).get("evidence")
    if isinstance(evidence, dict) and evidence:
        out.append(_evidence_table(evidence))
    elif diagnosis is None:
        out.append(_not_run("Diagnosis", DIAGNOSE_COMMAND, run_dir, diag_err))
    else:
        out.append("<p class='note'>diagnosis.json lists no evidence.</p>")

    out.append("<h2>Configuration</h2>")
    out.append("<details><summary>Run settings and package versions (config.json)</summary>")
    out.append(_table(_config_rows(config), ("setting", "value")))
    out.append(_table(_version_rows(config), ("package", "version")))
    out.append("</details>")
    out.append("</main></body></html>\n")
    return "\n".join(out)


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write a self-contained HTML report for ``run_dir``; returns the path written.

    The default output is ``run_dir/report.html``. Only files inside ``run_dir`` are read. The
    file is written atomically (a temporary file next to it, then a rename).
    Raises FileNotFoundError if ``config.json`` or ``metrics.jsonl`` is missing or
    ``metrics.jsonl`` has no complete record yet.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"run directory {run_dir} not found (run directories are created by `{TRAIN_COMMAND}`)"
        )
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} not found: is {run_dir} a run directory? "
            f"config.json is written by `{TRAIN_COMMAND}` when a run starts"
        )
    config, err = _read_json(config_path)
    if config is None:
        raise ValueError(f"{err}: cannot build a report for {run_dir}")
    records = _by_step(load_metrics(run_dir))
    if not records:
        raise FileNotFoundError(
            f"{run_dir / 'metrics.jsonl'} has no complete record yet: `{TRAIN_COMMAND}` "
            "appends one at every checkpoint; wait for the first checkpoint"
        )
    diagnosis, diag_err = _read_json(run_dir / "diagnosis.json")
    evaluation, eval_err = _read_json(run_dir / "evaluation.json")

    text = _build_html(run_dir, config, records, diagnosis, diag_err, evaluation, eval_err)

    out_path = Path(out) if out is not None else run_dir / "report.html"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_path, text)
    return out_path


def write_comparison_report(out_dir: str | Path, runs: dict[str, str | Path], decision: dict | None = None) -> Path:
    """OUT_DIR/report.html: several runs side by side (q_data, TD error, CQL regularizer, srank; training and
    held-out) and the automated workflow's decision path, like the paper's Figure 1. Reads only the runs'
    metrics.jsonl and diagnosis.json files; written atomically.

    Args:
        out_dir: folder of the comparison.
        runs: display name -> run directory.
        decision: ``{"path": [...], "reasons": [...]}`` from :func:`offrl.workflow.auto.decide`.
    """
    out_dir = Path(out_dir)
    records = {name: _by_step(load_metrics(run)) for name, run in runs.items()}
    keys = [("q_data", "q_data"), ("td_error", "td_error"), ("cql_regularizer", "cql_regularizer"),
            ("srank", "srank (feature rank)")]
    fig, axes = _new_figure(6.5, nrows=2, ncols=2)
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b"]
    for ax, (key, label) in zip([a for row in axes for a in row], keys, strict=True):
        for i, (name, recs) in enumerate(records.items()):
            for prefix, style in (("", "-"), (HELDOUT, ":")):
                xs, ys = _series(recs, prefix + key)
                if xs:
                    ax.plot(xs, ys, style, color=colours[i % len(colours)], marker="." if not prefix else None,
                            label=f"{name}{' (held-out)' if prefix else ''}")
        if key == "td_error":
            ax.set_yscale("log")
        _style_axes(ax, label)
    handles, labels = axes[0][0].get_legend_handles_labels()
    _legend_below(fig, handles, labels)
    img = _to_png_b64(fig)
    rows = []
    for name, run in runs.items():
        diag, _ = _read_json(Path(run) / "diagnosis.json")
        rows.append(
            f"<tr><td>{_e(name)}</td><td>{_e(str(run))}</td><td>{_e((diag or {}).get('verdict', '-'))}</td>"
            f"<td>{_e(str((diag or {}).get('selected_step', '-')))}</td></tr>"
        )
    path_items = "".join(f"<li>{_e(p)}</li>" for p in (decision or {}).get("path", []))
    reasons = "".join(f"<li>{_e(r)}</li>" for r in (decision or {}).get("reasons", []))
    html_text = "\n".join([
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>offrl: {_e(out_dir.name)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>offrl automated workflow: {_e(out_dir.name)}</h1>",
        f"<h2>Decision path</h2><ol>{path_items}</ol><ul>{reasons}</ul>",
        "<h2>Runs side by side</h2>",
        f"<img alt='runs side by side' src='data:image/png;base64,{img}'>",
        "<table><tr><th>run</th><th>directory</th><th>verdict</th><th>selected step</th></tr>",
        *rows,
        "</table><p>Each run has its own report.html with every figure.</p></main></body></html>",
    ])
    out = out_dir / "report.html"
    atomic_write_text(out, html_text)
    return out
