"""Implicit Q-learning, IQL (Kostrikov, Nair, Levine 2022, "Offline Reinforcement Learning with Implicit
Q-Learning", ICLR).

IQL never evaluates the critic on actions outside the dataset. It fits a state value ``V`` to an upper
expectile of the (target) critic over the dataset's actions, backs the critic up through ``V``, and extracts a
policy by advantage-weighted regression:

    value  (Eq. 5):  L_V = E_{(s,a) ~ D}[ L_2^expectile( min_i Qbar_i(s, a) - V(s) ) ],
                     L_2^tau(u) = |tau - 1(u < 0)| u^2
    critic (Eq. 6):  L_Q = E_{(s,a,r,s') ~ D}[ (r + gamma (1 - terminal) V(s') - Q_i(s, a))^2 ]   (each critic)
    actor  (Eq. 7):  L_pi = -E_{(s,a) ~ D}[ min(exp(beta (min_i Qbar_i(s, a) - V(s))), max_weight) log pi(a|s) ]

One gradient step updates V, then the actor (with the new V), then the critics (with the new V), then the
target critics (Polyak, ``tau``), the order of the authors' code.

Defaults: the paper's Appendix B for its MuJoCo tasks and the authors' default config: expectile 0.7, beta
(``inverse_temperature``) 3.0,
weights clipped at 100, two critics, 2 x 256 hidden units, Adam 3e-4 for every network, gamma 0.99, tau 0.005.
(Its Franka Kitchen and Adroit manipulation settings use beta 0.5 and actor dropout 0.1; AntMaze expectile 0.9,
beta 10.)

Documented deviations, so that export, evaluation, FQE and the report treat IQL like the other agents:
* the policy is offrl's tanh-Gaussian (state-dependent std, clamped to [-5, 2]) where the authors use a Gaussian
  with a state-independent std and clip its samples; log pi of dataset actions is the tanh-Gaussian density,
  the evaluation action tanh(mu(s)) as for CQL;
* by default a constant actor learning rate: the authors decay it with a cosine schedule over the run's length,
  which a resumable run of unknown length cannot know in advance; ``actor_lr_decay_steps`` turns their schedule
  on for a run whose length is fixed (the workflow's).

Workflow metrics (docs/metrics.md, "IQL"): ``q_data`` (Metric 3.1 and Guideline 3.1, as for CQL), ``v_data``,
``advantage`` = Qbar(s, a) - V(s), ``value_loss`` (the expectile loss, Metric 3.2's regularizer), ``adv_weight``,
``log_likelihood`` of dataset actions, ``q_policy`` = min_i Q_i(s, tanh mu(s)) (how the critic, which never saw
the policy's own actions, values them), and the TD targets' spread.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import flax
import jax
import jax.numpy as jnp
import optax

from offrl.agents import common
from offrl.networks import CriticEnsemble, TanhGaussianActor, ValueNetwork, tanh_gaussian_log_prob

Batch = dict[str, jnp.ndarray]


@dataclasses.dataclass(frozen=True)
class IQLConfig:
    """Hyperparameters of IQL (Kostrikov et al. 2022, App. B, and the authors' default config)."""

    expectile: float = 0.7
    """tau of the expectile loss (Eq. 5), in (0, 1): 0.5 fits the mean of Q over the data's actions (SARSA);
    towards 1, their maximum."""
    inverse_temperature: float = 3.0
    """beta of the paper, the inverse temperature of the advantage weights exp(beta * A) (Eq. 7); > 0. 0 would be
    behaviour cloning. (Named apart from BRAC's behaviour weight ``beta``: one name, one meaning.)"""
    max_weight: float = 100.0
    """Clip of the advantage weights (the authors' code), > 0."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Soft target-network update rate, applied every gradient step."""
    critic_lr: float = 3e-4
    """Adam learning rate of the critics."""
    value_lr: float = 3e-4
    """Adam learning rate of V."""
    actor_lr: float = 3e-4
    """Adam learning rate of the policy (constant unless --iql.actor-lr-decay-steps; see the module docstring)."""
    actor_lr_decay_steps: int = 0
    """> 0: the authors' cosine decay of the policy's learning rate from actor_lr to 0 over this many gradient
    steps (0 after them; set it to the run's --steps); 0: constant."""
    critic_hidden_dims: tuple[int, ...] = (256, 256)
    """Hidden widths of each critic MLP."""
    value_hidden_dims: tuple[int, ...] = (256, 256)
    """Hidden widths of the V MLP."""
    actor_hidden_dims: tuple[int, ...] = (256, 256)
    """Hidden widths of the policy MLP."""
    num_critics: int = 2
    """Size of the critic ensemble; V's target and the advantage use the minimum over the target critics."""
    critic_encoder: Literal["cnn", "resnet"] = "cnn"
    """Image runs: the encoder of each critic and of V."""
    actor_encoder: Literal["cnn", "resnet"] = "cnn"
    """Image runs: the policy's encoder."""
    crop_padding: int = 4
    """Image runs: random-crop augmentation padding in pixels (independent draws for the critic, the target and
    the actor); 0 = off."""
    actor_ema_decay: float = 0.0
    """Keep and deploy a Polyak average of the actor (offrl.agents.common.ActorAveraged): its decay d per
    gradient step, in [0, 1); 1 / (1 - d) is its horizon in steps. 0 (the default): no average."""


def config_problems(config: IQLConfig) -> list[str]:
    """Settings that cannot work, each as a sentence naming the flag and the fix (empty when all is well).

    Checked by ``offrl train`` before anything is written, and by :func:`init`."""
    problems = []
    if not 0.0 < config.expectile < 1.0:
        problems.append(f"--iql.expectile must be in (0, 1), got {config.expectile} (0.7 is the paper's default; "
                        f"0.5 fits the data's average action)")
    if config.actor_lr_decay_steps < 0:
        problems.append(f"--iql.actor-lr-decay-steps must be >= 0, got {config.actor_lr_decay_steps} (0: a constant "
                        f"actor learning rate; else the run's --steps)")
    if not config.inverse_temperature > 0:
        problems.append(f"--iql.inverse-temperature (the paper's beta) must be > 0, got {config.inverse_temperature} "
                        f"(0 would be behaviour cloning: use --algo bc)")
    return problems + common.shared_problems("iql", config)


@flax.struct.dataclass
class IQLState:
    step: jnp.ndarray  # () int32
    critic_params: Any
    target_critic_params: Any
    value_params: Any
    actor_params: Any
    critic_opt_state: Any
    value_opt_state: Any
    actor_opt_state: Any


def _nets(config: IQLConfig, act_dim: int) -> tuple[CriticEnsemble, ValueNetwork, TanhGaussianActor]:
    return (
        CriticEnsemble(config.critic_hidden_dims, num_critics=config.num_critics, encoder=config.critic_encoder),
        ValueNetwork(config.value_hidden_dims, encoder=config.critic_encoder),
        TanhGaussianActor(config.actor_hidden_dims, act_dim=act_dim, encoder=config.actor_encoder),
    )


def _opts(config: IQLConfig):
    actor_lr = (optax.cosine_decay_schedule(config.actor_lr, config.actor_lr_decay_steps)
                if config.actor_lr_decay_steps > 0 else config.actor_lr)
    return optax.adam(config.critic_lr), optax.adam(config.value_lr), optax.adam(actor_lr)


def init(config: IQLConfig, obs_spec: common.ObsSpec, act_dim: int, key: jax.Array) -> IQLState:
    """Fresh parameters and optimiser states (``obs_spec``: see :data:`offrl.agents.common.ObsSpec`).

    Raises:
        ValueError: a setting that cannot work (:func:`config_problems`).
    """
    problems = config_problems(config)
    if problems:
        raise ValueError("; ".join(problems))
    critic, value, actor = _nets(config, act_dim)
    kc, kv, ka = jax.random.split(key, 3)
    obs, act = common.example_observation(obs_spec), jnp.zeros((1, act_dim))
    cp, vp, ap = critic.init(kc, obs, act), value.init(kv, obs), actor.init(ka, obs)
    c_opt, v_opt, a_opt = _opts(config)
    return IQLState(jnp.zeros((), jnp.int32), cp, cp, vp, ap, c_opt.init(cp), v_opt.init(vp), a_opt.init(ap))


def expectile_loss(diff: jnp.ndarray, expectile: float) -> jnp.ndarray:
    """``L_2^tau(u) = |tau - 1(u < 0)| u^2`` elementwise (IQL Eq. 5), ``u`` = Q - V. Same shape as ``diff``.

    With tau > 0.5 errors where Q is above V weigh more, so V moves towards an upper expectile of Q."""
    weight = jnp.where(diff < 0, 1.0 - expectile, expectile)
    return weight * diff**2


def _target_q(state: IQLState, batch: Batch, config: IQLConfig) -> jnp.ndarray:
    critic, _, _ = _nets(config, batch["actions"].shape[-1])
    return critic.apply(state.target_critic_params, batch["observations"], batch["actions"]).min(axis=0)


def value_terms(value_params: Any, state: IQLState, batch: Batch, config: IQLConfig):
    """Eq. 5: mean expectile loss of ``min_i Qbar_i(s, a) - V(s)``; aux: per-transition ``v_data``, ``advantage``,
    ``value_loss`` (B,)."""
    _, value, _ = _nets(config, batch["actions"].shape[-1])
    q = jax.lax.stop_gradient(_target_q(state, batch, config))
    v = value.apply(value_params, batch["observations"])
    per = expectile_loss(q - v, config.expectile)
    return per.mean(), {"v_data": v, "advantage": q - v, "value_loss": per}


def actor_terms(actor_params: Any, state: IQLState, batch: Batch, config: IQLConfig):
    """Eq. 7: ``-mean(w(s, a) log pi(a|s))`` with w the clipped advantage weights under the current V and the
    target critics; aux: per-transition ``adv_weight`` and ``log_likelihood`` (B,)."""
    _, value, actor = _nets(config, batch["actions"].shape[-1])
    adv = _target_q(state, batch, config) - value.apply(state.value_params, batch["observations"])
    w = common.advantage_weights(adv, config.inverse_temperature, config.max_weight)
    mean, log_std = actor.apply(actor_params, batch["observations"])
    log_pi = tanh_gaussian_log_prob(batch["actions"], mean, log_std)
    return -(w * log_pi).mean(), {"adv_weight": w, "log_likelihood": log_pi}


def critic_terms(critic_params: Any, state: IQLState, batch: Batch, config: IQLConfig):
    """Eq. 6: the sum over critics of the mean squared error to ``r + gamma (1 - terminal) V(s')``; aux
    (B,): ``q_data`` (mean over critics), ``td_error`` (mean over critics), ``target_q``, ``target_q_sq``."""
    critic, value, _ = _nets(config, batch["actions"].shape[-1])
    next_v = value.apply(state.value_params, batch["next_observations"])
    target = jax.lax.stop_gradient(batch["rewards"] + config.gamma * (1.0 - batch["terminals"]) * next_v)
    q = critic.apply(critic_params, batch["observations"], batch["actions"])
    sq = (q - target) ** 2
    return jnp.sum(sq.mean(axis=-1)), {"q_data": q.mean(axis=0), "td_error": sq.mean(axis=0), "target_q": target,
                                       "target_q_sq": target**2}


def update(state: IQLState, batch: Batch, key: jax.Array, config: IQLConfig) -> tuple[IQLState, dict]:
    """One gradient step on V, the actor and the critics, then the soft target update (see the module docstring).

    Returns the new state and the minibatch means of ``value_loss``, ``actor_loss``, ``critic_loss``,
    ``q_data``, ``v_data``, ``advantage``, ``adv_weight``, ``td_error``, ``target_q``, ``log_likelihood``."""
    c_opt, v_opt, a_opt = _opts(config)
    critic_batch, actor_batch = common.augmented_batches(batch, jax.random.fold_in(key, 7), config.crop_padding)

    (v_loss, v_aux), v_grads = jax.value_and_grad(value_terms, has_aux=True)(
        state.value_params, state, critic_batch, config)
    v_updates, value_opt_state = v_opt.update(v_grads, state.value_opt_state, state.value_params)
    state = state.replace(value_params=optax.apply_updates(state.value_params, v_updates),
                          value_opt_state=value_opt_state)

    (a_loss, a_aux), a_grads = jax.value_and_grad(actor_terms, has_aux=True)(
        state.actor_params, state, actor_batch, config)
    a_updates, actor_opt_state = a_opt.update(a_grads, state.actor_opt_state, state.actor_params)

    (c_loss, c_aux), c_grads = jax.value_and_grad(critic_terms, has_aux=True)(
        state.critic_params, state, critic_batch, config)
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
    metrics = {k: v.mean() for k, v in {**v_aux, **a_aux, **c_aux}.items() if k != "target_q_sq"}
    metrics.update(value_loss=v_loss, actor_loss=a_loss, critic_loss=c_loss)
    return new, metrics


def evaluate(state: IQLState, batch: Batch, key: jax.Array, config: IQLConfig) -> dict[str, jnp.ndarray]:
    """Per-transition workflow metrics (B,) on a fixed set (no augmentation): those of :func:`value_terms`,
    :func:`actor_terms` and :func:`critic_terms`, and ``q_policy`` = min_i Q_i(s, tanh(mu(s)))."""
    _, v_aux = value_terms(state.value_params, state, batch, config)
    _, a_aux = actor_terms(state.actor_params, state, batch, config)
    _, c_aux = critic_terms(state.critic_params, state, batch, config)
    critic, _, actor = _nets(config, batch["actions"].shape[-1])
    mean, _ = actor.apply(state.actor_params, batch["observations"])
    q_pi = critic.apply(state.critic_params, batch["observations"], jnp.tanh(mean)).min(axis=0)
    return {**v_aux, **a_aux, **c_aux, "q_policy": q_pi}


def deterministic_action(actor_params: Any, observations: jnp.ndarray, act_dim: int, config: IQLConfig):
    """tanh(mu(s)) for normalised observations (B, obs_dim) -> (B, act_dim)."""
    return common.deterministic_action(
        actor_params, observations, act_dim, config.actor_hidden_dims, config.actor_encoder
    )


param_counts = common.param_counts
