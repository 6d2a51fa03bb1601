"""The DQN family for discrete actions, trained offline on logged data: the setting of Agarwal, Schuurmans and
Norouzi, *An Optimistic Perspective on Offline Reinforcement Learning* (ICML 2020; the talk in
../shared/paper/optimistic-offline-rl-talk.txt), and the discrete CQL of the CS285 lecture.

One module, five variants (``DQNConfig.variant``), because they share the network, the target network, the
batch and the greedy action and differ only in the loss:

| variant | loss (Huber ``l_k`` with ``k = 1`` unless said) | source |
|---|---|---|
| ``dqn`` | ``l(Q(s,a) - y)``, ``y = r + gamma (1 - d) Q'(s', argmax_a' Q(s',a'))`` (Double DQN target) | van Hasselt et al. 2016, Eq. 4; Mnih et al. 2015 |
| ``qr_dqn`` | quantile Huber loss between the N quantiles of ``Z(s,a)`` and of ``r + gamma (1 - d) Z'(s', a*)``, ``a* = argmax_a' mean_j Z'(s',a')_j`` | Dabney et al. 2018, Eqs. 9-10 |
| ``ensemble`` | ``1/K sum_k l(Q_k(s,a) - r - gamma (1 - d) max_a' Q'_k(s',a'))``, K heads on one torso | Agarwal et al. 2020, Eq. 2 |
| ``rem`` | ``l(sum_k alpha_k Q_k(s,a) - r - gamma (1 - d) max_a' sum_k alpha_k Q'_k(s',a'))``, ``alpha`` drawn uniformly from the simplex once per minibatch | Agarwal et al. 2020, Eq. 3 |
| ``cql`` | the ``dqn`` loss ``+ alpha (logsumexp_a Q(s,a) - Q(s, a_data))`` | Kumar et al. 2020, Eq. 4 (CQL(H)), Appendix F |

The greedy action is ``argmax_a`` of Q (``qr_dqn``: of the quantiles' mean; ``ensemble`` and ``rem``: of the heads'
mean, as both papers act). Targets come from a copy of the network refreshed every ``target_update_every``
gradient steps (Mnih et al. 2015).

Defaults: the papers' for the losses (200 quantiles and 200 heads, Agarwal et al.'s offline Atari setting, where
REM and Ensemble-DQN match QR-DQN's output size; CQL's alpha 1), and Young & Tian 2019's MinAtar DQN for the
rest (one 3x3 convolution of 16 channels and 128 hidden units on 10x10xC grids, gamma 0.99, a target refresh every
1,000 steps, batch 32). Deviations: Adam (lr 6.25e-5, eps 1.5e-4, Dopamine's offline setting) instead of
MinAtar's RMSprop; discrete CQL here regularises the DQN head, while CQL's Atari experiments used QR-DQN.

``offrl train --algo dqn --dqn.variant NAME`` trains it on a dataset of discrete actions (metadata ``action_space:
"discrete"``; ``offrl collect --env minatar/GAME`` writes one), and the workflow reads ``q_data`` for Metric 3.1 and
``cql_regularizer`` for Metric 3.2 (docs/metrics.md); ``offrl evaluate`` rolls checkpoints out in MinAtar
(returns). Exporting a discrete-action run is not built yet.

Batches (:mod:`offrl.training.train` ``make_batch`` keys): ``observations`` (B, ...) float32, ``actions`` (B,) or
(B, 1) action indices (int, or float as offrl datasets store them), ``rewards`` (B,), ``next_observations``,
``terminals`` (B,) float32 (1: no bootstrap).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from offrl.agents import common

Batch = dict[str, jnp.ndarray]
VARIANTS = ("dqn", "qr_dqn", "ensemble", "rem", "cql")


@dataclasses.dataclass(frozen=True)
class DQNConfig:
    """Hyperparameters of the offline DQN family (see the module docstring for sources and deviations)."""

    variant: Literal["dqn", "qr_dqn", "ensemble", "rem", "cql"] = "dqn"
    """The loss: Double DQN, QR-DQN, Ensemble-DQN, REM, or discrete CQL(H) on the Double DQN loss."""
    gamma: float = 0.99
    """Discount factor."""
    lr: float = 6.25e-5
    """Adam learning rate."""
    adam_eps: float = 1.5e-4
    """Adam epsilon (Dopamine's DQN setting)."""
    target_update_every: int = 1000
    """Gradient steps between refreshes of the target network (hard copy)."""
    hidden_dims: tuple[int, ...] = (128,)
    """Hidden widths after the torso (MinAtar DQN: one layer of 128)."""
    encoder: Literal["auto", "mlp", "minatar"] = "auto"
    """Torso: ``minatar`` (a 3x3 convolution with 16 channels, stride 1, ReLU, flattened; Young & Tian 2019) for
    (H, W, C) grids, ``mlp`` (none: the hidden layers read the flat state); ``auto`` picks by the observation's
    rank."""
    num_quantiles: int = 200
    """``qr_dqn``: quantiles of the return distribution (Dabney et al. 2018)."""
    kappa: float = 1.0
    """``qr_dqn``: Huber threshold of the quantile Huber loss."""
    num_heads: int = 200
    """``ensemble`` and ``rem``: Q-heads on one torso (Agarwal et al. 2020's offline multi-head setting)."""
    cql_alpha: float = 1.0
    """``cql``: weight of the CQL(H) regularizer ``logsumexp_a Q(s, a) - Q(s, a_data)`` (Kumar et al. 2020)."""


@flax.struct.dataclass
class DQNState:
    step: jnp.ndarray  # () int32
    q_params: Any
    target_q_params: Any
    opt_state: Any
    num_actions: int = flax.struct.field(pytree_node=False, default=0)
    """The size of the discrete action space (static: it shapes the network)."""


def _outputs(config: DQNConfig) -> int:
    """Values per action the network outputs: quantiles, heads, or 1."""
    if config.variant == "qr_dqn":
        return config.num_quantiles
    return config.num_heads if config.variant in ("ensemble", "rem") else 1


class QNetwork(nn.Module):
    """Q-values of every action: (B, ...) observations -> (B, outputs, num_actions) float32, where ``outputs`` is
    1 (DQN, CQL), the number of heads (Ensemble, REM) or of quantiles (QR-DQN)."""

    num_actions: int
    outputs: int
    hidden_dims: tuple[int, ...]
    encoder: str = "auto"

    @nn.compact
    def __call__(self, obs: jnp.ndarray) -> jnp.ndarray:
        x = obs.astype(jnp.float32)
        conv = self.encoder == "minatar" or (self.encoder == "auto" and x.ndim == 4)
        if conv:
            x = nn.relu(nn.Conv(16, (3, 3), strides=1, padding="VALID")(x))
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden_dims:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.outputs * self.num_actions)(x).reshape(x.shape[0], self.outputs, self.num_actions)


