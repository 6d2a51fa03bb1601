"""A probabilistic ensemble of dynamics-and-reward models, the model of MOPO (Yu et al. 2020) and COMBO (Yu et al.
2021), after PETS (Chua et al. 2018) and MBPO (Janner et al. 2019).

Each of ``E`` members maps a (normalised) state and action to a diagonal Gaussian over the state change and the
reward, ``[s' - s, r] ~ N(mu(s, a), diag(sigma^2(s, a)))``. The log-variance is kept inside learned bounds with
PETS's soft clamp (Chua et al. 2018, Appendix A.1),

    log_var = max_lv - softplus(max_lv - raw);   log_var = min_lv + softplus(log_var - min_lv),

and each member minimises the Gaussian negative log-likelihood (PETS Eq. 2, up to the constant)

    NLL = sum_d [(y_d - mu_d)^2 / sigma_d^2 + log sigma_d^2]  /  D,   plus  0.01 (sum max_lv - sum min_lv),

the second term keeping the bounds tight. *Elites* are the ``num_elites`` members with the lowest mean squared
error on held-out episodes (MOPO and MBPO: 7 members, 5 elites); rollouts draw one elite per sample and step.

MOPO's penalised reward (Yu et al. 2020, Eq. 10 and Sec. 4.3) is ``r~ = r^ - lambda u(s, a)`` with the uncertainty
``u(s, a) = max_i ||sigma_i(s, a)||_2``, the largest Euclidean norm of the members' predicted standard deviations,
as MOPO's code computes it (:func:`mopo_penalty`).

Networks: MOPO's 4 hidden layers of 200 units with swish (SiLU) activations, one set of weights per member
(``nn.vmap`` over the member axis). Shapes: observations (B, obs_dim), actions (B, act_dim), outputs with a leading
member axis (E, B, obs_dim + 1).

Used by :mod:`offrl.agents.model_based` (MOPO, COMBO); tested in tests/test_dynamics.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def soft_clamp_log_var(raw: jnp.ndarray, min_log_var: jnp.ndarray, max_log_var: jnp.ndarray) -> jnp.ndarray:
    """PETS's soft clamp of a log-variance into (min, max) with smooth gradients; shapes broadcast."""
    log_var = max_log_var - jax.nn.softplus(max_log_var - raw)
    return min_log_var + jax.nn.softplus(log_var - min_log_var)


class _Member(nn.Module):
    hidden_dims: Sequence[int]
    out_dim: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        for width in self.hidden_dims:
            x = nn.silu(nn.Dense(width)(x))
        out = nn.Dense(2 * self.out_dim)(x)
        return out[..., : self.out_dim], out[..., self.out_dim :]


class GaussianEnsemble(nn.Module):
    """``E`` Gaussian models of ``[s' - s, r]`` given ``(s, a)``; returns ``(mean, log_var)``, each (E, B, out_dim),
    with ``log_var`` soft-clamped into the learned bounds (parameters ``max_log_var`` and ``min_log_var``, one per
    output dimension, shared by the members as in PETS)."""

    num_members: int
    out_dim: int
    hidden_dims: Sequence[int] = (200, 200, 200, 200)

    @nn.compact
    def __call__(self, observations: jnp.ndarray, actions: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        x = jnp.concatenate([observations, actions], axis=-1)
        members = nn.vmap(_Member, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=None,
                          out_axes=0, axis_size=self.num_members)(tuple(self.hidden_dims), self.out_dim)
        mean, raw = members(x)
        max_lv = self.param("max_log_var", lambda _: jnp.full((self.out_dim,), 0.5, jnp.float32))
        min_lv = self.param("min_log_var", lambda _: jnp.full((self.out_dim,), -10.0, jnp.float32))
        return mean, soft_clamp_log_var(raw, min_lv, max_lv)


def gaussian_nll(mean: jnp.ndarray, log_var: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
    """PETS Eq. 2 without its constant, averaged over the output dimensions: (E, B, D) x3 -> (E, B)."""
    return (((target - mean) ** 2) * jnp.exp(-log_var) + log_var).mean(axis=-1)


def ensemble_loss(params: dict, model: GaussianEnsemble, observations: jnp.ndarray, actions: jnp.ndarray,
                  targets: jnp.ndarray, bound_coef: float = 0.01) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """The training loss (mean NLL over members and transitions plus the bound term) and its parts:
    ``nll`` and ``mse`` per member (E,). ``targets``: (B, out_dim) = ``[s' - s, r]`` in the model's units."""
    mean, log_var = model.apply(params, observations, actions)
    nll = gaussian_nll(mean, log_var, targets[None])
    p = params["params"]
    bound = bound_coef * (p["max_log_var"].sum() - p["min_log_var"].sum())
    mse = ((mean - targets[None]) ** 2).mean(axis=(1, 2))
    return nll.mean() + bound, {"nll": nll.mean(axis=1), "mse": mse}


def elites(heldout_mse: jnp.ndarray, num_elites: int) -> jnp.ndarray:
    """Indices of the ``num_elites`` members with the lowest held-out MSE, best first: (E,) -> (num_elites,)."""
    return jnp.argsort(heldout_mse)[:num_elites]


def mopo_penalty(log_var: jnp.ndarray) -> jnp.ndarray:
    """MOPO's uncertainty ``u(s, a) = max_i ||sigma_i(s, a)||_2 = max_i sqrt(sum_d sigma_{i,d}^2)``, the largest
    Euclidean norm of the predicted standard deviations over the given members and every output ``[s' - s, r]``;
    (E, B, D) log-variances -> (B,) float32, in the units of the model's outputs.

    Source: MOPO's code, ``FakeEnv.step`` with ``penalty_learned_var=True`` (its D4RL configurations,
    ``examples/config/d4rl/base_mopo.py``), ``np.amax(np.linalg.norm(ensemble_model_stds, axis=2), axis=0)``
    (tianheyu927/mopo, ``mopo/models/fake_env.py``), over all members of the ensemble (``model.predict(...,
    factored=True)`` returns every network, not the elites alone). The paper's Eq. 10 writes the Frobenius norm of
    the covariance, ``||Sigma||_F = sqrt(sum_d sigma_d^4)`` (the norm of the variances); offrl follows the code."""
    return jnp.sqrt(jnp.exp(log_var).sum(axis=-1)).max(axis=0)


def penalised_reward(reward: jnp.ndarray, log_var: jnp.ndarray, penalty_coef: float) -> jnp.ndarray:
    """MOPO Eq. 10: ``r~ = r^ - lambda u(s, a)``; (B,), (E, B, D) -> (B,)."""
    return reward - penalty_coef * mopo_penalty(log_var)


def sample_step(key: jax.Array, mean: jnp.ndarray, log_var: jnp.ndarray, elite_idx: jnp.ndarray,
                observations: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """One model step for a batch: each row draws one elite uniformly and samples ``[s' - s, r]`` from its
    Gaussian (MBPO's rollout). ``mean``, ``log_var`` (E, B, obs_dim + 1) of every member, ``elite_idx``
    (num_elites,) int32, ``observations`` (B, obs_dim) float32; returns ``(next_observations (B, obs_dim), rewards
    (B,))``."""
    k_member, k_noise = jax.random.split(key)
    b = observations.shape[0]
    which = elite_idx[jax.random.randint(k_member, (b,), 0, elite_idx.shape[0])]
    mu, lv = mean[which, jnp.arange(b)], log_var[which, jnp.arange(b)]  # (B, D)
    y = mu + jnp.exp(0.5 * lv) * jax.random.normal(k_noise, mu.shape)
    return observations + y[:, :-1], y[:, -1]
