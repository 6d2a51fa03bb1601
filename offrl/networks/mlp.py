"""Multi-layer perceptron, the building block of the state-based critics and actors."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
    """Dense layers with ReLU between them, optionally LayerNorm and dropout on the hidden layers.

    Attributes:
        hidden_dims: widths of the hidden layers, then the output width when ``output_dim`` is None.
        output_dim: width of a final linear layer (no activation); None to end on the last hidden layer.
        activate_final: apply ReLU after the last layer (only when ``output_dim`` is None).
        dropout_rate: dropout after each hidden layer's activation (Guideline 4.1's capacity-decreasing
            regularization); active only with ``deterministic=False`` and a 'dropout' PRNG stream.
        layer_norm: LayerNorm before each hidden activation.

    Input (..., in_dim) float32 -> output (..., output_dim or hidden_dims[-1]) float32.
    """

    hidden_dims: Sequence[int]
    output_dim: int | None = None
    activate_final: bool = False
    dropout_rate: float = 0.0
    layer_norm: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray, deterministic: bool = True, return_features: bool = False):
        """``return_features``: also return the input of the output layer (the penultimate features)."""
        n = len(self.hidden_dims)
        for i, width in enumerate(self.hidden_dims):
            x = nn.Dense(width)(x)
            hidden = i < n - 1 or self.activate_final or self.output_dim is not None
            if hidden:
                if self.layer_norm:
                    x = nn.LayerNorm()(x)
                x = nn.relu(x)
                if self.dropout_rate > 0:
                    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        features = x
        if self.output_dim is not None:
            x = nn.Dense(self.output_dim)(x)
        return (x, features) if return_features else x
