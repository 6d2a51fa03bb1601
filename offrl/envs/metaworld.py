"""MetaWorld v3 (Sawyer arm) adapter: noisy scripted data collection and policy evaluation.

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
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from offrl.envs.behaviour import KIND_CODES, KINDS, WHITE_SIGMA, EpisodeBehaviour, Regime, make_regime
from offrl.envs.render import RENDER_REQUIREMENTS, RenderConfig, Renderer, gl_backend

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


def scripted_policy(task: str) -> Callable[[np.ndarray], np.ndarray]:
    """Returns MetaWorld's hand-written expert for ``task``.

    The expert is a deterministic, stateless function of the observation. It reads the goal from
    the last 3 observation entries, so it only works with goal-observable observations (as
    produced by `MetaWorldEnv`); with the goal hidden it succeeds on 0 % of pick-place episodes.
    For a multi-task spec of T tasks it reads each observation's one-hot (the last T entries, as
    produced by `MultiTaskEnv`) and applies that task's expert to the first 39 entries.

    Args:
        task: A name from `available_tasks`, e.g. ``"pick-place-v3"``, or a multi-task spec
            (``"reach-v3+drawer-open-v3"``).

    Returns:
        A function mapping an observation of shape ``(obs_dim,)`` (or a batch ``(B, obs_dim)``),
        any float dtype, to a float32 action of shape ``(4,)`` (or ``(B, 4)``) clipped to [-1, 1];
        ``obs_dim`` is 39, or 39 + T for a spec of T tasks. The raw expert output is a
        proportional controller that often exceeds the bounds; the simulator would clip it anyway,
        so clipping here changes nothing but makes the action honest.

    Raises:
        ValueError: If ``task`` is unknown (or a multi-task spec is invalid).
        RuntimeError: If MetaWorld is not installed.
    """
    _check_task(task)
    if _is_multi(task):
        return _multi_task_policy(task_list(task))
    _, policies = _metaworld()
    expert = policies.ENV_POLICY_MAP[task]()

    def act(obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64)
        # The experts warn on every saturated command ("Constant(s) may be too high"); saturation
        # is their normal regime, so the warning is noise.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if obs.ndim == 1:
                action = expert.get_action(obs)
            elif obs.ndim == 2:
                action = np.stack([expert.get_action(o) for o in obs])
            else:
                raise ValueError(f"obs must have shape (39,) or (B, 39), got {obs.shape}.")
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    return act


def _multi_task_policy(tasks: list[str]) -> Callable[[np.ndarray], np.ndarray]:
    # Dispatches each row to the expert of the task its one-hot (last T entries) names.
    experts = [scripted_policy(name) for name in tasks]
    n_tasks = len(tasks)
    obs_dim = TASK_OBS_DIM + n_tasks

    def act(obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64)
        if obs.ndim not in (1, 2) or obs.shape[-1] != obs_dim:
            raise ValueError(f"obs must have shape ({obs_dim},) or (B, {obs_dim}), got {obs.shape}.")
        batch = obs.reshape(-1, obs_dim)
        which = np.argmax(batch[:, TASK_OBS_DIM:], axis=1)
        actions = np.empty((len(batch), 4), np.float32)
        for k in np.unique(which):
            rows = which == k
            actions[rows] = experts[k](batch[rows, :TASK_OBS_DIM])
        return actions[0] if obs.ndim == 1 else actions

    return act


class MetaWorldEnv:
    """One goal-observable MetaWorld v3 task with object and goal positions re-drawn at each reset.

    Rewards are left out on purpose: this toolkit uses MetaWorld's binary success flag as a sparse
    reward, not the shaped reward.

    Attributes:
        task: The task name.
        obs_dim: Observation size (39).
        act_dim: Action size (4).
        action_low: Lower action bounds, float32 ``(act_dim,)`` (all -1).
        action_high: Upper action bounds, float32 ``(act_dim,)`` (all +1).
        horizon: Maximum steps per episode; `step` refuses to go further.
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
        obs, _, _, _, info = self._env.step(action)
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


