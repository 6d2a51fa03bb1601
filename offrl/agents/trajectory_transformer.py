"""Trajectory Transformer, TT (Janner, Li, Levine 2021, "Offline Reinforcement Learning as One Big Sequence
Modeling Problem", NeurIPS; reference code github.com/jannerm/trajectory-transformer).

Offline RL as sequence modelling: every dimension of the states, actions, rewards and values of the dataset is
discretised into N bins, a GPT is trained by teacher forcing to predict each token of a window of consecutive
transitions from the tokens before it, and the policy plans with beam search on the model's predicted reward
plus value (:mod:`offrl.networks.trajectory_transformer`, which also documents the token layout).

* Discretisation (``--tt.discretizer``): per dimension, ``quantile`` (the paper's: bins holding equal shares
  of the training values) or ``uniform`` (equal widths between the minimum and maximum); fitted once on the
  training episodes (observations as the network sees them, normalised). A token is reconstructed as the mean
  of the training values of its bin: a training value comes back to within its bin's width, and the point
  masses of 0/1 rewards exactly (the reference code refuses sparse rewards).
* Values: the discounted return after each reward, ``V_t = sum_k gamma^(k-1) r_(t+k)`` within the episode
  (0 after its last transition), as in the reference code.
* Loss: cross-entropy of each next token, weighted 1 for state, 5 for action, 1 for reward and value tokens
  (the paper's weights), averaged over the window's tokens inside its episode. Windows that run past the end
  of an episode are masked there (the reference code feeds a termination token instead).
* Attention: causal; no token attends to a value token (the reference code's mask).
* Planning: beam search from the current state alone. The paper conditions on up to 5 past transitions
  (``max_context_transitions``); offrl's policies see one observation at a time, so the context here is the
  current state (a documented simplification).

Settings, the paper's (its config/offline.py, locomotion) against offrl's defaults, scaled down to fit a 2-core
CPU (planning time per action: benchmarks/tt_planning.py, docs/metrics.md):

    =========================  =================  ================
    setting                    paper              here (default)
    =========================  =================  ================
    bins per dimension N       100                100
    layers x heads x width     4 x 4 x 128        2 x 4 x 64
    training window            10 transitions     3 transitions
    dropout                    0.1                0.1
    AdamW lr, betas, decay     6e-4, (.9,.95), .1 same, constant lr
    gradient-norm clip         1.0                1.0
    planning horizon           15 (5 some tasks)  3
    beam width x expansions    128 x 2            16 x 2
    action sampling            cdf 0.6            cdf 0.6
    state, reward, value       most likely token  most likely token
    planning context           5 transitions      the current state
    =========================  =================  ================

The learning rate stays constant (the reference warms it up over one epoch and decays it with a cosine over
twenty, which a resumable run of unknown length cannot know in advance). Beam search needs the model's position
embeddings to cover the plan, so ``horizon <= context_transitions`` (the reference crops the context instead).

Workflow metrics (docs/metrics.md, "Trajectory Transformer"): the next-token cross-entropy of held-out sequences
per modality (``loss_states``, ``loss_actions``, ``loss_rewards``, ``loss_values``; nats per token), over all
tokens (``token_loss``) and its negative ``token_log_likelihood``, the curve the diagnosis reads: like a
validation loss, it rises and then falls when the model overfits (the supervised analogue of Metric 3.1), and
the checkpoint at its held-out peak is selected. ``action_mse``: the teacher-forced most likely action against
the data's. The model has no Q-function, so the Q-range rules of the diagnosis do not apply.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from offrl.networks.trajectory_transformer import (
    PlannerSettings,
    discretize,
    fit_discretizer,
    model_of,
    plan,
)

Batch = dict[str, jnp.ndarray]

STATE_OBSERVATIONS_ONLY = True
"""Image observations are refused before training (`offrl train --obs state`): the tokens are state features."""


@dataclasses.dataclass(frozen=True)
class TTConfig:
    """Hyperparameters of the Trajectory Transformer (Janner et al. 2021; scaled down for a CPU, see the module
    docstring for the paper's values)."""

    num_bins: int = 100
    """Bins per dimension N (the paper's 100)."""
    discretizer: Literal["quantile", "uniform"] = "quantile"
    """Per-dimension bins: ``quantile`` (the paper's: equal shares of the training values) or ``uniform`` (equal
    widths between the training minimum and maximum)."""
    context_transitions: int = 3
    """Transitions per training window (the paper: 10). Tokens per window: this x (obs_dim + act_dim + 2)."""
    num_layers: int = 2
    """Transformer blocks (the paper: 4)."""
    num_heads: int = 4
    """Attention heads per block (the paper: 4)."""
    embed_dim: int = 64
    """Embedding width, divisible by num_heads (the paper: 128, 32 per head)."""
    dropout: float = 0.1
    """Dropout on embeddings, attention weights and residual branches while training (the paper's 0.1)."""
    learning_rate: float = 6e-4
    """AdamW learning rate, constant (the paper's peak rate)."""
    weight_decay: float = 0.1
    """AdamW weight decay of the matrix weights (not biases, LayerNorm or embeddings), the paper's 0.1."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (the paper's 1.0)."""
    action_weight: float = 5.0
    """Loss weight of action tokens (the paper's 5; state tokens weigh 1)."""
    reward_weight: float = 1.0
    """Loss weight of reward tokens."""
    value_weight: float = 1.0
    """Loss weight of value tokens."""
    gamma: float = 0.99
    """Discount of the values (returns after each reward) and of the planner's score, in (0, 1)."""
    horizon: int = 3
    """Planning horizon in transitions (the paper: 15), at most context_transitions."""
    beam_width: int = 16
    """Beams kept per planning step (the paper: 128)."""
    expand: int = 2
    """Action samples per beam and step (the paper's n_expand 2)."""
    action_cdf: float = 0.6
    """Action tokens are sampled after dropping the least likely tokens holding this much probability (the
    paper's cdf_act 0.6); 0 samples from the whole distribution."""
    plan_seed: int = 0
    """Key of the planner's action sampling (fixed: the policy is a deterministic function of the state)."""


def sequence_window(config: TTConfig) -> int:
    """Transitions per training window: `offrl train` then gives every batch the ``seq_*`` keys
    (:func:`offrl.training.train.make_batch`)."""
    return int(config.context_transitions)


def config_problems(config: TTConfig) -> list[str]:
    """Settings that cannot work, each as a sentence naming the flag and the fix (empty when all is well).

    Checked by ``offrl train`` before anything is written, and by :func:`init`."""
    problems = []
    for name in ("num_bins", "context_transitions", "num_layers", "num_heads", "embed_dim", "horizon",
                 "beam_width", "expand"):
        if getattr(config, name) < 1:
            problems.append(f"--tt.{name.replace('_', '-')} must be >= 1, got {getattr(config, name)}")
    if config.num_bins < 2:
        problems.append(f"--tt.num-bins must be >= 2, got {config.num_bins}")
    if config.num_heads >= 1 and config.embed_dim % config.num_heads:
        problems.append(f"--tt.embed-dim {config.embed_dim} must be divisible by --tt.num-heads {config.num_heads}")
    if config.horizon > config.context_transitions:
        problems.append(
            f"--tt.horizon {config.horizon} is longer than --tt.context-transitions {config.context_transitions}: "
            f"the model has no positions for the end of the plan; raise the context or shorten the horizon")
    if not 0.0 < config.gamma < 1.0:
        problems.append(f"--tt.gamma must be in (0, 1), got {config.gamma}")
    if not 0.0 <= config.action_cdf < 1.0:
        problems.append(f"--tt.action-cdf must be in [0, 1), got {config.action_cdf}")
    if not 0.0 <= config.dropout < 1.0:
        problems.append(f"--tt.dropout must be in [0, 1), got {config.dropout}")
    return problems


@flax.struct.dataclass
class TTState:
    step: jnp.ndarray  # () int32
    actor_params: Any  # {"model": transformer parameters, "discretizer": {"edges" (N+1, T), "centres" (N, T)}}
    actor_opt_state: Any  # of actor_params["model"] only: the bins are fitted to the data, not trained


def _settings(config: TTConfig) -> PlannerSettings:
    return PlannerSettings.of(config)


def _optimizer(config: TTConfig) -> optax.GradientTransformation:
    def decay_mask(params: Any) -> Any:  # matrices decay; biases, LayerNorm scales, embeddings do not
        flat = flax.traverse_util.flatten_dict(params)
        return flax.traverse_util.unflatten_dict({k: k[-1] in ("kernel", "head") for k in flat})

    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.adamw(config.learning_rate, b1=0.9, b2=0.95, weight_decay=config.weight_decay, mask=decay_mask),
    )


