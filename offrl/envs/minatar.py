"""MinAtar (Young & Tian 2019; the field's small Atari: 10x10xC grids, a handful of actions) through gymnax, and
the *logged replay* of an online DQN: every transition the agent saw while it learned, in order, with the
logging step and the exploration epsilon it acted with. This is the DQN Replay setting of Agarwal, Schuurmans and
Norouzi 2020 (../shared/paper/optimistic-offline-rl-talk.txt) at MinAtar's scale.

The online agent is :mod:`offrl.agents.dqn` with ``variant="dqn"``: Nature DQN's target (the talk's logging agents
are "DQN (Nature)"; MinAtar's examples/dqn.py bootstraps from ``target_net(s').max(1)``), on MinAtar's network (one
3x3 convolution of 16 channels, 128 hidden units) reading the 10x10xC grid, acting epsilon-greedily, with the
training schedule of Young & Tian's MinAtar DQN: uniformly random actions for the first 5,000 steps while the
buffer fills, then epsilon from 1.0 to 0.1 over the next 100,000 steps (MinAtar's ``world_dynamics``; Dopamine's
``linearly_decaying_epsilon`` with its warm-up), a replay buffer of the last 100,000 transitions, learning from step
5,000 on, one gradient step on a batch of 32 per environment step. The whole loop (environment, acting, the
circular buffer, the update) runs compiled in chunks of ``chunk_steps`` steps (``jax.lax.scan``) so that it is fast
on a CPU. Deviations, with their reasons:

- Adam at 2.5e-4 (MinAtar's step size) instead of centered RMSprop: the offline agents use the same optimiser, so
  that their budget (learning rate x gradient steps, :func:`logging_gradient_steps`) compares with this one's.
- 500,000 environment steps by default instead of MinAtar's 5 million (:class:`ReplayConfig`): these CPUs.

gymnax is optional (``pip install 'offrl[discrete]'``): it is imported only when a function needs it.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from offrl.agents.dqn import DQNConfig

GAMES = {
    "asterix": "Asterix-MinAtar",
    "breakout": "Breakout-MinAtar",
    "freeway": "Freeway-MinAtar",
    "seaquest": "Seaquest-MinAtar",
    "space_invaders": "SpaceInvaders-MinAtar",
}
"""offrl's names (``minatar/NAME``) of the MinAtar games and their gymnax ids."""
INSTALL = "pip install 'offrl[discrete]'"


@dataclasses.dataclass(frozen=True)
class ReplayConfig:
    """How the online DQN that logs the replay learns (Young & Tian 2019's MinAtar DQN unless said)."""

    steps: int = 500_000
    """Environment steps of the online agent, i.e. transitions logged (MinAtar's standard: 5 million)."""
    learning_starts: int = 5_000
    """Steps of acting before the first gradient step (the buffer fills meanwhile)."""
    epsilon_start: float = 1.0
    """Exploration epsilon at step 0."""
    epsilon_end: float = 0.1
    """Exploration epsilon after the decay."""
    epsilon_decay_steps: int = 100_000
    """Steps of the linear decay from ``epsilon_start`` to ``epsilon_end``, which begins at ``learning_starts``
    (MinAtar's ``FIRST_N_FRAMES`` after ``REPLAY_START_SIZE``)."""
    buffer_size: int = 100_000
    """The online agent's replay buffer (the last this many transitions); the *logged* replay keeps every one."""
    batch_size: int = 32
    """Transitions per gradient step."""
    agent: DQNConfig = DQNConfig(variant="dqn", lr=2.5e-4)
    """The online agent's network, loss and optimiser: Nature DQN at MinAtar's 2.5e-4 (its ``variant`` must be
    ``dqn`` or ``double_dqn``, one Q per action)."""
    chunk_steps: int = 1_000
    """Environment steps per compiled chunk (one host transfer each); changes nothing but speed."""


