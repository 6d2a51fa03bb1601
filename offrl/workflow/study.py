"""`offrl study CONFIG`: does the workflow pick good policies? The validation study of the paper's Sec. 5.

A study is a grid of scenarios x tasks x dataset sizes x seeds x settings. Every cell is an ordinary run
(collect if needed, train, diagnose), and then, *for analysis only*, every checkpoint is rolled out in the
simulator. Offline, each checkpoint selector picks one checkpoint; the analysis compares that pick with the real
success of every checkpoint (:mod:`offrl.workflow.selection`).

The grid is resumable: a cell that has its ``cell.json`` is done and skipped; a cell whose run stopped part way
resumes its training (``--resume``), and reuses its evaluation.json / fqe.json when they cover the run's
checkpoints. Datasets are shared between the cells that need the same (task, episodes, seed).

Layout of a study directory::

    STUDY/study.toml         the configuration (copied; a different one is refused)
    STUDY/data/*.h5          datasets
    STUDY/cells/<cell>/      one run directory per cell (config.json, metrics.jsonl, checkpoints/, ...)
                             plus evaluation.json, fqe.json, cell.json
    STUDY/analysis.json      every number in the results
    RESULTS (default STUDY/results.md) and STUDY/figures/*.png
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import time
import tomllib
from pathlib import Path
from typing import Any

from offrl.agents.cql import CQLConfig
from offrl.envs import DEFAULT_HORIZON, DEFAULT_NOISE_SIGMA
from offrl.envs.behaviour import REGIMES
from offrl.training import run_dir as rd
from offrl.workflow.auto import RemedyConfig, remedy_agent

CELL_FILE = "cell.json"
PRESETS = ("base", "vib", "dropout", "capacity")


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One block of the grid: every combination of its tasks, dataset sizes, seeds and settings is a cell."""

    name: str
    tasks: tuple[str, ...]
    episodes: tuple[int, ...]
    seeds: tuple[int, ...] = (0,)
    settings: tuple[str, ...] = ("base",)
    description: str = ""
    regimes: tuple[str, ...] = ("white",)
    """Behaviour regimes of the collected data (docs/dataset-format.md); each is its own dataset and run."""


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """A study, read from a TOML file (see studies/cpu.toml). Unset keys take the package defaults."""

    scenarios: tuple[Scenario, ...]
    out: Path = Path("studies/study")
    results: Path | None = None
    steps: int = 40_000
    checkpoint_every: int = 2_000
    eval_episodes: int = 20
    horizon: int = DEFAULT_HORIZON
    noise_sigma: float = DEFAULT_NOISE_SIGMA
    fqe_steps: int = 10_000
    bootstrap_samples: int = 10_000
    settings: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Named agent settings beyond the presets: ``{"name": {CQLConfig field: value}}``."""

    @property
    def results_path(self) -> Path:
        return self.results or self.out / "results.md"


class StudyConfigError(ValueError):
    """The study file is malformed; the message names the key and the fix."""


def load_study_config(path: str | Path, out: Path | None = None, results: Path | None = None) -> StudyConfig:
    """Read and check a study TOML file. Relative paths in it are relative to the working directory.

    Raises:
        FileNotFoundError: no such file.
        StudyConfigError: unknown keys, wrong types, an unknown setting, or an empty grid.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"study config {path} not found (examples: studies/cpu.toml, studies/gpu.toml)")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise StudyConfigError(f"{path} is not valid TOML: {e}") from None
    return study_config_from_dict(raw, out=out, results=results, source=str(path))


