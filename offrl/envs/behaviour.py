"""Behaviour regimes: how a scripted expert's actions are perturbed to make offline data that looks like robot logs.

A regime turns the task's scripted expert ``a*(s)`` into the executed action of every step of an episode. Nothing
here depends on the task: the same regime and parameters serve every MetaWorld task (and multi-task specs).
Every regime draws all its randomness from the collection's ``numpy.random.Generator``, so a seed fixes the data.

``white``
    ``a_t = clip(a*(s_t) + eps_t)``, ``eps_t ~ N(0, sigma^2 I)`` i.i.d. per step (``sigma`` 0.8). offrl's first
    regime; kept because earlier results used it. White noise this large resembles no robot log: it is a random
    policy with a drift towards the goal.
``correlated``
    Imperfect teleoperation: a slowly wandering deviation from the expert plus the paper's small white noise,
    ``a_t = clip(a*(s_t) + x_t + w_t)``, ``w_t ~ N(0, 0.1^2 I)`` (Kumar et al. 2021, sim data: sigma 0.1), and
    ``x_t`` a discretised Ornstein-Uhlenbeck process (Gaussian AR(1)) per action dimension,
    ``x_0 ~ N(0, s^2)``, ``x_t = rho x_{t-1} + sqrt(1 - rho^2) s z_t``, ``z_t ~ N(0, 1)``: stationary from the
    first step with standard deviation ``s`` and lag-k autocorrelation ``rho^k``. Each episode draws its own
    ``s ~ U[0, 2 sigma]`` (operators, or days, of varying skill), so the data hold clean and sloppy attempts.
    Failures come from deviations that persist for ``1 / (1 - rho)`` steps (a gripper that does not close, an
    arm that drifts past the object), not from per-step jitter the controller averages out.
``mixed``
    Mixed quality, in the manner of D4RL's medium-replay / mixed datasets: each episode is independently one of
    ``expert`` (probability ``p_expert``: the ``correlated`` process with a small sigma 0.1, plus the white
    noise), ``partial`` (``p_partial``: an expert attempt like ``expert`` until a switch step drawn uniformly from
    [0, horizon), then exploration for the rest: a failed or interrupted attempt), and ``exploratory`` (the rest:
    exploration from the first step). Exploration is the same AR(1) process on its own, without the expert,
    clipped to the bounds: ``a_t = clip(x_t)`` with ``sigma_explore``, ``rho`` — the arm wanders smoothly, as in
    play data. The kind of each episode is recorded in the dataset metadata (``episode_kinds``, one letter each).
``paper``
    The workflow paper's simulated data (Kumar et al. 2021, Sec. 5 and the reference code's scripted collection,
    ../shared/reference/implementation-notes.md): ``a_t = clip(a*(s_t) + eps_t, -0.9, 0.9)``,
    ``eps_t ~ N(0, 0.1^2 I)`` i.i.d. per step. ``white`` with ``noise_sigma`` 0.1 is not the same data: it clips to
    the action bounds, +-1, not to +-0.9. The paper's scripted policies reach 35-40 % success under this noise;
    MetaWorld's experts are more robust, so the rate here is what it is (recorded in the metadata), not tuned.

The parameters below were chosen once, on the dev tasks (pick-place-v3, drawer-open-v3, button-press-v3,
lever-pull-v3), for behaviour success between 20 % and 70 % on each with one setting; docs/dataset-format.md
gives the rates measured on every task tried.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

REGIMES = ("white", "correlated", "mixed", "paper")
"""The regime names `offrl collect --regime` accepts."""
DEFAULT_REGIME = "correlated"
"""The regime of `offrl collect`, `offrl workflow` and ``offrl.collect`` when none is named."""
KINDS = ("expert", "partial", "exploratory")
"""The episode kinds of the ``mixed`` regime."""
KIND_CODES = {"expert": "e", "partial": "p", "exploratory": "x"}
"""One letter per kind, for the dataset metadata's ``episode_kinds`` string."""