def _net(config: DQNConfig, num_actions: int) -> QNetwork:
    return QNetwork(num_actions, _outputs(config), tuple(config.hidden_dims), config.encoder)


def _optimizer(config: DQNConfig) -> optax.GradientTransformation:
    return optax.adam(config.lr, eps=config.adam_eps)


def check_config(config: DQNConfig) -> list[str]:
    """Settings that cannot work, each as a one-line problem naming the flag and the fix."""
    problems = []
    if config.variant not in VARIANTS:
        problems.append(f"--dqn.variant {config.variant!r} is unknown: choose one of {', '.join(VARIANTS)}")
    if not 0.0 <= config.gamma < 1.0:
        problems.append(f"--dqn.gamma must be in [0, 1), got {config.gamma}")
    if config.target_update_every < 1:
        problems.append(f"--dqn.target-update-every must be >= 1, got {config.target_update_every}")
    if config.num_quantiles < 1 or config.num_heads < 1:
        problems.append("--dqn.num-quantiles and --dqn.num-heads must be >= 1")
    if config.kappa <= 0:
        problems.append(f"--dqn.kappa must be > 0 (the Huber threshold), got {config.kappa}")
    if config.cql_alpha < 0:
        problems.append(f"--dqn.cql-alpha must be >= 0, got {config.cql_alpha}")
    return problems


