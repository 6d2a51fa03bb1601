"""Conservative Q-learning, actor-critic CQL(H) (Kumar et al. 2020; the workflow paper's Eq. 1).

Critic objective (workflow paper Eq. 1, with the release's unhalved MSE; see ``critic_loss``):

    min_theta  alpha * ( E_s[ log sum_a exp Q(s, a) ] - E_{s,a ~ D}[ Q(s, a) ] )  +  E[(Q(s, a) - B^pi Qbar(s, a))^2]

with the log-sum-exp over actions estimated by importance sampling from uniform actions and from the policy at
``s`` and ``s'`` (``cql_penalty``), and ``B^pi Qbar(s, a) = r + gamma (1 - terminal) min_i Qbar_i(s', a')``,
``a' ~ pi(.|s')`` (deterministic backup: no entropy term, as in the reference code).

Actor: SAC's ``E[temperature * log pi(a|s) - min_i Q_i(s, a)]``, after an optional behaviour-cloning warm start
that maximises ``log pi(a_data|s)`` instead. Entropy temperature tuned towards ``target_entropy = -|A|``.

Everything here is a pure function of an immutable :class:`CQLState`; ``update`` is jit-able and has no side
effects. Default values and their sources: ``../shared/reference/implementation-notes.md``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from offrl.agents import common
from offrl.networks import CriticEnsemble, TanhGaussianActor, sample_tanh_gaussian, tanh_gaussian_log_prob

Batch = dict[str, jnp.ndarray]
Metrics = dict[str, jnp.ndarray]


@dataclasses.dataclass(frozen=True)
class CQLConfig(common.ActorCriticConfig):
    """Hyperparameters of CQL. Every default comes from the paper or its reference code."""

    init_temperature: float = 0.1
    """Initial entropy temperature. Deviation: the reference code starts at 1.0 and tunes it with learning rate
    1e-4, so it stays near 1 for the first ten thousand steps; with 0/1 rewards the entropy bonus (about 4 nats
    x 1.0) then outweighs every difference of Q between actions (all below 1): on pick-place-v3 the policy's
    entropy climbed back to its maximum as soon as the warm start ended. 0.1 lets Q decide from the start; the
    temperature is still tuned towards the target entropy. Not measured in isolation (see docs/metrics.md)."""
    alpha: float = 1.0
    """Weight of the CQL regularizer (paper Eq. 1); 1.0 in the workflow paper's experiments."""
    num_action_samples: int = 1
    """Actions drawn per state from each of the three proposals (uniform, pi(.|s), pi(.|s')) to estimate the
    log-sum-exp. 1 as in the workflow paper's release; the original CQL on D4RL uses 10, which is less noisy
    but about 7x slower for state MLPs on a CPU (benchmarks/train_speed.py)."""
    bc_steps: int = 0
    """Gradient steps of behaviour cloning for the actor before the RL actor loss. Deviation: the reference code
    uses 10,000; offrl starts with the RL actor loss, as d3rlpy and CORL do by default. Measured on pick-place-v3
    (mixed regime, 100 episodes): during a 10,000-step warm start the cloned policy spreads its samples over the
    whole action distribution of the data, CQL pushes Q down on exactly those samples, and the backup through
    a' ~ pi(.|s') carries that gap into every target: q_data fell to -84 within 3,000 steps (-15, -48, -84),
    against -17 without the warm start. Dropping the entropy term from the warm-start loss did not change the
    slide (-81): the sampled actions, not the temperature, drive it (docs/metrics.md)."""
    calibrated: bool = True
    """Cal-QL (Nakamoto et al. 2023, Sec. 4.1, the Cal-QL regularizer): CQL pushes Q down on the policy's
    actions only while it is above the behaviour's Monte-Carlo return of the state (``max(Q(s, a), G(s))``
    inside the log-sum-exp, as in the authors' code), so Q cannot slide below what the data's own returns show.
    Deviation from the workflow paper's plain CQL(H): without it q_data slid far below the range the rewards
    allow on every dev task tried, which made the Q curve's peak (Guideline 3.1) the first checkpoint. False
    gives plain CQL(H)."""
    deterministic_backup: bool = True
    """Leave the entropy term out of the TD target (reference code)."""
    lagrange: bool = False
    """Tune the CQL weight automatically (the Lagrange variant of CQL): a multiplier alpha' >= 0 scales
    ``alpha * (R - target_action_gap)`` and grows while the regularizer is above the gap, shrinks below it."""
    target_action_gap: float = 5.0
    """Lagrange variant: the value ``alpha * R`` is held at (reference code: 5.0)."""
    alpha_prime_lr: float = 3e-4
    """Lagrange variant: Adam learning rate of log alpha' (the critic's, as in the reference code)."""
    critic_dropout: float = 0.0
    """Dropout rate after each hidden layer of the critics (Guideline 4.1; off at evaluation and in the
    target network)."""
    critic_layer_norm: bool = False
    """LayerNorm before each hidden activation of the critics."""
    vib_dim: int = 0
    """Size of the critics' variational information bottleneck (paper Eq. 3; the release uses 16); 0 = off."""
    vib_beta: float = 1e-3
    """VIB weight beta on KL(N(mu, sigma^2) || N(0, I)) (paper Eq. 3); the release's README value for the
    overfitting regime (its default is 0.5). Used only with vib_dim > 0."""
    dr3_coef: float = 0.0
    """DR3 weight (paper Eq. 4): c * mean phi(s, a) . stop_grad(phi(s', a')) on the critics' penultimate
    features (the release uses 1e-3); 0 = off."""
    l2_coef: float = 0.0
    """L2 penalty on the critics' weight matrices (paper Appendix J); 0 = off."""
    l1_coef: float = 0.0
    """L1 penalty on the critics' weight matrices (paper Appendix J); 0 = off."""


