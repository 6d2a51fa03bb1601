"""Advantage-weighted actor-critic, AWAC (Nair, Gupta, Dalal, Levine 2020, "AWAC: Accelerating Online
Reinforcement Learning with Offline Datasets").

An implicit policy constraint: the actor solves the KL-constrained improvement step in closed form,
pi*(a|s) proportional to pi_beta(a|s) exp(A(s, a) / lambda), and projects onto it by weighted maximum
likelihood of the *dataset's* actions, so it never needs a model of pi_beta:

    critic (Eq. 4, twin critics as in TD3/SAC):
        y = r + gamma (1 - terminal) min_i Qbar_i(s', a'),  a' ~ pi(.|s');  L_Q = sum_i E[(Q_i(s, a) - y)^2]
    actor (Eq. 13):
        L_pi = -E_{(s,a) ~ D}[ min(exp(A(s, a) / lambda), max_weight) log pi(a|s) ],
        A(s, a) = min_i Q_i(s, a) - min_i Q_i(s, a_pi),  a_pi ~ pi(.|s)   (V(s) by one sample of the policy)

Unlike CQL and BRAC the critic's target still queries the policy's own actions a' ~ pi(s'); only the actor is
constrained. Unlike IQL there is no V network. Every gradient step computes the actor's and the critics'
gradients from the same state (the actor's advantage reads the critics before this step's update, the critics'
target the policy before its update), applies both, then updates the target critics (Polyak, ``tau``).

Defaults: lambda = 1.0 and the weight clip 100 (CORL's AWAC, which reproduces the paper's MuJoCo results; the
paper tunes lambda per domain), two critics, Adam 3e-4, gamma 0.99, tau 0.005. Architecture: 3 hidden layers of
256 units for each critic and for the policy, as CORL's AWAC (and offrl's CQL); the paper's own network sizes are
not restated here. Documented deviations, against CORL's AWAC: no entropy term anywhere (as the paper); the
batch size is the run's (``--batch-size``, 256, as CORL) where the paper uses 1,024; the policy is offrl's
tanh-Gaussian with a state-dependent std, where CORL's is a Gaussian with a state-independent log std clamped to
[-20, 2] whose samples are clipped to [-1, 1], so that export and evaluation treat AWAC like the other agents;
CORL updates the critics first and the actor then reads the updated critics, offrl updates both from the same
state (one step of staleness in the advantage, the usual simultaneous actor-critic update).

Workflow metrics (docs/metrics.md, "AWAC"): ``q_data`` (Metric 3.1 and Guideline 3.1), ``advantage``,
``adv_weight``, ``weighted_nll`` (the actor's objective per transition, the term Metric 3.2 compares across
capacities), ``log_likelihood`` of dataset actions, ``q_policy``, and the TD targets' spread.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import flax
import jax
import jax.numpy as jnp
import optax

from offrl.agents import common
from offrl.networks import CriticEnsemble, TanhGaussianActor, sample_tanh_gaussian, tanh_gaussian_log_prob

Batch = dict[str, jnp.ndarray]


@dataclasses.dataclass(frozen=True)
class AWACConfig:
    """Hyperparameters of AWAC (see the module docstring for their sources)."""

    awac_lambda: float = 1.0
    """lambda, the temperature of the advantage weights exp(A / lambda) (Eq. 13); > 0. Smaller stays closer to
    the best dataset actions, larger closer to behaviour cloning."""
    max_weight: float = 100.0
    """Clip of the advantage weights, > 0."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Soft target-network update rate, applied every gradient step."""
    critic_lr: float = 3e-4
    """Adam learning rate of the critics."""
    actor_lr: float = 3e-4
    """Adam learning rate of the policy."""
    critic_hidden_dims: tuple[int, ...] = (256, 256, 256)
    """Hidden widths of each critic MLP."""
    actor_hidden_dims: tuple[int, ...] = (256, 256, 256)
    """Hidden widths of the policy MLP."""
    num_critics: int = 2
    """Size of the critic ensemble; the target and the advantage use the minimum over it."""
    critic_encoder: Literal["cnn", "resnet"] = "cnn"
    """Image runs: the encoder of each critic."""
    actor_encoder: Literal["cnn", "resnet"] = "cnn"
    """Image runs: the policy's encoder."""
    crop_padding: int = 4
    """Image runs: random-crop augmentation padding in pixels; 0 = off."""
    actor_ema_decay: float = 0.0
    """Keep and deploy a Polyak average of the actor (offrl.agents.common.ActorAveraged): its decay d per
    gradient step, in [0, 1); 1 / (1 - d) is its horizon in steps. 0 (the default): no average."""