def collect_episodes(
    task: str,
    episodes: int,
    horizon: int = DEFAULT_HORIZON,
    noise_sigma: float | None = None,
    seed: int = 0,
    terminate_on_success: bool = True,
    progress: bool = True,
    render: RenderConfig | None = None,
    regime: str = "white",
) -> tuple[dict[str, np.ndarray], dict]:
    """Collects an offline dataset with the scripted expert perturbed by a behaviour regime.

    The executed action is the regime's perturbation of the expert's, clipped to the bounds
    (:mod:`offrl.envs.behaviour`; ``white``: ``clip(expert(obs) + N(0, noise_sigma^2 I), low, high)``);
    it is stored exactly as executed. The reward is sparse: 1.0 on a step whose success flag is set, else 0.0.
    With ``terminate_on_success`` an episode ends at its first success (that transition has
    ``terminals=True``); otherwise it runs to the horizon, rewarded on every success step, and
    ``terminals`` is never set. The last transition of an episode that reaches the horizon without
    terminating has ``timeouts=True``. Failed episodes are kept.

    With a multi-task spec of T tasks one `MultiTaskEnv` collects every episode: episode ``e``
    runs task ``(seed + e) % T`` (the tasks alternate, starting at ``seed % T``), each observation
    ends with the task's one-hot, and the noiseless expert is the multi-task `scripted_policy`.

    Args:
        task: A name from `available_tasks`, or a multi-task spec (names joined by ``+``,
            e.g. ``"pick-place-v3+drawer-open-v3"``).
        episodes: Number of episodes (>= 1).
        horizon: Maximum steps per episode (>= 1).
        noise_sigma: The regime's main std in action units (the action range is [-1, 1]):
            ``white``'s i.i.d. noise, ``correlated``'s OU deviation, ``mixed``'s expert attempts'
            deviation. None: the regime's documented default (0.8, 0.4, 0.1).
        seed: Seeds both the noise generator and the start states; same seed, same data.
        terminate_on_success: End each episode at its first success.
        progress: Show a tqdm progress bar over episodes.
        render: Also record a camera image of every state (see `RenderConfig`). Rendering does not
            change the states: the state arrays are the same with or without it. Costs about 6 ms
            per frame at 48x48 with shadows off (software rendering, one CPU core): pick-place
            collection drops from about 1500 to 125 transitions/s. Single tasks only.
        regime: ``white``, ``correlated`` or ``mixed`` (:mod:`offrl.envs.behaviour`). This low-level
            collector defaults to ``white`` (with ``noise_sigma=0`` exactly the expert); the user-facing
            `offrl.data.collect` defaults to `offrl.envs.behaviour.DEFAULT_REGIME`.

    Returns:
        ``(data, info)``. ``obs_dim`` is 39, or 39 + T for a spec of T tasks (the last T entries
        are the one-hot). ``data`` holds N transitions: ``observations`` float32 ``(N, obs_dim)``,
        ``actions`` float32 ``(N, act_dim)``, ``rewards`` float32 ``(N,)``, ``terminals`` bool
        ``(N,)``, ``timeouts`` bool ``(N,)``, ``next_observations`` float32 ``(N, obs_dim)``.
        With ``render`` it also holds ``images`` uint8 ``(M, size, size, 3)``, every state's image
        once (the T + 1 states s_0..s_T of an episode of T steps, so M = N + episodes), and
        ``image_index``/``next_image_index`` int64 ``(N,)``: the frame of ``s`` and of ``s'`` of
        each transition (inside an episode ``next_image_index[t] == image_index[t + 1]``).
        ``info`` holds the arguments (``task``, ``episodes``, ``horizon``, ``regime``,
        ``noise_sigma`` (the regime's main std), ``seed``, ``terminate_on_success``), ``behaviour`` (the
        regime's parameters, `Regime.to_info`), for ``mixed`` also ``episode_kinds`` (one letter per
        episode, in order: ``e`` expert, ``p`` partial, ``x`` exploratory), ``episode_kind_counts`` and
        ``behaviour_success_by_kind``, ``tasks`` (`task_list` of ``task``: the task of each
        one-hot entry; one name for a single task), ``behaviour_success_rate`` (fraction of
        episodes with any success), ``mean_episode_length``, ``transitions``, ``obs_dim``, ``act_dim``,
        ``action_low``/``action_high`` (lists), ``proprio_dims`` (the observation entries that
        are the robot's own state: hand xyz and gripper, ``[0, 1, 2, 3]``) and
        ``metaworld_version``; with ``render`` also ``image`` (`RenderConfig.to_info`).

    Raises:
        ValueError: If ``task`` is unknown (or an invalid multi-task spec), ``episodes < 1``,
            ``horizon < 1``, ``noise_sigma < 0``, ``seed < 0``, an unknown ``regime``,
            ``render.camera`` is not a camera
            of the model, or ``render`` is given with a multi-task spec (state-only).
        TypeError: If ``render`` is not a `RenderConfig` or None.
        RuntimeError: If MetaWorld is not installed, or ``render`` is given and rendering is
            impossible (``MUJOCO_GL=disable``, no EGL/OSMesa); the message says what to set.
    """
    _check_task(task)
    _check_positive("episodes", episodes)
    _check_positive("horizon", horizon)
    _check_seed(seed)
    behaviour = make_regime(regime, noise_sigma)
    _check_state_only(task, render)
    _check_render(render)

    env = make_env(task, seed=seed, horizon=horizon)
    try:
        renderer = Renderer(env, render) if render is not None else None
    except BaseException:
        env.close()
        raise
    try:
        data, info = _collect(env, renderer, episodes, behaviour, seed, terminate_on_success, progress)
    finally:
        if renderer is not None:
            renderer.close()
        env.close()
    return data, info