@flax.struct.dataclass
class CQLState:
    """Everything that changes during training. A pytree: checkpointed and restored as one object."""

    step: jnp.ndarray  # () int32, gradient steps taken
    critic_params: Any
    target_critic_params: Any
    actor_params: Any
    log_temperature: jnp.ndarray  # () float32
    critic_opt_state: Any
    actor_opt_state: Any
    temperature_opt_state: Any
    log_alpha_prime: jnp.ndarray  # () float32, Lagrange variant only (0 = a multiplier of 1 otherwise)
    alpha_prime_opt_state: Any


@flax.struct.dataclass
class CQLStateV1:
    """The state layout of offrl 0.1.0 checkpoints (before the Lagrange variant), kept to load them."""

    step: jnp.ndarray
    critic_params: Any
    target_critic_params: Any
    actor_params: Any
    log_temperature: jnp.ndarray
    critic_opt_state: Any
    actor_opt_state: Any
    temperature_opt_state: Any


def legacy_states(config: CQLConfig, obs_spec: common.ObsSpec, act_dim: int) -> list[tuple[Any, Any]]:
    """Older checkpoint layouts as ``(like_state, upgrade)`` pairs, newest first; ``upgrade(old) -> CQLState``."""
    fresh = init(config, obs_spec, act_dim, jax.random.PRNGKey(0))
    v1 = CQLStateV1(**{f: getattr(fresh, f) for f in CQLStateV1.__dataclass_fields__})

    def upgrade(old: CQLStateV1) -> CQLState:
        return CQLState(
            **{f: getattr(old, f) for f in CQLStateV1.__dataclass_fields__},
            log_alpha_prime=fresh.log_alpha_prime,
            alpha_prime_opt_state=fresh.alpha_prime_opt_state,
        )

    return [(v1, upgrade)]


def _networks(config: CQLConfig, act_dim: int) -> tuple[CriticEnsemble, TanhGaussianActor]:
    return (
        CriticEnsemble(
            config.critic_hidden_dims,
            num_critics=config.num_critics,
            dropout_rate=config.critic_dropout,
            layer_norm=config.critic_layer_norm,
            vib_dim=config.vib_dim,
            encoder=config.critic_encoder,
            shared_encoder=config.shared_encoder,
        ),
        TanhGaussianActor(config.actor_hidden_dims, act_dim=act_dim, encoder=config.actor_encoder),
    )


