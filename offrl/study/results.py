"""The study's results page (markdown) and its figures, from ``analysis.json`` and the cells' files.

Figures follow the paper's: per scenario and task, analysis-only success (top), the average dataset Q-value
(middle) and the training TD error (bottom) against gradient steps, one line per dataset size and setting, with
the workflow's pick as a dashed vertical line (paper Figures 3 and 5); and the normalised regret of every
selector with its confidence interval.
"""

from __future__ import annotations

import datetime
import platform
from pathlib import Path
from typing import Any

import numpy as np

from offrl.stats import wilson_interval
from offrl.study.averaging import averaging_lines
from offrl.study.config import BUDGET_KEYS
from offrl.study.faithful import faithful_lines
from offrl.study.selectors import SELECTORS, candidates, cell_name
from offrl.training import run_dir as rd
from offrl.workflow.diagnosis import DiagnosisConfig
from offrl.workflow.trust import EARLIER

SELECTOR_TEXT = {
    "workflow": "workflow (Guideline 3.1: peak of q_data)",
    "workflow_after_peak": "workflow, checkpoint after the peak",
    "last": "last checkpoint",
    "heldout_td": "lowest held-out TD error",
    "fqe": "FQE (fitted Q evaluation)",
    "softopc": "SoftOPC (secondary; Irpan et al. 2019)",
    "random": "random checkpoint (expectation)",
    "q_peak_in_range": "peak of q_data within the reward range",
    "heldout_q_peak": "peak of held-out q_data",
    "heldout_q_policy_peak": "peak of held-out q_policy, in range (ours)",
    "q_peak_fitted": "in-range peak where the critic fits (ours)",
    "oracle": "oracle on the other half of the episodes (noise floor)",
}


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and not np.isfinite(x):
        return "–"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _ci(stat: dict[str, Any] | None, digits: int = 2) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    s = _fmt(stat["mean"], digits)
    if stat.get("ci"):
        s += f" [{_fmt(stat['ci'][0], digits)}, {_fmt(stat['ci'][1], digits)}]"
    return s + f" (n={stat['n']})"


# The label of the per-run "best" checkpoint's success: with per-episode outcomes it is the maximum over the
# candidates of the success on one half of the episodes, averaged over the two halves (offrl.study.selectors), so
# it can exceed the maximum over the candidates of the success on all episodes.
BEST = "best (mean of the two halves' maxima)"

# Fields that the faithful implementations record in a run's agent config (issue 43); a MOPO/COMBO run without
# them ran offrl's earlier implementation, and the page says so beside its numbers.
def earlier_implementation(cells: list[dict[str, Any]], algo: str) -> str | None:
    """The deviations of offrl's earlier implementation of ``algo`` (:data:`offrl.workflow.trust.EARLIER`) if any of
    its runs in ``cells`` ran it (its archived agent config lacks the field the faithful one records); None
    otherwise."""
    if algo not in EARLIER:
        return None
    field, text = EARLIER[algo]
    runs = [c for c in cells if c.get("algo") == algo]
    return text if any(field not in (c.get("agent") or {}) for c in runs) else None


def algo_label(cells: list[dict[str, Any]], algo: str) -> str:
    """The name a results table gives ``algo``: CQL runs that were all Cal-QL (``calibrated``, Nakamoto et al. 2023)
    without a behaviour-cloning warm start (``bc_steps`` 0), the package default, are labelled so; MOPO, COMBO and
    BEAR runs of the earlier implementation (:func:`earlier_implementation`) too."""
    runs = [c.get("agent") or {} for c in cells if c.get("algo") == algo]
    if algo == "cql" and runs and all(a.get("calibrated") and not a.get("bc_steps") for a in runs):
        return "cql (Cal-QL, no BC warm start)"
    return f"{algo} (earlier implementation)" if earlier_implementation(cells, algo) else algo


def _cells(config: Any, scenario: str | None = None) -> list[dict[str, Any]]:
    """The finished cells (cell.json contents) of the study or of one scenario."""
    from offrl.study.config import cells_of
    from offrl.study.store import finished_cell

    return [res for cell in cells_of(config, scenario) if (res := finished_cell(config, cell)) is not None]