def _collect(
    env: MetaWorldEnv | MultiTaskEnv,
    renderer: Renderer | None,
    episodes: int,
    behaviour: Regime,
    seed: int,
    terminate_on_success: bool,
    progress: bool,
) -> tuple[dict[str, np.ndarray], dict]:
    # The loop of collect_episodes (arguments already checked); closes nothing.
    from tqdm.auto import tqdm

    task, horizon = env.task, env.horizon
    expert = scripted_policy(task)
    rng = np.random.default_rng(seed)
    capacity = episodes * horizon
    observations = np.empty((capacity, env.obs_dim), np.float32)
    next_observations = np.empty((capacity, env.obs_dim), np.float32)
    actions = np.empty((capacity, env.act_dim), np.float32)
    rewards = np.zeros(capacity, np.float32)
    terminals = np.zeros(capacity, bool)
    timeouts = np.zeros(capacity, bool)
    if renderer is not None:
        size = renderer.config.size
        # np.empty only reserves address space; pages are committed as frames are written.
        images = np.empty((episodes * (horizon + 1), size, size, 3), np.uint8)
        image_index = np.empty(capacity, np.int64)
        next_image_index = np.empty(capacity, np.int64)
    m = 0  # frames written

    def record_frame() -> int:
        nonlocal m
        images[m] = renderer.render()
        m += 1
        return m - 1

    n = 0
    successes = 0
    kinds: list[str] = []
    episode_success: list[int] = []
    bar = tqdm(range(episodes), desc=f"collect {task}", unit="ep", disable=not progress)
    for episode in bar:
        obs = env.reset()
        if renderer is not None:
            frame = record_frame()
        succeeded = False
        episode_behaviour = EpisodeBehaviour(behaviour, env.act_dim, horizon, rng)
        kinds.append(episode_behaviour.kind)
        for t in range(horizon):
            executed = episode_behaviour.act(expert(obs), t)
            action = np.clip(executed, env.action_low, env.action_high).astype(np.float32)
            next_obs, success = env.step(action)
            observations[n], actions[n], next_observations[n] = obs, action, next_obs
            if renderer is not None:
                image_index[n] = frame
                frame = next_image_index[n] = record_frame()
            rewards[n] = float(success)
            succeeded |= success
            n += 1
            if success and terminate_on_success:
                terminals[n - 1] = True
                break
            if t == horizon - 1:
                timeouts[n - 1] = True
            obs = next_obs
        successes += succeeded
        episode_success.append(int(succeeded))
        bar.set_postfix(success=f"{successes / (episode + 1):.2f}", refresh=False)
    bar.close()

    data = {
        "observations": observations[:n].copy(),
        "actions": actions[:n].copy(),
        "rewards": rewards[:n].copy(),
        "terminals": terminals[:n].copy(),
        "timeouts": timeouts[:n].copy(),
        "next_observations": next_observations[:n].copy(),
    }
    if renderer is not None:
        data["images"] = images[:m] if m == len(images) else images[:m].copy()
        data["image_index"] = image_index[:n].copy()
        data["next_image_index"] = next_image_index[:n].copy()
    info = {
        "task": task,
        "episodes": int(episodes),
        "horizon": int(horizon),
        "regime": behaviour.name,
        "noise_sigma": behaviour.sigma,
        "behaviour": behaviour.to_info(),
        "seed": int(seed),
        "terminate_on_success": bool(terminate_on_success),
        "tasks": task_list(task),
        "behaviour_success_rate": successes / episodes,
        "mean_episode_length": n / episodes,
        "transitions": n,
        "obs_dim": env.obs_dim,
        "act_dim": env.act_dim,
        "action_low": env.action_low.tolist(),
        "action_high": env.action_high.tolist(),
        "proprio_dims": list(PROPRIO_DIMS),
        "metaworld_version": _metaworld_version(),
    }
    if behaviour.name == "mixed":
        # One letter per episode: an HDF5 attribute holds at most 64 KiB, a JSON list of names would not fit.
        info["episode_kinds"] = "".join(KIND_CODES[k] for k in kinds)
        info["episode_kind_counts"] = {kind: kinds.count(kind) for kind in KINDS}
        info["behaviour_success_by_kind"] = {
            kind: float(np.mean([s for s, k in zip(episode_success, kinds, strict=True) if k == kind]))
            for kind in KINDS if kind in kinds
        }
    if renderer is not None:
        info["image"] = renderer.config.to_info()
    return data, info


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


