"""Named presets: one complete, documented setting of the algorithm, its budget and the checkpoint rule.

A preset sets the fields it names of `offrl train` (``--preset NAME``), `offrl workflow` (``--preset NAME``) and a
study's cells (``preset = "NAME"`` in the study file); flags given explicitly on the command line still override
it (the CLI builds the command's defaults from the preset, then parses the flags on top). The run's config.json
records the preset's name (``training.preset``).

Each preset lists its deviations from the reference code it follows, one per line with its reason
(``Preset.deviations``); a value without a deviation line is the reference's.

Presets:

``paper``
    The workflow paper's own regime (Kumar et al. 2021, "A Workflow for Offline Model-Free Robotic RL"):
    plain CQL(H) (paper Eq. 1) with the reference code's values (../shared/reference/implementation-notes.md),
    a checkpoint every 5,000 steps, 100,000 steps, the Q-peak rule (Guideline 3.1), on data with the paper's
    reward structure (``success-every-step``) and noise (``paper``: N(0, 0.1^2) clipped to +-0.9).
``iql-sparse``
    The workflow's default job (docs/default-job.md, D12): IQL with its authors' sparse-reward settings
    (expectile 0.9, inverse temperature 10, rewards ``r - 1``, the actor's cosine learning-rate decay over the
    run), 60,000 steps, a checkpoint every 6,000, the last checkpoint; on offrl's ``mixed`` terminal data.
    The same values as ``offrl.workflow.pipeline.ALGO_DEFAULTS["iql"]`` and WorkflowConfig's ``iql`` default.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Preset:
    """One named preset. Units: steps are gradient steps; rewards in the data's units.

    Attributes:
        name: what ``--preset`` takes.
        description: one paragraph: what it is and where its values come from.
        algo: the algorithm (`offrl train --algo`).
        agent: overrides of that algorithm's config class (offrl.agents.CONFIGS[algo]); unnamed fields keep the
            class defaults.
        steps: gradient steps in all.
        checkpoint_every: gradient steps between checkpoints.
        selector: the checkpoint rule (offrl.workflow.rules.RULES).
        reward_scale: train on ``reward_scale * r + reward_shift``.
        reward_shift: see ``reward_scale``.
        reward_mode: the reward structure the preset expects of its data (offrl.envs.reward_modes.REWARD_MODES);
            `offrl workflow` and the study collect it.
        regime: the behaviour regime (offrl.envs.behaviour.REGIMES) `offrl workflow` and the study collect.
        decay_actor_over_run: IQL: the actor's cosine learning-rate decay spans the whole run (``steps``, after
            any --steps override), as in its authors' code.
        deviations: each deviation from the reference code, with its reason, one per entry.
    """

    name: str
    description: str
    algo: str
    agent: dict[str, Any]
    steps: int
    checkpoint_every: int
    selector: str
    reward_scale: float = 1.0
    reward_shift: float = 0.0
    reward_mode: str = "terminal"
    regime: str = "mixed"
    decay_actor_over_run: bool = False
    deviations: tuple[str, ...] = ()

    def agent_config(self, base: Any = None) -> Any:
        """The algorithm's config: ``base`` (default: the class defaults) with this preset's ``agent`` fields."""
        from offrl.agents import CONFIGS

        base = CONFIGS[self.algo]() if base is None else base
        return dataclasses.replace(base, **{k: tuple(v) if isinstance(v, list) else v for k, v in self.agent.items()})


PAPER = Preset(
    name="paper",
    description=(
        "The workflow paper's regime: plain CQL(H) (paper Eq. 1) with the reference code's values "
        "(../shared/reference/implementation-notes.md): alpha 1.0 without Lagrange, gamma 0.99, tau 0.005, "
        "deterministic backup, Adam learning rates critic 3e-4 / actor 1e-4 / temperature 1e-4, initial "
        "temperature 1.0, target entropy -|A|, 1 sample per action source for the log-sum-exp, a 10,000-step "
        "behaviour-cloning warm start, batch 256; a checkpoint every 5,000 steps (5 epochs of 1,000), 100,000 "
        "steps; the checkpoint at the peak of the dataset Q-value (Guideline 3.1); data with a reward on every "
        "step the task is solved and no termination, scripted actions plus N(0, 0.1^2) clipped to +-0.9."
    ),
    algo="cql",
    agent={
        "calibrated": False,  # plain CQL(H), not Cal-QL
        "bc_steps": 10_000,
        "init_temperature": 1.0,
        "alpha": 1.0,
        "lagrange": False,
        "num_action_samples": 1,
        "deterministic_backup": True,
        "gamma": 0.99,
        "tau": 0.005,
        "critic_lr": 3e-4,
        "actor_lr": 1e-4,
        "temperature_lr": 1e-4,
        "target_entropy": None,
    },
    steps=100_000,
    checkpoint_every=5_000,
    selector="q_peak",
    reward_scale=1.0,
    reward_shift=0.0,
    reward_mode="success-every-step",
    regime="paper",
    deviations=(
        "State observations (MetaWorld's 39-d state), not 48x48 images: the paper's CNN trains at about 1.4 "
        "steps/s on a 2-core CPU (docs/speed.md), so 100,000 steps would take 20 hours a run.",
        "Critic MLP (256, 256, 256) on the state, where the reference code puts FC (1024, 512, 256) after its conv "
        "trunk: the trunk's flat image features (2,304) have no counterpart in a 39-d state; offrl's CQL default.",
        "Actor MLP (256, 256, 256) on the state, without the reference's conv trunk and its FC (1024, 512) -> 256 "
        "(same reason).",
        "No image augmentation (random crop): there are no images.",
        "MetaWorld v3 (Sawyer, MuJoCo) instead of roboverse (WidowX, pybullet): the paper's simulator is not "
        "installable here; MetaWorld's scripted experts play the roles of the paper's scripted policies.",
        "Horizon per task from MetaWorld's scripted policy (1.5 x its median first-success step, rounded up to 10: "
        "90-140 steps), where the paper's tasks have 30-80: MetaWorld's experts need 50-90 steps to succeed "
        "(offrl.envs.reward_modes).",
        "The behaviour success under the paper's noise is whatever MetaWorld's experts reach (recorded in the "
        "dataset metadata), not the paper's 35-40 %: tuning the noise per task would be per-task tuning.",
        "Dataset Q-value evaluated on a fixed set of up to 10,000 training transitions per checkpoint, where the "
        "release logs Q1 on one batch per epoch: less noisy, and what a practitioner would compute.",
        "100,000 steps, where the paper trains for hundreds of thousands in some experiments: the most a 2-core "
        "CPU affords for 12 runs; the reference checkpoint interval (5,000) is kept, so the curve has 18 "
        "candidates after the warm start.",
    ),
)

IQL_SPARSE = Preset(
    name="iql-sparse",
    description=(
        "The workflow's default job (docs/default-job.md, candidate D12): IQL (Kostrikov et al. 2022) with its "
        "authors' sparse-reward (AntMaze) settings, expectile 0.9, inverse temperature 10, rewards r - 1 and the "
        "actor's cosine learning-rate decay over the run; 60,000 steps, a checkpoint every 6,000, the last "
        "checkpoint; offrl's mixed-quality terminal data."
    ),
    algo="iql",
    agent={"expectile": 0.9, "inverse_temperature": 10.0},
    steps=60_000,
    checkpoint_every=6_000,
    selector="last",
    reward_scale=1.0,
    reward_shift=-1.0,
    reward_mode="terminal",
    regime="mixed",
    decay_actor_over_run=True,
    deviations=(
        "Networks (256, 256) for the critics, V and the actor, the authors' MLPs, on MetaWorld's state.",
        "60,000 steps where the authors train 1,000,000 on AntMaze: the budget a 2-core CPU affords a default job "
        "(about 3.5 minutes); the cosine decay is stretched over the run so that it still ends at 0.",
        "The last checkpoint, not a selection: with rewards r - 1 <= 0 the Q-values fall as returns propagate, so "
        "a Q peak is the least-trained critic (docs/default-job.md).",
    ),
)

PRESETS: dict[str, Preset] = {p.name: p for p in (PAPER, IQL_SPARSE)}
"""Every preset by name."""


def get_preset(name: str) -> Preset:
    """The preset called ``name``; a one-line ValueError naming the known ones otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)} (offrl/presets.py)")
    return PRESETS[name]