def epsilon_at(step: np.ndarray | int, config: ReplayConfig) -> np.ndarray:
    """The exploration schedule: ``epsilon_start`` until ``learning_starts`` (MinAtar acts uniformly at random
    while the buffer fills), then linear down to ``epsilon_end`` over ``epsilon_decay_steps``, constant after
    (Young & Tian 2019, examples/dqn.py ``world_dynamics``); (n,) int -> (n,) float32."""
    frac = np.clip((np.asarray(step, np.float64) - config.learning_starts) / max(config.epsilon_decay_steps, 1),
                   0.0, 1.0)
    return (config.epsilon_start + frac * (config.epsilon_end - config.epsilon_start)).astype(np.float32)


def logging_gradient_steps(config: ReplayConfig) -> int:
    """Gradient steps the online agent takes: one per environment step from ``learning_starts`` on, over the
    ``steps`` rounded up to whole chunks of ``chunk_steps`` (the surplus of the last chunk is run, not logged).
    With the defaults, 500,000 - 5,000 = 495,000; for a 100,000-step replay, 95,000. The offline agents' budget
    rule (issue 43): their learning rate x gradient steps at least this x ``config.agent.lr``."""
    run = -(-config.steps // config.chunk_steps) * config.chunk_steps
    return max(run - config.learning_starts, 0)


def make_game(game: str) -> tuple[Any, Any]:
    """The gymnax environment and its parameters of a MinAtar game (``breakout`` or ``minatar/breakout``).

    Raises:
        ValueError: an unknown game (the message lists them).
        RuntimeError: gymnax is not installed.
    """
    name = game.removeprefix("minatar/")
    if name not in GAMES:
        raise ValueError(f"unknown MinAtar game {game!r}: choose one of {', '.join('minatar/' + g for g in GAMES)}")
    try:
        import gymnax
    except ImportError:
        raise RuntimeError(f"MinAtar needs gymnax: {INSTALL}") from None
    return gymnax.make(GAMES[name])


def _check(config: ReplayConfig) -> None:
    problems = []
    if config.agent.variant not in ("dqn", "double_dqn"):
        problems.append(f"the logging agent is a DQN (agent.variant 'dqn' or 'double_dqn'), got "
                        f"{config.agent.variant!r}")
    for name in ("steps", "buffer_size", "batch_size", "chunk_steps", "epsilon_decay_steps"):
        if getattr(config, name) < 1:
            problems.append(f"{name} must be >= 1, got {getattr(config, name)}")
    if not 0 <= config.epsilon_end <= 1 or not 0 <= config.epsilon_start <= 1:
        problems.append("epsilons must lie in [0, 1]")
    if config.learning_starts < config.batch_size:
        problems.append(f"learning_starts ({config.learning_starts}) must be at least batch_size "
                        f"({config.batch_size}): the first batch is drawn from the buffer")
    if problems:
        raise ValueError("; ".join(problems))


def collect_replay(game: str, config: ReplayConfig = ReplayConfig(), seed: int = 0,
                   progress: bool = True) -> dict[str, Any]:
    """Train an online DQN on a MinAtar game and log every transition it saw, in order.

    Returns:
        ``{"arrays": {...}, "learning_curve": {...}, "num_actions", "obs_shape", "seconds"}`` where ``arrays`` holds,
        for the N = ``config.steps`` transitions in the order the agent saw them: ``observations`` and
        ``next_observations`` (N, 10, 10, C) uint8 (MinAtar's binary channels), ``actions`` (N,) int32,
        ``rewards`` (N,) float32, ``terminals`` (N,) bool (the game ended), ``timeouts`` (N,) bool (gymnax's
        episode limit cut it), ``logging_step`` (N,) int64 (= 0..N-1) and ``epsilon`` (N,) float32 (the
        exploration rate the action was drawn with). ``next_observations`` is the true last frame at an episode's
        end, not the reset. ``learning_curve``: ``step`` (E,) and ``return`` (E,) of every finished episode.

    Raises:
        ValueError: an unknown game or a setting that cannot work.
        RuntimeError: gymnax is not installed.
    """
    import jax
    import jax.numpy as jnp

    from offrl.agents import dqn

    _check(config)
    env, params = make_game(game)
    num_actions = int(env.num_actions)
    key = jax.random.PRNGKey(seed)
    key, k_env, k_agent = jax.random.split(key, 3)
    obs0, env_state = env.reset(k_env, params)
    obs_shape = tuple(int(d) for d in obs0.shape)
    agent = dqn.init(config.agent, obs_shape, num_actions, k_agent)
    size = config.buffer_size
    buffer = {
        "observations": jnp.zeros((size, *obs_shape), jnp.uint8),
        "next_observations": jnp.zeros((size, *obs_shape), jnp.uint8),
        "actions": jnp.zeros((size,), jnp.int32),
        "rewards": jnp.zeros((size,), jnp.float32),
        "terminals": jnp.zeros((size,), jnp.float32),
    }
    eps_start, eps_end = float(config.epsilon_start), float(config.epsilon_end)
    decay = float(max(config.epsilon_decay_steps, 1))
    warmup = float(config.learning_starts)

    def one_step(carry, _):
        env_state, obs, agent, buffer, step, ep_return, key = carry
        key, k_act, k_rand, k_env, k_batch, k_update = jax.random.split(key, 6)
        eps = eps_start + jnp.clip((step - warmup) / decay, 0.0, 1.0) * (eps_end - eps_start)  # epsilon_at
        greedy = dqn.greedy_action(agent.q_params, obs[None].astype(jnp.float32), num_actions, config.agent)[0]
        explore = jax.random.uniform(k_act) < eps
        action = jnp.where(explore, jax.random.randint(k_rand, (), 0, num_actions), greedy).astype(jnp.int32)
        next_obs, env_state, reward, terminated, truncated, info = env.step(k_env, env_state, action, params)
        final_obs = info["final_observation"]
        slot = step % size
        buffer = {
            "observations": buffer["observations"].at[slot].set(obs.astype(jnp.uint8)),
            "next_observations": buffer["next_observations"].at[slot].set(final_obs.astype(jnp.uint8)),
            "actions": buffer["actions"].at[slot].set(action),
            "rewards": buffer["rewards"].at[slot].set(reward.astype(jnp.float32)),
            "terminals": buffer["terminals"].at[slot].set(terminated.astype(jnp.float32)),
        }

        def train(agent):
            filled = jnp.minimum(step + 1, size)
            idx = jax.random.randint(k_batch, (config.batch_size,), 0, filled)
            batch = {k: v[idx] for k, v in buffer.items()}
            batch["observations"] = batch["observations"].astype(jnp.float32)
            batch["next_observations"] = batch["next_observations"].astype(jnp.float32)
            return dqn.update(agent, batch, k_update, config.agent)[0]

        agent = jax.lax.cond(step >= config.learning_starts, train, lambda a: a, agent)
        done = jnp.logical_or(terminated, truncated)
        ep_return = ep_return + reward
        logged = {
            "observations": obs.astype(jnp.uint8), "next_observations": final_obs.astype(jnp.uint8),
            "actions": action, "rewards": reward.astype(jnp.float32), "terminals": terminated,
            "timeouts": jnp.logical_and(truncated, jnp.logical_not(terminated)), "epsilon": eps.astype(jnp.float32),
            "episode_return": jnp.where(done, ep_return, jnp.nan),
        }
        carry = (env_state, next_obs, agent, buffer, step + 1, jnp.where(done, 0.0, ep_return), key)
        return carry, logged

    @jax.jit
    def chunk(carry):
        return jax.lax.scan(one_step, carry, None, length=config.chunk_steps)

    carry = (env_state, obs0, agent, buffer, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32), key)
    pieces: list[dict[str, np.ndarray]] = []
    t0 = time.perf_counter()
    done_steps = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, desc=f"online DQN on {game}", unit="step")
    while done_steps < config.steps:
        carry, logged = chunk(carry)
        pieces.append(jax.tree.map(np.asarray, logged))
        done_steps += config.chunk_steps
        if bar is not None:
            bar.update(config.chunk_steps)
    if bar is not None:
        bar.close()
    n = config.steps
    arrays = {k: np.concatenate([p[k] for p in pieces])[:n] for k in pieces[0]}
    returns = arrays.pop("episode_return")
    ended = np.flatnonzero(np.isfinite(returns))
    arrays["logging_step"] = np.arange(n, dtype=np.int64)
    arrays["terminals"] = arrays["terminals"].astype(bool)
    arrays["timeouts"] = arrays["timeouts"].astype(bool)
    return {"arrays": arrays, "learning_curve": {"step": ended.astype(np.int64), "return": returns[ended]},
            "num_actions": num_actions, "obs_shape": list(obs_shape), "seconds": time.perf_counter() - t0}