def evaluate_policy(
    policy_fn: Callable[[Any], np.ndarray],
    task: str,
    episodes: int,
    horizon: int = DEFAULT_HORIZON,
    seed: int = 0,
    terminate_on_success: bool = True,
    num_envs: int = 8,
    render: RenderConfig | None = None,
    frame_stack: int = 1,
) -> dict:
    """Measures a policy's success rate in simulation (for analysis, not for model selection).

    ``num_envs`` simulators run in lockstep and ``policy_fn`` gets one stacked batch per time
    step. The batch always has ``num_envs`` rows (or ``episodes`` if fewer): rows of idle
    simulators are padded with their last observation and their actions ignored, so a jitted
    policy compiles once. Each episode has its own start-state seed derived from
    ``SeedSequence([seed, 1])``, disjoint from the collection stream of `collect_episodes`; the
    result depends on ``seed`` and ``episodes`` but not on ``num_envs``.

    With a multi-task spec of T tasks each episode's seed ``s`` is moved to
    ``s - s % T + i % T`` (still non-negative), so episode ``i`` runs task ``i % T`` (see
    `MultiTaskEnv.seed`): the tasks are evaluated in balance (exactly, when ``episodes`` is a
    multiple of T) and the success rate is their mean.

    Args:
        policy_fn: Maps float32 observations ``(B, obs_dim)`` (``obs_dim`` = 39, or 39 + T with
            the task one-hot last for a spec of T tasks) to actions ``(B, act_dim)``
            (any array-like, e.g. a JAX array). Actions are clipped to the bounds. With
            ``render`` it gets a dict instead: ``{"state": float32 (B, obs_dim), "image": uint8
            (B, size, size, 3 * frame_stack)}``, where each row's image holds that simulator's
            last ``frame_stack`` frames, oldest first along the channel axis; at the start of an
            episode its first frame fills all the slots (the frame-stacking convention of image
            datasets).
        task: A name from `available_tasks`, or a multi-task spec (names joined by ``+``).
        episodes: Number of episodes (>= 1).
        horizon: Maximum steps per episode (>= 1).
        seed: Non-negative evaluation seed; same seed and policy, same result.
        terminate_on_success: Stop an episode at its first success (success is "any step with
            the flag set" either way; this only saves time and changes the episode lengths).
        num_envs: Simulators stepped in lockstep (>= 1); only affects speed and memory.
        render: Give the policy camera images too (see `RenderConfig`); about 6 ms per
            simulator step at 48x48 with shadows off. Single tasks only.
        frame_stack: Frames per image (>= 1); only with ``render``.

    Returns:
        ``{"success_rate": float, "successes": int, "episodes": int,
        "mean_episode_length": float, "episode_successes": list of 0/1 per episode (in episode order,
        the same for any ``num_envs``), "seconds": float}`` where ``seconds`` is the wall time,
        including building the simulators.

    Raises:
        ValueError: If an argument is out of range, the task is unknown (or an invalid
            multi-task spec), ``render`` is given with a multi-task spec, ``frame_stack > 1``
            without ``render``, ``render.camera`` is not a camera of the model, or ``policy_fn``
            returns the wrong shape or non-finite actions.
        TypeError: If ``render`` is not a `RenderConfig` or None.
        RuntimeError: If MetaWorld is not installed, or ``render`` is given and rendering is
            impossible (``MUJOCO_GL=disable``, no EGL/OSMesa); the message says what to set.
    """
    _check_task(task)
    _check_positive("episodes", episodes)
    _check_positive("horizon", horizon)
    _check_positive("num_envs", num_envs)
    _check_positive("frame_stack", frame_stack)
    _check_seed(seed)
    _check_state_only(task, render)
    _check_render(render)
    if render is None and frame_stack != 1:
        raise ValueError(f"frame_stack={frame_stack} stacks camera frames: pass render=RenderConfig(...) too.")
    start = time.perf_counter()
    batch = min(num_envs, episodes)
    seeds = _episode_seeds(seed, episodes, len(task_list(task)))
    envs: list[MetaWorldEnv | MultiTaskEnv] = []
    renderers: list[Renderer] = []
    try:
        for _ in range(batch):
            envs.append(make_env(task, seed=seeds[0], horizon=horizon))
            if render is not None:
                renderers.append(Renderer(envs[-1], render))
        result = _evaluate(policy_fn, envs, renderers, seeds, terminate_on_success, frame_stack)
    finally:
        for renderer in renderers:
            renderer.close()
        for env in envs:
            env.close()
    return {**result, "seconds": time.perf_counter() - start}