def study_config_from_dict(
    raw: dict[str, Any], out: Path | None = None, results: Path | None = None, source: str = "the study config"
) -> StudyConfig:
    """Build a :class:`StudyConfig` from the TOML's dict (see :func:`load_study_config`)."""
    raw = dict(raw)
    scen_raw = raw.pop("scenario", None)
    if not scen_raw or not isinstance(scen_raw, list):
        raise StudyConfigError(f"{source} has no [[scenario]] tables: a study needs at least one")
    settings = raw.pop("settings", {}) or {}
    if not isinstance(settings, dict):
        raise StudyConfigError(f"{source}: [settings] must be a table of tables of CQL hyperparameters")
    agent_fields = {f.name for f in dataclasses.fields(CQLConfig)}
    for name, overrides in settings.items():
        if name in PRESETS:
            raise StudyConfigError(f"{source}: setting '{name}' is a preset ({', '.join(PRESETS)}); rename it")
        bad = set(overrides) - agent_fields
        if bad:
            raise StudyConfigError(f"{source}: setting '{name}' has unknown CQL fields {sorted(bad)}")
    top = {f.name for f in dataclasses.fields(StudyConfig)} - {"scenarios", "settings"}
    unknown = set(raw) - top
    if unknown:
        raise StudyConfigError(f"{source}: unknown keys {sorted(unknown)}; allowed: {sorted(top)}")
    scenarios = []
    scen_fields = {f.name for f in dataclasses.fields(Scenario)}
    for i, s in enumerate(scen_raw):
        bad = set(s) - scen_fields
        if bad:
            raise StudyConfigError(f"{source}: scenario {i} has unknown keys {sorted(bad)}; allowed {sorted(scen_fields)}")
        if "name" not in s or "tasks" not in s or "episodes" not in s:
            raise StudyConfigError(f"{source}: scenario {i} needs name, tasks and episodes")
        sc = Scenario(
            name=str(s["name"]), tasks=tuple(s["tasks"]), episodes=tuple(int(e) for e in s["episodes"]),
            seeds=tuple(int(x) for x in s.get("seeds", (0,))), settings=tuple(s.get("settings", ("base",))),
            description=str(s.get("description", "")), regimes=tuple(s.get("regimes", ("white",))),
        )
        unknown_regimes = [r for r in sc.regimes if r not in REGIMES]
        if unknown_regimes:
            raise StudyConfigError(
                f"{source}: scenario '{sc.name}' has unknown regimes {unknown_regimes}; use {', '.join(REGIMES)}"
            )
        for st in sc.settings:
            if st not in PRESETS and st not in settings:
                raise StudyConfigError(
                    f"{source}: scenario '{sc.name}' uses setting '{st}', which is neither a preset "
                    f"({', '.join(PRESETS)}) nor defined under [settings.{st}]"
                )
        if not sc.tasks or not sc.episodes or not sc.seeds or not sc.settings:
            raise StudyConfigError(f"{source}: scenario '{sc.name}' has an empty list")
        if any(e < 2 for e in sc.episodes):
            raise StudyConfigError(f"{source}: scenario '{sc.name}': dataset sizes need >= 2 episodes (one held out)")
        scenarios.append(sc)
    if len({s.name for s in scenarios}) != len(scenarios):
        raise StudyConfigError(f"{source}: scenario names must be unique")
    kw: dict[str, Any] = {}
    for k, v in raw.items():
        kw[k] = Path(v) if k in ("out", "results") else v
    if out is not None:
        kw["out"] = Path(out)
    if results is not None:
        kw["results"] = Path(results)
    config = StudyConfig(scenarios=tuple(scenarios), settings=settings, **kw)
    for name in ("steps", "checkpoint_every", "eval_episodes", "horizon", "fqe_steps", "bootstrap_samples"):
        if int(getattr(config, name)) < 1:
            raise StudyConfigError(f"{source}: {name} must be >= 1, got {getattr(config, name)}")
    return config


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    scenario: str
    task: str
    episodes: int
    seed: int
    setting: str
    regime: str = "white"

    @property
    def _data_tag(self) -> str:
        # White-noise cells keep the names of studies made before regimes existed.
        return "" if self.regime == "white" else f"{self.regime}_"

    @property
    def name(self) -> str:
        # The scenario is a view: two scenarios that need the same run share it.
        return f"{self.task}__{self._data_tag.replace('_', '__')}{self.episodes}ep__s{self.seed}__{self.setting}"

    @property
    def dataset_name(self) -> str:
        return f"{self.task}_{self._data_tag}{self.episodes}ep_s{self.seed}.h5"