def init(config: DQNConfig, obs_spec: Any, num_actions: int, key: jax.Array) -> DQNState:
    """Fresh parameters, their target copy and the optimiser state. ``obs_spec``: the number of state features, or
    the (H, W, C) shape of a grid observation; ``num_actions``: the size of the discrete action space.

    Raises:
        ValueError: a setting that cannot work (:func:`check_config`).
    """
    problems = check_config(config)
    if problems:
        raise ValueError("; ".join(problems))
    shape = (obs_spec,) if isinstance(obs_spec, int) else tuple(obs_spec)
    params = _net(config, num_actions).init(key, jnp.zeros((1, *shape), jnp.float32))
    return DQNState(jnp.zeros((), jnp.int32), params, params, _optimizer(config).init(params), int(num_actions))


def huber(u: jnp.ndarray, kappa: float = 1.0) -> jnp.ndarray:
    """Elementwise Huber loss ``0.5 u^2`` for ``|u| <= kappa``, else ``kappa (|u| - 0.5 kappa)``."""
    a = jnp.abs(u)
    return jnp.where(a <= kappa, 0.5 * u**2, kappa * (a - 0.5 * kappa))


def quantile_huber_loss(pred: jnp.ndarray, target: jnp.ndarray, kappa: float = 1.0) -> jnp.ndarray:
    """Dabney et al. 2018, Eqs. 9-10: ``(1/N) sum_i sum_j |tau_i - 1{u_ij < 0}| huber_kappa(u_ij) / kappa`` with
    ``u_ij = target_j - pred_i`` and ``tau_i = (2i + 1) / 2N``, the quantile midpoints; (B, N), (B, N') -> (B,)."""
    n = pred.shape[-1]
    tau = (jnp.arange(n, dtype=jnp.float32) + 0.5) / n
    u = target[:, None, :] - pred[:, :, None]  # (B, N, N')
    weight = jnp.abs(tau[None, :, None] - (u < 0).astype(jnp.float32))
    return (weight * huber(u, kappa) / kappa).mean(axis=2).sum(axis=1)


def rem_weights(key: jax.Array, num_heads: int) -> jnp.ndarray:
    """REM's convex combination (Agarwal et al. 2020, Sec. 4.2): ``alpha'_k ~ U(0, 1)``, ``alpha = alpha' / sum
    alpha'``; (K,) float32 summing to 1."""
    a = jax.random.uniform(key, (num_heads,))
    return a / a.sum()


def _values(config: DQNConfig, q: jnp.ndarray) -> jnp.ndarray:
    """(B, outputs, A) network outputs -> (B, A) action values the policy ranks (mean over quantiles or heads)."""
    return q.mean(axis=1)


def _td_parts(
    config: DQNConfig, params: Any, target_params: Any, num_actions: int, batch: Batch, key: jax.Array,
    rem_alpha: jnp.ndarray | None = None,
) -> dict[str, jnp.ndarray]:
    """Per-transition losses and the quantities the workflow logs, each (B,). ``rem_alpha``: REM's head weights
    (default: drawn from ``key``)."""
    actions = jnp.round(batch["actions"].reshape(batch["actions"].shape[0])).astype(jnp.int32)
    net = _net(config, num_actions)
    q_all = net.apply(params, batch["observations"])  # (B, O, A)
    q_next_target = jax.lax.stop_gradient(net.apply(target_params, batch["next_observations"]))
    not_done = (1.0 - batch["terminals"].astype(jnp.float32))[:, None]
    r = batch["rewards"].astype(jnp.float32)[:, None]
    idx = jnp.arange(actions.shape[0])
    q_taken = q_all[idx, :, actions]  # (B, O)
    if config.variant == "qr_dqn":
        a_star = jnp.argmax(_values(config, q_next_target), axis=-1)
        target = r + config.gamma * not_done * q_next_target[idx, :, a_star]  # (B, N)
        loss = quantile_huber_loss(q_taken, jax.lax.stop_gradient(target), config.kappa)
        q_data, td = q_taken.mean(axis=1), (target.mean(axis=1) - q_taken.mean(axis=1))
    elif config.variant in ("ensemble", "rem"):
        if config.variant == "rem":
            alpha = rem_weights(key, q_all.shape[1]) if rem_alpha is None else rem_alpha
            q_taken = (q_taken * alpha).sum(axis=1, keepdims=True)  # (B, 1)
            q_next_target = (q_next_target * alpha[None, :, None]).sum(axis=1, keepdims=True)
        target = r + config.gamma * not_done * q_next_target.max(axis=-1)  # (B, O): each head its own max
        u = jax.lax.stop_gradient(target) - q_taken
        loss = huber(u).mean(axis=1)
        q_data, td = q_taken.mean(axis=1), u.mean(axis=1)
    else:  # dqn, cql: Double DQN target
        # Double DQN: the online network chooses a', the target network values it (the other variants need no
        # online pass over s', so it is made here only).
        a_star = jnp.argmax(net.apply(params, batch["next_observations"])[:, 0], axis=-1)
        target = r[:, 0] + config.gamma * not_done[:, 0] * q_next_target[idx, 0, a_star]
        u = jax.lax.stop_gradient(target) - q_taken[:, 0]
        loss = huber(u)
        q_data, td = q_taken[:, 0], u
    target_mean = target.mean(axis=-1) if target.ndim > 1 else target
    parts = {"q_data": q_data, "td_error": td**2, "q_policy": _values(config, q_all).max(axis=-1),
             # For the share of the targets' spread the critic leaves unexplained (training.train).
             "target_q": target_mean, "target_q_sq": target_mean**2}
    if config.variant == "cql":
        reg = cql_regularizer(q_all[:, 0], actions)
        parts["cql_regularizer"] = reg
        loss = loss + config.cql_alpha * reg
    parts["loss"] = loss
    return parts


