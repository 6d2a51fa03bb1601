"""Fitted Q evaluation (FQE): the standard off-policy evaluation baseline for checkpoint selection.

FQE (Le, Voloshin & Yue, 2019, "Batch Policy Learning under Constraints", Sec. 4; used for offline
hyperparameter selection by Paine et al., 2020) estimates the value of a fixed policy pi from the dataset alone
by regressing a fresh Q-function on the policy's own Bellman target:

    min_phi  E_{(s, a, r, s', d) ~ D} [ (Q_phi(s, a) - (r + gamma (1 - d) Q_phi'(s', pi(s'))))^2 ]

with phi' a slowly tracking target copy (Polyak, rate ``tau``), then scores pi by the mean of Q_phi(s_0, pi(s_0))
over the dataset's episode start states: an estimate of the expected discounted return J(pi) (in units of
reward; with the 0/1 rewards of offrl's datasets, at most 1 / (1 - gamma)).

Every checkpoint of a run gets its own Q-network, and all of them train together in one compiled, vectorised
update (``jax.vmap`` over the checkpoints' actor parameters and Q parameters): the same minibatches for every
checkpoint, so differences between the scores come from the policies, not from the sampling.

In the validation study (``offrl study``) FQE is one of the checkpoint selectors compared with the workflow's
Guideline 3.1. It is an offline method: it reads no simulator.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from offrl.agents import config_from_dict, get_agent
from offrl.data import Dataset, Normalizer, load_dataset, q_value_range
from offrl.networks.mlp import MLP
from offrl.training import run_dir as rd
from offrl.training.policy import actor_params as deployed_actor_params
from offrl.training.policy import load_state
from offrl.training.run_dir import FQE_FILE


@dataclasses.dataclass(frozen=True)
class FQEConfig:
    """FQE hyperparameters. Fixed for every task and run (nothing here is tuned to a task)."""

    steps: int = 10_000
    """Gradient steps (every checkpoint's Q-network takes this many, together)."""
    batch_size: int = 256
    """Transitions per gradient step."""
    hidden_dims: tuple[int, ...] = (256, 256)
    """Q-network hidden layers."""
    learning_rate: float = 3e-4
    """Adam learning rate."""
    tau: float = 0.01
    """Polyak rate of the target network. Faster than CQL's 0.005: a sparse reward at the end of a
    150-step episode needs many Bellman backups to reach the start states."""
    gamma: float | None = None
    """Discount; None uses the run's ``gamma``."""
    chunk: int = 500
    """Gradient steps per compiled call (lax.scan); ``steps`` is rounded up to a multiple of min(chunk, steps)."""
    seed: int = 0
    """Seeds the Q-networks' initialisation and the minibatches."""
    tolerance: float | None = None
    """Stopping rule (None: train exactly ``steps`` steps, the dev grid's setting). Otherwise FQE trains until its
    estimates settle, with ``steps`` as the cap: after every chunk, each policy's start-state estimate is compared
    with its value ``window`` steps earlier; training stops once every policy's change is at most ``tolerance``
    times the width of the value range the rewards allow (``value_range``; 1 / (1 - gamma) when not given), on
    ``patience`` consecutive checks. Pre-registered in docs/selection.md ("The paper's regime"): 0.005."""
    window: int = 2_000
    """Stopping rule: steps between the two estimates compared (several target-network time constants, 1 / tau
    = 100 steps, so that a value still propagating shows as a change)."""
    patience: int = 2
    """Stopping rule: consecutive checks that must pass."""
    min_steps: int | None = None
    """Stopping rule: no stop before this many steps. None: the propagation time ``ceil(H / tau)``, H the data's
    effective horizon (the longest episode, at most 1 / (1 - gamma)) in steps: a value moves one Bellman backup
    per ~1 / tau steps through the target network, so before H / tau steps a reward far from the start states has
    not reached them and their estimates do not move, whatever they will become. Added after the first run of
    the paper's-regime grid stopped at 3,000 steps with every estimate at 0 (docs/selection.md, amendment)."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "chunk", "window", "patience"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"FQEConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.min_steps is not None and self.min_steps < 0:
            raise ValueError(f"FQEConfig.min_steps must be >= 0 or None, got {self.min_steps}")
        if self.tolerance is not None and not self.tolerance > 0:
            raise ValueError(f"FQEConfig.tolerance must be > 0 or None, got {self.tolerance}")
        if not 0 < self.tau <= 1:
            raise ValueError(f"FQEConfig.tau must be in (0, 1], got {self.tau}")
        if self.gamma is not None and not 0 <= self.gamma < 1:
            raise ValueError(f"FQEConfig.gamma must be in [0, 1), got {self.gamma}")


def fqe_scores(
    actor_params: Any,
    act_fn: Any,
    dataset: Dataset,
    normalizer: Normalizer,
    columns: Sequence[int],
    gamma: float,
    config: FQEConfig = FQEConfig(),
    value_range: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Fit one FQE Q-network per policy, vectorised over K policies, and return their value estimates.

    Args:
        actor_params: a pytree whose leaves have a leading axis K (one entry per policy, e.g. per checkpoint).
        act_fn: ``act_fn(params, obs) -> actions``: one policy's deterministic action for normalised
            observations (B, len(columns)) float32, returning (B, act_dim) float32. Must be jax-traceable.
        dataset: transitions (s, a, r, s', terminals); ``timeouts`` are not terminal, so they bootstrap.
        normalizer: observation normalisation of the policies (applied to ``columns`` of the observations);
            the Q-networks read the same normalised states.
        columns: the observation columns the policies read.
        gamma: discount in [0, 1).
        config: FQE hyperparameters (``tolerance``: the stopping rule).
        value_range: ``(q_min, q_max)`` the rewards allow (:func:`offrl.data.q_value_range`), reward units: the
            scale of the stopping rule and the bounds every estimate is checked against; None: the stopping rule
            uses 1 / (1 - gamma) and nothing is checked.

    Returns:
        ``value``: (K,) float64, the mean over the dataset's episode start states of Q_k(s_0, pi_k(s_0)), an
        estimate of J(pi_k) in reward units; ``td_error``: (K,) float64, the mean squared Bellman residual over
        the last compiled chunk of steps; ``seconds``: wall time of the fit; ``steps_taken`` (int);
        ``converged`` (bool: the stopping rule passed; always False without ``tolerance``); ``settled``: (K,)
        bool, each policy's own last check passed; ``last_change``: (K,) float64, each estimate's change over
        the last ``window`` steps (NaN if fewer were taken); ``in_bounds``: (K,) bool, the estimate lies in
        ``value_range`` (all True without it).

    Raises:
        ValueError: an empty dataset, or ``gamma`` outside [0, 1).
    """
    if not 0 <= gamma < 1:
        raise ValueError(f"FQE needs a discount in [0, 1), got gamma={gamma}")
    if len(dataset) == 0:
        raise ValueError("FQE needs a non-empty dataset")
    t0 = time.perf_counter()
    cols = np.asarray(columns, int)
    obs = jnp.asarray(normalizer(dataset.observations[:, cols]), jnp.float32)
    next_obs = jnp.asarray(normalizer(dataset.next_observations[:, cols]), jnp.float32)
    actions = jnp.asarray(dataset.actions, jnp.float32)
    rewards = jnp.asarray(dataset.rewards, jnp.float32)
    not_done = 1.0 - jnp.asarray(dataset.terminals, jnp.float32)
    starts = np.concatenate([[0], dataset.episode_ends[:-1] + 1]) if dataset.num_episodes else np.zeros(0, int)
    start_obs = obs[jnp.asarray(starts)]
    n = obs.shape[0]
    num_policies = jax.tree_util.tree_leaves(actor_params)[0].shape[0]

    q_net = MLP(tuple(config.hidden_dims), output_dim=1)
    optimizer = optax.adam(config.learning_rate)
    key = jax.random.PRNGKey(config.seed)
    k_init, key = jax.random.split(key)
    example = jnp.zeros((1, obs.shape[1] + actions.shape[1]), jnp.float32)
    # Every policy's Q-network starts from the same initialisation: only the policies differ.
    params0 = q_net.init(k_init, example)
    params = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (num_policies, *x.shape)), params0)
    opt_state = jax.vmap(optimizer.init)(params)
    target = params

    def q(p: Any, s: jnp.ndarray, a: jnp.ndarray) -> jnp.ndarray:
        return q_net.apply(p, jnp.concatenate([s, a], -1))[..., 0]

    # Arrays are arguments of the compiled functions, never closed over: XLA would fold closed-over arrays in as
    # constants (a minute of constant folding for a 1,000-episode dataset).
    arrays = {"obs": obs, "next_obs": next_obs, "actions": actions, "rewards": rewards, "not_done": not_done}

    def one_policy_step(p, opt, tgt, pi, batch):
        a2 = act_fn(pi, batch["next_obs"])
        y = batch["rewards"] + gamma * batch["not_done"] * q(tgt, batch["next_obs"], a2)

        def loss_fn(p_):
            return jnp.mean((q(p_, batch["obs"], batch["actions"]) - jax.lax.stop_gradient(y)) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, opt = optimizer.update(grads, opt, p)
        p = optax.apply_updates(p, updates)
        tgt = optax.incremental_update(p, tgt, config.tau)
        return p, opt, tgt, loss

    chunk = min(config.chunk, config.steps)
    vstep = jax.vmap(one_policy_step, in_axes=(0, 0, 0, 0, None))

    @jax.jit
    def run_chunk(carry, policies, data, key):
        def body(c, k):
            p, opt, tgt = c
            idx = jax.random.randint(k, (config.batch_size,), 0, n)
            p, opt, tgt, loss = vstep(p, opt, tgt, policies, {name: v[idx] for name, v in data.items()})
            return (p, opt, tgt), loss

        carry, losses = jax.lax.scan(body, carry, jax.random.split(key, chunk))
        return carry, losses.mean(0)

    @jax.jit
    def start_values(p, policies, s0):
        def one(pk, pi):
            return q(pk, s0, act_fn(pi, s0)).mean()

        return jax.vmap(one)(p, policies)

    # The stopping rule's scale: the width of the value range (reward units); the discounted sum of a reward of
    # 1 on every step when the range is unknown.
    width = float(value_range[1] - value_range[0]) if value_range is not None else 1.0 / (1.0 - gamma)
    width = width if width > 0 else 1.0 / (1.0 - gamma)
    lag = max(1, -(-config.window // chunk))  # checks (chunks) between the compared estimates
    min_steps = config.min_steps if config.min_steps is not None else propagation_steps(dataset, gamma, config.tau)
    carry = (params, opt_state, target)
    done, losses, passed = 0, jnp.zeros(num_policies), 0
    history: list[np.ndarray] = []
    change = np.full(num_policies, np.nan)
    converged = False
    while done < config.steps:
        key, k = jax.random.split(key)
        carry, losses = run_chunk(carry, actor_params, arrays, k)
        done += chunk
        if config.tolerance is None:
            continue
        history.append(np.asarray(start_values(carry[0], actor_params, start_obs), np.float64))
        if len(history) <= lag:
            continue
        change = np.abs(history[-1] - history[-1 - lag])
        passed = passed + 1 if bool(np.all(change <= config.tolerance * width)) else 0
        if passed >= config.patience and done >= min_steps:
            converged = True
            break

    values = np.asarray(start_values(carry[0], actor_params, start_obs), np.float64)
    settled = (change <= config.tolerance * width) if config.tolerance is not None else np.zeros(num_policies, bool)
    if value_range is not None:
        # A value is an expected discounted return: it cannot leave the range the rewards allow. A slack of 0.1 % of
        # the range's width (a regression's output is never exactly 0 where the truth is 0); an estimate outside
        # is flagged, not clipped.
        slack = 1e-3 * width
        in_bounds = (values >= value_range[0] - slack) & (values <= value_range[1] + slack)
    else:
        in_bounds = np.ones(num_policies, bool)
    return {"value": values, "td_error": np.asarray(losses, np.float64), "seconds": time.perf_counter() - t0,
            "steps_taken": int(done), "min_steps": int(min_steps), "converged": converged, "settled": np.asarray(settled, bool),
            "last_change": change, "in_bounds": np.asarray(in_bounds, bool)}


def propagation_steps(dataset: Dataset, gamma: float, tau: float) -> int:
    """``ceil(H / tau)``: gradient steps for a value to cross the data's effective horizon H (the longest episode,
    at most 1 / (1 - gamma), in steps) at one Bellman backup per ~1 / tau steps of a Polyak target (rate tau)."""
    lengths = np.diff(np.concatenate([[-1], dataset.episode_ends])) if dataset.num_episodes else np.array([1])
    horizon = min(float(lengths.max()), 1.0 / (1.0 - gamma)) if gamma < 1 else float(lengths.max())
    return int(np.ceil(horizon / tau))


def fqe_run(
    run_dir: str | Path,
    steps: Sequence[int] | None = None,
    config: FQEConfig = FQEConfig(),
    dataset: Dataset | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """FQE score of every checkpoint (or ``steps``) of a run; writes fqe.json in the run directory.

    ``dataset``: the run's dataset already loaded (default: the file named in config.json). FQE uses all of its
    episodes, training and held-out.

    Returns:
        ``{"results": [{"step", "value", "td_error", "in_bounds", "settled", "last_change"}], "config", "gamma",
        "seconds", "steps_taken", "converged", "stopping_rule", "value_bounds", "out_of_bounds"}``; ``value`` is
        the estimated expected discounted return from the dataset's start states (reward units), ``in_bounds``
        whether it lies in ``value_bounds`` (the range the dataset's rewards allow, :func:`q_value_range`),
        ``out_of_bounds`` how many do not.

    Raises:
        FileNotFoundError: not a run directory, no checkpoints, or the dataset file is missing.
        ValueError: an image run (FQE here reads state observations only).
    """
    run_dir = Path(run_dir)
    cfg, steps = rd.state_run(run_dir, steps, "FQE")
    algo = cfg.get("algo", "cql")
    agent = config_from_dict(algo, cfg["agent"])
    module = get_agent(algo)
    act_dim = int(cfg["dataset"]["act_dim"])
    # The actor the run deploys (its Polyak average when it keeps one: offrl.training.policy.actor_params).
    params = [deployed_actor_params(load_state(run_dir, s)[0], cfg) for s in steps]
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *params)
    if dataset is None:
        path = Path(cfg["dataset"]["path"])
        if not path.is_file():
            raise FileNotFoundError(f"the dataset of {run_dir} is missing: {path}")
        dataset = load_dataset(path)
    gamma = float(config.gamma if config.gamma is not None else getattr(agent, "gamma", 0.99))
    columns = cfg["dataset"].get("state_columns") or list(range(int(cfg["dataset"]["obs_dim"])))

    def act_fn(pi: Any, s: jnp.ndarray) -> jnp.ndarray:
        return module.deterministic_action(pi, s, act_dim, agent)

    # The bounds of FQE's own rewards (the dataset's as stored: FQE does not apply the run's reward transform).
    bounds = q_value_range(dataset, gamma)
    value_range = (float(bounds["q_min"]), float(bounds["q_max"]))
    res = fqe_scores(stacked, act_fn, dataset, Normalizer.from_dict(cfg["normalizer"]), columns, gamma, config,
                     value_range=value_range)
    out = {
        "note": "fitted Q evaluation (Le et al. 2019): offline estimate of each checkpoint's discounted return "
                "from the dataset's start states",
        "config": dataclasses.asdict(config),
        "gamma": gamma,
        "seconds": res["seconds"],
        "steps_taken": res["steps_taken"],
        "converged": res["converged"],
        "stopping_rule": ("fixed number of steps" if config.tolerance is None else
                          f"every estimate changes by <= {config.tolerance:g} x the value range's width over "
                          f"{config.window} steps, {config.patience} checks in a row, not before "
                          f"{res['min_steps']} steps (the propagation time); cap {config.steps} steps"),
        "min_steps": res["min_steps"],
        "value_bounds": list(value_range),
        "out_of_bounds": int((~res["in_bounds"]).sum()),
        "results": [
            {"step": int(s), "value": float(v), "td_error": float(e), "in_bounds": bool(b), "settled": bool(st),
             "last_change": None if not np.isfinite(c) else float(c)}
            for s, v, e, b, st, c in zip(steps, res["value"], res["td_error"], res["in_bounds"], res["settled"],
                                         res["last_change"], strict=True)
        ],
    }
    if write:
        rd.write_json(run_dir / FQE_FILE, out)
    return out