def _evaluate(
    policy_fn: Callable[[Any], np.ndarray],
    envs: list[MetaWorldEnv | MultiTaskEnv],
    renderers: list[Renderer],
    seeds: list[int],
    terminate_on_success: bool,
    frame_stack: int,
) -> dict:
    # The lockstep loop of evaluate_policy (arguments already checked); closes nothing.
    batch, episodes, horizon = len(envs), len(seeds), envs[0].horizon
    low, high = envs[0].action_low, envs[0].action_high

    obs = np.zeros((batch, envs[0].obs_dim), np.float32)
    if renderers:
        size = renderers[0].config.size
        frames = np.zeros((batch, size, size, 3 * frame_stack), np.uint8)
    episode_of = np.full(batch, -1)  # -1: idle slot
    steps = np.zeros(batch, int)
    succeeded = np.zeros(batch, bool)
    next_episode = 0
    successes = 0
    total_steps = 0
    outcome = np.zeros(episodes, bool)  # per episode, in seed order: independent of num_envs

    def start_episode(slot: int) -> None:
        nonlocal next_episode
        if next_episode < episodes:
            envs[slot].seed(seeds[next_episode])
            obs[slot] = envs[slot].reset()
            if renderers:
                frames[slot] = np.tile(renderers[slot].render(), (1, 1, frame_stack))
            episode_of[slot], steps[slot], succeeded[slot] = next_episode, 0, False
            next_episode += 1
        else:
            episode_of[slot] = -1

    for slot in range(batch):
        start_episode(slot)
    while np.any(episode_of >= 0):
        inputs = {"state": obs.copy(), "image": frames.copy()} if renderers else obs.copy()
        actions = np.asarray(policy_fn(inputs), dtype=np.float32)
        if actions.shape != (batch, envs[0].act_dim):
            given = f"({batch}, {envs[0].obs_dim}) observations"
            if renderers:
                given = f"{{'state': ({batch}, {envs[0].obs_dim}), 'image': {frames.shape}}} inputs"
            raise ValueError(
                f"policy_fn must map {given} to ({batch}, {envs[0].act_dim}) actions, got {actions.shape}."
            )
        for slot in np.flatnonzero(episode_of >= 0):
            if not np.all(np.isfinite(actions[slot])):
                raise ValueError(f"policy_fn returned non-finite actions: {actions[slot]}.")
            obs[slot], success = envs[slot].step(np.clip(actions[slot], low, high))
            steps[slot] += 1
            succeeded[slot] |= success
            if (success and terminate_on_success) or steps[slot] >= horizon:
                successes += bool(succeeded[slot])
                outcome[episode_of[slot]] = succeeded[slot]
                total_steps += int(steps[slot])
                start_episode(slot)
            elif renderers:
                # Drop the oldest frame, append the new one (oldest first along the channels).
                frames[slot, ..., :-3] = frames[slot, ..., 3:]
                frames[slot, ..., -3:] = renderers[slot].render()
    return {
        "success_rate": successes / episodes,
        "successes": int(successes),
        "episodes": int(episodes),
        "mean_episode_length": total_steps / episodes,
        "episode_successes": outcome.astype(int).tolist(),
    }
