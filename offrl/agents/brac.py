"""Behaviour-regularized actor-critic, BRAC (Wu, Tucker, Nachum 2019), as in the workflow paper's Appendix F.

Value-penalty form with a pretrained, frozen behaviour policy pi_beta (a BC checkpoint), following the
paper's reference code:

    actor:   min_pi  E_{s ~ D, a ~ pi}[ temperature * log pi(a|s) - beta * log pi_beta(a|s) - min_i Q_i(s, a) ]
    target:  y = r + gamma (1 - terminal) [ min_i Qbar_i(s', a') - temperature * log pi(a'|s')
                                            + beta * log pi_beta(a'|s') ],   a' ~ pi(.|s')

``-log pi_beta`` on the policy's own actions, together with the entropy term, is a sample estimate of
KL(pi || pi_beta), the divergence that BRAC penalises. The policy-penalty variant (``penalty="policy"``)
keeps the penalty in the actor loss only and drops ``beta * log pi_beta`` from the target.

The workflow metric that plays the role of CQL's dataset Q is the regularised objective the actor maximises,
on dataset states: ``q_regularized = E_{s ~ D, a ~ pi}[min_i Q_i(s, a) + beta * log pi_beta(a|s)]``
(docs/metrics.md), logged beside the plain ``q_data``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import flax
import jax
import jax.numpy as jnp
import optax

from offrl.agents import common
from offrl.networks import CriticEnsemble, TanhGaussianActor, sample_tanh_gaussian, tanh_gaussian_log_prob

Batch = dict[str, jnp.ndarray]


@dataclasses.dataclass(frozen=True)
class BRACConfig(common.ActorCriticConfig):
    """Hyperparameters of BRAC: beta 1.0 (reference code), the rest shared with CQL. The entropy temperature
    is alpha in the paper's BRAC formulas."""

    beta: float = 1.0
    """Weight of the behaviour regularizer (log pi_beta terms)."""
    penalty: Literal["value", "policy"] = "value"
    """Value penalty (in the actor and the target) or policy penalty (actor only)."""
    behavior_hidden_dims: tuple[int, ...] = (256, 256, 256)
    """Hidden widths of pi_beta; must match the BC run it is loaded from."""
    behavior_encoder: Literal["cnn", "resnet"] = "cnn"
    """Image runs: pi_beta's encoder; must match the BC run it is loaded from."""
    min_log_prob: float = -100.0
    """Floor on log pi_beta(a|s), in nats: a policy action far outside the data can have a log-density of
    -1e4 under a narrow pi_beta, which would swamp every other term (numerical safeguard, our choice)."""


@flax.struct.dataclass
class BRACState:
    step: jnp.ndarray
    critic_params: Any
    target_critic_params: Any
    actor_params: Any
    behavior_params: Any  # frozen pi_beta
    log_temperature: jnp.ndarray
    critic_opt_state: Any
    actor_opt_state: Any
    temperature_opt_state: Any


def _nets(config: BRACConfig, act_dim: int):
    return (
        CriticEnsemble(config.critic_hidden_dims, num_critics=config.num_critics, encoder=config.critic_encoder),
        TanhGaussianActor(config.actor_hidden_dims, act_dim=act_dim, encoder=config.actor_encoder),
        TanhGaussianActor(config.behavior_hidden_dims, act_dim=act_dim, encoder=config.behavior_encoder),
    )


def _opts(config: BRACConfig):
    return optax.adam(config.critic_lr), optax.adam(config.actor_lr), optax.adam(config.temperature_lr)


def init(config: BRACConfig, obs_spec: common.ObsSpec, act_dim: int, key: jax.Array) -> BRACState:
    """Fresh parameters. ``behavior_params`` is a random placeholder: set it with :func:`with_behavior`."""
    critic, actor, behavior = _nets(config, act_dim)
    kc, ka, kb = jax.random.split(key, 3)
    obs, act = common.example_observation(obs_spec), jnp.zeros((1, act_dim))
    cp, ap = critic.init(kc, obs, act), actor.init(ka, obs)
    c_opt, a_opt, t_opt = _opts(config)
    lt = jnp.asarray(math.log(config.init_temperature), jnp.float32)
    return BRACState(
        jnp.zeros((), jnp.int32), cp, cp, ap, behavior.init(kb, obs), lt, c_opt.init(cp), a_opt.init(ap),
        t_opt.init(lt),
    )


def with_behavior(state: BRACState, behavior_params: Any) -> BRACState:
    """Install a trained pi_beta (the ``actor_params`` of a BC checkpoint)."""
    return state.replace(behavior_params=behavior_params)


def behavior_log_prob(
    behavior_params: Any, obs: jnp.ndarray, actions: jnp.ndarray, config: BRACConfig
) -> jnp.ndarray:
    """log pi_beta(a|s), floored at ``min_log_prob``: obs (..., obs_dim), actions (..., act_dim) -> (...,)."""
    _, _, behavior = _nets(config, actions.shape[-1])
    mean, log_std = behavior.apply(behavior_params, obs)
    return jnp.maximum(tanh_gaussian_log_prob(actions, mean, log_std), config.min_log_prob)


