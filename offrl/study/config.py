"""What a study is: its grid (scenarios x tasks x regimes x sizes x seeds x settings) and its cells, read from a
TOML file and checked. Depends on no other part of the study, so that every other module may import it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import tomllib
from pathlib import Path
from typing import Any

from offrl.agents import CONFIGS, WARMUP_FIELD
from offrl.envs import DEFAULT_HORIZON, DEFAULT_NOISE_SIGMA
from offrl.envs.behaviour import REGIMES
from offrl.envs.reward_modes import REWARD_MODES
from offrl.presets import PRESETS as NAMED_PRESETS

PRESETS = ("base", "vib", "dropout", "capacity")
# Settings that run another algorithm with its paper's defaults; a named setting may set ``algo`` too.
ALGORITHM_PRESETS = ("iql", "awac", "bear", "mopo", "combo", "bc", "tt")
# BRAC needs a behaviour run per cell. BC and the Trajectory Transformer have no Q-value: each is picked by its own
# Guideline (the peak of the held-out log-likelihood of its actions or tokens, docs/metrics.md), gets no FQE, and
# stays out of the selector tables, which judge Q-based selectors.
STUDY_ALGOS = ("cql", "iql", "awac", "bear", "mopo", "combo", "bc", "tt")
NO_Q_ALGOS = ("bc", "tt")
# What a scenario may set for its own cells instead of the study's value (the Trajectory Transformer's planner
# costs ~100x a policy network per action on a CPU, so its block evaluates fewer episodes on a smaller batch).
BUDGET_KEYS = ("steps", "checkpoint_every", "eval_episodes", "batch_size")
DEFAULT_BATCH_SIZE = 256  # offrl train's --batch-size


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
    steps: int | None = None
    """Gradient steps of this block's runs; None = the study's ``steps`` (so are the three below)."""
    checkpoint_every: int | None = None
    """Gradient steps between checkpoints of this block's runs."""
    eval_episodes: int | None = None
    """Analysis-only episodes per checkpoint of this block's runs."""
    batch_size: int | None = None
    """Minibatch size (transitions or, for the Trajectory Transformer, windows) of this block's runs; None = 256."""


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
    reward_mode: str = "terminal"
    """Reward structure of the collected data (offrl.envs.reward_modes): ``terminal``, the workflow paper's
    ``success-every-step``, whose horizon is each task's rule-based one (``horizon`` is then not read), or
    ``shaped`` (MetaWorld's dense reward, ``horizon`` steps, never terminal)."""
    fqe_tolerance: float | None = None
    """FQE's stopping rule (offrl.workflow.fqe.FQEConfig.tolerance): None trains every checkpoint's FQE critic
    ``fqe_steps`` steps; a number stops once its estimates settle, ``fqe_steps`` being the cap."""
    settings: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """A setting may also be a named preset of offrl/presets.py (``paper``, ``iql-sparse``): its algorithm, agent
    settings and reward transform.

    Named agent settings beyond the presets: ``{"name": {field: value}}``, fields of CQLConfig, or with
    ``algo = "iql"`` / ``"awac"`` / ``"bear"`` of that algorithm's config (so that selection can be compared across
    algorithms on one grid). With ``preset = "NAME"`` a setting extends a named preset: its algorithm, agent settings
    and reward transform, then the setting's fields (e.g. ``actor_ema_decay``) over them."""

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
        if name in PRESETS + ALGORITHM_PRESETS + tuple(NAMED_PRESETS):
            raise StudyConfigError(f"{source}: setting '{name}' is a preset "
                                   f"({', '.join(PRESETS + ALGORITHM_PRESETS)}); rename it")
        if "preset" in overrides and overrides["preset"] not in NAMED_PRESETS:
            raise StudyConfigError(f"{source}: setting '{name}' extends preset '{overrides['preset']}', which is not "
                                   f"one of {', '.join(NAMED_PRESETS)}")
        if "preset" in overrides and "algo" in overrides:
            raise StudyConfigError(f"{source}: setting '{name}' names both a preset and an algo: the preset's "
                                   f"algorithm is used, drop algo")
        algo = NAMED_PRESETS[overrides["preset"]].algo if "preset" in overrides else overrides.get("algo", "cql")
        if algo not in STUDY_ALGOS:
            raise StudyConfigError(f"{source}: setting '{name}' has algo '{algo}'; a study runs "
                                   f"{', '.join(STUDY_ALGOS)}")
        bad = set(overrides) - {"algo", "preset"} - {f.name for f in dataclasses.fields(CONFIGS[algo])}
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
            **{k: s[k] for k in BUDGET_KEYS if k in s},
        )
        for k in BUDGET_KEYS:
            v = getattr(sc, k)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise StudyConfigError(f"{source}: scenario '{sc.name}': {k} must be an integer >= 1, got {v!r}")
        unknown_regimes = [r for r in sc.regimes if r not in REGIMES]
        if unknown_regimes:
            raise StudyConfigError(
                f"{source}: scenario '{sc.name}' has unknown regimes {unknown_regimes}; use {', '.join(REGIMES)}"
            )
        for st in sc.settings:
            if st not in PRESETS + ALGORITHM_PRESETS + tuple(NAMED_PRESETS) and st not in settings:
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
    if config.reward_mode not in REWARD_MODES:
        raise StudyConfigError(f"{source}: reward_mode {config.reward_mode!r}: use one of {', '.join(REWARD_MODES)}")
    if config.fqe_tolerance is not None and not float(config.fqe_tolerance) > 0:
        raise StudyConfigError(f"{source}: fqe_tolerance must be > 0 (or left out), got {config.fqe_tolerance}")
    for name in ("steps", "checkpoint_every", "eval_episodes", "horizon", "fqe_steps", "bootstrap_samples"):
        if int(getattr(config, name)) < 1:
            raise StudyConfigError(f"{source}: {name} must be >= 1, got {getattr(config, name)}")
    # A run two scenarios share is made once: they must agree on its budget.
    made: dict[str, tuple[str, dict[str, int]]] = {}
    for sc in config.scenarios:
        for cell in cells_of(config, sc.name):
            # A run no longer than its warm start (the model phase, an MMD or BC start) trains no policy: refuse
            # the grid now, not after the cell's data collection.
            algo = algo_for(cell.setting, config)
            field = WARMUP_FIELD.get(algo)
            if field is not None:
                own = config.settings.get(cell.setting, {})
                warm = int(own.get(field, getattr(CONFIGS[algo](), field)) or 0)
                if budget(config, cell)["steps"] <= warm:
                    raise StudyConfigError(
                        f"{source}: scenario '{sc.name}' gives setting '{cell.setting}' {budget(config, cell)['steps']} "
                        f"steps, not more than its warm start ({field} {warm}): raise steps or lower {field}")
            first = made.setdefault(cell.name, (sc.name, budget(config, cell)))
            if first[1] != budget(config, cell):
                raise StudyConfigError(
                    f"{source}: run {cell.name} is in scenarios '{first[0]}' and '{sc.name}' with different budgets "
                    f"({first[1]} vs {budget(config, cell)}): give them the same steps, checkpoint_every, "
                    f"eval_episodes and batch_size, or different settings")
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
    if setting in NAMED_PRESETS:
        return NAMED_PRESETS[setting].algo
    if setting in PRESETS:
        return "cql"
    own = config.settings[setting]
    return NAMED_PRESETS[own["preset"]].algo if "preset" in own else own.get("algo", "cql")


