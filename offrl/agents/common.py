"""What every agent shares: the evaluation action and parameter counting."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from offrl.networks import TanhGaussianActor


@dataclasses.dataclass(frozen=True)
class ActorCriticConfig:
    """Hyperparameters shared by the actor-critic agents (CQL, BRAC); defaults from the reference code."""

    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Soft target-network update rate, applied every gradient step."""
    critic_lr: float = 3e-4
    """Adam learning rate of the critics."""
    actor_lr: float = 1e-4
    """Adam learning rate of the actor."""
    temperature_lr: float = 1e-4
    """Adam learning rate of the log entropy temperature."""
    init_temperature: float = 1.0
    """Initial entropy temperature."""
    target_entropy: float | None = None
    """Target policy entropy in nats; None means -act_dim (SAC's heuristic)."""
    critic_hidden_dims: tuple[int, ...] = (256, 256, 256)
    """Hidden widths of each critic MLP."""
    actor_hidden_dims: tuple[int, ...] = (256, 256, 256)
    """Hidden widths of the actor MLP."""
    num_critics: int = 2
    """Size of the critic ensemble; the target and the actor use the minimum over it."""


@functools.partial(jax.jit, static_argnames=("act_dim", "actor_hidden_dims"))
def deterministic_action(
    actor_params: Any, observations: jnp.ndarray, act_dim: int, actor_hidden_dims: tuple[int, ...]
) -> jnp.ndarray:
    """The evaluation action tanh(mu(s)) of a tanh-Gaussian actor (reference code), for normalised
    observations (B, obs_dim) -> (B, act_dim) in (-1, 1)."""
    mean, _ = TanhGaussianActor(actor_hidden_dims, act_dim=act_dim).apply(actor_params, observations)
    return jnp.tanh(mean)


def param_counts(state: Any) -> dict[str, int]:
    """Number of parameters of each trained network of an agent state (fields named ``*_params``, except
    target copies and frozen behaviour policies), e.g. ``{"critic": ..., "actor": ...}``."""
    counts = {}
    for name in state.__dataclass_fields__:
        if name.endswith("_params") and not name.startswith(("target_", "behavior_")):
            counts[name.removesuffix("_params")] = int(sum(x.size for x in jax.tree.leaves(getattr(state, name))))
    return counts


def temperature_step(
    log_temperature: jnp.ndarray, opt_state: Any, mean_log_pi: jnp.ndarray, target_entropy: float, opt: Any
) -> tuple[jnp.ndarray, Any, jnp.ndarray]:
    """One step of SAC's automatic entropy tuning: minimise ``-log_temperature * (log pi + target_entropy)``
    (Haarnoja et al. 2018), with log pi held constant. Returns (new log temperature, new opt state, loss)."""
    import optax

    def loss_fn(lt: jnp.ndarray) -> jnp.ndarray:
        return -lt * jax.lax.stop_gradient(mean_log_pi + target_entropy)

    loss, grad = jax.value_and_grad(loss_fn)(log_temperature)
    updates, opt_state = opt.update(grad, opt_state)
    return optax.apply_updates(log_temperature, updates), opt_state, loss


def target_entropy_of(target_entropy: float | None, act_dim: int) -> float:
    """SAC's default target entropy -|A| when none is given."""
    return -float(act_dim) if target_entropy is None else float(target_entropy)