def _optimizers(config: CQLConfig) -> tuple[optax.GradientTransformation, ...]:
    return optax.adam(config.critic_lr), optax.adam(config.actor_lr), optax.adam(config.temperature_lr)


def init(config: CQLConfig, obs_spec: common.ObsSpec, act_dim: int, key: jax.Array) -> CQLState:
    """Fresh parameters and optimiser states for observations of ``obs_spec`` (state features, or an image
    spec, see :data:`offrl.agents.common.ObsSpec`) and actions of act_dim features."""
    critic, actor = _networks(config, act_dim)
    k_critic, k_actor = jax.random.split(key)
    obs = common.example_observation(obs_spec)
    act = jnp.zeros((1, act_dim), jnp.float32)
    critic_params = critic.init(k_critic, obs, act)
    actor_params = actor.init(k_actor, obs)
    if config.shared_encoder:
        actor_params = common.share_encoder(actor_params, critic_params)
    log_temperature = jnp.asarray(math.log(config.init_temperature), jnp.float32)
    critic_opt, actor_opt, temp_opt = _optimizers(config)
    log_alpha_prime = jnp.zeros((), jnp.float32)
    return CQLState(
        step=jnp.zeros((), jnp.int32),
        critic_params=critic_params,
        target_critic_params=critic_params,
        actor_params=actor_params,
        log_temperature=log_temperature,
        critic_opt_state=critic_opt.init(critic_params),
        actor_opt_state=actor_opt.init(actor_params),
        temperature_opt_state=temp_opt.init(log_temperature),
        log_alpha_prime=log_alpha_prime,
        alpha_prime_opt_state=optax.adam(config.alpha_prime_lr).init(log_alpha_prime),
    )


def alpha_prime_of(state: CQLState, config: CQLConfig) -> jnp.ndarray:
    """The Lagrange multiplier alpha' = exp(log alpha') clipped to [0, 1e6] (reference code); 1 without it."""
    if not config.lagrange:
        return jnp.ones((), jnp.float32)
    return jnp.clip(jnp.exp(state.log_alpha_prime), 0.0, 1e6)


def cql_penalty(
    q_data: jnp.ndarray,
    q_random: jnp.ndarray,
    q_policy: jnp.ndarray,
    q_next_policy: jnp.ndarray,
    log_pi: jnp.ndarray,
    log_pi_next: jnp.ndarray,
    act_dim: int,
) -> jnp.ndarray:
    """The CQL(H) regularizer R(theta) for each critic, before multiplying by alpha (paper Eq. 1).

    ``R = E_s[ log sum_a exp Q(s, a) ] - E_{(s,a) ~ D}[ Q(s, a) ]``, with the log-sum-exp over actions estimated
    by importance sampling from three proposals, each term corrected by its log-density: uniform actions on
    [-1, 1]^|A| (density 0.5^|A|), policy actions at s and policy actions at s' (both evaluated at s). As in the
    reference code (rlkit CQL) the sum is not divided by the number of samples, so R carries a constant offset
    of log(3n) relative to a mean; it does not change gradients.

    Args:
        q_data: (C, B) Q of each of C critics on the dataset actions.
        q_random: (C, n, B) Q on n uniform actions per state.
        q_policy: (C, n, B) Q on n actions from pi(.|s).
        q_next_policy: (C, n, B) Q(s, a') on n actions a' from pi(.|s').
        log_pi: (n, B) log pi(a|s) of the actions behind ``q_policy``.
        log_pi_next: (n, B) log pi(a'|s') of the actions behind ``q_next_policy``.
        act_dim: |A|, for the uniform density.

    Returns:
        (C, B) the regularizer of each critic at each transition; its mean over B is R(theta) of that critic.
    """
    log_uniform_density = act_dim * math.log(0.5)
    stacked = jnp.concatenate(
        [q_random - log_uniform_density, q_policy - log_pi, q_next_policy - log_pi_next], axis=1
    )  # (C, 3n, B)
    return jax.scipy.special.logsumexp(stacked, axis=1) - q_data


