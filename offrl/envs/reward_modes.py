"""Reward structures of collected data, and the fixed horizon of the paper's never-terminating episodes.

``terminal`` (offrl's default since its first data)
    Reward 1 on the first step whose success flag is set, and the episode ends there (``terminals`` True): a
    return collects at most one reward, so Q lies in [0, 1]. Time limit :data:`offrl.envs.DEFAULT_HORIZON`.
``success-every-step`` (the workflow paper's simulated data, Kumar et al. 2021, Sec. 5 and its reference code;
../shared/reference/implementation-notes.md, "Simulated data in the paper")
    Reward 1 on *every* step whose success flag holds, 0 elsewhere; an episode never terminates, it runs to a
    fixed horizon H (its last transition has ``timeouts`` True). A return from step t collects at most
    ``sum_{k < H - t} gamma^k`` and Q at the start at most ``sum_{k < H} gamma^k = (1 - gamma^H) / (1 - gamma)``
    (:func:`offrl.data.q_value_range`). The paper's horizons are 30-80 steps; here H follows the task's scripted
    policy (:func:`task_horizon`), since MetaWorld's experts need 50-90 steps where the paper's needed fewer.
``shaped`` (MetaWorld's own dense reward; issue 43's check of MOPO where its paper says it works)
    The reward MetaWorld's environment returns on every step (v3's shaped reward: reaching, grasping and
    placing terms, in [0, 10], 10 on solved steps; Yu et al. 2019, MetaWorld Sec. 4.2 and its v3 reward
    functions); an episode never terminates and runs to the time limit (:data:`offrl.envs.DEFAULT_HORIZON`
    unless ``--horizon`` is given). MOPO (Yu et al. 2020) reports results on D4RL's dense locomotion rewards,
    where a learned reward model has a gradient to follow; the sparse modes above leave it one rare 0/1 event.
    Success is still MetaWorld's success flag, which evaluation reads in every mode.

The horizon rule (pre-registered in docs/selection.md, "The paper's regime"; no per-task tuning):
``H = ceil(HORIZON_FACTOR * median / HORIZON_ROUND) * HORIZON_ROUND``, with ``median`` the median first-success
step of the noise-free scripted policy over :data:`HORIZON_EPISODES` episodes (seed 0). Values it gives
(MetaWorld 3.0, measured 2026 on this machine): pick-place-v3 median 54.5 -> H 90; drawer-open-v3 91 -> 140;
button-press-v3 60.5 -> 100; lever-pull-v3 80 -> 120. The factor 1.5 leaves a median expert about a third of the
episode holding success (the rewards whose propagation the paper's Q "rise" shows) and a noisy one time to
succeed late; `--horizon` overrides the rule.
"""

from __future__ import annotations

import functools
import math

import numpy as np

REWARD_MODES = ("terminal", "success-every-step", "shaped")
"""The reward structures `offrl collect --reward-mode` accepts (module docstring)."""
FIXED_HORIZON_MODES = ("success-every-step", "shaped")
"""The modes whose episodes never terminate and run to a fixed horizon (their Q bound reads it)."""
HORIZON_FACTOR = 1.5
"""The horizon rule's multiple of the scripted policy's median first-success step."""
HORIZON_ROUND = 10
"""The horizon rule rounds up to a multiple of this many steps."""
HORIZON_EPISODES = 20
"""Noise-free scripted episodes whose first-success steps the rule's median reads."""
HORIZON_PROBE_LIMIT = 500
"""Time limit of those probe episodes (MetaWorld's own ``max_path_length``)."""


def check_reward_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`REWARD_MODES`; else a one-line ValueError naming them."""
    if mode not in REWARD_MODES:
        raise ValueError(f"unknown reward mode {mode!r}: use one of {', '.join(REWARD_MODES)}")
    return mode


@functools.cache
def scripted_success_steps(task: str, episodes: int = HORIZON_EPISODES, seed: int = 0) -> tuple[int, ...]:
    """First-success step (1-based: the number of steps taken) of each noise-free scripted episode of ``task``.

    Episodes that never succeed within :data:`HORIZON_PROBE_LIMIT` steps are left out. Deterministic for a task,
    ``episodes`` and ``seed`` (the start states come from the seed), so it is cached.

    Raises:
        ValueError: an unknown task, or no probe episode succeeds (the rule then has no median).
        RuntimeError: MetaWorld is not installed.
    """
    from offrl.envs.rollout import collect_episodes

    data, _ = collect_episodes(task, episodes, horizon=HORIZON_PROBE_LIMIT, noise_sigma=0.0, seed=seed,
                               terminate_on_success=True, progress=False, regime="white")
    ends = np.flatnonzero(data["terminals"] | data["timeouts"])
    lengths = np.diff(np.concatenate([[-1], ends]))
    succeeded = data["terminals"][ends]
    if not succeeded.any():
        raise ValueError(f"the scripted policy of {task} never succeeds in {episodes} noise-free episodes of "
                         f"{HORIZON_PROBE_LIMIT} steps: give --horizon explicitly")
    return tuple(int(x) for x in lengths[succeeded])


def horizon_from_success_steps(steps: tuple[int, ...] | list[int]) -> int:
    """The horizon rule (module docstring) applied to first-success steps: ``ceil(1.5 * median / 10) * 10``."""
    if len(steps) == 0:
        raise ValueError("the horizon rule needs at least one first-success step")
    median = float(np.median(np.asarray(steps, np.float64)))
    return int(math.ceil(HORIZON_FACTOR * median / HORIZON_ROUND) * HORIZON_ROUND)


def task_horizon(task: str) -> int:
    """The fixed horizon of ``success-every-step`` data of ``task`` by the rule (module docstring), in steps.

    A multi-task spec takes the largest of its tasks' horizons (one time limit for every episode).

    Raises:
        ValueError: an unknown task, or a scripted policy that never succeeds.
        RuntimeError: MetaWorld is not installed.
    """
    from offrl.envs.metaworld import task_list

    return max(horizon_from_success_steps(scripted_success_steps(t)) for t in task_list(task))
