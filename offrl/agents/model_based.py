"""Model-based offline RL: what MOPO (Yu et al. 2020) and COMBO (Yu et al. 2021) share.

A run has two phases, both inside the pure ``update(state, batch, key, config)``:

1. **The model phase** (steps ``0 .. model_steps``): the probabilistic ensemble of
   :mod:`offrl.networks.dynamics` fits ``[s' - s, r]`` of the training transitions by Gaussian NLL (PETS Eq. 2),
   with MBPO's weight decay per layer. ``offrl train`` calls :func:`select_model` after every compiled chunk of
   this phase with the *held-out episodes*: each member keeps the snapshot of its lowest held-out MSE (MBPO's
   early stopping, per member) and the ``num_elites`` best members become the elites. The model's own workflow
   (:func:`evaluate`: ``model_nll``, ``model_mse`` and the ``model_rollout_mse`` of open-loop k-step rollouts
   against real trajectories, train and held-out) is logged at every checkpoint; see
   :func:`offrl.workflow.diagnosis.diagnose_model`.
2. **The policy phase**: every gradient step rolls the selected model out for ``rollout_horizon`` steps from
   ``rollout_batch_size`` training states of the minibatch under the current policy, writes the transitions into
   the *model replay buffer* (a fixed-size ring buffer inside the agent state, :func:`refill_buffer`), and trains
   SAC's critics and actor on a mixture of ``real_ratio`` real transitions and ``1 - real_ratio`` transitions drawn
   uniformly from that buffer (:func:`mixed_batch`):

   - MOPO (Yu et al. 2020, Eq. 10, Algorithm 2): model rewards penalised by the uncertainty,
     ``r~ = r^ - lambda max_i ||sigma_i(s, a)||_2`` over every member of the ensemble, the norm of the predicted
     standard deviations of ``[r, s' - s]`` (``penalty_coef`` = lambda; :func:`offrl.networks.dynamics.mopo_penalty`
     says why this, not the paper's Frobenius norm of the covariance); no conservative term.
   - COMBO (Yu et al. 2021, Eq. 2): no penalty; ``beta (E_{s,a~rho} Q(s, a) - E_{s,a~D} Q(s, a))`` with the
     push-down on the model's state-actions rho (the model rows of the mixture, the soft maximum over actions
     estimated by CQL's log-sum-exp at those states) and the push-up on the dataset's state-actions
     (``conservative_weight`` = beta; :func:`critic_terms`).

**The model replay buffer** (MOPO's ``_model_pool``, tianheyu927/mopo ``mopo/algorithms/mopo.py``, after MBPO):
MOPO rolls out ``rollout_batch_size`` = 50,000 dataset states every ``model_train_freq`` = 1,000 gradient steps
(``examples/config/d4rl/base.py``) and keeps the last ``model_retain_epochs`` = 5 epochs of 1,000 steps of
rollouts, ``5 * 50,000 * h`` transitions; each minibatch draws its model part uniformly from that pool. offrl rolls
out 50 states at *every* step (the same 50 rollouts per gradient step on average) and keeps the last
``model_retain_steps`` = 5,000 steps of them: the same pool size, the same rollouts' age, the same reuse of a model
transition. Deviation: rollouts in 50s at each step instead of 50,000 at once every 1,000 steps, because the
compiled update sees only its minibatch (the dataset is not in the agent's state), and the pool is then refreshed
by the policy of that step instead of the policy of up to 1,000 steps before. As MOPO, only transitions up to and
including a rollout's termination enter the pool. The buffer is part of the state, so it is saved in every
checkpoint and a resumed run continues exactly (its size: ``model_retain_steps * rollout_batch_size *
rollout_horizon`` rows of ``2 obs_dim + act_dim + 3`` float32, about 425 MB for 39-dimensional states, 4 actions
and h = 5; lower ``model_retain_steps`` to save memory and disk).

**Termination derived from the data.** Sparse-reward robot logs have no learned termination: if the training
transitions have ``terminals`` and every terminal transition's reward lies above every non-terminal reward (a task
that ends at success), a model transition terminates when its predicted reward passes the midpoint between the two
(``fit_data``); otherwise (no terminals, e.g. MetaWorld's time limits, or terminals the reward does not separate)
model rollouts never terminate (MOPO's code uses each task's hand-written ``termination_fn``).

**Model rewards are not clipped** (as MOPO's ``FakeEnv.step``, ``mopo/models/fake_env.py``). ``clip_model_rewards``
clips each sampled model reward to the training rewards' range; it is off by default: with 0/1 rewards a model
that predicts 0 samples ``N(0, sigma^2)`` rewards, and clipping that draw at 0 keeps its positive half, a background
reward of ``sigma / sqrt(2 pi)`` on every model step (docs/model-based.md measured it outweighing the success
reward over the horizon).

Shapes: observations (B, obs_dim) float32 (normalised by ``offrl train``), actions (B, act_dim) in [-1, 1].
State observations only.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Literal

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from offrl.agents import common
from offrl.agents.cql import cql_penalty, td_target
from offrl.networks import CriticEnsemble, TanhGaussianActor, sample_tanh_gaussian
from offrl.networks import dynamics as dyn

Batch = dict[str, jnp.ndarray]
Metrics = dict[str, jnp.ndarray]

STATE_OBSERVATIONS_ONLY = True

# MBPO's weight decay of the model's five weight matrices (4 hidden layers and the output), l2_loss = sum(w^2) / 2.
MBPO_WEIGHT_DECAYS = (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4)


@dataclasses.dataclass(frozen=True)
class ModelBasedConfig(common.ActorCriticConfig):
    """Hyperparameters shared by MOPO and COMBO; their own defaults are in :mod:`offrl.agents.mopo` and
    :mod:`offrl.agents.combo`."""

    FLAGS: ClassVar[str] = "--mopo"  # the command-line group of the algorithm, for error messages
    init_temperature: float = 0.1
    """Initial entropy temperature (as offrl's CQL, for 0/1 rewards: see ``CQLConfig.init_temperature``)."""
    num_members: int = 7
    """Members of the dynamics ensemble (MOPO and MBPO: 7)."""
    num_elites: int = 5
    """Members with the lowest held-out MSE that roll out (MOPO and MBPO: 5)."""
    model_hidden_dims: tuple[int, ...] = (200, 200, 200, 200)
    """Hidden widths of each member (MOPO: 4 layers of 200, swish)."""
    model_lr: float = 1e-3
    """Adam learning rate of the model (MOPO and MBPO)."""
    model_weight_decay: bool = True
    """MBPO's weight decay per layer (2.5e-5 .. 1e-4, :data:`MBPO_WEIGHT_DECAYS`); other depths use 5e-5."""
    model_steps: int = 10_000
    """Gradient steps of the model before the policy's (the model phase). MOPO trains the model until its
    held-out loss stops improving; offrl trains a fixed number of steps and keeps each member's best held-out
    snapshot, which is the same early stopping without a data-dependent length."""
    rollout_horizon: int = 5
    """Model steps per rollout h (MOPO and COMBO: 5 on most D4RL tasks, 1 on some)."""
    rollout_batch_size: int = 50
    """Rollouts started per policy-phase gradient step, from as many minibatch rows after the real part (MOPO:
    50,000 every 1,000 steps, ``examples/config/d4rl/base.py`` of tianheyu927/mopo; module docstring)."""
    model_retain_steps: int = 5_000
    """Gradient steps of rollouts the model replay buffer keeps: its capacity is ``model_retain_steps *
    rollout_batch_size * rollout_horizon`` transitions (MOPO: ``model_retain_epochs`` 5 of 1,000 steps)."""
    real_ratio: float = 0.05
    """Fraction of real transitions in each minibatch; the rest is drawn from the model replay buffer (MOPO/MBPO
    0.05; COMBO f = 0.5)."""
    clip_model_rewards: bool = False
    """Clip each sampled model reward to the training rewards' range. Off, as in MOPO's and MBPO's code: clipping a
    zero-mean Gaussian draw at 0 adds a positive background reward to every model step (module docstring); offrl's
    earlier MOPO/COMBO results (docs/model-based.md) were measured with it on."""
    penalty_coef: float = 1.0
    """MOPO's lambda (Eq. 10); 0 turns the penalty off (COMBO)."""
    conservative_weight: float = 0.0
    """COMBO's beta (Eq. 2); 0 turns the regularizer off (MOPO)."""
    num_action_samples: int = 1
    """COMBO: actions per state and proposal for the log-sum-exp (as offrl's CQL)."""
    push_down: Literal["model", "mixture"] = "model"
    """COMBO: the states whose Q is pushed down. ``model``: the model rows of the mixture, Eq. 2's rho (Yu et al.
    2021). ``mixture``: every row, real ones included (offrl's earlier COMBO, kept to reproduce those results)."""
    deterministic_backup: bool = True
    """Leave the entropy term out of the TD target (CQL's reference code; SAC, and MOPO, keep it: False)."""
    rollout_error_steps: int = 5
    """k of the model's k-step open-loop rollout error against real trajectories (``model_rollout_mse``)."""


def config_problems(config: ModelBasedConfig) -> list[str]:
    """Settings that cannot work, each naming the flag and the fix (checked by ``offrl train`` and :func:`init`)."""
    p: list[str] = []
    if config.num_members < 1:
        p.append(f"{config.FLAGS}.num-members must be >= 1, got {config.num_members}")
    if not 1 <= config.num_elites <= config.num_members:
        p.append(f"{config.FLAGS}.num-elites must be in [1, num-members={config.num_members}], got {config.num_elites}")
    for name in ("model_steps", "rollout_horizon", "rollout_error_steps", "num_action_samples", "rollout_batch_size",
                 "model_retain_steps"):
        if getattr(config, name) < 1:
            p.append(f"{config.FLAGS}.{name.replace('_', '-')} must be >= 1, got {getattr(config, name)}")
    if not 0.0 < config.real_ratio < 1.0:
        p.append(f"{config.FLAGS}.real-ratio must be in (0, 1) (real and model transitions both), got {config.real_ratio}")
    if config.penalty_coef < 0 or config.conservative_weight < 0:
        p.append(f"{config.FLAGS}.penalty-coef and {config.FLAGS}.conservative-weight must be >= 0")
    if config.push_down not in ("model", "mixture"):
        p.append(f"{config.FLAGS}.push-down must be 'model' or 'mixture', got {config.push_down!r}")
    return p


def split_sizes(config: ModelBasedConfig, batch_size: int) -> tuple[int, int, int]:
    """``(n_real, n_starts, n_model)`` of a minibatch of ``batch_size`` rows: the first ``n_real`` rows are the real
    part, the next ``n_starts`` = ``rollout_batch_size`` rows start this step's rollouts, and ``n_model`` =
    ``batch_size - n_real`` rows are drawn from the model replay buffer.

    Raises:
        ValueError: the batch leaves no row for model transitions, or cannot hold the rollout starts after the
            real part.
    """
    n_real = max(1, round(config.real_ratio * batch_size))
    n_model = batch_size - n_real
    if n_model < 1:
        raise ValueError(f"--batch-size {batch_size} is too small for real-ratio {config.real_ratio}: it leaves no "
                         f"row for model transitions; raise the batch size")
    if config.rollout_batch_size > n_model:
        raise ValueError(f"{config.FLAGS}.rollout-batch-size {config.rollout_batch_size} exceeds the {n_model} rows "
                         f"of a --batch-size {batch_size} minibatch after its real part: lower it or raise the batch "
                         f"size")
    return n_real, config.rollout_batch_size, n_model


def buffer_capacity(config: ModelBasedConfig) -> int:
    """Transitions the model replay buffer holds: ``model_retain_steps * rollout_batch_size * rollout_horizon``."""
    return int(config.model_retain_steps) * int(config.rollout_batch_size) * int(config.rollout_horizon)


BUFFER_KEYS = ("observations", "actions", "rewards", "terminals", "next_observations", "penalty")


@flax.struct.dataclass
class ModelBasedState:
    """Everything that changes during training; a pytree, checkpointed as one object."""

    step: jnp.ndarray  # () int32, gradient steps taken (model and policy)
    model_params: Any  # the ensemble being trained (model phase)
    model_opt_state: Any
    selected_model_params: Any  # each member's snapshot of lowest held-out MSE: what the policy phase rolls out
    member_heldout_mse: jnp.ndarray  # (E,) float32, the held-out MSE of each selected snapshot (inf before any)
    elite_idx: jnp.ndarray  # (num_elites,) int32
    reward_range: jnp.ndarray  # (2,) float32, [min, max] of the training rewards
    terminal_reward: jnp.ndarray  # () float32: model rewards above it terminate; +inf: never
    critic_params: Any
    target_critic_params: Any
    actor_params: Any
    log_temperature: jnp.ndarray
    critic_opt_state: Any
    actor_opt_state: Any
    temperature_opt_state: Any
    model_buffer: dict  # the model replay buffer: BUFFER_KEYS -> (C, ...) float32, C = buffer_capacity(config)
    buffer_ptr: jnp.ndarray  # () int32, the next row to write (rows wrap around: a ring buffer)
    buffer_size: jnp.ndarray  # () int32, rows filled so far (at most C)


def _networks(config: ModelBasedConfig, obs_dim: int, act_dim: int):
    return (
        dyn.GaussianEnsemble(config.num_members, obs_dim + 1, tuple(config.model_hidden_dims)),
        CriticEnsemble(config.critic_hidden_dims, num_critics=config.num_critics),
        TanhGaussianActor(config.actor_hidden_dims, act_dim=act_dim),
    )


def _optimizers(config: ModelBasedConfig):
    return (optax.adam(config.model_lr), optax.adam(config.critic_lr), optax.adam(config.actor_lr),
            optax.adam(config.temperature_lr))


def init(config: ModelBasedConfig, obs_spec: common.ObsSpec, act_dim: int, key: jax.Array) -> ModelBasedState:
    """Fresh model, critics, actor and optimiser states.

    Raises:
        ValueError: image observations, or a setting that cannot work (:func:`config_problems`).
    """
    if isinstance(obs_spec, dict):
        raise ValueError("model-based agents model state observations only: train with --obs state")
    problems = config_problems(config)
    if problems:
        raise ValueError("; ".join(problems))
    obs_dim = int(obs_spec)
    model, critic, actor = _networks(config, obs_dim, act_dim)
    k_model, k_critic, k_actor = jax.random.split(key, 3)
    obs, act = jnp.zeros((1, obs_dim), jnp.float32), jnp.zeros((1, act_dim), jnp.float32)
    model_params = model.init(k_model, obs, act)
    critic_params = critic.init(k_critic, obs, act)
    actor_params = actor.init(k_actor, obs)
    log_temperature = jnp.asarray(math.log(config.init_temperature), jnp.float32)
    model_opt, critic_opt, actor_opt, temp_opt = _optimizers(config)
    return ModelBasedState(
        step=jnp.zeros((), jnp.int32),
        model_params=model_params,
        model_opt_state=model_opt.init(model_params),
        selected_model_params=model_params,
        member_heldout_mse=jnp.full((config.num_members,), jnp.inf, jnp.float32),
        elite_idx=jnp.arange(config.num_elites, dtype=jnp.int32),
        reward_range=jnp.array([0.0, 1.0], jnp.float32),
        terminal_reward=jnp.asarray(jnp.inf, jnp.float32),
        critic_params=critic_params,
        target_critic_params=critic_params,
        actor_params=actor_params,
        log_temperature=log_temperature,
        critic_opt_state=critic_opt.init(critic_params),
        actor_opt_state=actor_opt.init(actor_params),
        temperature_opt_state=temp_opt.init(log_temperature),
        model_buffer=empty_buffer(buffer_capacity(config), obs_dim, act_dim),
        buffer_ptr=jnp.zeros((), jnp.int32),
        buffer_size=jnp.zeros((), jnp.int32),
    )


def empty_buffer(capacity: int, obs_dim: int, act_dim: int) -> dict[str, jnp.ndarray]:
    """A model replay buffer of ``capacity`` zero rows: observations and next_observations (C, obs_dim), actions
    (C, act_dim), rewards (the penalised reward), terminals and penalty (C,), all float32."""
    dims = {"observations": (obs_dim,), "actions": (act_dim,), "next_observations": (obs_dim,)}
    return {k: jnp.zeros((capacity, *dims.get(k, ())), jnp.float32) for k in BUFFER_KEYS}


def terminal_rule(rewards: np.ndarray, terminals: np.ndarray) -> float:
    """The reward above which a model transition terminates, derived from the data (module docstring): the
    midpoint between the largest non-terminal and the smallest terminal reward when every terminal transition's
    reward lies above every other; +inf (never terminate) otherwise. (N,), (N,) -> float."""
    terminals = np.asarray(terminals, bool)
    rewards = np.asarray(rewards, np.float64)
    if not terminals.any() or terminals.all():
        return math.inf
    low, high = rewards[~terminals].max(), rewards[terminals].min()
    return float((low + high) / 2) if high > low else math.inf


def fit_data(state: ModelBasedState, data: dict[str, Any], config: ModelBasedConfig) -> ModelBasedState:
    """The reward range and the termination rule of the training transitions (host arrays of ``offrl train``)."""
    r = np.asarray(data["rewards"], np.float32)
    return state.replace(
        reward_range=jnp.array([r.min(), r.max()], jnp.float32),
        terminal_reward=jnp.asarray(terminal_rule(r, data["terminals"]), jnp.float32),
    )


def sequence_window(config: ModelBasedConfig) -> int:
    """Transitions per window of the batches (``seq_*`` keys, :func:`offrl.training.train.make_batch`): the k-step
    rollout error compares k predicted states with the next k real ones."""
    return int(config.rollout_error_steps) + 1


def model_targets(batch: Batch) -> jnp.ndarray:
    """What the model predicts: ``[s' - s, r]``, (B, obs_dim + 1)."""
    return jnp.concatenate([batch["next_observations"] - batch["observations"], batch["rewards"][:, None]], -1)


def _weight_decay(model_params: Any, num_layers: int) -> jnp.ndarray:
    decays = MBPO_WEIGHT_DECAYS if num_layers == len(MBPO_WEIGHT_DECAYS) else (5e-5,) * num_layers
    member = model_params["params"]["Vmap_Member_0"]
    return sum(d * 0.5 * jnp.sum(member[f"Dense_{i}"]["kernel"] ** 2) for i, d in enumerate(decays))


def model_loss(model_params: Any, batch: Batch, config: ModelBasedConfig) -> tuple[jnp.ndarray, Metrics]:
    """PETS's NLL with the bound term (Chua et al. 2018, Eq. 2; :func:`offrl.networks.dynamics.ensemble_loss`) plus
    MBPO's weight decay, every member on the same minibatch.

    Args: ``batch`` with ``observations``, ``next_observations`` (B, obs_dim) float32 (normalised), ``actions``
    (B, act_dim) in [-1, 1], ``rewards`` (B,). Returns the scalar loss and scalar ``model_loss``, ``model_nll``,
    ``model_mse`` (means over members, rows and the obs_dim + 1 outputs ``[s' - s, r]``)."""
    obs_dim = batch["observations"].shape[-1]
    model = _networks(config, obs_dim, batch["actions"].shape[-1])[0]
    loss, parts = dyn.ensemble_loss(model_params, model, batch["observations"], batch["actions"], model_targets(batch))
    if config.model_weight_decay:
        loss = loss + _weight_decay(model_params, len(config.model_hidden_dims) + 1)
    return loss, {"model_loss": loss, "model_nll": parts["nll"].mean(), "model_mse": parts["mse"].mean()}


def model_rollout(state: ModelBasedState, starts: jnp.ndarray, key: jax.Array, config: ModelBasedConfig,
                  act_dim: int) -> dict[str, jnp.ndarray]:
    """``rollout_horizon`` steps of the selected model's elites from ``starts`` (n, obs_dim) under the current
    policy (MOPO's ``_rollout_model`` and ``FakeEnv.step``, tianheyu927/mopo): transitions (h * n, ...), step by
    step, with MOPO's penalised reward ``r^ - lambda u(s, a)`` (Eq. 10; ``u`` of every member,
    :func:`offrl.networks.dynamics.mopo_penalty`; ``r^`` clipped to the data's range first only with
    ``clip_model_rewards``), ``terminals`` by :func:`terminal_rule`, and ``weights`` 1 up to and including a
    rollout's termination and 0 after it. Also ``penalty`` (h * n,), u(s, a). No gradients flow."""
    model, _, actor = _networks(config, starts.shape[-1], act_dim)
    s = starts
    alive = jnp.ones((starts.shape[0],), jnp.float32)
    out: dict[str, list] = {k: [] for k in (*BUFFER_KEYS, "weights")}
    for t in range(config.rollout_horizon):
        k_act, k_step = jax.random.split(jax.random.fold_in(key, t))
        mean, log_std = actor.apply(state.actor_params, s)
        a, _ = sample_tanh_gaussian(k_act, mean, log_std)
        mu, log_var = model.apply(state.selected_model_params, s, a)
        s_next, r = dyn.sample_step(k_step, mu, log_var, state.elite_idx, s)
        if config.clip_model_rewards:  # off by default (ModelBasedConfig.clip_model_rewards)
            r = jnp.clip(r, state.reward_range[0], state.reward_range[1])
        u = dyn.mopo_penalty(log_var)  # every member, as MOPO's FakeEnv.step (not the elites alone)
        term = (r > state.terminal_reward).astype(jnp.float32)
        for k, v in (("observations", s), ("actions", a), ("rewards", r - config.penalty_coef * u),
                     ("terminals", term), ("next_observations", s_next), ("weights", alive), ("penalty", u)):
            out[k].append(v)
        alive = alive * (1.0 - term)
        s = s_next
    return {k: jax.lax.stop_gradient(jnp.concatenate(v)) for k, v in out.items()}


def write_buffer(state: ModelBasedState, rows: dict[str, jnp.ndarray]) -> ModelBasedState:
    """Appends the rows of ``rows`` whose ``weights`` is 1 to the model replay buffer, in order, from
    ``buffer_ptr`` on, wrapping around at the capacity C (the oldest rows are overwritten first, as MBPO's
    ``SimpleReplayPool``); rows of weight 0 (after a rollout terminated) are not stored, as MOPO stores only live
    rollouts. ``rows``: :data:`BUFFER_KEYS` and ``weights``, each (m, ...) with m <= C."""
    cap = state.model_buffer["rewards"].shape[0]
    keep = rows["weights"] > 0
    order = jnp.cumsum(keep.astype(jnp.int32)) - 1  # position among the kept rows
    pos = jnp.where(keep, (state.buffer_ptr + order) % cap, cap)  # cap: out of range, dropped
    buf = {k: state.model_buffer[k].at[pos].set(rows[k].astype(jnp.float32), mode="drop") for k in BUFFER_KEYS}
    count = keep.sum().astype(jnp.int32)
    return state.replace(model_buffer=buf, buffer_ptr=(state.buffer_ptr + count) % cap,
                         buffer_size=jnp.minimum(state.buffer_size + count, cap))


def refill_buffer(state: ModelBasedState, batch: Batch, key: jax.Array, config: ModelBasedConfig):
    """This step's rollouts (:func:`model_rollout`) from the ``rollout_batch_size`` minibatch rows after the real
    part (:func:`split_sizes`), written into the model replay buffer (:func:`write_buffer`): ``(state, rollouts)``."""
    n_real, n_starts, _ = split_sizes(config, batch["rewards"].shape[0])
    rolled = model_rollout(state, batch["observations"][n_real:n_real + n_starts], key, config,
                           batch["actions"].shape[-1])
    return write_buffer(state, rolled), rolled


def mixed_batch(state: ModelBasedState, batch: Batch, key: jax.Array, config: ModelBasedConfig):
    """The policy phase's minibatch after this step's refill (:func:`refill_buffer`): ``n_real`` real transitions
    then ``n_model`` transitions drawn uniformly (with replacement) from the filled rows of the model replay buffer
    (MOPO's ``_training_batch``). Returns ``(state, mixed, rollouts)``: the state with the refilled buffer, the
    mixed batch (keys :data:`BUFFER_KEYS`, ``weights`` 1 and ``real`` 1 for real rows, each (B, ...)), and this
    step's rollouts."""
    k_roll, k_idx = jax.random.split(key)
    n_real, _, n_model = split_sizes(config, batch["rewards"].shape[0])
    state, rolled = refill_buffer(state, batch, k_roll, config)
    idx = jax.random.randint(k_idx, (n_model,), 0, jnp.maximum(state.buffer_size, 1))
    model = {k: state.model_buffer[k][idx] for k in BUFFER_KEYS}
    real = {k: batch[k][:n_real] for k in ("observations", "actions", "rewards", "terminals", "next_observations")}
    real["penalty"] = jnp.zeros((n_real,), jnp.float32)
    mixed = {k: jnp.concatenate([real[k].astype(jnp.float32), model[k]]) for k in BUFFER_KEYS}
    mixed["weights"] = jnp.ones((n_real + n_model,), jnp.float32)
    mixed["real"] = jnp.concatenate([jnp.ones((n_real,)), jnp.zeros((n_model,))]).astype(jnp.float32)
    return state, mixed, rolled


def _wmean(v: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
    return jnp.sum(v * w, axis=-1) / jnp.maximum(jnp.sum(w), 1.0)


def critic_terms(critic_params: Any, target_critic_params: Any, actor_params: Any, log_temperature: jnp.ndarray,
                 batch: Batch, key: jax.Array, config: ModelBasedConfig) -> tuple[jnp.ndarray, Metrics]:
    """The critic loss on a (mixed) batch and its per-transition parts.

    ``batch``: transitions with ``weights`` (B,) and ``real`` (B,) 1 for dataset rows. The TD term is the
    weighted mean squared Bellman error over all rows, the target ``r + gamma (1 - terminal) min_i Qbar_i(s', a')``
    (``a' ~ pi(.|s')``, minus the entropy term unless ``deterministic_backup``). COMBO's regularizer (Yu et al.
    2021, Eq. 2), ``beta (E_{s,a~rho} Q(s, a) - E_{s,a~D} Q(s, a))``:
    ``beta (weighted mean over the model rows (real = 0) of LSE_a Q(s, a) - weighted mean over the real rows of
    Q(s, a))``. rho is the model's state-action distribution d^pi_M(s) pi(a|s); its push-down is estimated as CQL's
    soft maximum over actions at the model states, the log-sum-exp over uniform actions and the policy's actions at
    s and s' (:func:`offrl.agents.cql.cql_penalty`), which covers the rollout's own action, itself a draw of pi at s.
    The authors' COMBO code is not public; OfflineRL-Kit's ``COMBOPolicy`` with ``rho_s="model"``
    (yihaosun1124/OfflineRL-Kit, ``offlinerlkit/policy/model_based/combo.py``) computes the same push-down and
    push-up. With ``push_down="mixture"`` the log-sum-exp is averaged over every row, real ones included
    (offrl's earlier COMBO; OfflineRL-Kit's ``rho_s="mix"``). Summed over critics.

    Returns ``(loss, parts)``, parts (B,) averaged over critics: ``q_data``, ``td_error``, ``cql_regularizer``
    (LSE - Q(s, a) of each row; COMBO only, ``conservative_weight`` > 0), ``q_policy``, ``target_q``,
    ``target_q_sq``.
    """
    act_dim = batch["actions"].shape[-1]
    _, critic, actor = _networks(config, batch["observations"].shape[-1], act_dim)
    obs, act, next_obs = batch["observations"], batch["actions"], batch["next_observations"]
    w, real = batch["weights"], batch["real"]
    k_next, k_rand, k_pi, k_pi_next = jax.random.split(key, 4)
    n, b = config.num_action_samples, act.shape[0]

    mean, log_std = actor.apply(actor_params, obs)
    next_mean, next_log_std = actor.apply(actor_params, next_obs)
    next_act, next_log_pi = sample_tanh_gaussian(k_next, next_mean, next_log_std)
    next_q = critic.apply(target_critic_params, next_obs, next_act).min(axis=0)
    if not config.deterministic_backup:
        next_q = next_q - jnp.exp(log_temperature) * next_log_pi
    target = jax.lax.stop_gradient(td_target(batch["rewards"], batch["terminals"], next_q, config.gamma))
    q = critic.apply(critic_params, obs, act)  # (C, B)
    sq_td = (q - target) ** 2
    loss = jnp.sum(_wmean(sq_td, w))

    pi_act, log_pi = sample_tanh_gaussian(k_pi, mean, log_std, n)
    conservative = common.term_on(config.conservative_weight)
    if not conservative:
        # MOPO: no regularizer, so only the policy's own actions are scored (for q_policy), not the 3n proposals.
        q_policy = jax.vmap(lambda a: critic.apply(critic_params, obs, a), out_axes=1)(pi_act)  # (C, n, B)
        extra = {}
    else:
        random_act = jax.random.uniform(k_rand, (n, b, act_dim), jnp.float32, -1.0, 1.0)
        pi_next_act, log_pi_next = sample_tanh_gaussian(k_pi_next, next_mean, next_log_std, n)
        sampled = jnp.concatenate([random_act, pi_act, pi_next_act], axis=0)  # (3n, B, A)
        q_sampled = jax.vmap(lambda a: critic.apply(critic_params, obs, a), out_axes=1)(sampled)  # (C, 3n, B)
        q_random, q_policy, q_next_policy = jnp.split(q_sampled, 3, axis=1)
        lse = cql_penalty(jnp.zeros_like(q), q_random, q_policy, q_next_policy, jax.lax.stop_gradient(log_pi),
                          jax.lax.stop_gradient(log_pi_next), act_dim)  # (C, B): the log-sum-exp alone
        down = w * (1.0 - real) if config.push_down == "model" else w  # Eq. 2's rho: the model's rows
        reg = _wmean(lse, down) - _wmean(q, w * real)
        loss = loss + config.conservative_weight * jnp.sum(reg)
        extra = {"cql_regularizer": (lse - q).mean(axis=0)}
    parts = {
        "q_data": q.mean(axis=0),
        "td_error": sq_td.mean(axis=0),
        **extra,
        "q_policy": q_policy.mean(axis=(0, 1)),
        "target_q": target,
        "target_q_sq": target**2,
    }
    return loss, parts


def actor_loss(actor_params: Any, critic_params: Any, log_temperature: jnp.ndarray, batch: Batch, key: jax.Array,
               config: ModelBasedConfig) -> tuple[jnp.ndarray, Metrics]:
    """SAC's actor loss ``E_w[temperature log pi(a|s) - min_i Q_i(s, a)]`` (Haarnoja et al. 2018, "Soft
    Actor-Critic Algorithms and Applications", the policy objective, with the clipped double-Q minimum),
    a ~ pi(.|s), over the rows of the mixed batch.

    Args: ``batch`` with ``observations`` (B, obs_dim) float32 and ``weights`` (B,) (0 after a model termination).
    Returns the scalar loss and the scalar weighted mean ``log_pi``."""
    _, critic, actor = _networks(config, batch["observations"].shape[-1], batch["actions"].shape[-1])
    mean, log_std = actor.apply(actor_params, batch["observations"])
    act, log_pi = sample_tanh_gaussian(key, mean, log_std)
    q_pi = critic.apply(critic_params, batch["observations"], act).min(axis=0)
    temperature = jnp.exp(jax.lax.stop_gradient(log_temperature))
    return _wmean(temperature * log_pi - q_pi, batch["weights"]), {"log_pi": _wmean(log_pi, batch["weights"])}


POLICY_METRICS = ("q_data", "td_error", "q_policy", "target_q", "critic_loss", "actor_loss",
                  "temperature_loss", "entropy_temperature", "entropy", "model_penalty", "model_reward",
                  "rollout_alive")
MODEL_METRICS = ("model_loss", "model_nll", "model_mse")


def policy_metrics(config: ModelBasedConfig) -> tuple[str, ...]:
    """The training metrics of the policy phase: COMBO's adds its regularizer."""
    return POLICY_METRICS + (("cql_regularizer",) if common.term_on(config.conservative_weight) else ())


def _model_update(state: ModelBasedState, batch: Batch, config: ModelBasedConfig):
    model_opt = _optimizers(config)[0]
    (_, metrics), grads = jax.value_and_grad(model_loss, has_aux=True)(state.model_params, batch, config)
    updates, opt_state = model_opt.update(grads, state.model_opt_state, state.model_params)
    state = state.replace(model_params=optax.apply_updates(state.model_params, updates), model_opt_state=opt_state)
    return state, {**metrics, **{k: jnp.zeros(()) for k in policy_metrics(config)}}


def _policy_update(state: ModelBasedState, batch: Batch, key: jax.Array, config: ModelBasedConfig):
    _, critic_opt, actor_opt, temp_opt = _optimizers(config)
    k_roll, k_actor, k_critic = jax.random.split(key, 3)
    state, mixed, rolled = mixed_batch(state, batch, k_roll, config)
    target_entropy = common.target_entropy_of(config.target_entropy, batch["actions"].shape[-1])

    (a_loss, a_aux), a_grads = jax.value_and_grad(actor_loss, has_aux=True)(
        state.actor_params, state.critic_params, state.log_temperature, mixed, k_actor, config)
    a_updates, actor_opt_state = actor_opt.update(a_grads, state.actor_opt_state, state.actor_params)
    log_temperature, temperature_opt_state, t_loss = common.temperature_step(
        state.log_temperature, state.temperature_opt_state, a_aux["log_pi"], target_entropy, temp_opt)
    (c_loss, parts), c_grads = jax.value_and_grad(critic_terms, has_aux=True)(
        state.critic_params, state.target_critic_params, state.actor_params, state.log_temperature, mixed,
        k_critic, config)
    c_updates, critic_opt_state = critic_opt.update(c_grads, state.critic_opt_state, state.critic_params)
    critic_params = optax.apply_updates(state.critic_params, c_updates)
    state = state.replace(
        critic_params=critic_params,
        target_critic_params=optax.incremental_update(critic_params, state.target_critic_params, config.tau),
        actor_params=optax.apply_updates(state.actor_params, a_updates),
        log_temperature=log_temperature,
        critic_opt_state=critic_opt_state,
        actor_opt_state=actor_opt_state,
        temperature_opt_state=temperature_opt_state,
    )
    model_rows = 1.0 - mixed["real"]
    metrics = {k: _wmean(v, mixed["weights"]) for k, v in parts.items() if k != "target_q_sq"}
    metrics.update(
        critic_loss=c_loss, actor_loss=a_loss, temperature_loss=t_loss,
        entropy_temperature=jnp.exp(state.log_temperature), entropy=-a_aux["log_pi"],
        model_penalty=_wmean(mixed["penalty"], model_rows), model_reward=_wmean(mixed["rewards"], model_rows),
        rollout_alive=rolled["weights"].mean(),
    )
    return state, {**metrics, **{k: jnp.zeros(()) for k in MODEL_METRICS}}


def update(state: ModelBasedState, batch: Batch, key: jax.Array, config: ModelBasedConfig):
    """One gradient step: of the model while ``step < model_steps``, then of the critics, the actor and the
    temperature on the mixed batch (:func:`mixed_batch`). Metrics of the other phase are 0 (a ``lax.cond``: one
    branch runs). Pure and jit-able."""
    def model_branch(st):
        return _model_update(st, batch, config)

    def policy_branch(st):
        return _policy_update(st, batch, key, config)

    state, metrics = jax.lax.cond(state.step < config.model_steps, model_branch, policy_branch, state)
    return state.replace(step=state.step + 1), metrics


def member_mse(model_params: Any, batch: Batch, config: ModelBasedConfig) -> jnp.ndarray:
    """Each member's squared error of its mean per transition, averaged over the outputs: (E, B)."""
    model = _networks(config, batch["observations"].shape[-1], batch["actions"].shape[-1])[0]
    mean, _ = model.apply(model_params, batch["observations"], batch["actions"])
    return ((mean - model_targets(batch)[None]) ** 2).mean(axis=-1)


def select_model(state: ModelBasedState, chunks: Batch, mask: jnp.ndarray, config: ModelBasedConfig) -> ModelBasedState:
    """Model selection on held-out episodes (called by ``offrl train`` after every chunk of the model phase):
    each member whose held-out MSE (over the padded ``chunks`` (K, C, ...) with ``mask`` (K, C)) fell below its
    best keeps the current weights as its snapshot (MBPO's per-member early stopping); the elites are the
    ``num_elites`` members of lowest held-out MSE (:func:`offrl.networks.dynamics.elites`). The snapshot holds
    the member's own layers only; the shared log-variance bounds stay the latest, as in the MOPO and MBPO code
    (``BNN._save_state`` saves the layers' weights and biases, not ``max_logvar`` / ``min_logvar``)."""
    sums = jax.lax.map(lambda a: (member_mse(state.model_params, a[0], config) * a[1][None]).sum(axis=1),
                       (chunks, mask))  # (K, E)
    mse = sums.sum(axis=0) / jnp.maximum(mask.sum(), 1.0)
    better = mse < state.member_heldout_mse
    best = jnp.where(better, mse, state.member_heldout_mse)

    members = "Vmap_Member_0"  # the members' own weights (leading axis E); the variance bounds are shared
    current, kept = state.model_params["params"], state.selected_model_params["params"]
    chosen = jax.tree.map(lambda c, k: jnp.where(better.reshape((-1,) + (1,) * (c.ndim - 1)), c, k),
                          current[members], kept[members])
    selected = {"params": {**current, members: chosen}}  # shared bounds: the latest
    return state.replace(selected_model_params=selected, member_heldout_mse=best,
                         elite_idx=dyn.elites(best, config.num_elites).astype(jnp.int32))


def rollout_mse(model_params: Any, elite_idx: jnp.ndarray, batch: Batch, config: ModelBasedConfig) -> jnp.ndarray:
    """The k-step open-loop error of the model against real trajectories (beyond both papers): from each window's
    first state, the elites' mean prediction is fed back k times under the data's actions; the squared error of the
    predicted states against the real ones (normalised units), averaged over the steps inside the episode and the
    features. Windows ``seq_observations`` (B, k+1, d), ``seq_actions``, ``seq_mask`` -> ``(error (B,), defined
    (B,))``: ``defined`` is 0 for a window whose episode ends at its first state (no step to predict; its error
    is 0), so that the logged mean is taken over the windows with at least one step (``checkpoint_record``)."""
    model = _networks(config, batch["observations"].shape[-1], batch["actions"].shape[-1])[0]
    obs, acts, mask = batch["seq_observations"], batch["seq_actions"], batch["seq_mask"]
    s = obs[:, 0]
    err, count = jnp.zeros(obs.shape[0]), jnp.zeros(obs.shape[0])
    for j in range(obs.shape[1] - 1):
        mean, _ = model.apply(model_params, s, acts[:, j])
        s = s + mean[elite_idx, :, :-1].mean(axis=0)
        err = err + mask[:, j + 1] * ((s - obs[:, j + 1]) ** 2).mean(axis=-1)
        count = count + mask[:, j + 1]
    return err / jnp.maximum(count, 1.0), (count > 0).astype(err.dtype)


def evaluate(state: ModelBasedState, batch: Batch, key: jax.Array, config: ModelBasedConfig) -> Metrics:
    """Per-transition workflow metrics: the critic's on dataset transitions (:func:`critic_terms` with every row
    real) and the model's: ``model_nll`` and ``model_mse`` (means over the members) and ``model_rollout_mse``
    (:func:`rollout_mse`, elites, with its ``_defined`` companion), of the model in training during the model phase
    and of the selected one after. Every value is per transition, (B,) float32, for a batch of B dataset
    transitions (``observations`` (B, obs_dim), ...; the ``seq_`` windows for the rollout error). Also
    ``model_reward_mse``, the reward output's squared error, and ``model_reward_mse_rewarded``, the same on the
    transitions whose reward is not 0 (with its ``_defined`` companion; logged as None on a set without one), and
    ``model_reward_share_rewarded``, on those transitions the reward the members predict (their mean) as a share
    of the data's, r_hat / r (1: the model pays each reward in full; 0: none of it), which
    :func:`offrl.workflow.diagnosis.diagnose_model` reads."""
    real = {k: batch[k] for k in ("observations", "actions", "rewards", "terminals", "next_observations")}
    ones = jnp.ones_like(batch["rewards"])
    _, parts = critic_terms(state.critic_params, state.target_critic_params, state.actor_params,
                            state.log_temperature, {**real, "weights": ones, "real": ones}, key, config)
    params = jax.tree.map(lambda a, b: jnp.where(state.step <= config.model_steps, a, b),
                          state.model_params, state.selected_model_params)
    model = _networks(config, batch["observations"].shape[-1], batch["actions"].shape[-1])[0]
    mean, log_var = model.apply(params, batch["observations"], batch["actions"])
    targets = model_targets(batch)[None]
    parts["model_nll"] = dyn.gaussian_nll(mean, log_var, targets).mean(axis=0)
    parts["model_mse"] = ((mean - targets) ** 2).mean(axis=(0, 2))
    # The reward head alone, and on the rare rewarded transitions: with sparse 0/1 rewards a Gaussian fit to
    # [s' - s, r] can score a low MSE while predicting a fraction of the success reward (docs/model-based.md).
    reward_se = ((mean[..., -1] - batch["rewards"][None]) ** 2).mean(axis=0)
    rewarded = (batch["rewards"] != 0).astype(reward_se.dtype)
    parts["model_reward_mse"] = reward_se
    parts["model_reward_mse_rewarded"] = reward_se * rewarded
    parts["model_reward_mse_rewarded" + common.DEFINED] = rewarded
    safe_r = jnp.where(rewarded > 0, batch["rewards"], 1.0)
    parts["model_reward_share_rewarded"] = mean[..., -1].mean(axis=0) / safe_r * rewarded
    parts["model_reward_share_rewarded" + common.DEFINED] = rewarded
    if "seq_observations" in batch:
        parts["model_rollout_mse"], parts["model_rollout_mse" + common.DEFINED] = rollout_mse(
            params, state.elite_idx, batch, config)
    return parts


def deterministic_action(actor_params: Any, observations: jnp.ndarray, act_dim: int, config: ModelBasedConfig):
    """The evaluation action tanh(mu(s)) for normalised observations (B, obs_dim) -> (B, act_dim)."""
    return common.deterministic_action(actor_params, observations, act_dim, config.actor_hidden_dims,
                                       config.actor_encoder)


def param_counts(state: ModelBasedState) -> dict[str, int]:
    """Parameters of the model, the critics and the actor."""
    def count(tree: Any) -> int:
        return int(sum(x.size for x in jax.tree.leaves(tree)))

    return {"model": count(state.model_params), "critic": count(state.critic_params),
            "actor": count(state.actor_params)}