EVAL_EPSILON = 0.001
"""Exploration rate of evaluation episodes (Dopamine's evaluation epsilon, used for the DQN Replay agents)."""


def evaluate_greedy(q_params: Any, config: DQNConfig, num_actions: int, game: str, episodes: int, seed: int = 0,
                    obs_mean: Any = None, obs_std: Any = None, epsilon: float = EVAL_EPSILON) -> dict[str, Any]:
    """Roll out the (epsilon-)greedy policy of a DQN-family network for ``episodes`` MinAtar episodes in parallel.

    Observations are flattened and standardised with ``obs_mean`` / ``obs_std`` (the run's normaliser) before the
    network reads them, as in training; a network with ``config.grid_shape`` reshapes them back to the grid for its
    convolution (:class:`offrl.agents.dqn.QNetwork`). An episode lasts until the game ends or gymnax's limit
    (``max_steps_in_episode``, 1,000 for Breakout) cuts it; episode ``i`` starts from ``PRNGKey(seed)`` folded
    with ``i``, the same for every checkpoint.

    Returns:
        ``{"returns": (episodes,) list of floats, "mean_return", "lengths": list of ints}``.

    Raises:
        ValueError: an unknown game. RuntimeError: gymnax is not installed.
    """
    import jax
    import jax.numpy as jnp

    from offrl.agents import dqn

    env, params = make_game(game)
    limit = int(params.max_steps_in_episode)

    def one(key):
        k_reset, k_loop = jax.random.split(key)
        obs, state = env.reset(k_reset, params)

        def body(carry, _):
            obs, state, key, ret, length, alive = carry
            key, k_act, k_rand, k_env = jax.random.split(key, 4)
            x = obs.reshape(1, -1).astype(jnp.float32)
            if obs_mean is not None:
                x = (x - obs_mean) / obs_std
            greedy = dqn.greedy_action(q_params, x, num_actions, config)[0]
            action = jnp.where(jax.random.uniform(k_act) < epsilon,
                               jax.random.randint(k_rand, (), 0, num_actions), greedy)
            obs, state, reward, terminated, truncated, _ = env.step(k_env, state, action, params)
            ret = ret + jnp.where(alive, reward, 0.0)
            length = length + alive.astype(jnp.int32)
            alive = jnp.logical_and(alive, jnp.logical_not(jnp.logical_or(terminated, truncated)))
            return (obs, state, key, ret, length, alive), None

        init = (obs, state, k_loop, jnp.zeros(()), jnp.zeros((), jnp.int32), jnp.ones((), bool))
        (_, _, _, ret, length, _), _ = jax.lax.scan(body, init, None, length=limit)
        return ret, length

    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(jnp.arange(episodes))
    returns, lengths = jax.jit(jax.vmap(one))(keys)
    returns = [float(r) for r in returns]
    return {"returns": returns, "mean_return": float(np.mean(returns)), "lengths": [int(n) for n in lengths]}
