"""The DQN family for discrete actions, trained offline on logged data: the setting of Agarwal, Schuurmans and
Norouzi, *An Optimistic Perspective on Offline Reinforcement Learning* (ICML 2020; the talk in
../shared/paper/optimistic-offline-rl-talk.txt), and the discrete CQL of the CS285 lecture.

One module, six variants (``DQNConfig.variant``), because they share the network, the target network, the
batch and the greedy action and differ only in the loss:

| variant | loss (Huber ``l_k`` with ``k = 1`` unless said) | source |
|---|---|---|
| ``dqn`` | ``l(Q(s,a) - y)``, ``y = r + gamma (1 - d) max_a' Q'(s', a')`` (Nature DQN: the target network chooses and values a') | Mnih et al. 2015, Methods, Algorithm 1 (``y_j``); the talk's "DQN (Nature)", Young & Tian 2019's MinAtar DQN |
| ``double_dqn`` | ``l(Q(s,a) - y)``, ``y = r + gamma (1 - d) Q'(s', argmax_a' Q(s', a'))`` (the online network chooses, the target network values) | van Hasselt et al. 2016, Eq. 4 |
| ``qr_dqn`` | quantile Huber loss between the N quantiles of ``Z(s,a)`` and of ``r + gamma (1 - d) Z'(s', a*)``, ``a* = argmax_a' mean_j Z'(s',a')_j`` | Dabney et al. 2018, Eqs. 9-10 |
| ``ensemble`` | ``1/K sum_k l(Q_k(s,a) - r - gamma (1 - d) max_a' Q'_k(s',a'))``, K heads on one torso | Agarwal et al. 2020, Eq. 2 |
| ``rem`` | ``l(sum_k alpha_k Q_k(s,a) - r - gamma (1 - d) max_a' sum_k alpha_k Q'_k(s',a'))``, ``alpha`` drawn uniformly from the simplex once per minibatch | Agarwal et al. 2020, Eq. 3 |
| ``cql`` | the ``dqn`` loss ``+ alpha (logsumexp_a Q(s,a) - Q(s, a_data))`` | Kumar et al. 2020, Eq. 4 (CQL(H)), Appendix F |

Every target but ``double_dqn``'s bootstraps from the target network alone, as the sources define them: Ensemble-DQN
and REM take the max of each head (or of the mixture) of the target network (Agarwal et al. 2020, Eqs. 2-3; their
code, google-research/batch_rl ``MultiHeadDQNAgent._build_target_q_op``), QR-DQN the target network's quantiles of
its own greedy action (Dabney et al. 2018, Algorithm 1). The greedy action is ``argmax_a`` of Q (``qr_dqn``: of the
quantiles' mean; ``ensemble`` and ``rem``: of the heads' mean, as both papers act). Targets come from a copy of the
network refreshed every ``target_update_every`` gradient steps (Mnih et al. 2015).

The network is the logging agent's (:mod:`offrl.envs.minatar`), Young & Tian 2019's MinAtar DQN: one 3x3
convolution of 16 channels, stride 1, no padding, ReLU, then 128 ReLU units and a linear output, on the 10x10xC
grid. offrl datasets store the grids flattened (metadata ``grid_shape``); ``DQNConfig.grid_shape`` gives the
network that shape, and the flat (B, H*W*C) observations are reshaped (row-major, the inverse of the flattening in
:func:`offrl.data.collect.collect_minatar_replay`) to (B, H, W, C) before the convolution. Without a grid (vector
observations, ``grid_shape=()``) the hidden layers read the state directly (an MLP).

Defaults: the papers' for the losses (200 quantiles and 200 heads, Agarwal et al.'s offline Atari setting, where
REM and Ensemble-DQN match QR-DQN's output size; CQL's alpha 1), Young & Tian 2019's MinAtar DQN for the rest
(the network above, gamma 0.99, a target refresh every 1,000 steps), and the logging agent's optimiser. Deviations,
each with its reason:

- Adam (lr 2.5e-4, eps 1.5e-4) for every variant, the online logging agent included, instead of MinAtar's centered
  RMSprop at 2.5e-4: one optimiser for the logging and the offline agents, so that their budgets (learning rate x
  gradient steps) compare like with like.
- The learning rate 2.5e-4 for ``qr_dqn``, ``ensemble`` and ``rem`` too, where Agarwal et al.'s code trains them
  with Adam at 5e-5 (batch_rl ``quantile.gin``, ``rem.gin``; their offline DQN keeps the online agent's 2.5e-4):
  at 5e-5 the offline budget would need 5x the logging agent's gradient steps to reach its learning rate x steps,
  which these CPUs cannot afford (the issue-43 rule: an offline budget at least the logging agent's).
- Gradient steps are the training loop's ``--steps`` (:mod:`offrl.training.train`, default 100,000), not a field
  here. The logging agent of a replay of N environment steps takes N - 5,000 gradient steps at 2.5e-4 (see
  :func:`offrl.envs.minatar.logging_gradient_steps`): 95,000 for the 100,000-step replays of studies/discrete.py,
  which passes exactly that (1x: batch_rl's configs train the offline agents for the online agent's 200 iterations,
  its number of gradient steps; the talk's stochastic-Atari table uses 5x, which these CPUs cannot afford); the
  default 100,000 covers replays of up to 105,000 steps, not ``offrl collect``'s default of 500,000 (495,000
  steps): pass ``--steps`` to match a longer replay.
- Batch size: the training loop's ``--batch-size`` (default 256); MinAtar and Agarwal et al. use 32, which
  studies/discrete.py passes.
- Observations: the training loop standardises every feature by default (``--normalize-observations``), while
  MinAtar's network, like the logging agent, reads the raw binary grid; studies/discrete.py passes
  ``--no-normalize-observations``.
- Discrete CQL regularises the ``dqn`` head, while CQL's Atari experiments used QR-DQN.

``offrl train --algo dqn --dqn.variant NAME`` trains it on a dataset of discrete actions (metadata
``action_space: "discrete"``; ``offrl collect --task minatar/GAME`` writes one, with its ``grid_shape`` in the
metadata). The training loop fills ``grid_shape`` from the metadata when it is not given (:func:`config_for_data`),
so MinAtar replays get the convolution (``--dqn.encoder mlp`` reads the flat grids with the MLP instead). The workflow reads ``q_data``
for Metric 3.1 and ``cql_regularizer`` for Metric 3.2 (docs/metrics.md); ``offrl evaluate`` rolls checkpoints out
in MinAtar (returns). Exporting a discrete-action run is not built yet.

Batches (:mod:`offrl.training.train` ``make_batch`` keys): ``observations`` (B, D) or (B, H, W, C) float32,
``actions`` (B,) or (B, 1) action indices (int, or float as offrl datasets store them), ``rewards`` (B,),
``next_observations`` like ``observations``, ``terminals`` (B,) float32 (1: no bootstrap).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from offrl.agents import common

Batch = dict[str, jnp.ndarray]
VARIANTS = ("dqn", "double_dqn", "qr_dqn", "ensemble", "rem", "cql")


@dataclasses.dataclass(frozen=True)
class DQNConfig:
    """Hyperparameters of the offline DQN family (see the module docstring for sources and deviations)."""

    variant: Literal["dqn", "double_dqn", "qr_dqn", "ensemble", "rem", "cql"] = "dqn"
    """The loss: DQN (Nature DQN's target), Double DQN, QR-DQN, Ensemble-DQN, REM, or discrete CQL(H) on the DQN
    loss."""
    gamma: float = 0.99
    """Discount factor."""
    lr: float = 2.5e-4
    """Adam learning rate: MinAtar's step size (Young & Tian 2019) and the logging agent's, so that an offline run
    of as many gradient steps as the logging agent took has its budget (lr x steps); see the module docstring."""
    adam_eps: float = 1.5e-4
    """Adam epsilon (Dopamine's Adam setting for DQN, the logging agent's)."""
    target_update_every: int = 1000
    """Gradient steps between refreshes of the target network (hard copy)."""
    hidden_dims: tuple[int, ...] = (128,)
    """Hidden widths after the torso (MinAtar DQN: one layer of 128)."""
    encoder: Literal["auto", "mlp", "minatar"] = "auto"
    """Torso: ``minatar`` (a 3x3 convolution with 16 channels, stride 1, no padding, ReLU, flattened; Young & Tian
    2019) on the (H, W, C) grid, ``mlp`` (none: the hidden layers read the flat observation); ``auto`` is
    ``minatar`` when the observations are grids ((B, H, W, C) inputs, or flat ones with ``grid_shape``) and
    ``mlp`` otherwise."""
    grid_shape: tuple[int, ...] = ()
    """(H, W, C) of grid observations stored flattened (a MinAtar replay's metadata ``grid_shape``, e.g. 10 10 4
    for Breakout); the network reshapes the flat (B, H*W*C) input to it. ``()``: the observations are vectors (or
    already (B, H, W, C))."""
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


class MinAtarConv(nn.Module):
    """Young & Tian 2019's MinAtar DQN convolution, before its ReLU: 3x3, ``features`` channels (16), stride 1, no
    padding (MinAtar examples/dqn.py: ``nn.Conv2d(in_channels, 16, kernel_size=3, stride=1)``).
    (B, H, W, C) float32 -> (B, H - 2, W - 2, features) float32.

    The same function and parameters as ``flax.linen.Conv(features, (3, 3), padding="VALID")`` (``kernel`` (3, 3, C,
    features), LeCun normal; ``bias`` (features,), zeros; tests/test_dqn.py checks both), computed as the nine
    shifted (H - 2, W - 2) views concatenated along channels times the kernel as a (9 C, features) matrix: about 3x
    faster on CPU than XLA's convolution at these sizes (a MinAtar Q-network's gradient step at batch 32 on 2
    cores: 1,170 against 369 steps/s).
    """

    features: int = 16

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        c = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, c, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        h, w = x.shape[1] - 2, x.shape[2] - 2
        # (B, h, w, 9 C): channel block 3 i + j holds x[:, i:i+h, j:j+w], matching kernel[i, j] in the reshape.
        patches = jnp.concatenate([x[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)], axis=-1)
        return patches @ kernel.reshape(9 * c, self.features) + bias


class QNetwork(nn.Module):
    """Q-values of every action: (B, D) or (B, H, W, C) observations -> (B, outputs, num_actions) float32, where
    ``outputs`` is 1 (DQN, Double DQN, CQL), the number of heads (Ensemble, REM) or of quantiles (QR-DQN).

    The torso (``encoder``, resolved as :class:`DQNConfig` says) is Young & Tian 2019's MinAtar DQN convolution on
    the grid (flat (B, H*W*C) inputs reshaped to ``grid_shape`` first), or none (MLP); then ``hidden_dims`` ReLU
    layers and a linear output. Parameter names: ``Conv_0`` (the torso, when used), ``Dense_0`` ... ``Dense_n``.
    """

    num_actions: int
    outputs: int
    hidden_dims: tuple[int, ...]
    encoder: str = "auto"
    grid_shape: tuple[int, ...] = ()

    @nn.compact
    def __call__(self, obs: jnp.ndarray) -> jnp.ndarray:
        x = obs.astype(jnp.float32)
        if uses_conv(self.encoder, self.grid_shape, x.ndim):
            if x.ndim == 2:  # (B, H*W*C) -> (B, H, W, C): row-major, as the replay was flattened
                x = x.reshape(x.shape[0], *self.grid_shape)
            # Young & Tian 2019, MinAtar examples/dqn.py QNetwork: Conv2d(C, 16, kernel_size=3, stride=1), ReLU.
            x = nn.relu(MinAtarConv(16, name="Conv_0")(x))  # (B, H-2, W-2, 16); the parameters of nn.Conv's Conv_0
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden_dims:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.outputs * self.num_actions)(x).reshape(x.shape[0], self.outputs, self.num_actions)


def uses_conv(encoder: str, grid_shape: tuple[int, ...], obs_rank: int) -> bool:
    """Whether the network applies the MinAtar convolution: ``encoder`` ``minatar``, or ``auto`` on grid
    observations (rank-4 (B, H, W, C) inputs, or rank-2 ones with a ``grid_shape``)."""
    if encoder == "mlp":
        return False
    return encoder == "minatar" or obs_rank == 4 or bool(grid_shape)


def _net(config: DQNConfig, num_actions: int) -> QNetwork:
    return QNetwork(num_actions, _outputs(config), tuple(config.hidden_dims), config.encoder,
                    tuple(config.grid_shape))


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
    grid = tuple(config.grid_shape)
    if grid and (len(grid) != 3 or min(grid[:2]) < 3 or grid[2] < 1):
        problems.append(f"--dqn.grid-shape must be H W C with H, W >= 3 (the 3x3 convolution) and C >= 1, got "
                        f"{' '.join(map(str, grid))}")
    if grid and config.encoder == "mlp":
        problems.append("--dqn.grid-shape is for the convolution: drop it, or use --dqn.encoder auto|minatar")
    return problems


config_problems = check_config


def config_for_data(config: DQNConfig, metadata: dict[str, Any]) -> DQNConfig:
    """``config`` with ``grid_shape`` taken from a dataset's metadata when it is not given: a MinAtar replay stores
    its (H, W, C) grids flattened, and the convolutional torso reads them as grids. Unchanged with
    ``encoder="mlp"``, a given ``grid_shape``, or metadata without one."""
    grid = metadata.get("grid_shape")
    if config.grid_shape or config.encoder == "mlp" or not grid:
        return config
    return dataclasses.replace(config, grid_shape=tuple(int(v) for v in grid))
"""The name the training loop asks every agent module for (:func:`offrl.training.train.check_config`), so that a
setting that cannot work is refused before the run directory is made."""


def _obs_problems(config: DQNConfig, shape: tuple[int, ...]) -> list[str]:
    """What makes ``config``'s network unable to read observations of ``shape`` (without the batch axis)."""
    grid = tuple(config.grid_shape)
    if len(shape) == 1 and grid and math.prod(grid) != shape[0]:
        return [f"--dqn.grid-shape {' '.join(map(str, grid))} has {math.prod(grid)} cells but the observations have "
                f"{shape[0]} features: give the dataset's metadata grid_shape"]
    if len(shape) == 1 and config.encoder == "minatar" and not grid:
        return ["--dqn.encoder minatar on flat observations needs --dqn.grid-shape H W C (the dataset's metadata "
                "grid_shape)"]
    if len(shape) == 3 and grid and tuple(shape) != grid:
        return [f"--dqn.grid-shape {' '.join(map(str, grid))} differs from the observations' {shape}"]
    if len(shape) == 3 and config.encoder != "mlp" and min(shape[:2]) < 3:
        return [f"grid observations {shape} are smaller than the 3x3 convolution"]
    if len(shape) not in (1, 3):
        return [f"observations of shape {shape}: the DQN family reads vectors (D,) or grids (H, W, C)"]
    return []