def td_target(
    rewards: jnp.ndarray, terminals: jnp.ndarray, next_q: jnp.ndarray, gamma: float
) -> jnp.ndarray:
    """Bellman target ``r + gamma * (1 - terminal) * next_q``; all (B,) float32. Timeouts still bootstrap."""
    return rewards + gamma * (1.0 - terminals) * next_q


def critic_terms(
    critic_params: Any,
    target_critic_params: Any,
    actor_params: Any,
    log_temperature: jnp.ndarray,
    batch: Batch,
    key: jax.Array,
    config: CQLConfig,
    alpha_prime: jnp.ndarray | float = 1.0,
    train: bool = True,
) -> tuple[jnp.ndarray, Metrics]:
    """The critic loss of CQL and its parts, per transition, for training and for the workflow's metrics.

    Args:
        batch: ``observations`` (B, obs_dim) or image observations (``{"image": (B, H, W, C) uint8, "state":
            (B, d)}``), ``actions`` (B, act_dim), ``rewards`` (B,), ``terminals`` (B,) float32 0/1,
            ``next_observations`` like ``observations``; with ``config.calibrated`` also ``mc_returns`` (B,)
            float32, the Monte-Carlo return of each transition (:func:`offrl.data.mc_returns`). Each critic
            encodes a state once; the encoding is
            reused for the dataset action and for all 3n sampled actions.

    Returns:
        ``(loss, parts)``: the scalar loss summed over critics, and (B,)-shaped parts averaged over critics:
        ``q_data``, ``td_error`` (squared Bellman error, no CQL term), ``cql_regularizer`` (before alpha),
        ``q_random``, ``q_policy``, ``target_q``. With the Lagrange variant the CQL term of the loss is
        ``alpha' * alpha * (R - target_action_gap)``, alpha' given (a constant for the critic). The critic
        regularizers add ``vib_beta * KL`` (VIB, Eq. 3; part ``vib_kl``), ``dr3_coef * phi(s,a).phi(s',a')`` (DR3,
        Eq. 4; part ``dr3_dot``) and L2/L1 weight penalties (parts ``l2_weights``, ``l1_weights``), each
        summed over critics. ``train=False`` (evaluation) turns dropout and VIB sampling off.
    """
    critic, actor = _networks(config, batch["actions"].shape[-1])
    obs, act, next_obs = batch["observations"], batch["actions"], batch["next_observations"]
    n, b, act_dim = config.num_action_samples, act.shape[0], act.shape[-1]
    k_next, k_rand, k_pi, k_pi_next = jax.random.split(key, 4)

    mean, log_std = actor.apply(actor_params, obs)
    next_mean, next_log_std = actor.apply(actor_params, next_obs)
    next_act, next_log_pi = sample_tanh_gaussian(k_next, next_mean, next_log_std)
    next_q = critic.apply(target_critic_params, next_obs, next_act).min(axis=0)  # (B,)
    if not config.deterministic_backup:
        next_q = next_q - jnp.exp(log_temperature) * next_log_pi
    target = jax.lax.stop_gradient(td_target(batch["rewards"], batch["terminals"], next_q, config.gamma))

    # Dropout and VIB noise only while training the online critics; the target network is deterministic.
    stochastic = train and (config.critic_dropout > 0 or config.vib_dim > 0)
    noise = jax.random.fold_in(key, 1)

    def rngs(call: int) -> dict[str, jax.Array] | None:
        if not stochastic:
            return None
        k_drop, k_vib = jax.random.split(jax.random.fold_in(noise, call))
        return {"dropout": k_drop, "vib": k_vib}

    def encode(o: Any, call: int) -> jnp.ndarray:
        return critic.apply(critic_params, o, encode_only=True, deterministic=not stochastic, rngs=rngs(call))

    def q_and_aux(phi: jnp.ndarray, a: jnp.ndarray, call: int) -> tuple[jnp.ndarray, dict]:
        return critic.apply(critic_params, None, a, phi, not stochastic, True, rngs=rngs(call))

    phi = encode(obs, 3)  # (C, B, F): each critic's encoding of s, computed once
    q, aux = q_and_aux(phi, act, 0)  # (C, B)
    # The release (rlkit) uses an unhalved MSE where Eq. 1 prints 1/2; we follow the code, which sets the
    # balance between the TD term and alpha that the paper's experiments used.
    sq_td = (q - target) ** 2  # (C, B)

    random_act = jax.random.uniform(k_rand, (n, b, act_dim), jnp.float32, -1.0, 1.0)
    pi_act, log_pi = sample_tanh_gaussian(k_pi, mean, log_std, n)  # (n, B, A), (n, B)
    pi_next_act, log_pi_next = sample_tanh_gaussian(k_pi_next, next_mean, next_log_std, n)
    # One critic call on all 3n sampled actions per state; the policy's log-probs are constants for the critic.
    sampled = jnp.concatenate([random_act, pi_act, pi_next_act], axis=0)  # (3n, B, A)
    q_sampled, _ = q_and_aux(phi[:, None], sampled, 1)  # (C, 3n, B)
    q_random, q_policy, q_next_policy = jnp.split(q_sampled, 3, axis=1)
    pushed_policy, pushed_next = q_policy, q_next_policy
    if config.calibrated:
        # Cal-QL: the policy's actions are pushed down only to the behaviour's Monte-Carlo return of s (the
        # authors' code masks these two proposals, not the uniform one, before the log-sum-exp).
        floor = batch["mc_returns"][None, None, :]
        pushed_policy, pushed_next = jnp.maximum(q_policy, floor), jnp.maximum(q_next_policy, floor)
    log_pi, log_pi_next = jax.lax.stop_gradient(log_pi), jax.lax.stop_gradient(log_pi_next)
    penalty = cql_penalty(q, q_random, pushed_policy, pushed_next, log_pi, log_pi_next, act_dim)  # (C, B)

    gap = config.target_action_gap if config.lagrange else 0.0
    loss = jnp.sum(sq_td.mean(axis=-1) + alpha_prime * (config.alpha * penalty.mean(axis=-1) - gap))
    extra: dict[str, jnp.ndarray] = {}
    if config.vib_dim > 0:
        loss = loss + config.vib_beta * jnp.sum(aux["kl"].mean(axis=-1))
        extra["vib_kl"] = aux["kl"].mean(axis=0)
    if common.term_on(config.dr3_coef):
        # DR3 (Eq. 4): the implicit regularizer's co-adaptation of consecutive features, with the gradient
        # stopped through the s' features.
        phi_next = jax.lax.stop_gradient(encode(next_obs, 4))
        _, aux_next = q_and_aux(phi_next, jax.lax.stop_gradient(next_act), 2)
        dot = jnp.sum(aux["features"] * jax.lax.stop_gradient(aux_next["features"]), axis=-1)  # (C, B)
        loss = loss + config.dr3_coef * jnp.sum(dot.mean(axis=-1))
        extra["dr3_dot"] = dot.mean(axis=0)
    if common.term_on(config.l2_coef) or common.term_on(config.l1_coef):
        kernels = [w for path, w in jax.tree_util.tree_leaves_with_path(critic_params)
                   if getattr(path[-1], "key", None) == "kernel"]
        l2 = sum(jnp.sum(w**2) for w in kernels)
        l1 = sum(jnp.sum(jnp.abs(w)) for w in kernels)
        loss = loss + config.l2_coef * l2 + config.l1_coef * l1
        extra["l2_weights"] = jnp.full((b,), l2)
        extra["l1_weights"] = jnp.full((b,), l1)
    parts = {
        "q_data": q.mean(axis=0),
        "td_error": sq_td.mean(axis=0),
        "cql_regularizer": penalty.mean(axis=0),
        "q_random": q_random.mean(axis=(0, 1)),
        "q_policy": q_policy.mean(axis=(0, 1)),
        "target_q": target,
        "target_q_sq": target**2,  # with target_q, the targets' spread (offrl.training.train.checkpoint_record)
        **extra,
    }
    return loss, parts