WHITE_SIGMA = 0.8
"""``white``: std of the i.i.d. action noise. Calibrated once on pick-place-v3 for 35-40 % behaviour success."""
JITTER_SIGMA = 0.1
"""Std of the small white noise on top of the correlated deviation (the workflow paper's sim data: 0.1)."""
CORRELATED_SIGMA = 0.4
"""``correlated``: mean over episodes of the OU deviation's stationary std, in action units (actions lie in
[-1, 1]); each episode draws its own std uniformly from [0, 2 * sigma] (operators of varying skill)."""
CORRELATED_RHO = 0.95
"""``correlated`` and exploration: AR(1) coefficient per step (time constant 1 / (1 - rho) = 20 steps)."""
EXPERT_SIGMA = 0.1
"""``mixed``: std of the OU deviation of its expert attempts (near-expert, like the paper's scripted data)."""
EXPLORE_SIGMA = 0.6
"""``mixed``: stationary std of the exploratory actions."""
MIXED_PROPORTIONS = (0.3, 0.35, 0.35)
"""``mixed``: probabilities of an ``expert``, ``partial`` and ``exploratory`` episode."""
PAPER_SIGMA = 0.1
"""``paper``: std of the i.i.d. action noise (the workflow paper's simulated data: N(0, 0.1^2))."""
PAPER_ACTION_CLIP = 0.9
"""``paper``: executed actions are clipped to [-0.9, 0.9] (the paper's collection), inside the bounds [-1, 1]."""


@dataclasses.dataclass(frozen=True)
class Regime:
    """A behaviour regime and its parameters (see the module docstring for each generative process).

    Attributes:
        name: One of `REGIMES`.
        sigma: ``white``: the noise std; ``correlated``: the mean OU std; ``mixed``: the expert attempts' OU std.
        rho: AR(1) coefficient of the correlated deviation and of exploration, in [0, 1).
        jitter: Std of the extra white noise of ``correlated`` and of ``mixed``'s expert attempts.
        explore_sigma: ``mixed``: std of the exploratory actions.
        proportions: ``mixed``: probabilities of the kinds in `KINDS` (they sum to 1).
        action_clip: ``paper``: executed actions are clipped to [-action_clip, action_clip] (inside the action
            bounds); None: to the bounds only.
    """

    name: str
    sigma: float
    rho: float = CORRELATED_RHO
    jitter: float = JITTER_SIGMA
    explore_sigma: float = EXPLORE_SIGMA
    proportions: tuple[float, float, float] = MIXED_PROPORTIONS
    action_clip: float | None = None

    def to_info(self) -> dict[str, Any]:
        """The parameters that define the data, for the dataset metadata (``behaviour``)."""
        if self.name == "white":
            return {"regime": "white", "sigma": self.sigma}
        if self.name == "paper":
            return {"regime": "paper", "sigma": self.sigma, "action_clip": self.action_clip}
        info: dict[str, Any] = {"regime": self.name, "sigma": self.sigma, "rho": self.rho, "jitter": self.jitter}
        if self.name == "mixed":
            proportions = dict(zip(KINDS, self.proportions, strict=True))
            info.update(explore_sigma=self.explore_sigma, proportions=proportions)
        return info


def make_regime(name: str, sigma: float | None = None) -> Regime:
    """The regime called ``name`` with its documented parameters; ``sigma`` overrides its main std.

    Args:
        name: One of `REGIMES`.
        sigma: ``white``: the noise std (default 0.8); ``correlated``: the mean OU std (default 0.4);
            ``mixed``: the expert attempts' OU std (default 0.1); ``paper``: the noise std (default 0.1). None keeps
            the default. Finite and >= 0.

    Returns:
        The `Regime`.

    Raises:
        ValueError: Unknown name, or ``sigma`` negative or not finite.
    """
    if name not in REGIMES:
        raise ValueError(
            f"Unknown behaviour regime {name!r}: use one of {', '.join(REGIMES)} (docs/dataset-format.md)."
        )
    default = {"white": WHITE_SIGMA, "correlated": CORRELATED_SIGMA, "mixed": EXPERT_SIGMA, "paper": PAPER_SIGMA}[name]
    sigma = default if sigma is None else float(sigma)
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"noise_sigma must be a finite number >= 0, got {sigma!r}.")
    return Regime(name, sigma, action_clip=PAPER_ACTION_CLIP if name == "paper" else None)