def cells_of(config: StudyConfig, scenario: str | None = None) -> list[Cell]:
    """Every cell of the grid (or of one scenario), in the order they run; a run two scenarios share is listed
    once, under the first."""
    out, seen = [], set()
    for sc in config.scenarios:
        for task, regime, episodes, seed, setting in itertools.product(
            sc.tasks, sc.regimes, sc.episodes, sc.seeds, sc.settings
        ):
            cell = Cell(sc.name, task, episodes, seed, setting, regime)
            if scenario is not None:
                if sc.name == scenario:
                    out.append(cell)
            elif cell.name not in seen:
                seen.add(cell.name)
                out.append(cell)
    return out


def agent_for(setting: str, config: StudyConfig) -> CQLConfig:
    """The CQL config of a setting: the package defaults, a remedy of the automated loop, or a named override."""
    base = CQLConfig()
    if setting == "base":
        return base
    if setting in PRESETS:
        return remedy_agent(base, setting, RemedyConfig())
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in config.settings[setting].items()}
    return dataclasses.replace(base, **overrides)


def _raw_config_text(config: StudyConfig) -> str:
    import json

    d = dataclasses.asdict(config)
    return json.dumps(d, default=str, sort_keys=True, indent=1)


def _check_study_dir(config: StudyConfig, source_text: str | None = None) -> None:
    """Never mix two different studies in one directory; keep a copy of the study file (study.toml)."""
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "study.json"
    text = _raw_config_text(config)
    if saved.is_file():
        old = saved.read_text()
        if old != text:
            import json

            a, b = json.loads(old), json.loads(text)
            # Scenarios may be added or removed (every run is its own cell); what a finished run was made with
            # may not change.
            free = ("results", "scenarios", "bootstrap_samples")
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in free)
            if diff:
                raise FileExistsError(
                    f"{out} holds a study with a different configuration (differs in {diff}): pass another --out, "
                    f"or restore the original config to resume it"
                )
    rd.atomic_write_text(saved, text)
    if source_text is not None:
        rd.atomic_write_text(out / "study.toml", source_text)


