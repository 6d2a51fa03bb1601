"""Q-function critics: ``Q(s, a)`` from a state MLP, and an ensemble built with one call (``nn.vmap``)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from offrl.networks.mlp import MLP


class Critic(nn.Module):
    """``Q(s, a)``: an MLP on the concatenation ``[s, a]``.

    Input observations (..., obs_dim) and actions (..., act_dim), float32 -> Q (...,) float32.
    """

    hidden_dims: Sequence[int]

    @nn.compact
    def __call__(self, observations: jnp.ndarray, actions: jnp.ndarray) -> jnp.ndarray:
        x = jnp.concatenate([observations, actions], axis=-1)
        return MLP(self.hidden_dims, output_dim=1)(x)[..., 0]


class CriticEnsemble(nn.Module):
    """``num_critics`` independent critics with stacked parameters, evaluated in one vectorised call.

    Building the ensemble with ``nn.vmap`` guarantees every member has the same architecture (a second
    hand-written critic can silently differ, as happened in CORL).

    Input observations (..., obs_dim) and actions (..., act_dim) -> Q (num_critics, ...) float32.
    """

    hidden_dims: Sequence[int]
    num_critics: int = 2

    @nn.compact
    def __call__(self, observations: jnp.ndarray, actions: jnp.ndarray) -> jnp.ndarray:
        ensemble = nn.vmap(
            Critic,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num_critics,
        )
        return ensemble(self.hidden_dims)(observations, actions)