def actor_loss(
    actor_params: Any,
    critic_params: Any,
    log_temperature: jnp.ndarray,
    batch: Batch,
    key: jax.Array,
    bc_phase: jnp.ndarray,
    config: CQLConfig,
) -> tuple[jnp.ndarray, Metrics]:
    """SAC actor loss ``E[temperature * log pi(a|s) - min_i Q_i(s, a)]``, or during the behaviour-cloning warm
    start ``E[temperature * log pi(a|s) - log pi(a_data|s)]`` (reference code). ``bc_phase`` is a () bool."""
    critic, actor = _networks(config, batch["actions"].shape[-1])
    obs = batch["observations"]
    mean, log_std = actor.apply(actor_params, obs)
    act, log_pi = sample_tanh_gaussian(key, mean, log_std)
    temperature = jnp.exp(jax.lax.stop_gradient(log_temperature))
    q_pi = critic.apply(critic_params, obs, act).min(axis=0)
    bc_log_likelihood = tanh_gaussian_log_prob(batch["actions"], mean, log_std)
    rl = jnp.mean(temperature * log_pi - q_pi)
    bc = jnp.mean(temperature * log_pi - bc_log_likelihood)
    loss = jnp.where(bc_phase, bc, rl)
    return loss, {"log_pi": log_pi.mean(), "bc_log_likelihood": bc_log_likelihood.mean()}