def run_cell(cell: Cell, config: StudyConfig, progress: bool = False) -> dict[str, Any]:
    """Collect (if needed), train (resuming), diagnose, evaluate every checkpoint, FQE; write cell.json."""
    from offrl.data import load_dataset
    from offrl.data.collect import collect
    from offrl.training.train import TrainConfig, TrainingDiverged, train
    from offrl.workflow.diagnosis import diagnose_run
    from offrl.workflow.evaluate import EVALUATION_FILE, evaluate_run
    from offrl.workflow.fqe import FQE_FILE, FQEConfig, fqe_run

    run = config.out / "cells" / cell.name
    timings: dict[str, float] = {}
    data = config.out / "data" / cell.dataset_name
    if not data.is_file():
        t = time.perf_counter()
        collect(cell.task, cell.episodes, data, horizon=config.horizon, seed=cell.seed, progress=progress,
                regime=cell.regime, noise_sigma=config.noise_sigma if cell.regime == "white" else None)
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
            dataset=data, out=run, steps=config.steps, checkpoint_every=config.checkpoint_every, seed=cell.seed,
            progress=progress, agent=agent_for(cell.setting, config), resume=resume,
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
            evaluation["episodes"] != config.eval_episodes:
        t = time.perf_counter()
        evaluation = evaluate_run(run, episodes=config.eval_episodes, seed=cell.seed, progress=progress)
        timings["evaluate_s"] = time.perf_counter() - t
    cfg = rd.read_json(run / rd.CONFIG_FILE)
    # FQE only scores the checkpoints selectors choose among (after the BC warm start): a third less work.
    warmup = int(cfg["agent"].get("bc_steps", 0))
    fqe_steps = [s for s in steps if s > warmup] or steps
    fqe = rd.read_json(run / FQE_FILE) if (run / FQE_FILE).is_file() else None
    if fqe is None or [r["step"] for r in fqe["results"]] != fqe_steps or fqe["config"]["steps"] != config.fqe_steps:
        t = time.perf_counter()
        fqe = fqe_run(run, fqe_steps, config=FQEConfig(steps=config.fqe_steps, seed=cell.seed), dataset=dataset)
        timings["fqe_s"] = time.perf_counter() - t
    records = {int(r["step"]): r for r in rd.read_metrics(run)}
    success = {r["step"]: r for r in evaluation["results"]}
    fqe_by = {r["step"]: r["value"] for r in fqe["results"]}
    keys = ("q_data", "td_error", "cql_regularizer", "q_error_estimate", "heldout/q_data", "heldout/td_error",
            "heldout/q_error_estimate", "srank", "q_policy", "heldout/q_policy", "td_error_over_target_var",
            "heldout/td_error_over_target_var")
    checkpoints = [
        {
            "step": s,
            **{k: records.get(s, {}).get(k) for k in keys},
            "fqe_value": fqe_by.get(s),
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
        },
        "agent": cfg["agent"],
        "num_params": cfg.get("num_params"),
        "q_range": cfg["dataset"]["q_range"],
        "warmup_steps": warmup,
        "verdict": diagnosis["verdict"],
        "diagnosis": {k: diagnosis[k] for k in ("verdict", "selected_step", "peak_step", "reasons", "evidence")},
        "checkpoints": checkpoints,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    rd.write_json(run / CELL_FILE, out)
    return out


def run_study(
    config: StudyConfig, analyse_only: bool = False, source: str | Path | None = None
) -> dict[str, Any]:
    """Run every cell not done yet, then analyse and write the results (analysis.json, results, figures).

    ``source``: the study file, copied into the study directory and named in the results' reproduce command.

    Returns:
        The analysis (see :func:`offrl.workflow.selection.analyse`).

    Raises:
        FileExistsError: the study directory holds a study with another configuration.
    """
    from offrl.data import DatasetError
    from offrl.training.train import TrainingDiverged
    from offrl.workflow.results import write_results
    from offrl.workflow.selection import analyse

    _check_study_dir(config, Path(source).read_text() if source else None)
    cells = cells_of(config)
    t0 = time.perf_counter()
    done: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    for i, cell in enumerate(cells):
        path = config.out / "cells" / cell.name / CELL_FILE
        if path.is_file():
            done.append(rd.read_json(path))
            continue
        if analyse_only:
            continue
        print(f"[study {i + 1}/{len(cells)}] {cell.name}", flush=True)
        t = time.perf_counter()
        try:
            res = run_cell(cell, config, progress=False)
        except (DatasetError, TrainingDiverged) as e:
            # One unusable cell (a dataset with no success at all, a run that diverged before its first
            # checkpoint) must not stop the grid: it is listed in the results, and retried on the next call.
            print(f"  failed: {e}", flush=True)
            failed.append({"cell": cell.name, "error": str(e)})
            continue
        done.append(res)
        succ = [c["success_rate"] for c in res["checkpoints"]]
        print(f"  verdict {res['verdict']}, success by checkpoint {[round(s, 2) for s in succ]} "
              f"({time.perf_counter() - t:.0f} s; study {time.perf_counter() - t0:.0f} s)", flush=True)
    analysis = analyse(done, config)
    analysis["cells_total"] = len(cells)
    analysis["failed"] = failed
    rd.write_json(config.out / "analysis.json", analysis)
    write_results(analysis, config, command=f"offrl study {source}" if source else None)
    return analysis
