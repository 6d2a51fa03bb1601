"""Policy evaluation on any gymnasium environment: bring your own simulator.

`evaluate_gym` rolls a policy out in ``num_envs`` copies of a gymnasium environment stepped together
through gymnasium's vector API (`gymnasium.vector.SyncVectorEnv`), and counts an episode as a success when
any of its steps reports a truthy ``info[success_key]`` (default ``"success"``). It returns the same numbers
as the MetaWorld adapter's `offrl.envs.evaluate_policy`, with the same per-episode seeds, so the result does
not depend on ``num_envs``. `metaworld_env` wraps a MetaWorld task as such a gymnasium environment: with it,
`evaluate_gym` reproduces `evaluate_policy` episode for episode (state observations, single tasks).

How the vector environment is driven (gymnasium >= 1.1):

* It is built with ``autoreset_mode=AutoresetMode.DISABLED``: no sub-environment is reset behind our back.
  Each episode ``i`` starts with ``reset(seed=seeds[i], options={"reset_mask": ...})`` on the copy that
  takes it, where ``seeds`` are derived from ``seed`` exactly as for MetaWorld (``SeedSequence([seed, 1])``).
  Because nothing auto-resets, the info of an episode's last step is that step's own info: there is no
  ``final_info`` / ``final_obs`` to look up, whatever the autoreset convention a training loop would use.
* An episode ends when the environment terminates or truncates it, after ``horizon`` steps, or (with
  ``terminate_on_success``) at its first success.
* The vector API steps every copy at once. Once no episode is left to start, idle copies keep running
  throw-away episodes (seed None, action at the centre of the bounds, clipped to 0 where unbounded) until
  the last real episode ends; their steps are neither counted nor shown to the success test, and the
  policy's actions for those rows are ignored.

Importing this module imports neither gymnasium nor MetaWorld; gymnasium comes with ``offrl[gym]`` (alone) or
``offrl[sim]`` (with MetaWorld).
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from offrl.envs.metaworld import DEFAULT_HORIZON, _check_positive, _check_seed, _episode_seeds

DEFAULT_SUCCESS_KEY = "success"
_GYMNASIUM_HINT = (
    "gymnasium is not installed: pip install 'offrl[gym]' (gymnasium>=1.1; 'offrl[sim]' brings it too); "
    "evaluating on your own simulator needs it"
)

EnvSpec = str | Callable[[], Any]
"""What `evaluate_gym` accepts as an environment: a gymnasium id, ``"module:factory"``, or a callable."""


def _gymnasium() -> Any:
    try:
        import gymnasium
        from gymnasium.vector import AutoresetMode  # noqa: F401  (gymnasium >= 1.1)
    except ImportError as err:
        raise RuntimeError(_GYMNASIUM_HINT) from err
    return gymnasium


def _import_module(name: str) -> Any:
    # Like `python -m`, let a module in the current directory be found even when it is not on sys.path.
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        cwd = os.getcwd()
        if err.name != name.split(".")[0] or cwd in sys.path or "" in sys.path:
            raise
        sys.path.insert(0, cwd)
        return importlib.import_module(name)


def resolve_env(env: EnvSpec) -> tuple[Callable[[], Any], str]:
    """Turns an environment spec into a factory and a name to record.

    Args:
        env: One of
            * a callable returning a `gymnasium.Env` (called once per copy, without arguments);
            * ``"module:factory"``: ``factory`` is a callable attribute of the importable module ``module``
              (installed, on ``PYTHONPATH``, or a ``module.py`` in the current directory);
            * a gymnasium id for `gymnasium.make`, e.g. ``"Pendulum-v1"``, or gymnasium's own
              ``"module:EnvId"`` form (``module`` is imported, then ``EnvId`` is made): a ``"module:name"``
              whose ``module`` has no attribute ``name`` is read this way.

    Returns:
        ``(factory, name)``: ``factory()`` builds one environment; ``name`` is ``env`` as a string (a
        callable is named ``module:qualname``).

    Raises:
        ValueError: If ``env`` is neither, or its module cannot be imported.
        RuntimeError: If gymnasium is not installed.
    """
    gym = _gymnasium()
    if callable(env):
        return env, f"{getattr(env, '__module__', '?')}:{getattr(env, '__qualname__', repr(env))}"
    if not isinstance(env, str) or not env.strip():
        raise ValueError(f"env must be a gymnasium id, a 'module:factory' string or a callable, got {env!r}")
    if ":" in env:
        module_name, _, attr = env.partition(":")
        try:
            module = _import_module(module_name)
        except ImportError as err:
            raise ValueError(f"env {env!r}: cannot import module {module_name!r} ({err})") from err
        factory = getattr(module, attr, None)
        if callable(factory):
            return factory, env

    def make() -> Any:
        try:
            return gym.make(env)
        except gym.error.Error as err:
            raise ValueError(
                f"env {env!r} is neither a 'module:factory' (a callable in an importable module) nor a registered "
                f"gymnasium id ({type(err).__name__}: {err})"
            ) from err

    return make, env


def _build(factory: Callable[[], Any], name: str, n: int) -> list[Any]:
    gym = _gymnasium()
    envs: list[Any] = []
    try:
        for _ in range(n):
            made = factory()
            if not isinstance(made, gym.Env):
                raise ValueError(
                    f"env {name} must build a gymnasium.Env, got {type(made).__name__} (a vector env or an old "
                    f"`gym` environment is not accepted: give a factory of one environment)"
                )
            envs.append(made)
    except BaseException:
        for made in envs:
            made.close()
        raise
    return envs


def _box_dim(space: Any, what: str, name: str) -> int:
    from gymnasium.spaces import Box

    if not isinstance(space, Box) or len(space.shape) != 1:
        hint = " (wrap it in gymnasium.wrappers.FlattenObservation)" if what == "observation" else ""
        raise ValueError(f"env {name} must have a flat Box {what} space, got {space}{hint}")
    return int(space.shape[0])


def evaluate_gym(
    policy_fn: Callable[[np.ndarray], Any],
    env: EnvSpec,
    episodes: int,
    seed: int = 0,
    success_key: str = DEFAULT_SUCCESS_KEY,
    horizon: int | None = None,
    terminate_on_success: bool = True,
    num_envs: int = 8,
    obs_dim: int | None = None,
    act_dim: int | None = None,
) -> dict:
    """Measures a policy's success rate on a gymnasium environment (for analysis, not for model selection).

    ``min(num_envs, episodes)`` copies of the environment run through a `gymnasium.vector.SyncVectorEnv`
    (autoreset disabled) and ``policy_fn`` gets one batch per time step, always of that many rows, so a
    jitted policy compiles once. Episode ``i`` starts with ``reset(seed=s_i)``, ``s_i`` derived from
    ``seed`` as in `offrl.envs.evaluate_policy` (``SeedSequence([seed, 1])``); whichever copy runs it. For a
    deterministic environment (the same seed, the same episode) and a policy that maps each row on its
    own, the result therefore depends on ``seed`` and ``episodes`` but not on ``num_envs``.

    Success: an episode succeeds when ``info[success_key]`` is truthy after any of its steps (the info
    returned by ``reset`` is not read). Every episode must report the key at least once, e.g. at every step
    or at its last one; one that never does is an error, not a failure.

    Args:
        policy_fn: Maps float32 observations ``(B, obs_dim)`` to actions ``(B, act_dim)`` (any array-like,
            e.g. a JAX array). Actions are clipped to the action space's bounds.
        env: The environment: a callable returning a `gymnasium.Env`, ``"module:factory"``, or a gymnasium
            id (see `resolve_env`). Its observation and action spaces must be flat ``Box`` spaces.
        episodes: Number of episodes (>= 1).
        seed: Non-negative evaluation seed; same seed and policy, same result.
        success_key: The info key of the success flag.
        horizon: Maximum steps per episode (>= 1); None: the environment's own limit
            (``env.spec.max_episode_steps``, set by `gymnasium.make` or ``register(max_episode_steps=...)``).
            The environment may end an episode earlier (terminated or truncated).
        terminate_on_success: End an episode at its first success (the outcome is the same either way;
            this only saves time and changes the episode lengths).
        num_envs: Environment copies stepped together (>= 1); only affects speed and memory.
        obs_dim: If given, the observation size the policy expects; checked against the observation space
            before any episode runs.
        act_dim: Likewise for the action size.

    Returns:
        ``{"success_rate": float, "successes": int, "episodes": int, "mean_episode_length": float,
        "episode_successes": list of 0/1 per episode (in episode order, the same for any ``num_envs``),
        "horizon": int, "seconds": float}`` where ``horizon`` is the step limit used (``horizon``, else the
        environment's own) and ``seconds`` the wall time, including building the environments.

    Raises:
        ValueError: If an argument is out of range; the environment cannot be built, its spaces are not flat
            boxes or do not match ``obs_dim`` / ``act_dim``; no episode limit is known (no ``horizon`` and no
            ``spec.max_episode_steps``); an episode ends without reporting ``info[success_key]``;
            ``policy_fn`` returns the wrong shape or non-finite actions.
        RuntimeError: If gymnasium (>= 1.1) is not installed.
    """
    _check_positive("episodes", episodes)
    _check_positive("num_envs", num_envs)
    _check_seed(seed)
    if horizon is not None:
        _check_positive("horizon", horizon)
    if not isinstance(success_key, str) or not success_key:
        raise ValueError(f"success_key must be a non-empty string, got {success_key!r}")
    gym = _gymnasium()
    start = time.perf_counter()
    factory, name = resolve_env(env)
    built = _build(factory, name, min(num_envs, episodes))
    try:
        vec = gym.vector.SyncVectorEnv([lambda e=e: e for e in built],
                                       autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    except BaseException:
        for made in built:
            made.close()
        raise
    try:
        env_obs_dim = _box_dim(vec.single_observation_space, "observation", name)
        env_act_dim = _box_dim(vec.single_action_space, "action", name)
        for what, want, got in (("observations", obs_dim, env_obs_dim), ("actions", act_dim, env_act_dim)):
            if want is not None and want != got:
                raise ValueError(
                    f"env {name} has {got}-d {what} but the policy expects {want}-d {what}: evaluate on the "
                    f"environment the training data came from"
                )
        limit = horizon
        if limit is None:
            spec = built[0].spec
            limit = getattr(spec, "max_episode_steps", None)
            if limit is None:
                raise ValueError(
                    f"env {name} declares no episode limit (spec.max_episode_steps): pass horizon (--horizon) "
                    f"so that every episode ends"
                )
        result = _evaluate(policy_fn, vec, name, _episode_seeds(seed, episodes), success_key, int(limit),
                           terminate_on_success)
    finally:
        vec.close()
    return {**result, "horizon": int(limit), "seconds": time.perf_counter() - start}


def _evaluate(
    policy_fn: Callable[[np.ndarray], Any],
    vec: Any,
    name: str,
    seeds: list[int],
    success_key: str,
    horizon: int,
    terminate_on_success: bool,
) -> dict:
    # The lockstep loop of evaluate_gym (arguments checked, autoreset disabled); closes nothing.
    batch, episodes = vec.num_envs, len(seeds)
    space = vec.single_action_space
    low, high = np.asarray(space.low, np.float32), np.asarray(space.high, np.float32)
    act_dim = low.shape[0]
    bounded = np.isfinite(low) & np.isfinite(high)
    idle_action = np.clip((np.where(bounded, low, 0.0) + np.where(bounded, high, 0.0)) / 2, low, high)

    episode_of = np.full(batch, -1)  # -1: idle copy (a throw-away episode)
    steps = np.zeros(batch, int)
    succeeded = np.zeros(batch, bool)
    reported = np.zeros(batch, bool)
    seen_keys: list[set[str]] = [set() for _ in range(batch)]
    outcome = np.zeros(episodes, bool)  # per episode, in seed order: independent of num_envs
    next_episode = 0
    total_steps = 0

    def restart(mask: np.ndarray) -> np.ndarray:
        # Starts the next episodes (or throw-away ones) on the copies in mask; returns the whole batch.
        nonlocal next_episode
        reset_seeds: list[int | None] = [None] * batch
        for slot in np.flatnonzero(mask):
            if next_episode < episodes:
                reset_seeds[slot] = seeds[next_episode]
                episode_of[slot] = next_episode
                next_episode += 1
            else:
                episode_of[slot] = -1
            steps[slot], succeeded[slot], reported[slot] = 0, False, False
            seen_keys[slot] = set()
        obs, _ = vec.reset(seed=reset_seeds, options={"reset_mask": np.asarray(mask, bool).copy()})
        return obs

    obs = restart(np.ones(batch, bool))
    while np.any(episode_of >= 0):
        observations = np.asarray(obs, dtype=np.float32)
        actions = np.asarray(policy_fn(observations.copy()), dtype=np.float32)
        if actions.shape != (batch, act_dim):
            raise ValueError(
                f"policy_fn must map ({batch}, {observations.shape[1]}) observations to ({batch}, {act_dim}) "
                f"actions, got {actions.shape}."
            )
        active = episode_of >= 0
        bad = active & ~np.all(np.isfinite(actions), axis=1)
        if np.any(bad):
            raise ValueError(f"policy_fn returned non-finite actions: {actions[np.flatnonzero(bad)[0]]}.")
        actions = np.where(active[:, None], np.clip(actions, low, high), idle_action).astype(space.dtype)
        obs, _, terminated, truncated, infos = vec.step(actions)
        steps += 1
        values, has = infos.get(success_key), infos.get("_" + success_key)
        done = np.asarray(terminated, bool) | np.asarray(truncated, bool) | (steps >= horizon)
        for slot in np.flatnonzero(active):
            if has is not None and has[slot]:
                reported[slot] = True
                succeeded[slot] |= bool(values[slot])
            else:
                seen_keys[slot] |= {k for k, v in infos.items() if not k.startswith("_")
                                    and (infos.get("_" + k) is None or infos["_" + k][slot])}
            if succeeded[slot] and terminate_on_success:
                done[slot] = True
            if done[slot]:
                episode = episode_of[slot]
                if not reported[slot]:
                    keys = ", ".join(map(repr, sorted(seen_keys[slot]))) or "none"
                    raise ValueError(
                        f"env {name} never reported info[{success_key!r}] in episode {episode} ({steps[slot]} "
                        f"steps; its info keys: {keys}): name the key that holds its success flag with "
                        f"--success-key (success_key=)"
                    )
                outcome[episode] = succeeded[slot]
                total_steps += int(steps[slot])
        if np.any(done):
            obs = restart(done)
    successes = int(outcome.sum())
    return {
        "success_rate": successes / episodes,
        "successes": successes,
        "episodes": int(episodes),
        "mean_episode_length": total_steps / episodes,
        "episode_successes": outcome.astype(int).tolist(),
    }


def metaworld_env(task: str, horizon: int = DEFAULT_HORIZON, seed: int = 0) -> Any:
    """A MetaWorld task as a gymnasium environment, for `evaluate_gym` (or any gymnasium code).

    Wraps `offrl.envs.make_env`: ``reset(seed=s)`` re-seeds the start-state generator (`MetaWorldEnv.seed`)
    before drawing the start state, ``step`` returns reward ``float(success)``, ``terminated`` False,
    ``truncated`` True after ``horizon`` steps, and ``info = {"success": bool}``. With it, `evaluate_gym`
    gives the same episodes as `offrl.envs.evaluate_policy` (same seeds, same outcomes and lengths); a
    multi-task spec runs task ``s % T`` in the episode seeded ``s``, so its tasks are drawn at random rather
    than balanced as `evaluate_policy` balances them. No rendering.

    Args:
        task: A MetaWorld task name or a multi-task spec (see `offrl.envs.make_env`).
        horizon: Maximum steps per episode (>= 1).
        seed: Non-negative seed of the first episode when ``reset`` gets no seed.

    Returns:
        A `gymnasium.Env` with float32 ``Box`` observation (``obs_dim``) and action (``act_dim``) spaces.

    Raises:
        ValueError: If the task is unknown, ``horizon < 1`` or ``seed < 0``.
        RuntimeError: If MetaWorld is not installed.
    """
    return _metaworld_gym_class()(task, horizon, seed)


_METAWORLD_GYM: type | None = None


def _metaworld_gym_class() -> type:
    global _METAWORLD_GYM
    if _METAWORLD_GYM is not None:
        return _METAWORLD_GYM
    gym = _gymnasium()
    from offrl.envs.metaworld import make_env

    class MetaWorldGym(gym.Env):
        metadata: dict[str, Any] = {"render_modes": []}

        def __init__(self, task: str, horizon: int, seed: int) -> None:
            self._env = make_env(task, seed=seed, horizon=horizon)
            self.task, self.horizon = task, self._env.horizon
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self._env.obs_dim,), np.float32)
            self.action_space = gym.spaces.Box(self._env.action_low, self._env.action_high, dtype=np.float32)
            self._t = 0

        def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
            super().reset(seed=seed)
            if seed is not None:
                self._env.seed(seed)
            self._t = 0
            return self._env.reset(), {}

        def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
            obs, success = self._env.step(action)
            self._t += 1
            return obs, float(success), False, self._t >= self.horizon, {"success": success}

        def close(self) -> None:
            self._env.close()

    _METAWORLD_GYM = MetaWorldGym
    return MetaWorldGym
