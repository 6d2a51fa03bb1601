"""What every agent shares: the evaluation action and parameter counting."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

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
