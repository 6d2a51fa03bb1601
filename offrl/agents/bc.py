"""Behaviour cloning: maximum likelihood of the dataset actions under a tanh-Gaussian policy.

A baseline of its own, and the behaviour policy pi_beta of BRAC (paper Appendix F). Its workflow metric is
the log-likelihood of held-out episodes' actions: like a validation loss, it rises then falls when the policy
overfits, and the checkpoint at its peak is the pi_beta to use.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import flax
import jax
import jax.numpy as jnp
import optax

from offrl.agents import common
from offrl.networks import TanhGaussianActor, tanh_gaussian_log_prob
from offrl.networks.augment import augment_observations

Batch = dict[str, jnp.ndarray]


@dataclasses.dataclass(frozen=True)
class BCConfig:
    """Hyperparameters of behaviour cloning."""

    actor_hidden_dims: tuple[int, ...] = (256, 256, 256)
    """Hidden widths of the policy MLP (the same network as CQL's actor)."""
    actor_lr: float = 1e-4
    """Adam learning rate (CQL's actor learning rate in the reference code)."""
    actor_encoder: Literal["cnn", "resnet"] = "cnn"
    """Image runs: the policy's image encoder (see CQL's)."""
    crop_padding: int = 4
    """Image runs: random-crop augmentation padding in pixels while training; 0 = off."""


@flax.struct.dataclass
class BCState:
    step: jnp.ndarray  # () int32
    actor_params: Any
    actor_opt_state: Any


def _actor(config: BCConfig, act_dim: int) -> TanhGaussianActor:
    return TanhGaussianActor(config.actor_hidden_dims, act_dim=act_dim, encoder=config.actor_encoder)


def init(config: BCConfig, obs_spec: common.ObsSpec, act_dim: int, key: jax.Array) -> BCState:
    """Fresh policy parameters and optimiser state (``obs_spec``: see :data:`offrl.agents.common.ObsSpec`)."""
    params = _actor(config, act_dim).init(key, common.example_observation(obs_spec))
    return BCState(jnp.zeros((), jnp.int32), params, optax.adam(config.actor_lr).init(params))


def evaluate(state: BCState, batch: Batch, key: jax.Array, config: BCConfig) -> dict[str, jnp.ndarray]:
    """Per-transition ``log_likelihood`` = log pi(a_data|s) (nats) and ``action_mse`` = mean over action
    dimensions of (tanh(mu(s)) - a_data)^2, each (B,)."""
    act = batch["actions"]
    mean, log_std = _actor(config, act.shape[-1]).apply(state.actor_params, batch["observations"])
    return {
        "log_likelihood": tanh_gaussian_log_prob(act, mean, log_std),
        "action_mse": jnp.mean((jnp.tanh(mean) - act) ** 2, axis=-1),
    }


def update(state: BCState, batch: Batch, key: jax.Array, config: BCConfig) -> tuple[BCState, dict]:
    """One Adam step on the negative log-likelihood of the batch's actions (images random-cropped)."""
    batch = {**batch, "observations": augment_observations(jax.random.fold_in(key, 7), batch["observations"],
                                                           config.crop_padding)}

    def loss_fn(params: Any) -> tuple[jnp.ndarray, dict]:
        parts = evaluate(state.replace(actor_params=params), batch, key, config)
        return -parts["log_likelihood"].mean(), parts

    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.actor_params)
    updates, opt_state = optax.adam(config.actor_lr).update(grads, state.actor_opt_state, state.actor_params)
    new = BCState(state.step + 1, optax.apply_updates(state.actor_params, updates), opt_state)
    return new, {"bc_loss": loss, **{k: v.mean() for k, v in parts.items()}}


def deterministic_action(actor_params: Any, observations: jnp.ndarray, act_dim: int, config: BCConfig):
    """tanh(mu(s)) for normalised observations (B, obs_dim) -> (B, act_dim)."""
    return common.deterministic_action(
        actor_params, observations, act_dim, config.actor_hidden_dims, config.actor_encoder
    )


param_counts = common.param_counts