def update(state: CQLState, batch: Batch, key: jax.Array, config: CQLConfig) -> tuple[CQLState, Metrics]:
    """One gradient step on the critics, the actor and the temperature; then the soft target update.

    Args:
        state: current state.
        batch: see :func:`critic_terms`; B transitions.
        key: PRNG key for this step.
        config: hyperparameters (static under jit).

    Returns:
        The new state and scalar training metrics (means over the batch).
    """
    critic_opt, actor_opt, temp_opt = _optimizers(config)
    k_critic, k_actor = jax.random.split(key)
    act_dim = batch["actions"].shape[-1]
    target_entropy = common.target_entropy_of(config.target_entropy, act_dim)
    critic_batch, actor_batch = common.augmented_batches(batch, jax.random.fold_in(key, 7), config.crop_padding)

    # Actor and temperature use the critic before this step's update (as in rlkit).
    bc_phase = state.step < config.bc_steps
    (a_loss, a_aux), a_grads = jax.value_and_grad(actor_loss, has_aux=True)(
        state.actor_params, state.critic_params, state.log_temperature, actor_batch, k_actor, bc_phase, config
    )
    if config.shared_encoder:
        a_grads = common.share_encoder(state.actor_params, state.critic_params, a_grads)
    a_updates, actor_opt_state = actor_opt.update(a_grads, state.actor_opt_state, state.actor_params)
    actor_params = optax.apply_updates(state.actor_params, a_updates)

    log_temperature, temperature_opt_state, t_loss = common.temperature_step(
        state.log_temperature, state.temperature_opt_state, a_aux["log_pi"], target_entropy, temp_opt
    )

    alpha_prime = jax.lax.stop_gradient(alpha_prime_of(state, config))
    (c_loss, parts), c_grads = jax.value_and_grad(critic_terms, has_aux=True)(
        state.critic_params,
        state.target_critic_params,
        state.actor_params,
        state.log_temperature,
        critic_batch,
        k_critic,
        config,
        alpha_prime,
    )
    log_alpha_prime, alpha_prime_opt_state = state.log_alpha_prime, state.alpha_prime_opt_state
    if config.lagrange:
        # Dual ascent on alpha': minimise -alpha' * (alpha * R - gap), R held constant (reference code).
        reg = jax.lax.stop_gradient(parts["cql_regularizer"].mean())

        def alpha_prime_loss(lap: jnp.ndarray) -> jnp.ndarray:
            return -jnp.clip(jnp.exp(lap), 0.0, 1e6) * (config.alpha * reg - config.target_action_gap)

        ap_grad = jax.grad(alpha_prime_loss)(state.log_alpha_prime)
        ap_updates, alpha_prime_opt_state = optax.adam(config.alpha_prime_lr).update(
            ap_grad, state.alpha_prime_opt_state
        )
        log_alpha_prime = optax.apply_updates(state.log_alpha_prime, ap_updates)
    c_updates, critic_opt_state = critic_opt.update(c_grads, state.critic_opt_state, state.critic_params)
    critic_params = optax.apply_updates(state.critic_params, c_updates)
    target_critic_params = optax.incremental_update(critic_params, state.target_critic_params, config.tau)
    if config.shared_encoder:
        actor_params = common.share_encoder(actor_params, critic_params)

    new_state = CQLState(
        step=state.step + 1,
        critic_params=critic_params,
        target_critic_params=target_critic_params,
        actor_params=actor_params,
        log_temperature=log_temperature,
        critic_opt_state=critic_opt_state,
        actor_opt_state=actor_opt_state,
        temperature_opt_state=temperature_opt_state,
        log_alpha_prime=log_alpha_prime,
        alpha_prime_opt_state=alpha_prime_opt_state,
    )
    metrics = {k: v.mean() for k, v in parts.items() if k != "target_q_sq"}
    if config.lagrange:
        metrics["alpha_prime"] = alpha_prime
    metrics.update(
        critic_loss=c_loss,
        actor_loss=a_loss,
        temperature_loss=t_loss,
        entropy_temperature=jnp.exp(state.log_temperature),
        entropy=-a_aux["log_pi"],
        bc_log_likelihood=a_aux["bc_log_likelihood"],
    )
    return new_state, metrics