def train_fields(preset: Preset, steps: int | None = None) -> dict[str, Any]:
    """The TrainConfig fields ``preset`` sets: ``{"preset", "algo", <algo's group>, "steps", "checkpoint_every",
    "reward_scale", "reward_shift"}``. ``steps``: the run's steps if another value overrides the preset's (for
    IQL's decay over the run)."""
    from offrl.training.train import ALGO_FIELD

    agent = preset.agent_config()
    total = preset.steps if steps is None else steps
    if preset.decay_actor_over_run:
        agent = dataclasses.replace(agent, actor_lr_decay_steps=total)
    return {"preset": preset.name, "algo": preset.algo, ALGO_FIELD[preset.algo]: agent, "steps": preset.steps,
            "checkpoint_every": preset.checkpoint_every, "reward_scale": preset.reward_scale,
            "reward_shift": preset.reward_shift}


def workflow_fields(preset: Preset) -> dict[str, Any]:
    """The WorkflowConfig fields ``preset`` sets: those of :func:`train_fields` but ``preset`` (set too), and
    ``selector``, ``regime``, ``reward_mode`` and (for the rule-based horizon) ``horizon`` None."""
    fields = train_fields(preset)
    fields.update(selector=preset.selector, regime=preset.regime, reward_mode=preset.reward_mode)
    if preset.reward_mode == "success-every-step":
        fields["horizon"] = None  # the task's rule-based horizon (offrl.envs.reward_modes)
    if preset.decay_actor_over_run:
        # WorkflowConfig's own rule (resolve_workflow_config): decay 0 spans the run, whatever --steps says.
        fields["iql"] = dataclasses.replace(fields["iql"], actor_lr_decay_steps=0)
    return fields