def critic_terms(
    critic_params: Any, state: BRACState, batch: Batch, key: jax.Array, config: BRACConfig
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """BRAC's critic loss (sum over critics of the mean squared Bellman error) and per-transition parts (B,):
    ``q_data``, ``td_error``, ``target_q``, ``q_regularized``, ``q_policy``, ``kl_estimate``."""
    act_dim = batch["actions"].shape[-1]
    critic, actor, _ = _nets(config, act_dim)
    obs, next_obs = batch["observations"], batch["next_observations"]
    k_next, k_pi = jax.random.split(key)
    temperature = jnp.exp(state.log_temperature)

    next_mean, next_log_std = actor.apply(state.actor_params, next_obs)
    next_act, next_log_pi = sample_tanh_gaussian(k_next, next_mean, next_log_std)
    next_v = critic.apply(state.target_critic_params, next_obs, next_act).min(axis=0) - temperature * next_log_pi
    if config.penalty == "value":
        next_v = next_v + config.beta * behavior_log_prob(state.behavior_params, next_obs, next_act, config)
    target = jax.lax.stop_gradient(batch["rewards"] + config.gamma * (1.0 - batch["terminals"]) * next_v)
    q = critic.apply(critic_params, obs, batch["actions"])
    sq_td = (q - target) ** 2

    # The regularised objective on dataset states, with the policy's own actions (no gradient needed).
    mean, log_std = actor.apply(state.actor_params, obs)
    pi_act, log_pi = sample_tanh_gaussian(k_pi, mean, log_std)
    q_pi = jax.lax.stop_gradient(critic.apply(critic_params, obs, pi_act).min(axis=0))
    log_beta = behavior_log_prob(state.behavior_params, obs, pi_act, config)
    parts = {
        "q_data": q.mean(axis=0),
        "td_error": sq_td.mean(axis=0),
        "target_q": target,
        "q_policy": q_pi,
        "q_regularized": q_pi + config.beta * log_beta,
        "kl_estimate": log_pi - log_beta,
    }
    return jnp.sum(sq_td.mean(axis=-1)), parts


def actor_loss(
    actor_params: Any, state: BRACState, batch: Batch, key: jax.Array, config: BRACConfig
) -> tuple[jnp.ndarray, dict]:
    """``E[temperature * log pi(a|s) - beta * log pi_beta(a|s) - min_i Q_i(s, a)]``, a ~ pi reparameterised."""
    act_dim = batch["actions"].shape[-1]
    critic, actor, _ = _nets(config, act_dim)
    obs = batch["observations"]
    mean, log_std = actor.apply(actor_params, obs)
    act, log_pi = sample_tanh_gaussian(key, mean, log_std)
    q = critic.apply(state.critic_params, obs, act).min(axis=0)
    log_beta = behavior_log_prob(state.behavior_params, obs, act, config)
    temperature = jnp.exp(jax.lax.stop_gradient(state.log_temperature))
    loss = jnp.mean(temperature * log_pi - config.beta * log_beta - q)
    return loss, {"log_pi": log_pi.mean()}


def update(state: BRACState, batch: Batch, key: jax.Array, config: BRACConfig) -> tuple[BRACState, dict]:
    """One gradient step on the critics, the actor and the temperature, then the soft target update."""
    c_opt, a_opt, t_opt = _opts(config)
    k_critic, k_actor = jax.random.split(key)
    target_entropy = common.target_entropy_of(config.target_entropy, batch["actions"].shape[-1])
    critic_batch, actor_batch = common.augmented_batches(batch, jax.random.fold_in(key, 7), config.crop_padding)

    (a_loss, a_aux), a_grads = jax.value_and_grad(actor_loss, has_aux=True)(
        state.actor_params, state, actor_batch, k_actor, config
    )
    a_updates, actor_opt_state = a_opt.update(a_grads, state.actor_opt_state, state.actor_params)
    log_temperature, temperature_opt_state, t_loss = common.temperature_step(
        state.log_temperature, state.temperature_opt_state, a_aux["log_pi"], target_entropy, t_opt
    )
    (c_loss, parts), c_grads = jax.value_and_grad(critic_terms, has_aux=True)(
        state.critic_params, state, critic_batch, k_critic, config
    )
    c_updates, critic_opt_state = c_opt.update(c_grads, state.critic_opt_state, state.critic_params)
    critic_params = optax.apply_updates(state.critic_params, c_updates)
    new = state.replace(
        step=state.step + 1,
        critic_params=critic_params,
        target_critic_params=optax.incremental_update(critic_params, state.target_critic_params, config.tau),
        actor_params=optax.apply_updates(state.actor_params, a_updates),
        log_temperature=log_temperature,
        critic_opt_state=critic_opt_state,
        actor_opt_state=actor_opt_state,
        temperature_opt_state=temperature_opt_state,
    )
    metrics = {k: v.mean() for k, v in parts.items()}
    metrics.update(
        critic_loss=c_loss, actor_loss=a_loss, temperature_loss=t_loss,
        entropy_temperature=jnp.exp(state.log_temperature), entropy=-a_aux["log_pi"],
    )
    return new, metrics


def evaluate(state: BRACState, batch: Batch, key: jax.Array, config: BRACConfig) -> dict[str, jnp.ndarray]:
    """Per-transition workflow metrics (see :func:`critic_terms`)."""
    return critic_terms(state.critic_params, state, batch, key, config)[1]


def deterministic_action(actor_params: Any, observations: jnp.ndarray, act_dim: int, config: BRACConfig):
    """tanh(mu(s)) for normalised observations (B, obs_dim) -> (B, act_dim)."""
    return common.deterministic_action(
        actor_params, observations, act_dim, config.actor_hidden_dims, config.actor_encoder
    )


param_counts = common.param_counts
