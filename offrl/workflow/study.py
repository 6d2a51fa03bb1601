"""`offrl study CONFIG`: does the workflow pick good policies? The validation study of the paper's Sec. 5.

A study is a grid of scenarios x tasks x dataset sizes x seeds x settings. Every cell is an ordinary run
(collect if needed, train, diagnose), and then, *for analysis only*, every checkpoint is rolled out in the
simulator. Offline, each checkpoint selector picks one checkpoint; the analysis compares that pick with the real
success of every checkpoint (:mod:`offrl.workflow.selection`).

The grid is resumable: a cell that has its ``cell.json`` is done and skipped; a cell whose run stopped part way
resumes its training (``--resume``), and reuses its evaluation.json / fqe.json when they cover the run's
checkpoints. Datasets are shared between the cells that need the same (task, regime, episodes, seed).

Several processes may work on one study at once (``offrl study --workers N``): each cell and each dataset is
taken under an exclusive ``fcntl`` lock (released by the kernel when a process dies, so a killed worker leaves
no stale lock), and a process skips the cells another one holds. On 2 CPU cores two single-threaded workers make
1.19x the gradient steps per second of one process on both cores (47.0 against 39.6, benchmarks/workers_speed.py
on an idle machine), and no core idles while the other steps the simulator.

On a Ray cluster (``offrl study CONFIG --ray ADDRESS``, :mod:`offrl.cluster`, docs/cluster.md) every cell is a
Ray task that runs :func:`run_cell` under the same lock; the head analyses as here.

Layout of a study directory::

    STUDY/study.toml         the configuration (copied; a different one is refused)
    STUDY/data/*.h5          datasets
    STUDY/cells/<cell>/      one run directory per cell (config.json, metrics.jsonl, checkpoints/, ...)
                             plus evaluation.json, fqe.json, cell.json
    STUDY/locks/             one lock file per cell and dataset (empty; held only while a process works on it)
    STUDY/failed/<cell>.txt  why a cell could not run (listed in the results; retried on the next call)
    STUDY/ray/<cell>.json    with --ray: the cell's last attempt (node, pid, step it resumed from); .log: its output
    STUDY/analysis.json      every number in the results
    RESULTS (default STUDY/results.md) and STUDY/figures/*.png
    ARCHIVE/<cell>.json      with ``archive = "DIR"``: a copy of every finished cell.json, meant to be committed

The archive is what lets a grid longer than one machine's life accumulate: the study directory (datasets,
checkpoints) is scratch, while ``ARCHIVE/<cell>.json`` holds everything the analysis reads. A cell whose archive
file exists counts as done, with or without its run directory; an archive file made under other settings (steps,
checkpoints, evaluation episodes, FQE steps, horizon, noise, the setting's overrides) is refused, never mixed in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import itertools
import os
import shutil
import time
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from offrl.agents import CONFIGS, warmup_steps
from offrl.envs import DEFAULT_HORIZON, DEFAULT_NOISE_SIGMA
from offrl.envs.behaviour import REGIMES
from offrl.training import run_dir as rd
from offrl.workflow.auto import RemedyConfig, remedy_agent

if TYPE_CHECKING:
    from offrl.cluster import RayOptions

CELL_FILE = "cell.json"
PRESETS = ("base", "vib", "dropout", "capacity")
# Settings that run another algorithm with its paper's defaults; a named setting may set ``algo`` too.
ALGORITHM_PRESETS = ("iql", "awac", "bear")
STUDY_ALGOS = ("cql", "iql", "awac", "bear")  # BRAC needs a behaviour run per cell, BC has no Q-value to select with


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
    archive: Path | None = None
    """A folder (committed, e.g. ``studies/archive/dev``) that keeps a copy of every finished cell's cell.json:
    cells found there are done, so a grid can run across machines and sessions whose study directories are lost.
    """
    settings: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Named agent settings beyond the presets: ``{"name": {field: value}}``, fields of CQLConfig, or with
    ``algo = "iql"`` / ``"awac"`` / ``"bear"`` of that algorithm's config (so that selection can be compared across
    algorithms on one grid)."""

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
    for name, overrides in settings.items():
        if name in PRESETS + ALGORITHM_PRESETS:
            raise StudyConfigError(f"{source}: setting '{name}' is a preset "
                                   f"({', '.join(PRESETS + ALGORITHM_PRESETS)}); rename it")
        algo = overrides.get("algo", "cql")
        if algo not in STUDY_ALGOS:
            raise StudyConfigError(f"{source}: setting '{name}' has algo '{algo}'; a study runs "
                                   f"{', '.join(STUDY_ALGOS)}")
        bad = set(overrides) - {"algo"} - {f.name for f in dataclasses.fields(CONFIGS[algo])}
        if bad:
            raise StudyConfigError(f"{source}: setting '{name}' has unknown {algo.upper()} fields {sorted(bad)}")
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
            if st not in PRESETS + ALGORITHM_PRESETS and st not in settings:
                raise StudyConfigError(
                    f"{source}: scenario '{sc.name}' uses setting '{st}', which is neither a preset "
                    f"({', '.join(PRESETS + ALGORITHM_PRESETS)}) nor defined under [settings.{st}]"
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
        kw[k] = Path(v) if k in ("out", "results", "archive") else v
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
    once, under the first.

    Seeds vary slowest, then dataset sizes: a study stopped part way has covered every task, regime and size
    with its first seeds, so its partial results already span the grid."""
    out, seen = [], set()
    for sc in config.scenarios:
        for seed, episodes, regime, task, setting in itertools.product(
            sc.seeds, sc.episodes, sc.regimes, sc.tasks, sc.settings
        ):
            cell = Cell(sc.name, task, episodes, seed, setting, regime)
            if scenario is not None:
                if sc.name == scenario:
                    out.append(cell)
            elif cell.name not in seen:
                seen.add(cell.name)
                out.append(cell)
    return out


def algo_for(setting: str, config: StudyConfig) -> str:
    """The algorithm a setting runs: ``cql`` unless it is an algorithm preset or names ``algo``."""
    if setting in ALGORITHM_PRESETS:
        return setting
    return "cql" if setting in PRESETS else config.settings[setting].get("algo", "cql")


def agent_for(setting: str, config: StudyConfig) -> Any:
    """The agent config of a setting: the package's CQL defaults, a remedy of the automated loop, another
    algorithm's defaults (``iql``, ``awac``, ``bear``), or a named override of the config of :func:`algo_for`'s algorithm."""
    algo = algo_for(setting, config)
    base = CONFIGS[algo]()
    if setting in ("base", *ALGORITHM_PRESETS):
        return base
    if setting in PRESETS:
        return remedy_agent(base, setting, RemedyConfig())
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in config.settings[setting].items()
                 if k != "algo"}
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
            free = ("results", "scenarios", "bootstrap_samples", "archive")
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in free)
            if diff:
                raise FileExistsError(
                    f"{out} holds a study with a different configuration (differs in {diff}): pass another --out, "
                    f"or restore the original config to resume it"
                )
    rd.atomic_write_text(saved, text)
    if source_text is not None:
        rd.atomic_write_text(out / "study.toml", source_text)


def cell_settings(config: StudyConfig, cell: Cell) -> dict[str, Any]:
    """Everything of the study besides the cell's own name that decides its result (compared on archive reads)."""
    return {
        "steps": config.steps, "checkpoint_every": config.checkpoint_every, "eval_episodes": config.eval_episodes,
        "fqe_steps": config.fqe_steps, "horizon": config.horizon,
        "noise_sigma": config.noise_sigma if cell.regime == "white" else None,
        "setting": config.settings.get(cell.setting, cell.setting),
    }


def _archive_file(config: StudyConfig, cell: Cell) -> Path | None:
    return None if config.archive is None else config.archive / f"{cell.name}.json"


def finished_cell(config: StudyConfig, cell: Cell) -> dict[str, Any] | None:
    """The result of a finished cell: ``STUDY/cells/<cell>/cell.json``, else its archive copy; None if not done.

    Raises:
        StudyConfigError: the archive copy was made under other settings (:func:`cell_settings`).
    """
    path = config.out / "cells" / cell.name / CELL_FILE
    if path.is_file():
        return rd.read_json(path)
    archived = _archive_file(config, cell)
    if archived is None or not archived.is_file():
        return None
    res = rd.read_json(archived)
    want = json_roundtrip(cell_settings(config, cell))
    if res.get("study_settings") != want:
        raise StudyConfigError(
            f"{archived} was made with {res.get('study_settings')}, this study runs {want}: point `archive` at "
            f"another folder, or restore the settings it was made with"
        )
    return res


def json_roundtrip(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), for comparing with what a file holds."""
    import json

    return json.loads(json.dumps(obj, default=str))


def archive_cells(config: StudyConfig) -> int:
    """Copy every finished cell.json that the archive lacks into it (atomically); returns how many were copied."""
    return sum(archive_cell(config, cell) for cell in cells_of(config)) if config.archive is not None else 0


def archive_cell(config: StudyConfig, cell: Cell) -> bool:
    """Copy the cell's cell.json, with the settings it was made under (:func:`cell_settings`), into the archive
    unless it is there already, or there is no archive or no cell.json; returns whether it copied."""
    target = _archive_file(config, cell)
    path = config.out / "cells" / cell.name / CELL_FILE
    if target is None or not path.is_file() or target.is_file():
        return False
    res = rd.read_json(path)
    res["study_settings"] = cell_settings(config, cell)
    target.parent.mkdir(parents=True, exist_ok=True)
    rd.write_json(target, res)
    return True


@contextlib.contextmanager
def _lock(config: StudyConfig, name: str, wait: bool):
    """Hold STUDY/locks/NAME.lock exclusively; yields False (holding nothing) when another process has it and
    ``wait`` is False. The kernel drops the lock when the holder exits, however it exits."""
    path = config.out / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_cell(cell: Cell, config: StudyConfig, progress: bool = False) -> dict[str, Any]:
    """Collect (if needed), train (resuming), diagnose, evaluate every checkpoint, FQE; write cell.json.

    The caller holds the cell's lock; the dataset is collected under its own lock (two cells may share it)."""
    from offrl.data import load_dataset
    from offrl.data.collect import collect
    from offrl.training.train import ALGO_FIELD, TrainConfig, TrainingDiverged, train
    from offrl.workflow.diagnosis import diagnose_run
    from offrl.workflow.evaluate import EVALUATION_FILE, evaluate_run
    from offrl.workflow.fqe import FQE_FILE, FQEConfig, fqe_run

    run = config.out / "cells" / cell.name
    timings: dict[str, float] = {}
    data = config.out / "data" / cell.dataset_name
    with _lock(config, data.stem, wait=True):
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
            progress=progress, resume=resume, algo=algo_for(cell.setting, config),
            **{ALGO_FIELD[algo_for(cell.setting, config)]: agent_for(cell.setting, config)},
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
    warmup = warmup_steps(cfg.get("algo", "cql"), cfg["agent"])
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
        "algo": cfg.get("algo", "cql"),
        "agent": cfg["agent"],
        "num_params": cfg.get("num_params"),
        "q_range": cfg["dataset"]["q_range"],
        "warmup_steps": warmup,
        "verdict": diagnosis["verdict"],
        "diagnosis": {k: diagnosis[k] for k in ("verdict", "selected_step", "peak_step", "reasons", "evidence")},
        "checkpoints": checkpoints,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "offrl_version": rd.offrl_version(),
    }
    rd.write_json(run / CELL_FILE, out)
    archive_cell(config, cell)
    return out


