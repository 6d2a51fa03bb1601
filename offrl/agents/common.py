"""What every agent shares: the evaluation action and parameter counting."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import flax
import jax
import jax.numpy as jnp

from offrl.networks import TanhGaussianActor
from offrl.networks.augment import augment_observations

ObsSpec = int | dict[str, Any]
"""What observations look like: the number of state features (state runs), or for image runs
``{"image": [H, W, C], "state": d}`` (C = 3 x frame stack, d >= 0 state features beside the image)."""


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
    critic_encoder: Literal["cnn", "resnet"] = "cnn"
    """Image runs: the critics' encoder, the paper's 3-conv CNN or the 9-conv residual network (Guideline 4.2)."""
    actor_encoder: Literal["cnn", "resnet"] = "cnn"
    """Image runs: the actor's encoder (the paper's fix for underfitting on the Sawyer tasks is a ResNet actor)."""
    shared_encoder: bool = False
    """Image runs: one image encoder for the critics and the actor, trained by the critic loss only; the actor
    uses it without back-propagating into it (DrQ's design). Needs critic_encoder == actor_encoder. Default:
    separate encoders for each critic and the actor, as in the paper's reference code."""
    crop_padding: int = 4
    """Image runs: random-crop augmentation after padding by this many pixels, drawn independently for the
    critic, the target and the actor (reference code: 4); 0 turns augmentation off."""
    actor_ema_decay: float = 0.0
    """Keep and deploy a Polyak average of the actor (:class:`ActorAveraged`): its decay d per gradient step, in
    [0, 1); 1 / (1 - d) is its horizon in steps (0.999: about 1,000). 0 (the default): no average."""


DEFINED = "_defined"
"""Suffix of a per-row companion key in an agent's ``evaluate`` output: ``K + DEFINED`` is 1 on the rows where the
term ``K`` is defined and 0 where the agent set it to 0; the logged ``K`` is its mean over the defined rows
(:func:`offrl.training.train.checkpoint_record`)."""


def term_on(coef: Any) -> bool:
    """Whether a loss term weighted by ``coef`` is built: yes unless ``coef`` is a concrete number <= 0. A traced
    coefficient (``offrl sweep`` vmaps over it) keeps the term, weighted by its value, so runs with and
    without the term can share one compiled program."""
    if isinstance(coef, int | float):
        return coef > 0
    return True


def example_observation(obs_spec: ObsSpec, batch: int = 1) -> Any:
    """Zero observations of a spec with a leading batch axis: (batch, obs_dim) float32, or for image specs
    ``{"image": (batch, H, W, C) uint8, "state": (batch, d) float32}`` (network initialisation)."""
    if isinstance(obs_spec, dict):
        return {
            "image": jnp.zeros((batch, *obs_spec["image"]), jnp.uint8),
            "state": jnp.zeros((batch, int(obs_spec.get("state", 0))), jnp.float32),
        }
    return jnp.zeros((batch, int(obs_spec)), jnp.float32)


@functools.partial(jax.jit, static_argnames=("act_dim", "actor_hidden_dims", "actor_encoder"))
def deterministic_action(
    actor_params: Any, observations: Any, act_dim: int, actor_hidden_dims: tuple[int, ...],
    actor_encoder: str = "cnn",
) -> jnp.ndarray:
    """The evaluation action tanh(mu(s)) of a tanh-Gaussian actor (reference code), for normalised
    observations (B, obs_dim) or image observations (see :class:`TanhGaussianActor`) -> (B, act_dim) in
    (-1, 1). No augmentation at evaluation."""
    actor = TanhGaussianActor(actor_hidden_dims, act_dim=act_dim, encoder=actor_encoder)
    mean, _ = actor.apply(actor_params, observations)
    return jnp.tanh(mean)


ACTORS = ("trained", "averaged")
"""Which actor of a run acts (config.json ``deployment.actor``): the trained parameters, or their Polyak average
(:class:`ActorAveraged`), kept when the agent's ``actor_ema_decay`` > 0."""


@flax.struct.dataclass
class ActorAveraged:
    """An agent state (any state with ``actor_params``) with an exponential moving average of its actor's
    parameters beside it: after every gradient step, ``actor_average_params <- d * actor_average_params + (1 - d) *
    actor_params`` (:func:`polyak_average`), started at the initial parameters. Training still reads the trained
    ``agent.actor_params`` only; the average is what acts when chosen (:data:`ACTORS`). Saved and restored with the
    checkpoint like any state pytree. Runs without averaging keep their bare agent state (and checkpoints)."""

    agent: Any
    """The agent's own state (e.g. :class:`offrl.agents.cql.CQLState`)."""
    actor_average_params: Any
    """The average, a pytree of the same structure, shapes and dtypes as ``agent.actor_params``."""


def actor_ema_decay(config: Any) -> float:
    """The decay of an agent config's averaged actor (its ``actor_ema_decay``; 0 when it has none: no average)."""
    return float(getattr(config, "actor_ema_decay", 0.0) or 0.0)


def with_actor_average(state: Any) -> ActorAveraged:
    """``state`` with an averaged actor beside it, started at its current actor parameters.

    Raises:
        ValueError: the state has no ``actor_params`` (a critic-only or sequence agent), or is averaged already.
    """
    if isinstance(state, ActorAveraged):
        raise ValueError("this agent state already keeps an averaged actor")
    if not hasattr(state, "actor_params"):
        raise ValueError(f"{type(state).__name__} has no actor_params: an averaged actor needs an actor-critic agent")
    return ActorAveraged(state, jax.tree.map(jnp.array, state.actor_params))


def polyak_average(average: Any, params: Any, decay: float) -> Any:
    """One step of the exponential moving average ``d * average + (1 - d) * params``, leaf by leaf (pytrees of
    equal structure; float leaves of any shape, dtype kept). Averaging the iterates of a stochastic gradient method
    is Polyak & Juditsky (1992, "Acceleration of stochastic approximation by averaging", SIAM J. Control Optim.
    30(4)); the exponential form is the usual EMA of parameters (e.g. optax.ema without debiasing)."""
    return jax.tree.map(lambda a, p: (decay * a + (1.0 - decay) * p).astype(a.dtype), average, params)


def agent_state(state: Any) -> Any:
    """The agent's own state, with or without an averaged actor around it."""
    return state.agent if isinstance(state, ActorAveraged) else state


def replace_agent(state: Any, agent: Any) -> Any:
    """``state`` with its agent state replaced by ``agent`` (the average, if any, kept)."""
    return state.replace(agent=agent) if isinstance(state, ActorAveraged) else agent


def averaged_update(update: Any, state: Any, batch: Any, key: jax.Array, config: Any) -> tuple[Any, Any]:
    """An agent's ``update(state, batch, key, config) -> (state, metrics)``, then, for an :class:`ActorAveraged`
    state, one :func:`polyak_average` step of the average towards the new actor parameters with
    ``config.actor_ema_decay``. A bare state is updated exactly as ``update`` alone would. Pure; traceable inside
    ``lax.scan`` (the training loop's compiled chunk)."""
    if not isinstance(state, ActorAveraged):
        return update(state, batch, key, config)
    new, metrics = update(state.agent, batch, key, config)
    average = polyak_average(state.actor_average_params, new.actor_params, actor_ema_decay(config))
    return ActorAveraged(new, average), metrics


def actor_of(state: Any, actor: str | None = None) -> Any:
    """The parameters of the chosen actor (:data:`ACTORS`) of a state; None: the average when the state keeps one,
    else the trained parameters.

    Raises:
        ValueError: an unknown actor, or ``"averaged"`` for a state that keeps no average.
    """
    if actor is None:
        actor = "averaged" if isinstance(state, ActorAveraged) else "trained"
    if actor not in ACTORS:
        raise ValueError(f"unknown actor {actor!r}: choose one of {', '.join(ACTORS)}")
    if actor == "averaged":
        if not isinstance(state, ActorAveraged):
            raise ValueError("this run keeps no averaged actor: train it with actor_ema_decay > 0 "
                             "(e.g. --agent.actor-ema-decay 0.999)")
        return state.actor_average_params
    return agent_state(state).actor_params


def acting_state(state: Any, actor: str | None = None) -> Any:
    """The agent state whose ``actor_params`` are the chosen actor's (:func:`actor_of`), so that an agent's
    ``evaluate`` (q_policy and the like) reads that actor. A bare state with ``actor=None`` is returned as is."""
    inner = agent_state(state)
    if actor is None and not isinstance(state, ActorAveraged):
        return inner
    return inner.replace(actor_params=actor_of(state, actor))


def param_counts(state: Any) -> dict[str, int]:
    """Number of parameters of each trained network of an agent state (fields named ``*_params``, except
    target copies and frozen behaviour policies), e.g. ``{"critic": ..., "actor": ...}``."""
    counts = {}
    state = agent_state(state)
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


def augmented_batches(batch: dict[str, Any], key: jax.Array, crop_padding: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The critic's and the actor's views of a batch: image observations random-cropped with independent
    draws for the critic (at s), the target (at s') and the actor (at s), as in the reference code. State
    batches are returned unchanged."""
    k_critic, k_target, k_actor = jax.random.split(key, 3)
    critic_batch = {
        **batch,
        "observations": augment_observations(k_critic, batch["observations"], crop_padding),
        "next_observations": augment_observations(k_target, batch["next_observations"], crop_padding),
    }
    actor_batch = {**batch, "observations": augment_observations(k_actor, batch["observations"], crop_padding)}
    return critic_batch, actor_batch


def share_encoder(actor_params: Any, critic_params: Any, grads: Any | None = None) -> Any:
    """With a shared encoder: the actor's copy of the encoder set to the critics' (``encoder_0``), or, given
    the actor's ``grads``, those grads with the encoder's zeroed (the actor does not train the encoder).
    Parameters without an image encoder are returned unchanged."""
    tree = actor_params if grads is None else grads
    if "encoder" not in tree.get("params", {}):
        return tree
    if grads is None:
        new = critic_params["params"]["encoder_0"]
    else:
        new = jax.tree.map(jnp.zeros_like, grads["params"]["encoder"])
    return {**tree, "params": {**tree["params"], "encoder": new}}


def advantage_weights(advantage: jnp.ndarray, inverse_temperature: Any, max_weight: float) -> jnp.ndarray:
    """``min(exp(inverse_temperature * A), max_weight)`` elementwise, without gradient: the weights of
    advantage-weighted regression (Peng et al. 2019), IQL's policy extraction (Kostrikov et al. 2022, Eq. 7,
    ``beta``) and AWAC's actor (Nair et al. 2020, Eq. 13, ``1 / lambda``). The clip (100 in both authors' code)
    keeps one large advantage from dominating a batch. Same shape as ``advantage``."""
    return jax.lax.stop_gradient(jnp.minimum(jnp.exp(inverse_temperature * advantage), max_weight))


def shared_problems(flag_group: str, config: Any) -> list[str]:
    """Checks of the fields most agents share, as one-line problems naming the flag (``--GROUP.FIELD``): ``tau``
    in (0, 1], ``gamma`` in [0, 1), ``num_critics`` >= 1 and ``max_weight`` > 0, for those of them the config has."""
    problems = []
    tau, gamma = getattr(config, "tau", None), getattr(config, "gamma", None)
    if tau is not None and not 0.0 < tau <= 1.0:
        problems.append(f"--{flag_group}.tau must be in (0, 1], got {tau}")
    if gamma is not None and not 0.0 <= gamma < 1.0:
        problems.append(f"--{flag_group}.gamma must be in [0, 1), got {gamma}")
    if getattr(config, "num_critics", 1) < 1:
        problems.append(f"--{flag_group}.num-critics must be >= 1, got {config.num_critics}")
    if getattr(config, "max_weight", 1.0) <= 0:
        problems.append(f"--{flag_group}.max-weight must be > 0, got {config.max_weight}")
    return problems


def actor_average_problems(flag_group: str, config: Any) -> list[str]:
    """The averaged actor's setting as one-line problems naming the flag: ``actor_ema_decay`` in [0, 1) (empty
    for configs without it)."""
    decay = getattr(config, "actor_ema_decay", 0.0)
    if decay is None or (isinstance(decay, int | float) and 0.0 <= decay < 1.0):
        return []
    return [f"--{flag_group}.actor-ema-decay must be in [0, 1), got {decay} (0: no averaged actor; 0.999: a horizon "
            f"of about 1,000 steps)"]
