"""Running policies in MetaWorld: collecting noisy scripted episodes (the datasets of `offrl collect`) and
measuring a policy's success rate (analysis only), both over lockstep batches of simulators."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from offrl.envs.behaviour import KIND_CODES, KINDS, EpisodeBehaviour, Regime, make_regime
from offrl.envs.metaworld import (
    DEFAULT_HORIZON,
    PROPRIO_DIMS,
    MetaWorldEnv,
    MultiTaskEnv,
    _check_positive,
    _check_render,
    _check_seed,
    _check_state_only,
    _check_task,
    _episode_seeds,
    _metaworld_version,
    make_env,
    task_list,
)
from offrl.envs.render import RenderConfig, Renderer
from offrl.envs.scripted import scripted_policy


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
    reward: str = "success",
) -> tuple[dict[str, np.ndarray], dict]:
    """Collects an offline dataset with the scripted expert perturbed by a behaviour regime.

    The executed action is the regime's perturbation of the expert's, clipped to the bounds
    (:mod:`offrl.envs.behaviour`; ``white``: ``clip(expert(obs) + N(0, noise_sigma^2 I), low, high)``);
    it is stored exactly as executed. The reward is sparse: 1.0 on a step whose success flag is set, else 0.0;
    with ``reward="shaped"`` it is MetaWorld's own shaped reward of the step (v3: in [0, 10]).
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
        reward: ``success`` (the success flag as a 0/1 reward) or ``shaped`` (MetaWorld's reward);
            success, and ``terminate_on_success``, read the success flag either way.

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
        ``noise_sigma`` (the regime's main std), ``seed``, ``terminate_on_success``, ``reward``), ``behaviour`` (the
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
            ``horizon < 1``, ``noise_sigma < 0``, ``seed < 0``, an unknown ``regime`` or ``reward``,
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
    if reward not in ("success", "shaped"):
        raise ValueError(f"reward {reward!r}: use success (the 0/1 success flag) or shaped (MetaWorld's reward)")
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
        data, info = _collect(env, renderer, episodes, behaviour, seed, terminate_on_success, progress, reward)
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
    reward: str = "success",
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
            if behaviour.action_clip is not None:  # the paper's collection clips inside the bounds (behaviour.py)
                action = np.clip(action, -behaviour.action_clip, behaviour.action_clip)
            next_obs, success = env.step(action)
            observations[n], actions[n], next_observations[n] = obs, action, next_obs
            if renderer is not None:
                image_index[n] = frame
                frame = next_image_index[n] = record_frame()
            rewards[n] = env.last_reward if reward == "shaped" else float(success)
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
        "reward": reward,
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