def init(config: TTConfig, obs_spec: Any, act_dim: int, key: jax.Array) -> TTState:
    """Fresh transformer parameters, a placeholder discretisation (uniform on [-1, 1]; `offrl train` fits the
    data's with :func:`fit_data`) and the optimiser state.

    Raises:
        ValueError: image observations, or a setting that cannot work (:func:`config_problems`).
    """
    if isinstance(obs_spec, dict):
        raise ValueError("the Trajectory Transformer models state observations only: train it with --obs state")
    problems = config_problems(config)
    if problems:
        raise ValueError("; ".join(problems))
    return _init(config, int(obs_spec) + act_dim + 2, key)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init(config: TTConfig, t_dim: int, key: jax.Array) -> TTState:
    # One compiled program: initialising op by op compiles every operation on its own (seconds on a CPU).
    params = model_of(_settings(config), t_dim).init(key, jnp.zeros((1, config.context_transitions * t_dim), jnp.int32))
    edges = jnp.tile(jnp.linspace(-1.0, 1.0, config.num_bins + 1)[:, None], (1, t_dim))
    actor = {"model": params, "discretizer": {"edges": edges, "centres": (edges[:-1] + edges[1:]) / 2}}
    return TTState(jnp.zeros((), jnp.int32), actor, _optimizer(config).init(params))


