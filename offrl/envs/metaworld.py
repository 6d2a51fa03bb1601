"""MetaWorld v3 (Sawyer arm) adapter: tasks, single- and multi-task environments, episode seeds.

The scripted experts live in :mod:`offrl.envs.scripted`; collecting episodes and evaluating policies (in
parallel simulators) in :mod:`offrl.envs.rollout`.

A task is either one MetaWorld task name (``"pick-place-v3"``) or a multi-task spec: at least two
distinct names joined by ``+`` (``"pick-place-v3+drawer-open-v3+reach-v3"``), for datasets that mix
several tasks (Kumar et al. 2021, Scenario 2: several object types in one dataset). A multi-task
environment (`MultiTaskEnv`) appends a one-hot task indicator (in the spec's order) to the 39-d
observation, so a spec of T tasks has ``obs_dim = 39 + T``; episodes alternate tasks (see
`MultiTaskEnv.reset`). Multi-task datasets are state-only (no camera images).

The simulator is optional (``pip install 'offrl[sim]'``), so every import of ``metaworld`` and
``mujoco`` happens inside a function: importing this module never fails without it.

Facts about MetaWorld 3.1.1 this module relies on (measured, see ``tests/test_envs.py``):

* Observations are 39 float64 values: hand xyz (3), gripper opening in [0, 1] (1), object
  pos/quat padded to 14, the same 18 values from the previous step (frame stacking; equal to the
  current ones right after reset), and the goal xyz (3). The goal-hidden classes zero the last 3.
* Actions are 4 values in [-1, 1]: end-effector xyz displacement (scaled by 1/100 m) and
  gripper effort.
* The ``*-goal-observable`` classes show the goal but freeze the object/goal positions after
  construction (``_freeze_rand_vec = True``): every reset would replay one initial state. We
  unfreeze them and draw positions from the env's own seeded generator (``seeded_rand_vec``)
  instead of the global ``np.random``, so each reset is a new, reproducible configuration.
* ``info["success"]`` is a float (0.0 or 1.0); ``terminated`` is always False; the env raises
  once ``max_path_length`` (500 by default) steps have been taken without a reset.
* ``reset`` moves the goal marker (the ``goal`` site) in the model but not in the simulator's
  derived positions, which MetaWorld only refreshes after each step: without a fix the first image
  of every episode would show the goal where the previous episode had it.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import numpy as np

from offrl.envs.behaviour import WHITE_SIGMA
from offrl.envs.render import RENDER_REQUIREMENTS, RenderConfig, gl_backend

DEFAULT_HORIZON = 150
# Calibrated once on pick-place-v3 (horizon 150, terminate_on_success) for a behaviour success
# rate of 35-40 %, like the scripted-plus-Gaussian-noise data of Kumar et al. (2021): 600 episodes
# over seeds 0-2 gave 38 %, 43 %, 35 %. Not tuned per task: the same noise leaves easier tasks
# far more successful (reach-v3 97 %, door-open-v3 77 %, drawer-open-v3 60 %).
DEFAULT_NOISE_SIGMA = WHITE_SIGMA

_INSTALL_HINT = (
    "MetaWorld is not installed: pip install 'offrl[sim]' (metaworld==3.1.1, which brings MuJoCo). "
    "Training, diagnosis and reports work without it; collecting data and evaluating policies do not."
)
_OBSERVABLE_SUFFIX = "-goal-observable"
# Derivation tag for evaluation seeds, so evaluation never replays the collection's start states.
_EVAL_STREAM = 1
# The robot's own state inside the 39-d observation: hand xyz (3) and gripper opening (1).
PROPRIO_DIMS = (0, 1, 2, 3)
# Size of one task's observation; a multi-task observation appends a one-hot of the task.
TASK_OBS_DIM = 39
# Separator of the task names in a multi-task spec.
_TASK_SEP = "+"
_MAX_SEED = 2**32  # MetaWorld's constructors seed np.random temporarily: seeds must be < 2**32


def _metaworld() -> tuple[Any, Any]:
    """Imports MetaWorld lazily.

    Returns:
        The ``metaworld.env_dict`` and ``metaworld.policies`` modules.

    Raises:
        RuntimeError: If MetaWorld or MuJoCo cannot be imported, including when MuJoCo fails to load
            the OpenGL backend that ``MUJOCO_GL`` names (it does so on import).
    """
    try:
        import metaworld.env_dict as env_dict
        import metaworld.policies as policies
    except Exception as err:  # PyOpenGL also fails with AttributeError when GL libraries are missing
        installed = all(importlib.util.find_spec(name) is not None for name in ("metaworld", "mujoco"))
        backend = os.environ.get("MUJOCO_GL", "").strip().lower()
        if installed and backend in ("egl", "osmesa"):
            raise RuntimeError(
                f"MetaWorld is installed but importing it failed ({type(err).__name__}: {err}): MuJoCo loads the "
                f"OpenGL backend named by MUJOCO_GL={backend} when it is imported. If you do not render images, "
                f"set MUJOCO_GL=disable; to render, {RENDER_REQUIREMENTS}"
            ) from err
        if isinstance(err, ImportError):
            raise RuntimeError(_INSTALL_HINT) from err
        raise
    return env_dict, policies


def available_tasks() -> list[str]:
    """Lists the MetaWorld v3 tasks that ship a scripted policy.

    Returns:
        Sorted task names such as ``"pick-place-v3"``.

    Raises:
        RuntimeError: If MetaWorld is not installed.
    """
    env_dict, policies = _metaworld()
    return sorted(set(env_dict.ALL_V3_ENVIRONMENTS) & set(policies.ENV_POLICY_MAP))


def task_list(task: str) -> list[str]:
    """Splits a task spec into its task names (no validation; see `_check_task`).

    Args:
        task: One task name (``"reach-v3"``) or a multi-task spec (``"reach-v3+drawer-open-v3"``).

    Returns:
        The names in the spec's order, e.g. ``["reach-v3", "drawer-open-v3"]``; ``[task]`` for a
        single task.
    """
    return task.split(_TASK_SEP)


def _is_multi(task: str) -> bool:
    return _TASK_SEP in task


def _check_task(task: str) -> None:
    # Accepts a single task name or a multi-task spec ("a+b+..."): >= 2 distinct known names.
    if not isinstance(task, str):
        raise ValueError(f"task must be a string, got {task!r}.")
    tasks = available_tasks()
    if not _is_multi(task):
        if task not in tasks:
            raise ValueError(f"Unknown MetaWorld task {task!r}. Use one of: {', '.join(tasks)}.")
        return
    parts = task_list(task)
    for part in parts:
        if part not in tasks:
            raise ValueError(
                f"Unknown MetaWorld task {part!r} in the multi-task spec {task!r} (task names joined by "
                f"{_TASK_SEP!r}). Use one of: {', '.join(tasks)}."
            )
    duplicates = sorted({part for part in parts if parts.count(part) > 1})
    if duplicates:
        raise ValueError(
            f"The multi-task spec {task!r} repeats {', '.join(map(repr, duplicates))}: each task may appear once."
        )


def _check_state_only(task: str, render: RenderConfig | None) -> None:
    if render is not None and _is_multi(task):
        raise ValueError(
            f"Multi-task datasets are state-only: drop --obs image (render=None) for {task!r}, or collect "
            "its tasks one at a time."
        )


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")


def _check_render(render: RenderConfig | None) -> None:
    if render is not None and not isinstance(render, RenderConfig):
        raise TypeError(f"render must be a RenderConfig or None, got {type(render).__name__}.")
    if render is not None:
        gl_backend()  # fail on MUJOCO_GL=disable before building simulators; default it to egl


class MetaWorldEnv:
    """One goal-observable MetaWorld v3 task with object and goal positions re-drawn at each reset.

    `step` returns MetaWorld's binary success flag, the sparse reward offrl uses by default; MetaWorld's own
    shaped reward of the last step is kept in ``last_reward`` (for ``--reward-mode shaped``,
    :mod:`offrl.envs.reward_modes`).

    Attributes:
        task: The task name.
        obs_dim: Observation size (39).
        act_dim: Action size (4).
        action_low: Lower action bounds, float32 ``(act_dim,)`` (all -1).
        action_high: Upper action bounds, float32 ``(act_dim,)`` (all +1).
        horizon: Maximum steps per episode; `step` refuses to go further.
        last_reward: MetaWorld's shaped reward of the last `step` (float, v3: in [0, 10]); 0.0 after `reset`.
    """

    def __init__(self, task: str, seed: int, horizon: int = DEFAULT_HORIZON) -> None:
        """Builds the simulator (about 0.15 s; nothing is rendered).

        Args:
            task: A name from `available_tasks`.
            seed: Non-negative integer seeding the start-state generator; the same seed gives the
                same sequence of start states.
            horizon: Maximum number of steps per episode (>= 1).

        Raises:
            ValueError: If ``task`` is unknown, ``horizon < 1`` or ``seed < 0``.
            RuntimeError: If MetaWorld is not installed.
        """
        _check_task(task)
        _check_positive("horizon", horizon)
        _check_seed(seed)
        env_dict, _ = _metaworld()
        cls = env_dict.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[task + _OBSERVABLE_SUFFIX]
        # The constructor seeds the global np.random only temporarily and restores it.
        self._env = cls(seed=int(seed))
        self._env._freeze_rand_vec = False
        self._env.seeded_rand_vec = True
        # MetaWorld raises past max_path_length (500); keep that guard in line with our horizon.
        self._env.max_path_length = int(horizon)
        self.task = task
        self.horizon = int(horizon)
        self.obs_dim = int(self._env.observation_space.shape[0])
        self.act_dim = int(self._env.action_space.shape[0])
        self.action_low = np.asarray(self._env.action_space.low, dtype=np.float32)
        self.action_high = np.asarray(self._env.action_space.high, dtype=np.float32)
        self._t: int | None = None
        self.last_reward = 0.0

    def seed(self, seed: int) -> None:
        """Re-seeds the start-state generator; the next `reset` draws from the new stream.

        Args:
            seed: Non-negative integer.

        Raises:
            ValueError: If ``seed < 0``.
        """
        _check_seed(seed)
        self._env.seed(int(seed))

    def reset(self) -> np.ndarray:
        """Starts an episode with freshly drawn object and goal positions.

        Returns:
            The first observation, float32 ``(obs_dim,)``.
        """
        obs, _ = self._env.reset()
        # What MetaWorld does after every step: put the goal marker where the new goal is (see the
        # module docstring). Nothing but rendering reads these positions before the next step
        # recomputes them, so observations and dynamics are unchanged.
        for site, pos in self._env._target_site_config:
            self._env._set_pos_site(site, pos)
        self._t = 0
        self.last_reward = 0.0
        return obs.astype(np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, bool]:
        """Applies one action (5 MuJoCo substeps, 12.5 ms of simulated time).

        Args:
            action: ``(act_dim,)`` array-like; values outside the bounds are clipped.

        Returns:
            ``(next_obs, success)``: float32 ``(obs_dim,)`` observation and whether the task's
            success condition holds after this step (``bool(info["success"])``).

        Raises:
            RuntimeError: If called before `reset` or after ``horizon`` steps.
            ValueError: If the action has the wrong shape or non-finite values.
        """
        if self._t is None:
            raise RuntimeError("Call reset() before step().")
        if self._t >= self.horizon:
            raise RuntimeError(f"The episode reached its horizon ({self.horizon} steps); call reset().")
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (self.act_dim,):
            raise ValueError(f"action must have shape ({self.act_dim},), got {action.shape}.")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action has non-finite values: {action}.")
        action = np.clip(action, self.action_low, self.action_high)
        obs, reward, _, _, info = self._env.step(action)
        self.last_reward = float(reward)
        self._t += 1
        return obs.astype(np.float32), bool(info["success"])

    def close(self) -> None:
        """Releases the simulator."""
        self._env.close()


class MultiTaskEnv:
    """Several goal-observable MetaWorld v3 tasks behind one interface, with a one-hot task indicator.

    Holds one `MetaWorldEnv` per task. Each episode runs one task; its observations are that
    task's 39 values followed by a float32 one-hot of length T marking the task (in the spec's
    order). Episode ``k`` (counted from the last `seed`, or from construction) runs task
    ``(seed + k) % T``: consecutive resets alternate the tasks, and the first episode after
    ``seed(s)`` runs task ``s % T``.

    Attributes:
        task: The multi-task spec, e.g. ``"reach-v3+drawer-open-v3"``.
        tasks: Its task names, in order.
        obs_dim: Observation size (39 + T).
        act_dim: Action size (4).
        action_low: Lower action bounds, float32 ``(act_dim,)`` (all -1).
        action_high: Upper action bounds, float32 ``(act_dim,)`` (all +1).
        horizon: Maximum steps per episode; `step` refuses to go further.
        last_reward: The current task's shaped reward of the last `step` (see `MetaWorldEnv`).
    """

    def __init__(self, task: str, seed: int, horizon: int = DEFAULT_HORIZON) -> None:
        """Builds one simulator per task (about 0.15 s each; nothing is rendered).

        Args:
            task: A multi-task spec: at least two distinct names from `available_tasks` joined
                by ``+``.
            seed: Non-negative integer seeding every task's start-state generator; the first
                episode runs task ``seed % T``.
            horizon: Maximum number of steps per episode (>= 1).

        Raises:
            ValueError: If the spec is invalid (unknown or repeated task, fewer than two tasks),
                ``horizon < 1`` or ``seed < 0``.
            RuntimeError: If MetaWorld is not installed.
        """
        _check_task(task)
        if not _is_multi(task):
            raise ValueError(f"MultiTaskEnv needs tasks joined by {_TASK_SEP!r}, got the single task {task!r}.")
        _check_positive("horizon", horizon)
        _check_seed(seed)
        self.task = task
        self.tasks = task_list(task)
        self._envs: list[MetaWorldEnv] = []
        try:
            for name in self.tasks:
                self._envs.append(MetaWorldEnv(name, seed=seed, horizon=horizon))
        except BaseException:
            self.close()
            raise
        first = self._envs[0]
        self.horizon = first.horizon
        self.obs_dim = first.obs_dim + len(self.tasks)
        self.act_dim = first.act_dim
        self.action_low = first.action_low.copy()
        self.action_high = first.action_high.copy()
        self._episode = int(seed)
        self._active: int | None = None

    def seed(self, seed: int) -> None:
        """Re-seeds every task's start-state generator; the next `reset` runs task ``seed % T``.

        Args:
            seed: Non-negative integer.

        Raises:
            ValueError: If ``seed < 0``.
        """
        _check_seed(seed)
        for env in self._envs:
            env.seed(seed)
        self._episode = int(seed)

    def _with_task(self, obs: np.ndarray) -> np.ndarray:
        one_hot = np.zeros(len(self.tasks), np.float32)
        one_hot[self._active] = 1.0
        return np.concatenate([obs.astype(np.float32), one_hot])

    def reset(self) -> np.ndarray:
        """Starts an episode of the next task in turn, with freshly drawn object and goal positions.

        Returns:
            The first observation, float32 ``(obs_dim,)``: the task's 39 values, then its one-hot.
        """
        self._active = self._episode % len(self.tasks)
        self._episode += 1
        return self._with_task(self._envs[self._active].reset())

    def step(self, action: np.ndarray) -> tuple[np.ndarray, bool]:
        """Applies one action to the current episode's task (see `MetaWorldEnv.step`).

        Returns:
            ``(next_obs, success)``: float32 ``(obs_dim,)`` observation (one-hot included) and the
            task's success flag.

        Raises:
            RuntimeError: If called before `reset` or after ``horizon`` steps.
            ValueError: If the action has the wrong shape or non-finite values.
        """
        if self._active is None:
            raise RuntimeError("Call reset() before step().")
        obs, success = self._envs[self._active].step(action)
        return self._with_task(obs), success

    @property
    def last_reward(self) -> float:
        """The current task's shaped reward of the last `step` (0.0 before the first)."""
        return self._envs[self._active].last_reward if self._active is not None else 0.0

    def close(self) -> None:
        """Releases the simulators."""
        for env in self._envs:
            env.close()