def _figure_scenario(cells: list[dict[str, Any]], scenario: str, task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [c for c in cells if c["cell"]["task"] == task]
    if not runs:
        return
    sizes = sorted({c["cell"]["episodes"] for c in runs})
    settings = sorted({c["cell"]["setting"] for c in runs}, key=lambda s: (s != "base", s))
    seeds = sorted({c["cell"]["seed"] for c in runs})
    styles = ["-", "--", ":", "-."]
    # One dataset size and several settings (the algorithms grid): a colour per setting, a line style per seed;
    # otherwise a colour per size and a style per setting.
    by_setting = len(sizes) == 1 and len(settings) > 1
    if by_setting:
        colors = plt.get_cmap("tab10")(np.arange(len(settings)) % 10)
    else:
        colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(len(sizes), 1)))
    fig, axes = plt.subplots(3, 1, figsize=(7, 8.5), sharex=True)
    warm_by_algo: dict[str, int] = {}
    for c in runs:
        cps = sorted(c["checkpoints"], key=lambda x: x["step"])
        steps = [x["step"] for x in cps]
        if by_setting:
            color = colors[settings.index(c["cell"]["setting"])]
            ls = styles[seeds.index(c["cell"]["seed"]) % len(styles)]
        else:
            color = colors[sizes.index(c["cell"]["episodes"])]
            ls = styles[settings.index(c["cell"]["setting"]) % len(styles)]
        label = f"{c['cell']['episodes']} ep, {c['cell']['setting']}, s{c['cell']['seed']}"
        axes[0].plot(steps, [x["success_rate"] for x in cps], ls, color=color, label=label, marker=".")
        axes[1].plot(steps, [np.nan if x.get("q_data") is None else x["q_data"] for x in cps], ls, color=color)
        axes[2].plot(steps, [np.nan if x.get("td_error") is None else x["td_error"] for x in cps], ls, color=color)
        pick = c["diagnosis"].get("selected_step")
        if pick is not None:
            for ax in axes:
                ax.axvline(pick, color=color, ls=(0, (2, 3)), lw=0.8, alpha=0.8)
        if c.get("warmup_steps"):
            warm_by_algo.setdefault(c.get("algo", "cql"), int(c["warmup_steps"]))
    axes[0].set_ylabel("success (analysis only)")
    axes[1].set_ylabel("q_data")
    axes[2].set_ylabel("td_error (train)")
    if any(x.get("td_error") is not None and x["td_error"] > 0 for c in runs for x in c["checkpoints"]):
        axes[2].set_yscale("log")  # runs without a critic (BC, TT alone) leave the panel empty
    axes[2].set_xlabel("gradient steps")
    # Grey: the warm start of the runs that have one (CQL's behaviour cloning, MOPO's and COMBO's model phase),
    # named by algorithm; it was labelled "BC warm start" whatever the algorithm until 2026-12-04.
    for warm in warm_by_algo.values():
        for ax in axes:
            ax.axvspan(0, warm, color="0.9", zorder=0)
    phases: dict[tuple[int, str], list[str]] = {}
    for a, w in sorted(warm_by_algo.items()):
        phases.setdefault((w, rd.WARMUP_PHASE.get(a, "a warm start")), []).append(a.upper())
    grey = "; ".join(f"{', '.join(algos)}: the first {w} steps, {phase}" for (w, phase), algos in phases.items())
    axes[0].legend(fontsize=7, ncol=2)
    axes[0].set_title(f"{scenario}: {task} (dashed verticals: the workflow's pick)"
                      + (f"\ngrey: {grey}" if grey else ""), fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


MODEL_CURVES = (("heldout/model_mse", "held-out one-step MSE", True),
                ("heldout/model_rollout_mse", "held-out k-step MSE", True),
                ("heldout/model_reward_mse_rewarded", "held-out reward MSE\nwhere rewarded", False))


def _model_lines(cells: list[dict[str, Any]], task: str) -> dict[tuple, list[str]]:
    """The model-phase curves of ``task``'s MOPO and COMBO runs, each once: ``{((step, *MODEL_CURVES values),
    ...): ["combo s0", "mopo s0"]}``, the names of the runs that have exactly those curves."""
    lines: dict[tuple, list[str]] = {}
    runs = [c for c in cells if c.get("algo") in ("mopo", "combo") and c["cell"]["task"] == task]
    for c in sorted(runs, key=lambda c: (c["cell"]["seed"], c["cell"]["setting"])):
        warm = int(c.get("warmup_steps") or 0)
        cps = sorted((x for x in c["checkpoints"] if not warm or x["step"] <= warm), key=lambda x: x["step"])
        key = tuple((x["step"], *(x.get(k) for k, _, _ in MODEL_CURVES)) for x in cps)
        lines.setdefault(key, []).append(f"{c['cell']['setting']} s{c['cell']['seed']}")
    return lines


def _figure_model(cells: list[dict[str, Any]], task: str, path: Path) -> bool:
    """The dynamics model's held-out error curves over its training phase (the issue's "model error curves"):
    one-step MSE, k-step open-loop MSE and the reward head's error on rewarded transitions, one line per run of
    ``task``; runs whose curves are identical (MOPO and COMBO share the model on the same data and seed) are drawn
    once and labelled together. Returns whether a figure was written (False: no model-based run of the task)."""
    lines = _model_lines(cells, task)
    if not lines:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(MODEL_CURVES), 1, figsize=(7, 7), sharex=True)
    colors = plt.get_cmap("tab10")(np.arange(len(lines)) % 10)
    for color, (key, names) in zip(colors, lines.items(), strict=True):
        steps = [row[0] for row in key]
        for i, (ax, (_, label, log)) in enumerate(zip(axes, MODEL_CURVES, strict=True)):
            ys = [np.nan if row[i + 1] is None else row[i + 1] for row in key]
            ax.plot(steps, ys, marker=".", color=color, label=" = ".join(names) if i == 0 else None)
            ax.set_ylabel(label, fontsize=8)
            if log and any(np.isfinite(y) and y > 0 for y in ys):
                ax.set_yscale("log")
    axes[-1].axhline(1.0, color="0.5", ls=":", lw=0.8)  # a model that predicts no reward, for 0/1 rewards
    axes[-1].set_xlabel("gradient steps (the model phase)")
    axes[0].legend(fontsize=7, ncol=2)
    axes[0].set_title(f"the dynamics model, {task}: held-out errors over its training phase (normalised units)\n"
                      f"dotted: the reward error of a head that predicts 0", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _figure_selectors(analysis: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in SELECTORS if n in analysis["headline"] and analysis["headline"][n]["regret"]["mean"] is not None]
    if not names:
        return
    fig, ax = plt.subplots(figsize=(7, 3))
    means = [analysis["headline"][n]["regret"]["mean"] for n in names]
    lows = [analysis["headline"][n]["regret"]["ci"] or [m, m] for n, m in zip(names, means, strict=True)]
    err = np.array([[m - lo[0] for m, lo in zip(means, lows, strict=True)],
                    [lo[1] - m for m, lo in zip(means, lows, strict=True)]])
    ax.bar(range(len(names)), means, yerr=err, capsize=4, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.set_ylabel("normalised regret (0 = best)")
    ax.set_ylim(0, 1.05)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _warmup_text(cells: list[dict[str, Any]]) -> str:
    """What each algorithm's first steps were (run_dir.WARMUP_PHASE), from the cells themselves."""
    seen = {}
    for c in cells:
        algo = c.get("algo", "cql")
        seen.setdefault(algo, int(c.get("warmup_steps", 0)))
    parts = [f"{algo.upper()}: the first {steps} are {rd.WARMUP_PHASE.get(algo, 'a warm start')}"
             for algo, steps in seen.items() if steps > 0]
    return "; ".join(parts) if parts else "no warm start"


def _data_text(config: Any) -> str:
    regimes = sorted({r for sc in config.scenarios for r in getattr(sc, "regimes", ("white",))})
    parts = [f"white (Gaussian action noise sigma {config.noise_sigma})" if r == "white" else r for r in regimes]
    return (f"the task's scripted policy under the behaviour regime(s) {', '.join(parts)} "
            f"(docs/dataset-format.md)")


def _selector_rows(headline: dict[str, Any]) -> list[str]:
    rows = []
    for name in SELECTORS:
        h = headline.get(name)
        if h is None:
            continue
        rows.append(f"| {SELECTOR_TEXT[name]} | {_ci(h['success'])} | {_ci(h['regret'])} | "
                    f"{_ci(h.get('regret_minus_workflow'))} | {_ci(h.get('within_0.1'))} | {_ci(h['abs_regret'])} | "
                    f"{_ci(h['spearman'])} |")
    return rows


def _model_section(cells: list[dict[str, Any]]) -> list[str]:
    """The dynamics model's verdict and held-out errors per model-based run (MOPO, COMBO), from the archived
    cells' ``diagnosis.model`` (:func:`offrl.workflow.diagnosis.diagnose_model`); empty without such runs."""
    runs = [c for c in cells if c.get("algo") in ("mopo", "combo")]
    if not runs:
        return []
    L = ["\n## The dynamics model (MOPO, COMBO)\n",
         "The model's own workflow (docs/model-based.md): its held-out one-step MSE over the checkpoints of the model "
         "phase is a validation loss, read for over- and underfitting; the k-step open-loop error is the one the "
         "policy's rollouts compound. Normalised units; no success rate is read here.\n",
         "The reward column is the reward head's squared error on the held-out transitions with a non-zero reward "
         "(`model_reward_mse_rewarded`, last checkpoint; logged from 2026-12-04): with 0/1 rewards, near 1 means "
         "the model's rollouts pay almost none of a success.\n",
         "| run | model verdict | held-out MSE, best (step) | held-out MSE, end of phase | held-out k-step MSE, end "
         "of phase | held-out reward MSE where rewarded | reason |", "|---|---|---|---|---|---|---|"]
    verdicts: dict[str, int] = {}
    for c in sorted(runs, key=lambda c: c["run_dir"]):
        name = Path(c["run_dir"]).name
        m = (c.get("diagnosis") or {}).get("model")
        if not m:
            L.append(f"| {name} | – | – | – | – | – | not archived (a cell made before the archive kept the model) |")
            continue
        verdicts[m["verdict"]] = verdicts.get(m["verdict"], 0) + 1
        ev = m.get("evidence") or {}
        held = [v for v in ev.get("heldout/model_mse") or [] if v is not None]
        roll = [v for v in ev.get("heldout/model_rollout_mse") or [] if v is not None]
        best = f"{min(held):.3g} ({m.get('best_step')})" if held else "–"
        rew = [r.get("heldout/model_reward_mse_rewarded") for r in c.get("checkpoints") or []]
        rew = [v for v in rew if v is not None]
        L.append(f"| {name} | {m['verdict']} | {best} | {f'{held[-1]:.3g}' if held else '–'} | "
                 f"{f'{roll[-1]:.3g}' if roll else '–'} | {f'{rew[-1]:.3g}' if rew else '–'} | "
                 f"{m.get('reason', '')} |")
    if verdicts:
        L.append("\nModel verdicts: " + ", ".join(f"{k} {n}" for k, n in sorted(verdicts.items())) + ".")
    return L


def _regime_section(reg: dict[str, Any] | None, paper_regime: bool = False) -> list[str]:
    """docs/selection.md's "The paper's regime" statistics: q_data shapes, every rule's regret and the paired
    differences with a cluster bootstrap over tasks then runs (per-task means beside), FQE's health."""
    if not reg or not reg.get("rules"):
        return []
    from offrl.study.selectors import regime_reading

    reading = regime_reading(reg)
    words = {"works": "Guideline 3.1 works in this regime", "diagnostic": "the Q curve is a diagnostic, not a selector",
             "open": "open: the pre-registered extension applies (docs/selection.md)",
             "undecided": "not decidable yet"}
    # The reading was pre-registered for the paper-regime grid only; other studies print the numbers without it.
    L = ["\n## The pre-registered reading (docs/selection.md, \"The paper's regime\")\n",
         f"Applied mechanically (offrl.study.selectors.regime_reading): **{words[reading['answer']]}**: "
         f"{reading['reason']}.\n"] if paper_regime else []
    L += ["\n## Regret by task clusters, q_data shapes, FQE's health\n",
         "Means with 95 % intervals of a cluster bootstrap that resamples tasks, then runs within them "
         "(offrl.stats.cluster_bootstrap_mean); per-task means beside. The oracle is the noise floor.\n",
         "| rule | normalised regret | per task |", "|---|---|---|"]
    for name, r in reg["rules"].items():
        per = ", ".join(f"{t} {_fmt(v)}" for t, v in r["per_task"].items())
        L.append(f"| {name} | {_ci(r)} | {per} |")
    L += ["", "Paired per-run differences of regret (below 0: better than the Q peak):\n",
          "| difference | mean [95 % cluster interval] | per task |", "|---|---|---|"]
    for name, r in reg["paired"].items():
        per = ", ".join(f"{t} {_fmt(v)}" for t, v in r["per_task"].items())
        L.append(f"| {name} | {_ci(r)} | {per} |")
    for name, r in (reg.get("secondary") or {}).items():
        d = r["minus_random"]
        per = ", ".join(f"{t} {_fmt(v)}" for t, v in d["per_task"].items())
        L.append(f"\nSecondary rule {name} (pre-registered after the grid started; docs/selection.md): a pick on "
                 f"{r['runs_with_a_pick']} of {r['runs']} runs; "
                 f"regret {_ci(r)}; {name} - random {_ci(d)} (per task: {per}).")
        if name == "softopc":
            from offrl.study.selectors import softopc_reading

            sr = softopc_reading(r)
            L.append(f"SoftOPC's pre-registered reading: **{sr['answer']}** ({sr['reason']}).")
    L.append(f"\nRuns without a defined regret (every candidate scores alike): {reg['runs_without_regret']}.")
    below = reg.get("q_below_range")
    if below:
        L.append(f"\nq_data below the lowest return the rewards allow: at the last candidate in {below['last']} of "
                 f"{below['runs']} runs, at every candidate in {below['everywhere']}. Where it is, a rise is the "
                 f"critic recovering from the regularizer's push, not returns propagating (docs/selection.md, the "
                 f"observation on the paper's regime): the verdict is on this critic, not a reproduction of the "
                 f"paper's Q curves.")
    shapes = ", ".join(f"{k}: {v}" for k, v in sorted(reg["q_shape"].items()))
    L.append(f"\nShape of q_data over the candidates (Metric 3.1's rise and fall tests): {shapes}.")
    f = reg["fqe"]
    L.append(f"\nFQE: {f['converged']} of {f['runs']} runs' fits stopped by the stopping rule; "
             f"{f['out_of_bounds']} of {f['estimates']} estimates outside the value bounds of the rewards.\n")
    return L


def write_results(analysis: dict[str, Any], config: Any, command: str | None = None) -> Path:
    """Write the results page (markdown, atomically) and its figures; return its path. The page is its sections
    in order, each built by its own function from the analysis (offrl.study.selectors.analyse) and the cells."""
    out = Path(config.results_path)
    fig_dir = out.parent / "figures" / out.stem
    cells = _cells(config)
    rel = lambda p: Path(p).resolve().relative_to(out.parent.resolve()).as_posix() if \
        Path(p).resolve().is_relative_to(out.parent.resolve()) else str(p)  # noqa: E731
    cmd = command or f"offrl study {config.out / 'study.toml'}"
    L = [
        *_header_lines(analysis, config, cells, cmd),
        *_selection_lines(analysis, fig_dir, rel),
        *_algorithm_lines(analysis, cells),
        *_model_lines_and_figures(cells, fig_dir, rel),
        *_diagnosis_lines(analysis),
        *_scenario_lines(analysis, config, fig_dir, rel),
        *_regime_section(analysis.get("regime"), paper_regime=getattr(config, "reward_mode", "") == "success-every-step"),
        *averaging_lines(cells, int(getattr(config, "bootstrap_samples", 10_000))),
        *faithful_lines(cells, getattr(config, "archive", None)),
        *_definition_lines(),
    ]
    rd.atomic_write_text(out, "\n".join(L) + "\n")
    return out


def _reward_text(config: Any, cells: list[dict[str, Any]]) -> str:
    """The data's reward structure and horizon as the study collected it (``reward_mode``; per task where the
    cells record the horizon of their data)."""
    mode = getattr(config, "reward_mode", "terminal")
    if mode != "success-every-step":
        ending = "ends the episode at success" if mode == "terminal" else "never terminal"
        return f"rewards `{mode}` ({ending}), horizon {config.horizon}"
    known = sorted({(c["cell"]["task"], int(h)) for c in cells if (h := (c.get("dataset") or {}).get("horizon"))})
    per_task = (": " + ", ".join(f"{t} {h}" for t, h in known)) if known else ""
    return ("rewards `success-every-step` (1 on every step the task is solved, never terminal), each task's horizon "
            f"by the rule of offrl/envs/reward_modes.py{per_task}")


def _header_lines(analysis: dict[str, Any], config: Any, cells: list[dict[str, Any]], cmd: str) -> list[str]:
    """The title, how the page was written, the budget, failed runs, and the implementations measured."""
    L: list[str] = []
    done = analysis.get("cells_finished", analysis["runs"])
    total = analysis.get("cells_total", done)
    if done < total:
        L.append(f"# Does the workflow pick good policies? Validation study (PARTIAL: {done} of {total} runs)\n")
        L.append("**The grid is not finished: nothing on this page decides a default** (the rule of "
                 "docs/selection.md is applied to the complete grid). Run the same command to continue it.\n")
    else:
        L.append("# Does the workflow pick good policies? Validation study\n")
    L.append(f"Written by `offrl study` on {datetime.date.today().isoformat()} "
             f"({platform.machine()}, {platform.system()}). Reproduce: `{cmd}`.\n")
    L.append(
        f"Runs finished: **{done}** of {total}"
        + (f" ({analysis['runs']} with a Q-function, which the selector tables and the diagnosis accuracy read)"
           if analysis["runs"] != done else "") + ". "
        f"Budget per run: {config.steps} gradient steps ({_warmup_text(cells)}), a checkpoint every "
        f"{config.checkpoint_every} steps, "
        f"{config.eval_episodes} analysis-only episodes per checkpoint, FQE {config.fqe_steps} steps. Data: "
        f"{_data_text(config)}, {_reward_text(config, cells)}. "
        f"Every hyperparameter is the package default; settings change only what their name says.\n"
    )
    for sc in config.scenarios:
        own = {k: getattr(sc, k) for k in BUDGET_KEYS if getattr(sc, k) is not None}
        if own:
            L.append(f"Scenario `{sc.name}` has its own budget: "
                     + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in own.items()) + ".\n")
    for f in analysis.get("failed", []):
        L.append(f"- failed run `{f['cell']}`: {f['error']}")
    L.append("Success rates are measured in the simulator **for analysis only**: no selector reads them.\n")
    for algo in sorted({c.get("algo") for c in cells if c.get("algo")}):
        text = earlier_implementation(cells, algo)
        if text:
            L.append(f"**{algo} here is offrl's earlier implementation** ({text}), which deviated from its sources; "
                     f"the faithful one has not been measured on these runs yet (docs/model-based.md).\n")

    return L


def _selection_lines(analysis: dict[str, Any], fig_dir: Path, rel: Any) -> list[str]:
    """Selection quality over all runs (and over the runs whose checkpoints differ beyond noise), with the pre-registered default rule applied and the regret figure."""
    L: list[str] = []
    done = analysis.get("cells_finished", analysis["runs"])
    total = analysis.get("cells_total", done)
    L.append("## Selection quality (all runs)\n")
    L.append("Mean over runs, 95% percentile-bootstrap confidence interval over runs, and the number of runs "
             "where the quantity is defined. Normalised regret = (best − picked) / (best − worst) over the "
             "candidate checkpoints (those after the warm start); absolute regret = best − picked success; "
             "Spearman = rank correlation between the selector's score and success across checkpoints.\n")
    L.append("With per-episode outcomes, every pick is scored on the half of the episodes the oracle did not pick "
             "with, and the halves are swapped and averaged: the oracle's regret is the noise floor. The paired "
             "column is the per-run difference to the paper's rule (negative: better), with its interval.\n")
    L.append("| selector | success of the pick | normalised regret | paired diff. to workflow | within 0.1 of best "
             "| absolute regret | Spearman ρ |")
    L.append("|---|---|---|---|---|---|---|")
    L.extend(_selector_rows(analysis["headline"]))
    if analysis.get("best_in_hindsight"):
        L.append(f"| {BEST} checkpoint in hindsight | {_ci(analysis['best_in_hindsight'])} | 0 | 0 | 1 |")
    rule = analysis.get("default_rule")
    if rule is not None:
        finished = done >= total
        L.append(f"\n**The pre-registered default rule** (docs/selection.md), applied to these runs: "
                 f"{SELECTOR_TEXT.get(rule['default'], rule['default'])}: {rule['reason']}."
                 + ("" if finished else " The grid is not finished: this decides nothing yet.") + "\n")
    _figure_selectors(analysis, fig_dir / "selectors_regret.png")
    if (fig_dir / "selectors_regret.png").is_file():
        L.append(f"\n![normalised regret per selector]({rel(fig_dir / 'selectors_regret.png')})\n")
    apart = analysis.get("distinguishable")
    if apart is not None:
        L.append("\n### Runs whose checkpoints differ beyond evaluation noise (secondary)\n")
        L.append(f"{apart['runs']} of {analysis['runs']} runs: those where a chi-square test of homogeneity of the "
                 f"candidates' success counts (all evaluation episodes) gives p < {apart['p_below']:g}. In the "
                 f"others every checkpoint scores alike within noise, and normalised regret compares noise with "
                 f"noise (docs/selection.md, addendum). The default rule reads the table above, not this one.\n")
        if apart["runs"]:
            L.append("| selector | success of the pick | normalised regret | paired diff. to workflow | within 0.1 of "
                     "best | absolute regret | Spearman ρ |")
            L.append("|---|---|---|---|---|---|---|")
            L.extend(_selector_rows(apart["headline"]))

    return L


def _algorithm_lines(analysis: dict[str, Any], cells: list[dict[str, Any]]) -> list[str]:
    """The per-algorithm table (pick, best, last, data; paired against CQL and BC), when the grid has several."""
    L: list[str] = []
    algos = analysis.get("per_algorithm") or {}
    if len(algos) > 1:
        L.append("\n## Per algorithm\n")
        L.append("The workflow's pick (each algorithm's Guideline 3.1 curve, docs/metrics.md; BC and the Trajectory "
                 "Transformer (tt), which have no Q-function: the peak of the held-out log-likelihood of their actions "
                 f"and of their next tokens), the {BEST} checkpoint in hindsight and the last, "
                 "as success rates (analysis only, scored on half the evaluation episodes as above), and the "
                 "behaviour data's success, with 95% bootstrap intervals over runs. The last four columns are paired "
                 "by run (same task, data and seed): the pick's and the best checkpoint's success minus CQL's and "
                 "minus BC's. A scenario with its own budget (above) has its own checkpoints: its best is the best "
                 "of those.\n")
        L.append(f"| algorithm | runs | pick | {BEST} | last | normalised regret of the pick | data | pick − CQL | "
                 "best − CQL | pick − BC | best − BC |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for algo, a in algos.items():
            paired = " | ".join(_ci(a.get(k)) if a.get(k) else "–" for k in
                                ("pick_minus_cql", "best_minus_cql", "pick_minus_bc", "best_minus_bc"))
            L.append(f"| {algo_label(cells, algo)} | {a['runs']} | {_ci(a['pick_success'])} | {_ci(a['best_success'])} | "
                     f"{_ci(a['last_success'])} | {_ci(a['pick_regret'])} | {_ci(a.get('data_success'))} | "
                     f"{paired} |")

    return L


def _model_lines_and_figures(cells: list[dict[str, Any]], fig_dir: Path, rel: Any) -> list[str]:
    """The dynamics model's section and its held-out error figures (MOPO and COMBO runs)."""
    L: list[str] = []
    L.extend(_model_section(cells))
    for task in sorted({c["cell"]["task"] for c in cells if c.get("algo") in ("mopo", "combo")}):
        path = fig_dir / f"model_{task.replace('+', '_')}.png"
        if _figure_model(cells, task, path):
            L.append(f"\n![the dynamics model's held-out errors, {task}]({rel(path)})\n")

    return L


def _diagnosis_lines(analysis: dict[str, Any]) -> list[str]:
    """Diagnosis accuracy against the success labels, beside its base rate, per verdict and per threshold."""
    L: list[str] = []
    da = analysis["diagnosis_accuracy"]
    L.append("\n## Diagnosis accuracy\n")
    L.append(f"Label from the analysis-only success curve: {da['rule']}. The offline verdict agrees when it says "
             f"`overfitting` exactly for the runs so labelled.\n")
    L.append(f"- labelled runs: {da['labelled_runs']}; overfitting by success: {da['overfitting_by_success']}; "
             f"by the offline verdict: {da['overfitting_by_verdict']}")
    L.append(f"- agreement: {_ci(da['accuracy'])}; precision {_fmt(da['precision'])}, recall {_fmt(da['recall'])}")
    if da.get("base_rate_not_overfitting"):
        L.append(f"- base rate: calling every run \"not overfitting\" agrees in {_ci(da['base_rate_not_overfitting'])}")
    if (da.get("old_rule") or {}).get("accuracy"):
        L.append(f"- the rule before Metric 3.1 required a rise (`require_rise = False`): "
                 f"{da['old_rule']['overfitting_by_verdict']} runs called overfitting, agreement "
                 f"{_ci(da['old_rule']['accuracy'])}")
    L.append("")
    L.append("| offline verdict | success label | runs |")
    L.append("|---|---|---|")
    for row in da["confusion"]:
        L.append(f"| {row['verdict']} | {row['success_label']} | {row['runs']} |")
    if da.get("per_verdict"):
        L.append("\nPer verdict (docs/selection.md): the label each verdict claims and how often the runs carry it.\n")
        L.append("| verdict | runs | claims | agreement | labels |")
        L.append("|---|---|---|---|---|")
        for verdict, v in da["per_verdict"].items():
            labels = ", ".join(f"{k}: {n}" for k, n in sorted(v["labels"].items()))
            L.append(f"| {verdict} | {v['runs']} | {v['claims'] or '–'} | {_ci(v['agreement'])} | {labels} |")
    if da.get("underfit_threshold_variants"):
        L.append("\nThe pre-registered candidate thresholds of the underfitting rule (share of the TD targets' "
                 "variance the critic leaves unexplained; the package default is "
                 f"{DiagnosisConfig().underfit_unexplained:g}), each verdict's runs and agreement:\n")
        L.append("| threshold | verdict | runs | agreement | labels |")
        L.append("|---|---|---|---|---|")
        for x, table in da["underfit_threshold_variants"].items():
            for verdict, v in table.items():
                labels = ", ".join(f"{k}: {n}" for k, n in sorted(v["labels"].items()))
                L.append(f"| {x} | {verdict} | {v['runs']} | {_ci(v['agreement'])} | {labels} |")
    if da.get("overestimation"):
        L.append("\nRuns called over-estimation: the success (half B) before the first flagged checkpoint (best "
                 "smoothed) and after it (mean).\n")
        L.append("| run | first flagged step | success before | after | drop |")
        L.append("|---|---|---|---|---|")
        for o in da["overestimation"]:
            L.append(f"| {o['name']} | {o['first_flagged_step']} | {_fmt(o['success_before'])} | "
                     f"{_fmt(o['success_after'])} | {_fmt(o['drop'])} |")

    return L


def _scenario_lines(analysis: dict[str, Any], config: Any, fig_dir: Path, rel: Any) -> list[str]:
    """Per scenario: every run's row, its figures, and the remedies against their base runs."""
    L: list[str] = []
    for sc in sorted(config.scenarios, key=lambda sc: sc.name):
        rows = _cells(config, sc.name)
        L.append(f"\n## Scenario: {sc.name}\n")
        if sc.description:
            L.append(sc.description.strip() + "\n")
        if not rows:
            L.append("No finished runs yet.\n")
            continue
        L.append("| task | regime | episodes | seed | setting | behaviour success | verdict | q_data peak → last | td_error "
                 f"(last) | unexplained TD (last) | workflow pick | success: pick [95% CI] / {BEST} / last / late |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        per_run = {r["name"]: r for r in analysis["per_run"]}
        for c in rows:
            cc = c["cell"]
            cps = candidates(c)
            q = [x.get("q_data") for x in cps if x.get("q_data") is not None]
            last = cps[-1]
            sel = per_run[cell_name(c)]
            wf = sel["selectors"]["workflow"]
            picked = next((x for x in cps if x["step"] == wf["step"]), None)
            ci = wilson_interval(picked["successes"], picked["episodes"]) if picked else None
            late = float(np.mean([x["success_rate"] for x in cps[-3:]]))
            ux = last.get("td_error_over_target_var")
            L.append(
                f"| {cc['task']} | {cc.get('regime', 'white')} | {cc['episodes']} | {cc['seed']} | {cc['setting']} | "
                f"{_fmt(c['dataset'].get('behaviour_success_rate'))} | {c['verdict']} | "
                f"{_fmt(max(q) if q else None)} → {_fmt(q[-1] if q else None)} | {_fmt(last.get('td_error'), 3)} | "
                f"{_fmt(ux)} | {wf['step']} | "
                f"{_fmt(wf['success'])} [{_fmt(ci[0]) if ci else '–'}, {_fmt(ci[1]) if ci else '–'}] / "
                f"{_fmt(wf['best'])} / {_fmt(last['success_rate'])} / {_fmt(late)} |"
            )
        for task in sc.tasks:
            path = fig_dir / f"{sc.name}_{task.replace('+', '_')}.png"
            _figure_scenario(rows, sc.name, task, path)
            if path.is_file():
                L.append(f"\n![{sc.name} {task}]({rel(path)})\n")
        effects = analysis["remedies"].get(sc.name, [])
        if effects:
            L.append("\nRemedy against base (same data and seed): values are base → remedy.\n")
            L.append(f"| task | episodes | seed | remedy | verdict | success of the workflow pick | {BEST} | "
                     "late success (last 3) | td_error (last) | q_data (last) |")
            L.append("|---|---|---|---|---|---|---|---|---|---|")
            for e in effects:
                def pair(k: str, d: int = 2, e: dict[str, Any] = e) -> str:
                    return f"{_fmt(e[k][0], d)} → {_fmt(e[k][1], d)}"

                L.append(f"| {e['task']} | {e['episodes']} | {e['seed']} | {e['remedy']} | "
                         f"{e['verdict'][0]} → {e['verdict'][1]} | {pair('workflow_pick_success')} | "
                         f"{pair('best_success')} | {pair('late_success')} | {pair('final_td_error', 3)} | "
                         f"{pair('final_q_data')} |")
    return L


def _definition_lines() -> list[str]:
    """The definitions of the page's columns."""
    L: list[str] = []
    L.append("\n## Definitions\n")
    L.append("- *late*: mean success of the last 3 checkpoints (does a run keep its later checkpoints good?).")
    L.append("- *unexplained TD*: `td_error_over_target_var` at the last checkpoint, the TD error over the variance "
             "of the TD targets (docs/metrics.md); above `underfit_unexplained` (at the end of the run) the "
             "diagnosis calls the run underfitting.")
    L.append("- The per-checkpoint success intervals are Wilson 95% intervals over the evaluation episodes.")
    L.append(f"- *{BEST}*: with per-episode outcomes, the largest success over the candidate checkpoints on one "
             "half of the episodes, averaged over the two halves (the oracle's side of the split-half scoring); "
             "it can exceed the largest success on all episodes. Without per-episode outcomes, that largest "
             "success.")
    L.append("- All numbers: `analysis.json` in the study directory; per run: `cells/<run>/cell.json`.")
    return L