def run_study(
    config: StudyConfig, analyse_only: bool = False, source: str | Path | None = None, workers: int = 1,
    ray: RayOptions | None = None,
) -> dict[str, Any]:
    """Run every cell not done yet, then analyse and write the results (analysis.json, results, figures).

    ``source``: the study file, copied into the study directory and named in the results' reproduce command.
    ``workers``: processes working on the cells at once (each takes the next cell no one holds). When the
    machine has no more cores than workers, each worker's XLA runs single-threaded, which on 2 cores trains
    faster in total than one process on both (see the module docstring).
    ``ray``: run the cells as tasks on a Ray cluster instead (:mod:`offrl.cluster`); ``workers`` must be 1.

    Returns:
        The analysis (see :func:`offrl.workflow.selection.analyse`).

    Raises:
        FileExistsError: the study directory holds a study with another configuration.
        ValueError: ``workers`` < 1, or ``workers`` > 1 with ``ray``.
        RuntimeError: a worker process failed (its traceback is in the output above); with ``ray``: Ray is not
            installed or no cluster answers.
        SharedStorageError: with ``ray``: a node of the cluster does not see the study directory (a RuntimeError).
    """
    from offrl.workflow.results import write_results
    from offrl.workflow.selection import analyse

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if ray is not None and not analyse_only:
        from offrl.cluster import import_ray, run_cells_on_ray

        if workers != 1:
            raise ValueError("--workers runs local processes; on Ray, set the cells' resources with "
                             "--ray-cpus-per-cell / --ray-gpus-per-cell instead")
        import_ray()  # says how to install it before anything is written
    _check_study_dir(config, Path(source).read_text() if source else None)
    cells = cells_of(config)
    if not analyse_only:
        if ray is not None:
            run_cells_on_ray(config, cells, ray)
        elif workers == 1:
            _run_cells(config, cells)
        else:
            _run_workers(config, cells, workers)
    archive_cells(config)  # cells finished before the archive was configured, or by a worker without it
    done, failed = [], []
    for c in cells:
        res, failure = finished_cell(config, c), _failure_file(config, c)
        if res is not None:
            done.append(res)
        elif failure.is_file():
            failed.append({"cell": c.name, "error": failure.read_text().strip()})
    analysis = analyse(done, config)
    analysis["cells_total"] = len(cells)
    analysis["failed"] = failed
    rd.write_json(config.out / "analysis.json", analysis)
    write_results(analysis, config, command=f"offrl study {source}" if source else None)
    return analysis


