"""The Python API: the same steps as the `offrl` commands, as functions.

    import offrl
    ds = offrl.collect("pick-place-v3", episodes=300, out="data/pp.h5")
    run = offrl.train("data/pp.h5", "runs/pp", steps=40_000, checkpoint_every=2_000)
    diagnosis = offrl.diagnose(run)
    offrl.write_report(run)
    offrl.export_policy(run, out="policy/")
    act = offrl.load_policy("policy/")      # raw observation(s) -> action(s)

Every function raises the same errors as its command (docs/robustness.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from offrl.data import Dataset, load_dataset, save_dataset  # noqa: F401  (re-exported)


def collect(task: str, episodes: int, out: str | Path, **kwargs: Any) -> Dataset:
    """Collect a MetaWorld dataset with a noisy scripted policy (see :func:`offrl.data.collect.collect`)."""
    from offrl.data.collect import collect as _collect

    return _collect(task, episodes, out, **kwargs)


def train(dataset: str | Path, out: str | Path, **kwargs: Any) -> Path:
    """Train on a dataset file; keyword arguments are the fields of :class:`offrl.training.train.TrainConfig`
    (``steps``, ``checkpoint_every``, ``algo``, ``agent=CQLConfig(...)``, ``resume``, ...). Returns the run
    directory."""
    from offrl.training.train import TrainConfig
    from offrl.training.train import train as _train

    return _train(TrainConfig(dataset=Path(dataset), out=Path(out), **kwargs))


def diagnose(run_dir: str | Path, compare: Sequence[str | Path] = (), after_peak: bool = False,
             selector: str | None = None, **thresholds: Any) -> dict[str, Any]:
    """Diagnose a run and write its diagnosis.json; ``selector`` is a rule of :data:`offrl.workflow.rules.RULES`
    (None: the rule the run recorded when it was trained, as `offrl diagnose` does); ``thresholds`` are fields of
    :class:`offrl.workflow.diagnosis.DiagnosisConfig`. Raises what `offrl diagnose` raises."""
    from offrl.workflow.diagnosis import DiagnosisConfig, diagnose_run

    return diagnose_run(run_dir, compare, DiagnosisConfig(**thresholds), after_peak=after_peak, selector=selector)


def select(run_dir: str | Path, after_peak: bool = False, selector: str | None = None) -> int | None:
    """The checkpoint step to deploy, by ``selector`` (None: the run's recorded rule, what `offrl workflow`
    deploys); also writes diagnosis.json."""
    return diagnose(run_dir, after_peak=after_peak, selector=selector)["selected_step"]


def evaluate(run_dir: str | Path, episodes: int = 10, **kwargs: Any) -> dict[str, Any]:
    """Analysis only: success rate of every checkpoint in the simulator (evaluation.json)."""
    from offrl.workflow.evaluate import evaluate_run

    return evaluate_run(run_dir, episodes=episodes, **kwargs)


def write_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html from the files in the run directory."""
    from offrl.report import write_report as _write_report

    return _write_report(run_dir)


def run_workflow(**kwargs: Any) -> dict[str, Any]:
    """Collect (if needed), train, diagnose, select, evaluate and report; keyword arguments are the fields of
    :class:`offrl.workflow.pipeline.WorkflowConfig`. Returns the summary."""
    from offrl.workflow.pipeline import WorkflowConfig
    from offrl.workflow.pipeline import run_workflow as _run_workflow

    return _run_workflow(WorkflowConfig(**kwargs))
