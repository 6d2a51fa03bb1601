"""MetaWorld's scripted expert policies, as functions of one 39-d observation (or of a multi-task observation
with its one-hot task suffix); the noiseless behaviour that :mod:`offrl.envs.behaviour` perturbs."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from offrl.envs.metaworld import TASK_OBS_DIM, _check_task, _is_multi, _metaworld, task_list


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