def make_env(task: str, seed: int, horizon: int = DEFAULT_HORIZON) -> MetaWorldEnv | MultiTaskEnv:
    """Builds the environment of a task spec.

    Args:
        task: A name from `available_tasks` or a multi-task spec (names joined by ``+``).
        seed: Non-negative start-state seed.
        horizon: Maximum number of steps per episode (>= 1).

    Returns:
        A `MetaWorldEnv` for a single task, a `MultiTaskEnv` for a multi-task spec.

    Raises:
        ValueError: If the spec is invalid, ``horizon < 1`` or ``seed < 0``.
        RuntimeError: If MetaWorld is not installed.
    """
    if isinstance(task, str) and _is_multi(task):
        return MultiTaskEnv(task, seed=seed, horizon=horizon)
    return MetaWorldEnv(task, seed=seed, horizon=horizon)


def _metaworld_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("metaworld")
    except PackageNotFoundError:
        return "unknown"


def _episode_seeds(seed: int, episodes: int, n_tasks: int = 1) -> list[int]:
    # One seed per episode (not per env) so the result does not depend on num_envs or on the
    # order in which lockstep slots free up. With T > 1 tasks, episode i's seed is moved to the
    # nearest value below it that is congruent to i mod T, so that MultiTaskEnv runs task i % T.
    children = np.random.SeedSequence([seed, _EVAL_STREAM]).spawn(episodes)
    seeds = [int(c.generate_state(1, np.uint32)[0]) for c in children]
    if n_tasks > 1:
        seeds = [s - s % n_tasks + i % n_tasks for i, s in enumerate(seeds)]
        seeds = [s - n_tasks if s >= _MAX_SEED else s for s in seeds]  # stays >= 0 and congruent
    return seeds