def cql_regularizer(q: jnp.ndarray, actions: jnp.ndarray) -> jnp.ndarray:
    """CQL(H) for discrete actions (Kumar et al. 2020, Eq. 4): ``logsumexp_a Q(s, a) - Q(s, a_data)``; (B, A),
    (B,) int -> (B,) float32, >= 0 only up to the log of the action count (it is >= -0 when Q at the data action
    dominates)."""
    return jax.nn.logsumexp(q, axis=-1) - q[jnp.arange(actions.shape[0]), actions]


def update(state: DQNState, batch: Batch, key: jax.Array, config: DQNConfig) -> tuple[DQNState, dict]:
    """One Adam step on the variant's loss; the target network is refreshed every ``target_update_every`` steps."""
    def loss_fn(params: Any) -> tuple[jnp.ndarray, dict]:
        parts = _td_parts(config, params, state.target_q_params, state.num_actions, batch, key)
        return parts["loss"].mean(), parts

    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.q_params)
    updates, opt_state = _optimizer(config).update(grads, state.opt_state, state.q_params)
    params = optax.apply_updates(state.q_params, updates)
    step = state.step + 1
    refresh = (step % config.target_update_every) == 0
    target = jax.tree.map(lambda t, p: jnp.where(refresh, p, t), state.target_q_params, params)
    metrics = {"q_loss": loss, **{k: v.mean() for k, v in parts.items() if k != "loss"}}
    return state.replace(step=step, q_params=params, target_q_params=target, opt_state=opt_state), metrics


def evaluate(state: DQNState, batch: Batch, key: jax.Array, config: DQNConfig) -> dict[str, jnp.ndarray]:
    """Per-transition ``q_data`` (Q at the data action), ``td_error`` (squared TD error against the target
    network), ``q_policy`` (Q of the greedy action) and, for ``cql``, ``cql_regularizer``; each (B,). REM is
    evaluated with equal head weights (the heads' mean), as it acts."""
    # REM acts on the heads' mean: its combination with alpha = 1/K.
    uniform = jnp.full((config.num_heads,), 1.0 / config.num_heads) if config.variant == "rem" else None
    parts = _td_parts(config, state.q_params, state.target_q_params, state.num_actions, batch, key, uniform)
    return {k: v for k, v in parts.items() if k != "loss"}


def greedy_action(q_params: Any, observations: jnp.ndarray, num_actions: int, config: DQNConfig) -> jnp.ndarray:
    """``argmax_a`` of the (mean) Q-values: (B, ...) observations -> (B,) int32 action indices."""
    q = _net(config, num_actions).apply(q_params, observations)
    return jnp.argmax(_values(config, q), axis=-1).astype(jnp.int32)


param_counts = common.param_counts