def config_problems(config: AWACConfig) -> list[str]:
    """Settings that cannot work, each naming the flag and the fix (empty when all is well)."""
    problems = []
    if not config.awac_lambda > 0:
        problems.append(f"--awac.awac-lambda (the temperature of the advantage weights) must be > 0, got "
                        f"{config.awac_lambda} (1.0 is the default; smaller trusts the critic more)")
    return problems + common.shared_problems("awac", config)


@flax.struct.dataclass
class AWACState:
    step: jnp.ndarray  # () int32
    critic_params: Any
    target_critic_params: Any
    actor_params: Any
    critic_opt_state: Any
    actor_opt_state: Any


def _nets(config: AWACConfig, act_dim: int) -> tuple[CriticEnsemble, TanhGaussianActor]:
    return (
        CriticEnsemble(config.critic_hidden_dims, num_critics=config.num_critics, encoder=config.critic_encoder),
        TanhGaussianActor(config.actor_hidden_dims, act_dim=act_dim, encoder=config.actor_encoder),
    )


def _opts(config: AWACConfig):
    return optax.adam(config.critic_lr), optax.adam(config.actor_lr)


def init(config: AWACConfig, obs_spec: common.ObsSpec, act_dim: int, key: jax.Array) -> AWACState:
    """Fresh parameters and optimiser states.

    Raises:
        ValueError: a setting that cannot work (:func:`config_problems`).
    """
    problems = config_problems(config)
    if problems:
        raise ValueError("; ".join(problems))
    critic, actor = _nets(config, act_dim)
    kc, ka = jax.random.split(key)
    obs, act = common.example_observation(obs_spec), jnp.zeros((1, act_dim))
    cp, ap = critic.init(kc, obs, act), actor.init(ka, obs)
    c_opt, a_opt = _opts(config)
    return AWACState(jnp.zeros((), jnp.int32), cp, cp, ap, c_opt.init(cp), a_opt.init(ap))


def actor_terms(actor_params: Any, state: AWACState, batch: Batch, key: jax.Array, config: AWACConfig):
    """Eq. 13: ``-mean(w(s, a) log pi(a|s))``, w the clipped weights exp(A / lambda) from the current critics;
    aux (B,): ``advantage``, ``adv_weight``, ``log_likelihood``, ``weighted_nll``, ``q_policy``."""
    critic, actor = _nets(config, batch["actions"].shape[-1])
    obs = batch["observations"]
    q_data = critic.apply(state.critic_params, obs, batch["actions"]).min(axis=0)
    mean, log_std = actor.apply(state.actor_params, obs)
    pi_act, _ = sample_tanh_gaussian(key, mean, log_std)
    q_pi = critic.apply(state.critic_params, obs, pi_act).min(axis=0)
    adv = jax.lax.stop_gradient(q_data - q_pi)
    w = common.advantage_weights(adv, 1.0 / config.awac_lambda, config.max_weight)
    mean, log_std = actor.apply(actor_params, obs)
    log_pi = tanh_gaussian_log_prob(batch["actions"], mean, log_std)
    nll = -w * log_pi
    return nll.mean(), {"advantage": adv, "adv_weight": w, "log_likelihood": log_pi, "weighted_nll": nll,
                        "q_policy": jax.lax.stop_gradient(q_pi)}


