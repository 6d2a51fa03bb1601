"""The Trajectory Transformer's network and planner (Janner, Li, Levine 2021, "Offline Reinforcement Learning as
One Big Sequence Modeling Problem", NeurIPS): per-dimension discretisation, a causal GPT over the tokens of
(state, action, reward, value) transitions, and beam search on predicted reward plus value.

Training, the configuration and the defaults live in :mod:`offrl.agents.trajectory_transformer`; this module is
what an exported TT policy needs to run (numpy, JAX and Flax only).

Token layout: a transition of an ``n``-dimensional state and an ``m``-dimensional action is ``T = n + m + 2``
tokens ``[s_1 .. s_n, a_1 .. a_m, r, V]``, each the bin (0 .. N-1) of one dimension; ``V`` is the discounted
return after the reward (the reference code's value). Dimension ``d`` of a transition has its own N-token
vocabulary (embedding row ``d * N + bin``) and its own output head, as in the reference code.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Cache = tuple[tuple[jnp.ndarray, jnp.ndarray], ...]
"""Per layer (keys, values), each (M, S, heads, head_dim): the attention inputs of the positions fed so far."""

_INIT = nn.initializers.normal(0.02)  # GPT-2's (and the reference code's) initialisation


# --------------------------------------------------------------------------------------------- discretisation


def fit_discretizer(
    values: np.ndarray, num_bins: int, kind: Literal["quantile", "uniform"] = "quantile"
) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension bin edges and reconstruction values for ``values`` (M, D) (the training data).

    ``quantile`` (the paper's QuantileDiscretizer): the edges of dimension d are the order statistics of its
    values at (M - 1) * linspace(0, 1, N + 1), so every bin holds about M / N values; tied edges (a value holding
    more than 1/N of the data, such as the 0 of a sparse reward) are kept once and the bins they would have
    formed left empty at the top, so that every point mass has a bin of its own. ``uniform``: N equal-width
    bins between the dimension's minimum and maximum.

    A value falls in bin ``i`` when ``edges[i] <= x < edges[i+1]`` (values beyond the outer edges go to the
    first or last bin). It is reconstructed as the mean of the training values of its bin (the midpoint for a
    bin no training value falls in). The reference code uses the midpoint; the bin mean keeps the point masses
    of sparse data exact (a 0/1 reward: the reference code refuses such data, "rebin for sparse reward tasks"),
    and lies inside the bin, so a training value is reconstructed to within its bin's width.

    Returns:
        ``(edges (N+1, D), centres (N, D))``, float32.
    """
    x = np.asarray(values, np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"fit_discretizer needs (M, D) values with M >= 1, got shape {x.shape}")
    if kind == "quantile":
        edges = np.sort(x, axis=0)[np.linspace(0, len(x) - 1, num_bins + 1).astype(int)]
        for d in range(x.shape[1]):  # tied edges (point masses) once each, the largest repeated at the end
            u = np.unique(edges[:, d])
            edges[:, d] = np.concatenate([u, np.full(num_bins + 1 - len(u), u[-1])])
    elif kind == "uniform":
        edges = np.linspace(x.min(axis=0), x.max(axis=0), num_bins + 1)
    else:
        raise ValueError(f"unknown discretizer {kind!r}: 'quantile' or 'uniform'")
    bins = np.stack([np.searchsorted(edges[1:-1, d], x[:, d], side="right") for d in range(x.shape[1])], axis=1)
    centres = (edges[:-1] + edges[1:]) / 2
    for d in range(x.shape[1]):
        counts = np.bincount(bins[:, d], minlength=num_bins)
        sums = np.bincount(bins[:, d], weights=x[:, d], minlength=num_bins)
        centres[:, d] = np.where(counts > 0, sums / np.maximum(counts, 1), centres[:, d])
    return edges.astype(np.float32), centres.astype(np.float32)


def discretize(x: jnp.ndarray, edges: jnp.ndarray) -> jnp.ndarray:
    """Bins of ``x`` (..., D) under ``edges`` (N+1, D): the number of inner edges <= x, (..., D) int32 in
    [0, N-1]."""
    return jnp.sum(x[..., None, :] >= edges[1:-1], axis=-2).astype(jnp.int32)