def transition_values(arrays: dict[str, Any]) -> Any:
    """The columns the tokens discretise, (..., T) = [observations, actions, reward, value], from arrays with
    ``observations``, ``actions``, ``rewards`` and ``next_mc_returns`` (the value V_t = G_(t+1), computed once on
    the host by `offrl train`: recomputing it in a compiled program can round it across a bin edge, and quantile
    edges are data values)."""
    xp = jnp if isinstance(arrays["rewards"], jax.Array) else np
    r, v = arrays["rewards"], arrays["next_mc_returns"]
    return xp.concatenate([arrays["observations"], arrays["actions"], r[..., None], v[..., None]], axis=-1)


def fit_data(state: TTState, data: dict[str, Any], config: TTConfig) -> TTState:
    """The state with its discretisation fitted to the training transitions ``data`` (host arrays of `offrl
    train`: normalised ``observations``, ``actions``, ``rewards``, ``next_mc_returns``)."""
    edges, centres = fit_discretizer(np.asarray(transition_values(data)), config.num_bins,
                                     config.discretizer)
    return state.replace(actor_params={**state.actor_params,
                                       "discretizer": {"edges": jnp.asarray(edges), "centres": jnp.asarray(centres)}})


def sequence_tokens(discretizer: dict[str, Any], batch: Batch, config: TTConfig):
    """Tokens (B, W*T) int32 of a batch's windows, their mask (B, W*T) (1 inside the episode) and the values
    they discretise (B, W*T)."""
    seq = {k: batch[f"seq_{k}"] for k in ("observations", "actions", "rewards", "next_mc_returns")}
    x = transition_values(seq)  # (B, W, T)
    tokens = discretize(x, discretizer["edges"])
    b, w, t = tokens.shape
    mask = jnp.broadcast_to(batch["seq_mask"][..., None], (b, w, t))
    return tokens.reshape(b, w * t), mask.reshape(b, w * t), x.reshape(b, w * t)


