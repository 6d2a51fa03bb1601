"""MetaWorld v3 (Sawyer arm) adapter: noisy scripted data collection and policy evaluation.

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
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

DEFAULT_HORIZON = 150
# Calibrated once on pick-place-v3 (horizon 150, terminate_on_success) for a behaviour success
# rate of 35-40 %, like the scripted-plus-Gaussian-noise data of Kumar et al. (2021): 600 episodes
# over seeds 0-2 gave 38 %, 43 %, 35 %. Not tuned per task: the same noise leaves easier tasks
# far more successful (reach-v3 97 %, door-open-v3 77 %, drawer-open-v3 60 %).
DEFAULT_NOISE_SIGMA = 0.8

_INSTALL_HINT = (
    "MetaWorld is not installed: pip install 'offrl[sim]' (metaworld==3.1.1, which brings MuJoCo). "
    "Training, diagnosis and reports work without it; collecting data and evaluating policies do not."
)
_OBSERVABLE_SUFFIX = "-goal-observable"
# Derivation tag for evaluation seeds, so evaluation never replays the collection's start states.
_EVAL_STREAM = 1


def _metaworld() -> tuple[Any, Any]:
    """Imports MetaWorld lazily.

    Returns:
        The ``metaworld.env_dict`` and ``metaworld.policies`` modules.

    Raises:
        RuntimeError: If MetaWorld or MuJoCo cannot be imported.
    """
    try:
        import metaworld.env_dict as env_dict
        import metaworld.policies as policies
    except ImportError as err:
        raise RuntimeError(_INSTALL_HINT) from err
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


def _check_task(task: str) -> None:
    tasks = available_tasks()
    if task not in tasks:
        raise ValueError(f"Unknown MetaWorld task {task!r}. Use one of: {', '.join(tasks)}.")


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")


def scripted_policy(task: str) -> Callable[[np.ndarray], np.ndarray]:
    """Returns MetaWorld's hand-written expert for ``task``.

    The expert is a deterministic, stateless function of the observation. It reads the goal from
    the last 3 observation entries, so it only works with goal-observable observations (as
    produced by `MetaWorldEnv`); with the goal hidden it succeeds on 0 % of pick-place episodes.

    Args:
        task: A name from `available_tasks`, e.g. ``"pick-place-v3"``.

    Returns:
        A function mapping an observation of shape ``(39,)`` (or a batch ``(B, 39)``), any float
        dtype, to a float32 action of shape ``(4,)`` (or ``(B, 4)``) clipped to [-1, 1]. The raw
        expert output is a proportional controller that often exceeds the bounds; the simulator
        would clip it anyway, so clipping here changes nothing but makes the action honest.

    Raises:
        ValueError: If ``task`` is unknown.
        RuntimeError: If MetaWorld is not installed.
    """
    _check_task(task)
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


def collect_episodes(
    task: str,
    episodes: int,
    horizon: int = DEFAULT_HORIZON,
    noise_sigma: float = DEFAULT_NOISE_SIGMA,
    seed: int = 0,
    terminate_on_success: bool = True,
    progress: bool = True,
) -> tuple[dict[str, np.ndarray], dict]:
    """Collects an offline dataset with the scripted expert plus Gaussian action noise.

    The executed action is ``clip(expert(obs) + N(0, noise_sigma^2 I), low, high)``; it is stored
    exactly as executed. The reward is sparse: 1.0 on a step whose success flag is set, else 0.0.
    With ``terminate_on_success`` an episode ends at its first success (that transition has
    ``terminals=True``); otherwise it runs to the horizon, rewarded on every success step, and
    ``terminals`` is never set. The last transition of an episode that reaches the horizon without
    terminating has ``timeouts=True``. Failed episodes are kept.

    Args:
        task: A name from `available_tasks`.
        episodes: Number of episodes (>= 1).
        horizon: Maximum steps per episode (>= 1).
        noise_sigma: Standard deviation of the per-dimension action noise (>= 0), in action units
            (the action range is [-1, 1]). The default is calibrated on pick-place-v3.
        seed: Seeds both the noise generator and the start states; same seed, same data.
        terminate_on_success: End each episode at its first success.
        progress: Show a tqdm progress bar over episodes.

    Returns:
        ``(data, info)``. ``data`` holds N transitions: ``observations`` float32 ``(N, obs_dim)``,
        ``actions`` float32 ``(N, act_dim)``, ``rewards`` float32 ``(N,)``, ``terminals`` bool
        ``(N,)``, ``timeouts`` bool ``(N,)``, ``next_observations`` float32 ``(N, obs_dim)``.
        ``info`` holds the arguments (``task``, ``episodes``, ``horizon``, ``noise_sigma``,
        ``seed``, ``terminate_on_success``), ``behaviour_success_rate`` (fraction of episodes
        with any success), ``mean_episode_length``, ``transitions``, ``obs_dim``, ``act_dim``,
        ``action_low``/``action_high`` (lists) and ``metaworld_version``.

    Raises:
        ValueError: If ``task`` is unknown, ``episodes < 1``, ``horizon < 1``,
            ``noise_sigma < 0`` or ``seed < 0``.
        RuntimeError: If MetaWorld is not installed.
    """
    _check_task(task)
    _check_positive("episodes", episodes)
    _check_positive("horizon", horizon)
    _check_seed(seed)
    noise_sigma = float(noise_sigma)
    if not np.isfinite(noise_sigma) or noise_sigma < 0:
        raise ValueError(f"noise_sigma must be a finite number >= 0, got {noise_sigma!r}.")
    from tqdm.auto import tqdm

    env = MetaWorldEnv(task, seed=seed, horizon=horizon)
    expert = scripted_policy(task)
    rng = np.random.default_rng(seed)
    capacity = episodes * horizon
    observations = np.empty((capacity, env.obs_dim), np.float32)
    next_observations = np.empty((capacity, env.obs_dim), np.float32)
    actions = np.empty((capacity, env.act_dim), np.float32)
    rewards = np.zeros(capacity, np.float32)
    terminals = np.zeros(capacity, bool)
    timeouts = np.zeros(capacity, bool)

    n = 0
    successes = 0
    bar = tqdm(range(episodes), desc=f"collect {task}", unit="ep", disable=not progress)
    for episode in bar:
        obs = env.reset()
        succeeded = False
        for t in range(horizon):
            noise = rng.normal(0.0, noise_sigma, env.act_dim) if noise_sigma > 0 else 0.0
            action = np.clip(expert(obs) + noise, env.action_low, env.action_high).astype(np.float32)
            next_obs, success = env.step(action)
            observations[n], actions[n], next_observations[n] = obs, action, next_obs
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
        bar.set_postfix(success=f"{successes / (episode + 1):.2f}", refresh=False)
    bar.close()
    env.close()

    data = {
        "observations": observations[:n].copy(),
        "actions": actions[:n].copy(),
        "rewards": rewards[:n].copy(),
        "terminals": terminals[:n].copy(),
        "timeouts": timeouts[:n].copy(),
        "next_observations": next_observations[:n].copy(),
    }
    info = {
        "task": task,
        "episodes": int(episodes),
        "horizon": int(horizon),
        "noise_sigma": noise_sigma,
        "seed": int(seed),
        "terminate_on_success": bool(terminate_on_success),
        "behaviour_success_rate": successes / episodes,
        "mean_episode_length": n / episodes,
        "transitions": n,
        "obs_dim": env.obs_dim,
        "act_dim": env.act_dim,
        "action_low": env.action_low.tolist(),
        "action_high": env.action_high.tolist(),
        "metaworld_version": _metaworld_version(),
    }
    return data, info


def _metaworld_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("metaworld")
    except PackageNotFoundError:
        return "unknown"


def _episode_seeds(seed: int, episodes: int) -> list[int]:
    # One seed per episode (not per env) so the result does not depend on num_envs or on the
    # order in which lockstep slots free up.
    children = np.random.SeedSequence([seed, _EVAL_STREAM]).spawn(episodes)
    return [int(c.generate_state(1, np.uint32)[0]) for c in children]


def evaluate_policy(
    policy_fn: Callable[[np.ndarray], np.ndarray],
    task: str,
    episodes: int,
    horizon: int = DEFAULT_HORIZON,
    seed: int = 0,
    terminate_on_success: bool = True,
    num_envs: int = 8,
) -> dict:
    """Measures a policy's success rate in simulation (for analysis, not for model selection).

    ``num_envs`` simulators run in lockstep and ``policy_fn`` gets one stacked batch per time
    step. The batch always has ``num_envs`` rows (or ``episodes`` if fewer): rows of idle
    simulators are padded with their last observation and their actions ignored, so a jitted
    policy compiles once. Each episode has its own start-state seed derived from
    ``SeedSequence([seed, 1])``, disjoint from the collection stream of `collect_episodes`; the
    result depends on ``seed`` and ``episodes`` but not on ``num_envs``.

    Args:
        policy_fn: Maps float32 observations ``(B, obs_dim)`` to actions ``(B, act_dim)``
            (any array-like, e.g. a JAX array). Actions are clipped to the bounds.
        task: A name from `available_tasks`.
        episodes: Number of episodes (>= 1).
        horizon: Maximum steps per episode (>= 1).
        seed: Non-negative evaluation seed; same seed and policy, same result.
        terminate_on_success: Stop an episode at its first success (success is "any step with
            the flag set" either way; this only saves time and changes the episode lengths).
        num_envs: Simulators stepped in lockstep (>= 1); only affects speed and memory.

    Returns:
        ``{"success_rate": float, "successes": int, "episodes": int,
        "mean_episode_length": float, "seconds": float}`` where ``seconds`` is the wall time,
        including building the simulators.

    Raises:
        ValueError: If an argument is out of range, the task is unknown, or ``policy_fn``
            returns the wrong shape or non-finite actions.
        RuntimeError: If MetaWorld is not installed.
    """
    _check_task(task)
    _check_positive("episodes", episodes)
    _check_positive("horizon", horizon)
    _check_positive("num_envs", num_envs)
    _check_seed(seed)
    start = time.perf_counter()
    batch = min(num_envs, episodes)
    seeds = _episode_seeds(seed, episodes)
    envs = [MetaWorldEnv(task, seed=seeds[0], horizon=horizon) for _ in range(batch)]
    low, high = envs[0].action_low, envs[0].action_high

    obs = np.zeros((batch, envs[0].obs_dim), np.float32)
    episode_of = np.full(batch, -1)  # -1: idle slot
    steps = np.zeros(batch, int)
    succeeded = np.zeros(batch, bool)
    next_episode = 0
    successes = 0
    total_steps = 0

    def start_episode(slot: int) -> None:
        nonlocal next_episode
        if next_episode < episodes:
            envs[slot].seed(seeds[next_episode])
            obs[slot] = envs[slot].reset()
            episode_of[slot], steps[slot], succeeded[slot] = next_episode, 0, False
            next_episode += 1
        else:
            episode_of[slot] = -1

    for slot in range(batch):
        start_episode(slot)
    while np.any(episode_of >= 0):
        actions = np.asarray(policy_fn(obs.copy()), dtype=np.float32)
        if actions.shape != (batch, envs[0].act_dim):
            raise ValueError(
                f"policy_fn must map ({batch}, {envs[0].obs_dim}) observations to "
                f"({batch}, {envs[0].act_dim}) actions, got {actions.shape}."
            )
        for slot in np.flatnonzero(episode_of >= 0):
            if not np.all(np.isfinite(actions[slot])):
                raise ValueError(f"policy_fn returned non-finite actions: {actions[slot]}.")
            obs[slot], success = envs[slot].step(np.clip(actions[slot], low, high))
            steps[slot] += 1
            succeeded[slot] |= success
            if (success and terminate_on_success) or steps[slot] >= horizon:
                successes += bool(succeeded[slot])
                total_steps += int(steps[slot])
                start_episode(slot)
    for env in envs:
        env.close()
    return {
        "success_rate": successes / episodes,
        "successes": int(successes),
        "episodes": int(episodes),
        "mean_episode_length": total_steps / episodes,
        "seconds": time.perf_counter() - start,
    }