def reconstruct(bins: jnp.ndarray, centres: jnp.ndarray) -> jnp.ndarray:
    """Values of ``bins`` (..., D) from ``centres`` (N, D): (..., D) float32."""
    return jnp.take_along_axis(centres, bins.reshape(-1, bins.shape[-1]), axis=0).reshape(bins.shape)


# ---------------------------------------------------------------------------------------------------- network


class _Block(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention, then a 4x GELU MLP, each with a residual."""

    embed_dim: int
    num_heads: int
    transition_dim: int
    dropout: float

    @nn.compact
    def __call__(self, x, pos, cache, deterministic):
        m, length, e = x.shape
        h, d = self.num_heads, self.embed_dim // self.num_heads
        qkv = nn.Dense(3 * e, kernel_init=_INIT)(nn.LayerNorm()(x)).reshape(m, length, 3, h, d)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if cache is None:
            keys, values, key_pos = k, v, pos
        else:
            keys = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), (0, pos[0], 0, 0))
            values = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), (0, pos[0], 0, 0))
            key_pos = jnp.arange(cache[0].shape[1])
        # Causal, and no position attends to a value token (the reference code's "mask previous value estimates").
        allowed = (key_pos[None, :] <= pos[:, None]) & (key_pos % self.transition_dim != self.transition_dim - 1)
        att = jnp.einsum("mqhd,mkhd->mhqk", q, keys) / math.sqrt(d)
        att = jax.nn.softmax(jnp.where(allowed, att, -1e9), axis=-1)
        att = nn.Dropout(self.dropout)(att, deterministic=deterministic)
        y = jnp.einsum("mhqk,mkhd->mqhd", att, values).reshape(m, length, e)
        x = x + nn.Dropout(self.dropout)(nn.Dense(e, kernel_init=_INIT)(y), deterministic=deterministic)
        y = nn.Dense(4 * e, kernel_init=_INIT)(nn.LayerNorm()(x))
        y = nn.Dense(e, kernel_init=_INIT)(nn.gelu(y, approximate=False))
        return x + nn.Dropout(self.dropout)(y, deterministic=deterministic), (keys, values)


class TrajectoryGPT(nn.Module):
    """GPT over discretised transitions (the reference code's GPT: learned position embeddings, pre-LN blocks,
    a final LayerNorm and one bias-free output head per dimension of a transition).

    Call with tokens (M, L) int32 fed at positions ``start .. start + L - 1`` -> (logits (M, L, N), cache): the
    logits at position p are the distribution of the token at p + 1. Without ``cache`` the L tokens attend to
    each other (training); with one (from :func:`empty_cache`) they are written into it and attend to
    everything fed before (decoding, one or more tokens at a time; ``start`` may be traced).
    """

    transition_dim: int
    num_bins: int
    max_len: int
    embed_dim: int = 64
    num_heads: int = 4
    num_layers: int = 2
    dropout: float = 0.1

    @nn.compact
    def __call__(self, tokens, start: Any = 0, cache: Cache | None = None, deterministic: bool = True):
        t, n = self.transition_dim, self.num_bins
        pos = start + jnp.arange(tokens.shape[1])
        x = nn.Embed(t * n, self.embed_dim, embedding_init=_INIT)((pos % t) * n + tokens)
        x = x + jnp.take(self.param("pos_emb", _INIT, (self.max_len, self.embed_dim)), pos, axis=0)
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        new_cache = []
        for i in range(self.num_layers):
            x, c = _Block(self.embed_dim, self.num_heads, t, self.dropout)(
                x, pos, None if cache is None else cache[i], deterministic)
            new_cache.append(c)
        x = nn.LayerNorm()(x)
        head = jnp.take(self.param("head", _INIT, (t, self.embed_dim, n)), (pos + 1) % t, axis=0)
        return jnp.einsum("mle,len->mln", x, head), tuple(new_cache)


def empty_cache(rows: int, length: int, embed_dim: int, num_heads: int, num_layers: int) -> Cache:
    """An all-zero decoding cache of ``length`` positions for ``rows`` sequences."""
    z = jnp.zeros((rows, length, num_heads, embed_dim // num_heads), jnp.float32)
    return tuple((z, z) for _ in range(num_layers))


# --------------------------------------------------------------------------------------------------- planning


def filter_cdf(logits: jnp.ndarray, threshold: float) -> jnp.ndarray:
    """The reference code's ``filter_cdf``: drop (logit -1000) the least likely tokens whose probabilities sum
    to less than ``threshold``, and every token as unlikely as the most likely of them; (..., N) -> (..., N).
    ``threshold`` 0.6 (the paper's actions) keeps the most likely tokens holding about 40 % of the mass."""
    probs = jax.nn.softmax(logits, axis=-1)
    ascending = jnp.sort(probs, axis=-1)
    below = jnp.cumsum(ascending, axis=-1) < threshold
    last = jnp.max(jnp.where(below, jnp.arange(probs.shape[-1]), 0), axis=-1, keepdims=True)
    return jnp.where(probs <= jnp.take_along_axis(ascending, last, axis=-1), -1000.0, logits)


def beam_search(
    step: Any, cache: Any, logits: jnp.ndarray, *, obs_dim: int, act_dim: int, horizon: int, beam_width: int,
    expand: int, action_cdf: float, gamma: float, reward_centres: jnp.ndarray, value_centres: jnp.ndarray,
    key: jax.Array,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Beam search on predicted return (the reference code's ``beam_plan``).

    From B observations already fed (``cache``, a pytree with B leading rows, and ``logits`` (B, N), the
    distribution of the first action token), each of ``horizon`` steps: copies every beam ``expand`` times
    (at the first step the observation ``beam_width * expand`` times), samples the action tokens (after
    :func:`filter_cdf` with ``action_cdf``), takes the most likely reward and value tokens, scores each
    candidate by ``sum_k gamma^k E[r_k] + gamma^(t+1) E[V_t]`` (expectations under the predicted distributions,
    ``reward_centres`` / ``value_centres`` (N,)), keeps the ``beam_width`` best per observation, and unless it
    is the last step rolls the state forward with the most likely token of every state dimension.

    ``step(cache, token (M,), position) -> (logits (M, N), cache)`` feeds one token to every row (any model;
    the tests plug in a toy one). Positions: transition t occupies ``t*T .. t*T + T - 1``, ``T = obs_dim +
    act_dim + 2``.

    Returns:
        ``(plans (B, horizon, act_dim) int32, scores (B,))``: the action tokens and the score of the best beam.
    """
    t_dim = obs_dim + act_dim + 2
    b = logits.shape[0]

    def repeat(tree: Any, r: int) -> Any:
        return jax.tree.map(lambda a: jnp.repeat(a, r, axis=0), tree)

    cache, logits = repeat((cache, logits), beam_width * expand)
    total = jnp.zeros(logits.shape[0])
    plans = jnp.zeros((logits.shape[0], horizon, act_dim), jnp.int32)
    score = total
    for t in range(horizon):
        if t > 0:
            cache, logits, total, plans = repeat((cache, logits, total, plans), expand)
        key, k_act = jax.random.split(key)

        def sample_action(carry, xs, t=t):
            c, lg = carry
            j, kj = xs
            tok = jax.random.categorical(kj, filter_cdf(lg, action_cdf)).astype(jnp.int32)
            lg, c = step(c, tok, t * t_dim + obs_dim + j)
            return (c, lg), tok

        (cache, logits), toks = jax.lax.scan(
            sample_action, (cache, logits), (jnp.arange(act_dim), jax.random.split(k_act, act_dim)))
        plans = plans.at[:, t].set(toks.T)
        reward = jax.nn.softmax(logits, axis=-1) @ reward_centres
        logits, cache = step(cache, jnp.argmax(logits, axis=-1).astype(jnp.int32), t * t_dim + obs_dim + act_dim)
        value = jax.nn.softmax(logits, axis=-1) @ value_centres
        value_token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        total = total + gamma**t * reward
        score = total + gamma ** (t + 1) * value
        per = score.shape[0] // b
        top = jax.lax.top_k(score.reshape(b, per), beam_width)[1]
        keep = (top + per * jnp.arange(b)[:, None]).reshape(-1)
        cache, total, plans, value_token, score = jax.tree.map(
            lambda a, keep=keep: a[keep], (cache, total, plans, value_token, score))
        if t < horizon - 1:
            logits, cache = step(cache, value_token, t * t_dim + obs_dim + act_dim + 1)

            def greedy_state(carry, i, t=t):
                c, lg = carry
                lg, c = step(c, jnp.argmax(lg, axis=-1).astype(jnp.int32), (t + 1) * t_dim + i)
                return (c, lg), None

            (cache, logits), _ = jax.lax.scan(greedy_state, (cache, logits), jnp.arange(obs_dim))
    best = jnp.argmax(score.reshape(b, beam_width), axis=-1)
    rows = jnp.arange(b) * beam_width + best
    return plans[rows], score[rows]


@dataclasses.dataclass(frozen=True)
class PlannerSettings:
    """What planning needs of a TT configuration (hashable: a static argument of the jitted planner)."""

    num_bins: int
    embed_dim: int
    num_heads: int
    num_layers: int
    context_transitions: int
    horizon: int
    beam_width: int
    expand: int
    action_cdf: float
    gamma: float
    plan_seed: int

    @classmethod
    def of(cls, config: Any) -> PlannerSettings:
        """From any object or dict with these fields (a TTConfig, its JSON form in config.json/policy.json)."""
        get = config.get if isinstance(config, dict) else functools.partial(getattr, config)
        return cls(**{f.name: (float if f.type == "float" else int)(get(f.name)) for f in dataclasses.fields(cls)})


def model_of(settings: PlannerSettings, transition_dim: int, dropout: float = 0.0) -> TrajectoryGPT:
    return TrajectoryGPT(transition_dim, settings.num_bins, settings.context_transitions * transition_dim,
                         settings.embed_dim, settings.num_heads, settings.num_layers, dropout)


@functools.partial(jax.jit, static_argnames=("act_dim", "settings"))
def plan(params: Any, observations: jnp.ndarray, act_dim: int, settings: PlannerSettings):
    """Beam-search plans from normalised observations (B, n) alone (the current state is the whole context).

    ``params``: ``{"model": TrajectoryGPT parameters, "discretizer": {"edges", "centres"}}``. Sampling uses
    the fixed key ``settings.plan_seed``, so the plan is a deterministic function of the observation.

    Returns:
        ``(actions (B, act_dim) float32, the first action of the best plan, reconstructed from its bins;
        plans (B, horizon, act_dim) int32 action tokens; scores (B,))``.
    """
    n = observations.shape[-1]
    t_dim = n + act_dim + 2
    edges, centres = params["discretizer"]["edges"], params["discretizer"]["centres"]
    model = model_of(settings, t_dim)

    def step(cache, token, pos):
        logits, cache = model.apply(params["model"], token[:, None], pos, cache)
        return logits[:, 0], cache

    cache = empty_cache(observations.shape[0], settings.horizon * t_dim, settings.embed_dim, settings.num_heads,
                        settings.num_layers)
    logits, cache = model.apply(params["model"], discretize(observations, edges[:, :n]), 0, cache)
    plans, scores = beam_search(
        step, cache, logits[:, -1], obs_dim=n, act_dim=act_dim, horizon=settings.horizon,
        beam_width=settings.beam_width, expand=settings.expand, action_cdf=settings.action_cdf,
        gamma=settings.gamma, reward_centres=centres[:, n + act_dim], value_centres=centres[:, n + act_dim + 1],
        key=jax.random.PRNGKey(settings.plan_seed),
    )
    return reconstruct(plans[:, 0], centres[:, n:n + act_dim]), plans, scores
