"""Tests for offrl.report: the self-contained HTML run report."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import pytest

from offrl.report import write_report
from offrl.report.html import load_metrics

IMG_TAG = '<img src="data:image/png;base64,'
STEPS = [1000 * (i + 1) for i in range(10)]
SELECTED, PEAK = 4000, 5000


def _record(i: int, step: int) -> dict:
    # Rise-then-fall dataset Q (peak at the 5th checkpoint), shrinking losses.
    q = 10.0 - 0.8 * (i - 4) ** 2
    rec = {
        "step": step,
        "time_s": 12.5 * (i + 1),
        "q_data": q,
        "td_error": 2.0 * math.exp(-0.3 * i) + 0.05,
        "cql_regularizer": 5.0 - 0.3 * i,
        "q_error_estimate": 1.0 + 0.5 * i,
        "q_policy": q + 1.0,
        "q_random": q - 3.0,
        "heldout/q_data": q - 0.5 - 0.2 * i,
        "heldout/td_error": 2.5 * math.exp(-0.2 * i) + 0.1,
        "heldout/cql_regularizer": 5.5 - 0.2 * i,
        "heldout/q_error_estimate": 1.5 + 0.6 * i,
        "train/critic_loss": 3.0 / (i + 1),
        "train/actor_loss": -q,
        "train/entropy_temperature": 0.1 * math.exp(-0.1 * i),
    }
    if i == 3:
        rec["heldout/td_error"] = None  # nulls must be tolerated
    if i == 6:
        rec["cql_regularizer"] = float("nan")
    return rec


def _make_run(
    tmp_path: Path,
    *,
    task: str = "pick-place-v3",
    diagnosis: bool = True,
    evaluation: bool = True,
    name: str = "run-0",
) -> Path:
    run = tmp_path / name
    run.mkdir()
    config = {
        "algo": "cql",
        "seed": 7,
        "dataset": {"path": "data/pick.hdf5", "fingerprint": "ab" * 32, "task": task},
        "agent": {"alpha": 5.0, "gamma": 0.99, "tau": 0.005},
        "training": {"steps": 10000, "checkpoint_every": 1000},
        "offrl_version": "0.1.0",
        "versions": {"jax": "0.4.30"},
    }
    (run / "config.json").write_text(json.dumps(config))
    with open(run / "metrics.jsonl", "w") as f:
        for i, step in enumerate(STEPS):
            f.write(json.dumps(_record(i, step)) + "\n")  # NaN is written as the bare token NaN
    if diagnosis:
        (run / "diagnosis.json").write_text(
            json.dumps(
                {
                    "verdict": "overfitting",
                    "selected_step": SELECTED,
                    "peak_step": PEAK,
                    "selection_rule": "checkpoint just before the held-out q_data peak",
                    "q_range": [0.0, 12.0],
                    "evidence": {
                        "q_drop_after_peak": 0.63,
                        "td_error_trend": "decreasing",
                        "n_checkpoints": 10,
                    },
                    "reasons": [
                        "q_data falls by 63% after its peak",
                        "held-out TD error rises late in training",
                    ],
                    "recommendation": "Use the selected checkpoint; add regularization (e.g. dropout) to train longer.",
                }
            )
        )
    if evaluation:
        results = [
            {"step": s, "success_rate": r, "successes": int(r * 20), "episodes": 20}
            for s, r in zip(STEPS, [0.1, 0.2, 0.4, 0.6, 0.55, 0.7, 0.5, 0.35, 0.3, 0.25], strict=True)
        ]
        (run / "evaluation.json").write_text(
            json.dumps({"used_for_selection": False, "task": task, "episodes": 20, "results": results})
        )
    return run


def test_full_report(tmp_path: Path) -> None:
    run = _make_run(tmp_path)
    path = write_report(run)
    assert path == run / "report.html"
    text = path.read_text(encoding="utf-8")
    assert "overfitting" in text
    assert f"step {SELECTED}" in text
    assert "analysis only" in text
    assert text.count(IMG_TAG) >= 5
    assert "http://" not in text and "https://" not in text
    assert "add regularization" in text and "q_data falls by 63% after its peak" in text
    assert "q_drop_after_peak" in text and "pick-place-v3" in text and "data/pick.hdf5" in text
    # selected vs best vs last: selected 4000 -> 60%, best in hindsight 6000 -> 70%, last 10000 -> 25%
    table = text[text.index("Selected vs best vs last") :]
    assert re.search(r"4000</td><td>60% \(12/20\)", table)
    assert re.search(r"6000</td><td>70% \(14/20\)", table)
    assert re.search(r"10000</td><td>25% \(5/20\)", table)
    assert not list(run.glob("*.tmp"))
    # Every embedded image decodes to a PNG.
    for b64 in re.findall(r'data:image/png;base64,([A-Za-z0-9+/=]+)"', text):
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"


def test_custom_output_path_and_rebuild(tmp_path: Path) -> None:
    run = _make_run(tmp_path)
    out = tmp_path / "elsewhere" / "r.html"
    assert write_report(run, out) == out
    assert out.is_file() and not (run / "report.html").exists()
    assert not list(out.parent.glob("*.tmp"))
    write_report(str(run))  # str path, rebuilding is fine
    assert (run / "report.html").is_file()


def test_without_diagnosis_and_evaluation(tmp_path: Path) -> None:
    run = _make_run(tmp_path, diagnosis=False, evaluation=False)
    text = write_report(run).read_text(encoding="utf-8")
    assert "not run yet" in text
    assert "offrl diagnose" in text
    assert "offrl evaluate" in text
    assert text.count(IMG_TAG) >= 4
    assert "http://" not in text and "https://" not in text


def test_missing_files_raise(tmp_path: Path) -> None:
    run = _make_run(tmp_path)
    (run / "metrics.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"metrics\.jsonl.*offrl train"):
        write_report(run)
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        load_metrics(run)
    (run / "metrics.jsonl").write_text('{"step": 10, "q_da')  # only a torn record
    with pytest.raises(FileNotFoundError, match="no complete record"):
        write_report(run)
    (run / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json.*offrl train"):
        write_report(run)
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "does-not-exist")
    assert not (run / "report.html").exists() and not list(run.glob("*.tmp"))


def test_torn_last_line_ignored(tmp_path: Path) -> None:
    run = _make_run(tmp_path)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 11000, "q_data": 3.1, "td_err')
    records = load_metrics(run)
    assert [r["step"] for r in records] == STEPS
    text = write_report(run).read_text(encoding="utf-8")
    assert "10 checkpoint(s), last at step 10000" in text


def test_sparse_metrics_and_odd_values(tmp_path: Path) -> None:
    # No held-out split, no losses, a resumed run repeating a step, a value that is a string.
    run = _make_run(tmp_path, evaluation=False)
    lines = []
    for i, step in enumerate([1000, 2000, 3000, 2000, 3000, 4000]):
        lines.append(
            json.dumps(
                {
                    "step": step,
                    "q_data": float(i),
                    "td_error": -1.0 + i,
                    "q_error_estimate": "n/a" if i == 2 else 0.5,
                }
            )
        )
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n\n")
    text = write_report(run).read_text(encoding="utf-8")
    assert "4 checkpoint(s), last at step 4000" in text
    assert "No cql_regularizer recorded" in text and "No train/* losses recorded" in text
    assert text.count(IMG_TAG) == 3


def test_html_escaping(tmp_path: Path) -> None:
    evil = '<script>alert("x")</script>'
    run = _make_run(tmp_path, task=evil)
    diag = json.loads((run / "diagnosis.json").read_text())
    diag["reasons"].append(evil)
    diag["evidence"][evil] = evil
    diag["verdict"] = evil
    (run / "diagnosis.json").write_text(json.dumps(diag))
    text = write_report(run).read_text(encoding="utf-8")
    assert "<script" not in text
    assert "&lt;script&gt;" in text


def test_corrupt_optional_files_do_not_break_report(tmp_path: Path) -> None:
    run = _make_run(tmp_path)
    (run / "diagnosis.json").write_text("{not json")
    (run / "evaluation.json").write_text("[1, 2]")
    text = write_report(run).read_text(encoding="utf-8")
    assert "diagnosis.json could not be read" in text
    assert "evaluation.json does not contain a JSON object" in text
    assert text.count(IMG_TAG) >= 4


def test_diverged_run_with_non_finite_values(tmp_path: Path) -> None:
    run = _make_run(tmp_path, evaluation=False)
    (run / "config.json").write_text("{}")  # every config field missing
    recs = [
        {"step": 1000, "q_data": 1e30, "td_error": float("inf")},
        {"step": 2000, "q_data": float("nan"), "td_error": float("nan")},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    diag = json.loads((run / "diagnosis.json").read_text())
    diag.update(verdict="diverged", selected_step=None, peak_step=None, q_range=[0.0, "bad"])
    (run / "diagnosis.json").write_text(json.dumps(diag))
    text = write_report(run).read_text(encoding="utf-8")
    assert "diverged" in text and "Selected checkpoint: <b>none</b>" in text
    assert "td_error is in metrics.jsonl but has no finite value" in text
    assert text.count(IMG_TAG) == 1  # only q_data has a finite value


def test_first_screen_has_the_verdict_the_pick_and_the_comparison(tmp_path: Path) -> None:
    run = _make_run(tmp_path)
    config = json.loads((run / "config.json").read_text())
    config["versions"]["offrl"] = "0.1.0"  # config.json records offrl's version twice
    (run / "config.json").write_text(json.dumps(config))
    text = write_report(run).read_text(encoding="utf-8")
    order = ["overfitting</div>", f"step {SELECTED}", "add regularization", "q_data falls by 63%",
             "Selected vs best vs last", "Figure 1:", "<h2>Evidence", "<h2>Configuration", "<details>",
             "jax</td>"]
    positions = [text.index(s) for s in order]
    assert positions == sorted(positions)
    assert text.index("data/pick.hdf5") > text.index("<details>")
    assert text.count("<td class='k'>offrl</td>") == 1 and "offrl version" not in text
    # 95% Wilson intervals of 12/20, 14/20 and 5/20, from offrl.stats.
    from offrl.stats import wilson_interval

    assert "95% Wilson interval" in text
    for k in (12, 14, 5):
        lo, hi = wilson_interval(k, 20)
        assert f"[{lo:.0%}, {hi:.0%}]" in text


@pytest.mark.parametrize(
    ("rates", "expected"),
    [([0.0] * 10, "none: no checkpoint succeeded (10 evaluated, all at 0%)"),
     ([0.5] * 10, "none: all 10 checkpoints tied at 50%")],
)
def test_no_best_checkpoint_named_when_all_are_tied(tmp_path: Path, rates: list[float], expected: str) -> None:
    run = _make_run(tmp_path)
    # Rows without "successes": the counts come from the success rate and the file's episodes.
    results = [{"step": s, "success_rate": r} for s, r in zip(STEPS, rates, strict=True)]
    (run / "evaluation.json").write_text(json.dumps({"episodes": 20, "results": results}))
    text = write_report(run).read_text(encoding="utf-8")
    table = text[text.index("Selected vs best vs last") : text.index("Figure 1:")]
    assert f"best checkpoint in hindsight</td><td>&ndash;</td><td>{expected}</td>" in table
    assert "No checkpoint is named best in hindsight" in table and "Best in hindsight&rdquo;" not in table
    assert re.search(rf"selected \(workflow\)</td><td>{SELECTED}</td><td>{rates[0]:.0%} \(\d+/20\)", table)


def test_figure_1_draws_the_q_range(tmp_path: Path) -> None:
    from offrl.report.html import _q_data_axes

    run = _make_run(tmp_path)
    records, diagnosis = load_metrics(run), json.loads((run / "diagnosis.json").read_text())
    ax = _q_data_axes(records, diagnosis, None).axes[0]
    lines = [ln for ln in ax.get_lines() if ln.get_color() == "#2e86c1"]
    assert sorted(ln.get_ydata()[0] for ln in lines) == [0.0, 12.0]
    assert "Q range the rewards allow [0, 12]" in ax.get_legend_handles_labels()[1]
    # A range far from the curve (CQL's Q often sits far below it) is named at the edge, not drawn to scale.
    diagnosis["q_range"] = [100.0, 101.0]
    ax = _q_data_axes(records, diagnosis, None).axes[0]
    assert not [ln for ln in ax.get_lines() if ln.get_color() == "#2e86c1"]
    notes = [t.get_text() for t in ax.texts]
    assert any(n.startswith("↑ Q range the rewards allow [100, 101]: above the curve by") for n in notes)
    assert ax.get_ylim()[1] < 100
    # BC has no Q-function: no range.
    ax = _q_data_axes([{"step": s, "log_likelihood": -1.0 / s} for s in STEPS], diagnosis, None, "bc").axes[0]
    assert not ax.texts and "Q range" not in " ".join(ax.get_legend_handles_labels()[1])


def test_evidence_has_readable_names(tmp_path: Path) -> None:
    run = _make_run(tmp_path)
    diag = json.loads((run / "diagnosis.json").read_text())
    diag["evidence"].update(q_error_over_q_range=3.2, td_error_over_target_var_end=0.7, overestimation_steps=[2000])
    (run / "diagnosis.json").write_text(json.dumps(diag))
    text = write_report(run).read_text(encoding="utf-8")
    evidence = text[text.index("<h2>Evidence") : text.index("<h2>Configuration")]
    assert "title='q_error_over_q_range'>estimated Q error / Q range width <code class='raw'>" in evidence
    assert "unexplained share of TD-target variance (end)" in evidence
    assert "steps where Q exceeds the largest return the rewards allow" in evidence
    assert "title='q_drop_after_peak'>q_drop_after_peak</td>" in evidence  # unknown keys as they are


def _comparison_section(run: Path) -> str:
    text = write_report(run).read_text(encoding="utf-8")
    return text[text.index("Selected vs best vs last") : text.index("Figure 1:")]


def test_the_report_names_no_best_checkpoint_where_the_comparison_says_all_are_tied(tmp_path: Path) -> None:
    from offrl.stats import wilson_interval
    from offrl.workflow.comparison import analysis_only_comparison

    run = _make_run(tmp_path)
    results = [{"step": s, "success_rate": 0.0, "successes": 0, "episodes": 20} for s in STEPS]
    evaluation = {"used_for_selection": False, "task": "pick-place-v3", "episodes": 20, "results": results}
    (run / "evaluation.json").write_text(json.dumps(evaluation))
    diag = json.loads((run / "diagnosis.json").read_text())
    comparison = analysis_only_comparison(evaluation, SELECTED, 0, {})
    assert comparison["best"]["tied"]
    lo, hi = wilson_interval(0, 20)
    expected = (f"best checkpoint in hindsight</td><td>&ndash;</td><td>none: no checkpoint succeeded "
                f"(10 evaluated, all at 0%)</td><td>[{lo:.0%}, {hi:.0%}] each</td>")
    # diagnosis.json's analysis_only, as `offrl evaluate` writes it: the report shows its flag.
    (run / "diagnosis.json").write_text(json.dumps({**diag, "analysis_only": comparison}))
    table = _comparison_section(run)
    assert expected in table and "No checkpoint is named best in hindsight" in table
    # One written before offrl recorded ties (no "tied"): its best rows are recomputed, with the same result.
    old = {**comparison, "best": {k: v for k, v in comparison["best"].items() if not k.startswith("tied")}}
    (run / "diagnosis.json").write_text(json.dumps({**diag, "analysis_only": old}))
    assert expected in _comparison_section(run)
    # A real best is named, with its step.
    results[6].update(success_rate=0.15, successes=3)
    evaluation["results"] = results
    (run / "evaluation.json").write_text(json.dumps(evaluation))
    comparison = analysis_only_comparison(evaluation, SELECTED, 0, {})
    (run / "diagnosis.json").write_text(json.dumps({**diag, "analysis_only": comparison}))
    table = _comparison_section(run)
    assert "best checkpoint in hindsight</td><td>7000</td><td>15% (3/20)</td>" in table
    assert "none:" not in table and "No checkpoint is named best" not in table


@pytest.mark.parametrize(
    ("env", "horizon", "shown"),
    [({"kind": "gymnasium", "env": "my_sim:make_env", "success_key": "is_success", "terminate_on_success": True},
      200, "Evaluation: gymnasium environment my_sim:make_env (success: info[&#x27;is_success&#x27;]), "
      "20 episodes per checkpoint, horizon 200 steps, 10 checkpoint(s) evaluated."),
     ({"kind": "metaworld", "task": "reach-v3"}, 150,
      "Evaluation: MetaWorld task reach-v3, 20 episodes per checkpoint, horizon 150 steps"),
     (None, None, "Evaluation: MetaWorld task pick-place-v3, 20 episodes per checkpoint, 10 checkpoint(s)")],
)
def test_the_report_names_the_environment_evaluated_on(tmp_path: Path, env: dict | None, horizon: int | None,
                                                       shown: str) -> None:
    run = _make_run(tmp_path)
    evaluation = json.loads((run / "evaluation.json").read_text())
    evaluation.update(horizon=horizon, **({"env": env, "task": env.get("task")} if env else {}))
    (run / "evaluation.json").write_text(json.dumps(evaluation))
    assert shown in _comparison_section(run)


# ---------------------------------------------------------------------------------- the averaged and trained actor

TRAINED_RATES = [0.05, 0.1, 0.3, 0.45, 0.5, 0.4, 0.2, 0.15, 0.1, 0.1]
SINGLE_HEADER = "<tr><th>policy</th><th>step</th><th>success rate</th><th>95% Wilson interval</th></tr>"


def _averaged_run(tmp_path: Path, name: str = "run-0") -> Path:
    """A run that deploys its averaged actor (evaluation.json ``actor: averaged``) and has its trained actor
    evaluated too (evaluation-trained.json, as `offrl evaluate --actor trained` writes it)."""
    run = _make_run(tmp_path, name=name)
    config = json.loads((run / "config.json").read_text())
    config["agent"]["actor_ema_decay"] = 0.999
    config["deployment"] = {"actor": "averaged"}
    (run / "config.json").write_text(json.dumps(config))
    evaluation = {**json.loads((run / "evaluation.json").read_text()), "actor": "averaged"}
    (run / "evaluation.json").write_text(json.dumps(evaluation))
    results = [{"step": s, "success_rate": r, "successes": round(r * 20), "episodes": 20}
               for s, r in zip(STEPS, TRAINED_RATES, strict=True)]
    (run / "evaluation-trained.json").write_text(json.dumps({**evaluation, "actor": "trained", "results": results}))
    return run


def _figure_1_legend(run: Path, actors: tuple | None) -> list[str]:
    from offrl.report.html import _q_data_axes

    fig = _q_data_axes(load_metrics(run), json.loads((run / "diagnosis.json").read_text()),
                       json.loads((run / "evaluation.json").read_text()), "cql", actors)
    return [t.get_text() for t in fig.legends[0].get_texts()]


def test_the_report_draws_the_averaged_and_the_trained_actor_where_both_were_evaluated(tmp_path: Path) -> None:
    run = _averaged_run(tmp_path)
    text = write_report(run).read_text(encoding="utf-8")
    table = _comparison_section(run)
    assert ("<tr><th>policy</th><th>step</th><th>success rate (averaged actor, deployed)</th><th>95% Wilson "
            "interval</th><th>success rate (trained actor)</th></tr>") in table
    # The trained actor's success at each of the table's checkpoints: 4000 (selected), 6000 (best), 10000 (last).
    assert re.search(r"selected \(workflow\)</td><td>4000</td><td>60% \(12/20\)</td><td>[^<]+</td><td>45% \(9/20\)"
                     r"</td>", table)
    assert re.search(r"hindsight</td><td>6000</td><td>70% \(14/20\)</td><td>[^<]+</td><td>40% \(8/20\)</td>", table)
    assert re.search(r"last checkpoint</td><td>10000</td><td>25% \(5/20\)</td><td>[^<]+</td><td>10% \(2/20\)</td>",
                     table)
    assert "the trained actor&#x27;s column from evaluation-trained.json (20 episodes per checkpoint)" in table
    assert ("Grey dotted line: success rate of the averaged actor (deployed), from evaluation.json; green dashed "
            "line: the trained actor&#x27;s, from evaluation-trained.json") in text
    assert "Grey dotted line: success rate from evaluation.json" not in text
    trained = json.loads((run / "evaluation-trained.json").read_text())
    legend = _figure_1_legend(run, ("averaged", "trained", trained))
    assert [t for t in legend if "success" in t] == ["averaged actor (deployed): success, 95% Wilson interval",
                                                     "trained actor: success, 95% Wilson interval"]
    # Without the second file the report is laid out as before: no extra column, caption or legend entry.
    (run / "evaluation-trained.json").unlink()
    alone = write_report(run).read_text(encoding="utf-8")
    assert SINGLE_HEADER in _comparison_section(run) and "trained actor" not in alone
    assert "Grey dotted line: success rate from evaluation.json with 95% Wilson intervals" in alone
    assert [t for t in _figure_1_legend(run, None) if "success" in t] == [
        "success rate, 95% Wilson interval (analysis only: not used for selection)"]
    assert alone != text
    # ... and the same page as a run that never kept an average (its evaluation.json names no actor).
    (tmp_path / "plain").mkdir()
    plain = _make_run(tmp_path / "plain")
    assert write_report(plain).read_text(encoding="utf-8").replace(str(plain), "RUN") == \
        alone.replace(str(run), "RUN")


def test_the_report_says_when_the_two_actors_were_evaluated_differently(tmp_path: Path) -> None:
    from offrl.report.html import evaluation_differences

    run = _averaged_run(tmp_path)
    assert "not measured alike" not in write_report(run).read_text(encoding="utf-8")
    trained = json.loads((run / "evaluation-trained.json").read_text())
    deployed = json.loads((run / "evaluation.json").read_text())
    other = {**trained, "horizon": 90, "env": {"kind": "metaworld", "task": "drawer-open-v3"}}
    (run / "evaluation-trained.json").write_text(json.dumps(other))
    text = write_report(run).read_text(encoding="utf-8")
    assert "The two evaluations differ in env (" in text and "drawer-open-v3" in text and "horizon (" in text
    assert "the curves are not measured alike" in text
    assert [d.split(" ")[0] for d in evaluation_differences(deployed, other)] == [
        k for k in ("env", "horizon") if deployed.get(k) != other.get(k)]
    assert evaluation_differences({"episodes": 20}, {"episodes": 20}) == [] and evaluation_differences({}, {}) == []
    assert evaluation_differences({"seed": 0}, {"seed": 1}) == ["seed (0 vs 1)"]


def test_a_broken_or_lone_second_actor_file_is_said_so(tmp_path: Path) -> None:
    run = _averaged_run(tmp_path)
    (run / "evaluation-trained.json").write_text("{not json")
    text = write_report(run).read_text(encoding="utf-8")
    assert SINGLE_HEADER in _comparison_section(run)
    assert ("evaluation-trained.json could not be read" in text and "only the averaged actor&#x27;s (deployed) "
            "success is drawn" in text and f"offrl evaluate {run} --actor trained" in text)
    (run / "evaluation-trained.json").write_text(json.dumps({"actor": "trained", "results": []}))
    text = write_report(run).read_text(encoding="utf-8")
    assert SINGLE_HEADER in _comparison_section(run) and "evaluation-trained.json has no usable results" in text
    # The trained actor's file alone: its curve is drawn and the deployed one's evaluation is asked for.
    run = _averaged_run(tmp_path, name="lone")
    (run / "evaluation.json").unlink()
    text = write_report(run).read_text(encoding="utf-8")
    assert "success rate of the trained actor (not deployed), from evaluation-trained.json" in text
    assert "Evaluation (optional, analysis only) not run yet" in text
    from offrl.report.html import _q_data_axes

    trained = json.loads((run / "evaluation-trained.json").read_text())
    fig = _q_data_axes(load_metrics(run), None, None, "cql", ("averaged", "trained", trained))
    assert [t.get_text() for t in fig.legends[0].get_texts() if "success" in t.get_text()] == [
        "trained actor: success, 95% Wilson interval"]


# ------------------------------------------------------------------------------------------------ robot check


def _write_check(run: Path, operator: str | None = "ana", status: str = "budget") -> dict:
    """A hand-written RUN/check/check.json (offrl check's schema, offrl/workflow/check.py Check.answer) and the
    trial log beside it: 20 episodes over four checkpoints, 6000 deployed, 7000 untried."""
    per = [("4000", 5, 2), ("5000", 5, 1), ("6000", 10, 7), ("7000", 0, 0)]
    answer = {
        "deploy": {"checkpoint": "6000", "run": str(run), "step": 6000},
        "estimate": 0.62, "interval": [0.41, 0.8], "interval_level": 0.9, "prob_best": 0.71, "raw_mean": 0.7,
        "trials_of_deployed": 10, "episodes_used": 20, "budget": 20, "status": status, "rule": "top_two_thompson",
        "confidence": 0.95, "outcome_range": [0.0, 1.0],
        "correction": "estimate and interval: posterior of a hierarchical Beta-Bernoulli model",
        "per_checkpoint": [{"checkpoint": c, "trials": n, "mean": k / n if n else None} for c, n, k in per],
        "log": str(run / "check" / "trials.jsonl"),
    }
    (run / "check").mkdir()
    (run / "check" / "check.json").write_text(json.dumps(answer))
    if operator is not None:
        lines = [{"type": "header", "version": 1, "runs": [str(run)]}]
        lines += [{"type": "trial", "checkpoint": c, "outcome": float(i < k), "operator": operator}
                  for c, n, k in per for i in range(n)]
        (run / "check" / "trials.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return answer


def test_the_report_shows_the_robot_check_and_its_trials(tmp_path: Path) -> None:
    import numpy as np

    from offrl.workflow.allocation import Arms, posterior_mean
    from offrl.workflow.check import format_answer

    run = _make_run(tmp_path)
    answer = _write_check(run)
    assert "deploy checkpoint 6000" in format_answer(answer)  # the file is check.py's schema
    text = write_report(run).read_text(encoding="utf-8")
    # After the diagnosis, before the analysis-only comparison; marked as the trials that chose the checkpoint.
    section = text[text.index("<h2>Robot check") : text.index("Selected vs best vs last")]
    assert text.index("q_data falls by 63%") < text.index("<h2>Robot check")
    assert "Robot check: real trials that chose the checkpoint to deploy" in section
    assert "All 20 episodes were run on the robot" in section
    assert "Unlike the analysis-only evaluation below, these trials chose the checkpoint to deploy" in section
    assert "Deploy checkpoint <b>6000</b>" in section
    assert "Success estimate <b>62%</b>, 90% interval [41%, 80%]" in section
    assert "raw mean 70% over 10 episode(s)" in section and "best of those tried: 0.71" in section
    assert "Finished: the budget is spent; 20 of 20 episodes, rule top_two_thompson" in section
    # Per checkpoint: episodes, successes, success rate, posterior mean (the check's hierarchical model).
    post = posterior_mean(Arms(np.array([[5, 5, 10, 0]]), np.array([[2.0, 1.0, 7.0, 0.0]])))[0]
    for (ckpt, n, k, rate), pm in zip([("4000", 5, 2, "40%"), ("5000", 5, 1, "20%"), ("6000 (deployed)", 10, 7, "70%"),
                                       ("7000", 0, 0, "&ndash;")], post, strict=True):
        row = (f"<td class='k'>{ckpt}</td><td class='n'>{n}</td><td class='n'>{k}</td><td class='n'>{rate}</td>"
               f"<td class='n'>{pm:.0%}</td></tr>")
        assert row in section
    assert "<tr class='deployed'><td class='k'>6000 (deployed)" in section
    # The analysis-only evaluation keeps its own label.
    assert "Selected vs best vs last (analysis only: not used for selection)" in text


@pytest.mark.parametrize(("operator", "heading", "note"), [
    ("simulator", "simulated trials (a rehearsal)", "answered by a simulator"),
    (None, "recorded trials", "the trial log is not beside check.json"),
])
def test_the_robot_check_says_when_its_trials_were_simulated(tmp_path: Path, operator: str | None, heading: str,
                                                            note: str) -> None:
    run = _make_run(tmp_path)
    _write_check(run, operator=operator, status="confident")
    text = write_report(run).read_text(encoding="utf-8")
    assert f"Robot check: {heading} that chose the checkpoint to deploy" in text and note in text
    assert "Finished early: P(best) reached 0.95" in text


def test_no_robot_check_section_without_check_json_and_a_note_for_a_broken_one(tmp_path: Path) -> None:
    run = _make_run(tmp_path)
    assert "Robot check" not in write_report(run).read_text(encoding="utf-8")
    (run / "check").mkdir()
    (run / "check" / "check.json").write_text("{torn")
    text = write_report(run).read_text(encoding="utf-8")
    assert "<h2>Robot check</h2>" in text and "check.json could not be read" in text
    assert f"re-run <code>offrl check {run}</code>" in text


# ------------------------------------------------------------------------------------------------ trust


def test_the_trust_statement_is_shown_with_its_measured_numbers(tmp_path: Path) -> None:
    from offrl.workflow.trust import trust_statement

    run = _make_run(tmp_path)
    config = json.loads((run / "config.json").read_text())
    record = {"grid": "dev", "method": "CQL", "runs": 48, "tasks": ["a", "b", "c", "d"], "regimes": ["None"],
              "episodes": [], "obs": ["state"], "reward_modes": ["terminal"],
              "rules": {"q_peak": {"regret": 0.51, "ci": [0.40, 0.61], "n": 48, "minus_random": 0.07,
                                   "minus_random_ci": [-0.03, 0.17]}},
              "random": {"mean": 0.44, "ci": [0.40, 0.49], "n": 48},
              "noise_floor": {"mean": 0.12, "ci": [0.10, 0.14], "n": 48}}
    trust = trust_statement("q_peak", config, [record])
    diag = json.loads((run / "diagnosis.json").read_text())
    (run / "diagnosis.json").write_text(json.dumps({**diag, "trust": trust}))
    text = write_report(run).read_text(encoding="utf-8")
    box = text[text.index("<h2>Diagnosis") : text.index("Selected vs best vs last")]
    assert "How far to trust the pick: On the dev grid (CQL, 48 runs on 4 tasks)" in box
    for what, regret, ci, runs in [("this pick&#x27;s rule (q_peak)", "0.51", "[0.40, 0.61]", "48"),
                                   ("a random checkpoint", "0.44", "[0.40, 0.49]", "48"),
                                   ("noise floor: a perfect selector under the evaluation noise", "0.12",
                                    "[0.10, 0.14]", "48"),
                                   ("the rule minus random, paired by run", "0.07", "[-0.03, 0.17]", "&ndash;")]:
        assert (f"<td class='k'>{what}</td><td class='n'>{regret}</td><td class='n'>{ci}</td>"
                f"<td class='n'>{runs}</td>") in box
    assert "Measured on the dev grid (CQL, 48 runs on 4 tasks)" in box
    # Not measured: the statement alone, no table.
    (run / "diagnosis.json").write_text(json.dumps({**diag, "trust": trust_statement("q_peak", config, [])}))
    box = write_report(run).read_text(encoding="utf-8")
    assert "How far to trust the pick: Not measured" in box and "a random checkpoint</td>" not in box


def test_the_templates_are_shipped_as_package_data() -> None:
    """A non-editable install must carry offrl/report/templates: pyproject.toml's package-data names them, and
    jinja2 is a dependency."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())
    globs = project["tool"]["setuptools"]["package-data"]["offrl"]
    templates = sorted((root / "offrl" / "report" / "templates").iterdir())
    assert {"report.html.j2", "comparison.html.j2"} <= {t.name for t in templates}
    for t in templates:
        rel = t.relative_to(root / "offrl").as_posix()
        assert any(fnmatch.fnmatch(rel, g) for g in globs), f"{rel} is not package data"
    assert any(d.replace(" ", "").lower().startswith("jinja2") for d in project["project"]["dependencies"])