def scenario_of(config: StudyConfig, cell: Cell) -> Scenario:
    """The scenario a cell is listed under (its ``scenario`` field)."""
    return next(sc for sc in config.scenarios if sc.name == cell.scenario)


def budget(config: StudyConfig, cell: Cell) -> dict[str, int]:
    """The cell's ``steps``, ``checkpoint_every``, ``eval_episodes`` and ``batch_size``: its scenario's where
    set, else the study's (batch size: 256, offrl train's default)."""
    sc = scenario_of(config, cell)
    study = {"steps": config.steps, "checkpoint_every": config.checkpoint_every,
             "eval_episodes": config.eval_episodes, "batch_size": DEFAULT_BATCH_SIZE}
    return {k: int(getattr(sc, k)) if getattr(sc, k) is not None else v for k, v in study.items()}


def cell_settings(config: StudyConfig, cell: Cell) -> dict[str, Any]:
    """Everything of the study besides the cell's own name that decides its result (compared on archive reads).
    The batch size is listed only when it is not the default, so that cells archived before it could change
    still match."""
    b = budget(config, cell)
    out = {
        "steps": b["steps"], "checkpoint_every": b["checkpoint_every"], "eval_episodes": b["eval_episodes"],
        "fqe_steps": config.fqe_steps, "horizon": config.horizon,
        "noise_sigma": config.noise_sigma if cell.regime == "white" else None,
        "setting": config.settings.get(cell.setting, cell.setting),
    }
    if b["batch_size"] != DEFAULT_BATCH_SIZE:
        out["batch_size"] = b["batch_size"]
    # Listed only when not the default, so that cells archived before these keys existed still match.
    if config.reward_mode != "terminal":
        out["reward_mode"] = config.reward_mode
        if config.reward_mode == "success-every-step":
            out["horizon"] = "the task's rule (offrl.envs.reward_modes.task_horizon)"
    if config.fqe_tolerance is not None:
        out["fqe_tolerance"] = config.fqe_tolerance
        out["fqe_min_steps"] = "propagation time, ceil(H / tau) (offrl.workflow.fqe.propagation_steps)"
    own = config.settings.get(cell.setting, {})
    preset = NAMED_PRESETS.get(cell.setting) or NAMED_PRESETS.get(own.get("preset"))
    if cell.setting in NAMED_PRESETS:
        out["setting"] = {"preset": cell.setting, **preset.agent}
    if preset is not None and preset.decay_actor_over_run and "actor_lr_decay_steps" not in own:
        # The actor's decay spans the cell's run (offrl.study.cell.agent_for), as `offrl train --preset` gives it.
        out["setting"] = {**out["setting"], "actor_lr_decay_steps": b["steps"]}
    return out


def json_roundtrip(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), for comparing with what a file holds."""
    return json.loads(json.dumps(obj, default=str))