def evaluate_critic(state: CQLState, batch: Batch, key: jax.Array, config: CQLConfig) -> Metrics:
    """Per-transition workflow metrics on a batch, without updating anything (see :func:`critic_terms`)."""
    _, parts = critic_terms(
        state.critic_params,
        state.target_critic_params,
        state.actor_params,
        state.log_temperature,
        batch,
        key,
        config,
        train=False,
    )
    return parts


def srank(features: jnp.ndarray, delta: float = 0.01) -> jnp.ndarray:
    """Effective rank of a feature matrix (Kumar et al. 2021, "Implicit Under-Parameterization"):
    the smallest k with sum_{i<=k} sigma_i >= (1 - delta) sum_i sigma_i, sigma the singular values.
    features (N, F) -> () int32. A collapsing srank means the critic uses ever fewer directions."""
    sv = jnp.linalg.svd(features, compute_uv=False)
    cum = jnp.cumsum(sv) / jnp.maximum(jnp.sum(sv), 1e-12)
    return jnp.sum(cum < 1.0 - delta).astype(jnp.int32) + 1


def feature_srank(state: CQLState, batch: Batch, config: CQLConfig) -> jnp.ndarray:
    """srank of each critic's penultimate features on a batch of dataset (s, a), averaged over critics."""
    critic, _ = _networks(config, batch["actions"].shape[-1])
    _, aux = critic.apply(state.critic_params, batch["observations"], batch["actions"], return_aux=True)
    return jnp.mean(jax.vmap(srank)(aux["features"]).astype(jnp.float32))


def deterministic_action(actor_params: Any, observations: jnp.ndarray, act_dim: int, config: CQLConfig):
    """The evaluation action tanh(mu(s)) for normalised observations (B, obs_dim) -> (B, act_dim)."""
    return common.deterministic_action(
        actor_params, observations, act_dim, config.actor_hidden_dims, config.actor_encoder
    )


param_counts = common.param_counts


evaluate = evaluate_critic