def _terms(model_params: Any, state: TTState, batch: Batch, config: TTConfig, key: jax.Array | None):
    """Teacher-forced next-token cross-entropies: (weighted loss, per-window metrics (B,))."""
    obs_dim, act_dim = batch["observations"].shape[-1], batch["actions"].shape[-1]
    t_dim = obs_dim + act_dim + 2
    tokens, mask, values = sequence_tokens(state.actor_params["discretizer"], batch, config)
    model = model_of(_settings(config), t_dim, config.dropout)
    rngs = {} if key is None else {"dropout": key}
    logits, _ = model.apply(model_params, tokens[:, :-1], 0, None, key is None, rngs=rngs)
    target, m = tokens[:, 1:], mask[:, 1:]
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), target[..., None], axis=-1)[..., 0]
    dims = jnp.arange(1, tokens.shape[1]) % t_dim
    modality = {
        "states": dims < obs_dim,
        "actions": (dims >= obs_dim) & (dims < obs_dim + act_dim),
        "rewards": dims == obs_dim + act_dim,
        "values": dims == obs_dim + act_dim + 1,
    }
    weight = (modality["states"] + config.action_weight * modality["actions"]
              + config.reward_weight * modality["rewards"] + config.value_weight * modality["values"])
    valid = jnp.maximum(m.sum(-1), 1.0)
    out = {f"loss_{k}": (ce * m * sel).sum(-1) / jnp.maximum((m * sel).sum(-1), 1.0) for k, sel in modality.items()}
    out["token_loss"] = (ce * m).sum(-1) / valid
    out["token_log_likelihood"] = -out["token_loss"]
    # The teacher-forced most likely action tokens, reconstructed, against the data's actions.
    pred = state.actor_params["discretizer"]["centres"][jnp.argmax(logits, -1), dims]
    act = m * modality["actions"]
    out["action_mse"] = ((pred - values[:, 1:]) ** 2 * act).sum(-1) / jnp.maximum(act.sum(-1), 1.0)
    loss = (ce * m * weight).sum() / jnp.maximum(m.sum(), 1.0)
    return loss, out


def update(state: TTState, batch: Batch, key: jax.Array, config: TTConfig) -> tuple[TTState, dict]:
    """One AdamW step on the weighted next-token cross-entropy of the batch's windows (with dropout).

    Returns the new state and the minibatch means of ``loss`` (the weighted objective), ``token_loss``,
    ``token_log_likelihood`` and ``loss_states`` / ``loss_actions`` / ``loss_rewards`` / ``loss_values``."""
    (loss, parts), grads = jax.value_and_grad(_terms, has_aux=True)(
        state.actor_params["model"], state, batch, config, key)
    updates, opt_state = _optimizer(config).update(grads, state.actor_opt_state, state.actor_params["model"])
    actor = {**state.actor_params, "model": optax.apply_updates(state.actor_params["model"], updates)}
    return state.replace(step=state.step + 1, actor_params=actor, actor_opt_state=opt_state), {
        "loss": loss, **{k: v.mean() for k, v in parts.items()}}


def evaluate(state: TTState, batch: Batch, key: jax.Array, config: TTConfig) -> dict[str, jnp.ndarray]:
    """Per-window workflow metrics (B,) without dropout: ``loss_states``, ``loss_actions``, ``loss_rewards``,
    ``loss_values`` (mean next-token cross-entropy of each modality's tokens in the window, nats),
    ``token_loss`` (all tokens, unweighted), ``token_log_likelihood`` = -token_loss, and ``action_mse``."""
    _, out = _terms(state.actor_params["model"], state, batch, config, None)
    return out


def deterministic_action(actor_params: Any, observations: jnp.ndarray, act_dim: int, config: TTConfig):
    """The first action of the best beam-search plan from normalised observations (B, obs_dim) alone ->
    (B, act_dim), reconstructed from its bins (:func:`offrl.networks.trajectory_transformer.plan`)."""
    return plan(actor_params, observations, act_dim, _settings(config))[0]


def param_counts(state: TTState) -> dict[str, int]:
    """Trained parameters (the discretisation's edges and centres are fitted, not trained)."""
    return {"transformer": int(sum(x.size for x in jax.tree.leaves(state.actor_params["model"])))}