def _failure_file(config: StudyConfig, cell: Cell) -> Path:
    return config.out / "failed" / f"{cell.name}.txt"


def _run_cells(config: StudyConfig, cells: list[Cell], prefix: str = "") -> None:
    """Run the cells that are neither done nor held by another process, in order."""
    from offrl.data import DatasetError
    from offrl.training.train import TrainingDiverged

    t0 = time.perf_counter()
    for i, cell in enumerate(cells):
        if finished_cell(config, cell) is not None:
            continue
        with _lock(config, cell.name, wait=False) as held:
            if not held or finished_cell(config, cell) is not None:  # another process has it, or finished it
                continue
            print(f"{prefix}[study {i + 1}/{len(cells)}] {cell.name}", flush=True)
            t = time.perf_counter()
            failure = _failure_file(config, cell)
            try:
                res = run_cell(cell, config, progress=False)
            except (DatasetError, TrainingDiverged) as e:
                # One unusable cell (a dataset with no success at all, a run that diverged before its first
                # checkpoint) must not stop the grid: it is listed in the results, and retried on the next call.
                print(f"{prefix}  failed: {e}", flush=True)
                failure.parent.mkdir(parents=True, exist_ok=True)
                rd.atomic_write_text(failure, f"{e}\n")
                continue
            failure.unlink(missing_ok=True)
            succ = [c["success_rate"] for c in res["checkpoints"]]
            print(f"{prefix}  verdict {res['verdict']}, success by checkpoint {[round(s, 2) for s in succ]} "
                  f"({time.perf_counter() - t:.0f} s; this process {time.perf_counter() - t0:.0f} s)", flush=True)


def _worker(config: StudyConfig, cells: list[Cell], prefix: str) -> None:
    _run_cells(config, cells, prefix)


_SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _run_workers(config: StudyConfig, cells: list[Cell], workers: int) -> None:
    """``workers`` fresh processes (multiprocessing "spawn": JAX must start after its flags are set) share the
    cells through the cell locks."""
    import multiprocessing as mp

    env_before = os.environ.get("XLA_FLAGS")
    if (os.cpu_count() or 1) <= workers:
        os.environ["XLA_FLAGS"] = f"{env_before or ''} {_SINGLE_THREAD_XLA}".strip()
    try:
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_worker, args=(config, cells, f"[w{k}] "), name=f"offrl-study-w{k}")
                 for k in range(workers)]
        for p in procs:
            p.start()
            time.sleep(1.0)  # start in order, so that worker k takes the k-th free cell
    finally:
        if env_before is None:
            os.environ.pop("XLA_FLAGS", None)
        else:
            os.environ["XLA_FLAGS"] = env_before
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    bad = [(p.name, p.exitcode) for p in procs if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"study worker(s) failed: {bad} (see the traceback above); run the same command again "
                           f"to resume: finished cells are kept")