def init(config: DQNConfig, obs_spec: Any, num_actions: int, key: jax.Array) -> DQNState:
    """Fresh parameters, their target copy and the optimiser state. ``obs_spec``: the number of state features, or
    the (H, W, C) shape of a grid observation; ``num_actions``: the size of the discrete action space.

    Raises:
        ValueError: a setting that cannot work (:func:`check_config`), or one that does not fit the observations
            (a ``grid_shape`` whose cells are not the feature count, ``encoder="minatar"`` on flat observations
            without a ``grid_shape``).
    """
    shape = (obs_spec,) if isinstance(obs_spec, int) else tuple(obs_spec)
    problems = check_config(config) or _obs_problems(config, shape)
    if problems:
        raise ValueError("; ".join(problems))
    params = _net(config, num_actions).init(key, jnp.zeros((1, *shape), jnp.float32))
    return DQNState(jnp.zeros((), jnp.int32), params, params, _optimizer(config).init(params), int(num_actions))


def huber(u: jnp.ndarray, kappa: float = 1.0) -> jnp.ndarray:
    """Elementwise Huber loss ``0.5 u^2`` for ``|u| <= kappa``, else ``kappa (|u| - 0.5 kappa)`` (Dabney et al.
    2018, Eq. 9; PyTorch's ``smooth_l1_loss`` in MinAtar's DQN at ``kappa = 1``); any shape, float32."""
    a = jnp.abs(u)
    return jnp.where(a <= kappa, 0.5 * u**2, kappa * (a - 0.5 * kappa))