def critic_terms(critic_params: Any, state: AWACState, batch: Batch, key: jax.Array, config: AWACConfig):
    """Eq. 4: the sum over critics of the mean squared error to ``r + gamma (1 - terminal) min_i Qbar_i(s', a')``,
    a' ~ pi(s'); aux (B,): ``q_data``, ``td_error`` (means over critics), ``target_q``, ``target_q_sq``."""
    critic, actor = _nets(config, batch["actions"].shape[-1])
    mean, log_std = actor.apply(state.actor_params, batch["next_observations"])
    next_act, _ = sample_tanh_gaussian(key, mean, log_std)
    next_q = critic.apply(state.target_critic_params, batch["next_observations"], next_act).min(axis=0)
    target = jax.lax.stop_gradient(batch["rewards"] + config.gamma * (1.0 - batch["terminals"]) * next_q)
    q = critic.apply(critic_params, batch["observations"], batch["actions"])
    sq = (q - target) ** 2
    return jnp.sum(sq.mean(axis=-1)), {"q_data": q.mean(axis=0), "td_error": sq.mean(axis=0), "target_q": target,
                                       "target_q_sq": target**2}


def update(state: AWACState, batch: Batch, key: jax.Array, config: AWACConfig) -> tuple[AWACState, dict]:
    """One gradient step on the actor and the critics, then the soft target update.

    Returns the new state and minibatch means of ``actor_loss``, ``critic_loss`` and the per-transition terms
    of :func:`actor_terms` and :func:`critic_terms`."""
    c_opt, a_opt = _opts(config)
    k_actor, k_critic = jax.random.split(key)
    critic_batch, actor_batch = common.augmented_batches(batch, jax.random.fold_in(key, 7), config.crop_padding)
    (a_loss, a_aux), a_grads = jax.value_and_grad(actor_terms, has_aux=True)(
        state.actor_params, state, actor_batch, k_actor, config)
    a_updates, actor_opt_state = a_opt.update(a_grads, state.actor_opt_state, state.actor_params)
    (c_loss, c_aux), c_grads = jax.value_and_grad(critic_terms, has_aux=True)(
        state.critic_params, state, critic_batch, k_critic, config)
    c_updates, critic_opt_state = c_opt.update(c_grads, state.critic_opt_state, state.critic_params)
    critic_params = optax.apply_updates(state.critic_params, c_updates)
    new = state.replace(
        step=state.step + 1,
        critic_params=critic_params,
        target_critic_params=optax.incremental_update(critic_params, state.target_critic_params, config.tau),
        actor_params=optax.apply_updates(state.actor_params, a_updates),
        critic_opt_state=critic_opt_state,
        actor_opt_state=actor_opt_state,
    )
    metrics = {k: v.mean() for k, v in {**a_aux, **c_aux}.items() if k != "target_q_sq"}
    metrics.update(actor_loss=a_loss, critic_loss=c_loss)
    return new, metrics


def evaluate(state: AWACState, batch: Batch, key: jax.Array, config: AWACConfig) -> dict[str, jnp.ndarray]:
    """Per-transition workflow metrics (B,) on a fixed set: those of :func:`actor_terms` and
    :func:`critic_terms`."""
    k_actor, k_critic = jax.random.split(key)
    _, a_aux = actor_terms(state.actor_params, state, batch, k_actor, config)
    _, c_aux = critic_terms(state.critic_params, state, batch, k_critic, config)
    return {**a_aux, **c_aux}


def deterministic_action(actor_params: Any, observations: jnp.ndarray, act_dim: int, config: AWACConfig):
    """tanh(mu(s)) for normalised observations (B, obs_dim) -> (B, act_dim)."""
    return common.deterministic_action(
        actor_params, observations, act_dim, config.actor_hidden_dims, config.actor_encoder
    )


param_counts = common.param_counts