def ar1_step(x: np.ndarray, rho: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """One step of the stationary Gaussian AR(1) (discretised Ornstein-Uhlenbeck) process.

    ``x' = rho * x + sqrt(1 - rho^2) * sigma * z``, ``z ~ N(0, I)``: if ``x ~ N(0, sigma^2)`` then so is ``x'``, and
    ``corr(x_t, x_{t+k}) = rho^k``.

    Args:
        x: Current value, float ``(d,)``.
        rho: AR coefficient in [0, 1).
        sigma: Stationary std (>= 0).
        rng: Generator to draw ``z`` from.

    Returns:
        The next value, float64 ``(d,)``.
    """
    return rho * x + np.sqrt(1.0 - rho**2) * sigma * rng.standard_normal(x.shape)


class EpisodeBehaviour:
    """The behaviour of one episode: maps the expert's action at step ``t`` to the executed action.

    Attributes:
        kind: ``"expert"``, ``"partial"`` or ``"exploratory"`` for ``mixed``; the regime's name otherwise.
        switch_step: ``partial`` episodes: the first step of exploration; None otherwise.
    """

    def __init__(self, regime: Regime, act_dim: int, horizon: int, rng: np.random.Generator) -> None:
        """Draws the episode's kind and the initial state of its processes from ``rng``."""
        self._regime, self._rng, self._act_dim = regime, rng, act_dim
        self.kind, self.switch_step = regime.name, None
        self._sigma = regime.sigma
        if regime.name == "mixed":
            self.kind = KINDS[int(rng.choice(len(KINDS), p=np.asarray(regime.proportions)))]
            if self.kind == "partial":
                self.switch_step = int(rng.integers(0, horizon))
        if regime.name == "correlated":
            # Operators of varying skill: each episode's deviation has its own std, uniform on [0, 2 sigma].
            self._sigma = float(rng.uniform(0.0, 2.0 * regime.sigma))
        if regime.name not in ("white", "paper"):
            self._x = rng.standard_normal(act_dim) * self._sigma  # stationary from the first step
            self._explore = rng.standard_normal(act_dim) * regime.explore_sigma

    def exploring(self, t: int) -> bool:
        """Whether step ``t`` (0-based) is exploration rather than an (perturbed) expert action."""
        return self.kind == "exploratory" or (self.kind == "partial" and t >= self.switch_step)

    def act(self, expert_action: np.ndarray, t: int) -> np.ndarray:
        """The executed action at step ``t``, float64 ``(act_dim,)`` before clipping to the bounds.

        Args:
            expert_action: The scripted expert's action ``a*(s_t)``, ``(act_dim,)``.
            t: Step of the episode, 0-based; called once per step, in order.
        """
        r, rng = self._regime, self._rng
        if r.name in ("white", "paper"):
            # One draw per step exactly as offrl's first collector did, so old seeds reproduce old data.
            return expert_action + (rng.normal(0.0, r.sigma, self._act_dim) if r.sigma > 0 else 0.0)
        # Both processes advance every step, so a partial episode's exploration starts from a stationary value.
        deviation = self._x
        self._x = ar1_step(self._x, r.rho, self._sigma, rng)
        explore = self._explore
        self._explore = ar1_step(self._explore, r.rho, r.explore_sigma, rng)
        if self.exploring(t):
            return explore
        return expert_action + deviation + rng.normal(0.0, r.jitter, self._act_dim)