def nature_dqn_target(rewards: jnp.ndarray, not_done: jnp.ndarray, gamma: float,
                      q_next_target: jnp.ndarray) -> jnp.ndarray:
    """Nature DQN's target ``y = r + gamma (1 - d) max_a' Q'(s', a')``: the target network both chooses and values
    the next action (Mnih et al. 2015, Methods, Algorithm 1, ``y_j``). (B,), (B,), (B, A) -> (B,) float32."""
    return rewards + gamma * not_done * q_next_target.max(axis=-1)


def double_dqn_target(rewards: jnp.ndarray, not_done: jnp.ndarray, gamma: float, q_next_online: jnp.ndarray,
                      q_next_target: jnp.ndarray) -> jnp.ndarray:
    """Double DQN's target ``y = r + gamma (1 - d) Q'(s', argmax_a' Q(s', a'))``: the online network chooses the
    next action, the target network values it (van Hasselt et al. 2016, Eq. 4). (B,), (B,), (B, A), (B, A) ->
    (B,) float32."""
    a_star = jnp.argmax(q_next_online, axis=-1)
    return rewards + gamma * not_done * jnp.take_along_axis(q_next_target, a_star[:, None], axis=-1)[:, 0]


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
    else:  # dqn, cql (Nature DQN's target), double_dqn
        if config.variant == "double_dqn":
            # The online pass over s' is made only here: every other variant bootstraps from the target network.
            q_next_online = net.apply(params, batch["next_observations"])[:, 0]
            target = double_dqn_target(r[:, 0], not_done[:, 0], config.gamma, q_next_online, q_next_target[:, 0])
        else:
            target = nature_dqn_target(r[:, 0], not_done[:, 0], config.gamma, q_next_target[:, 0])
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
    (B,) int -> (B,) float32, always >= 0 (``logsumexp >= max``), and at most ``log A`` above ``max_a Q(s, a) -
    Q(s, a_data)``."""
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
