"""Allocation rules of the robot check: which checkpoint to try next, when to stop, and what to deploy.

The robot check (``offrl check``, :mod:`offrl.workflow.check`) spends a small budget of real episodes on a run's
candidate checkpoints (the *arms*). These rules decide, from the outcomes recorded so far, which arm to try next
(``propose``) and which to deploy (``recommend``), and :func:`summarise` says how good the deployed arm is and how
sure the check is that it is the best tried. The rules and their constants are pre-registered in
docs/selection.md ("The robot check"), and validated by replaying archived per-episode outcomes
(:mod:`offrl.workflow.check_replay`, docs/results-check.md).

Every function is pure and vectorised over a batch of B independent checks (``B = 1`` for a real check; the
replay runs hundreds at once): a state is :class:`Arms`, ``counts`` and ``sums`` of shape ``(B, K)`` over the K
arms in step order. Outcomes are in [0, 1]: a success is 1, a failure 0, and a dense return is normalised to
[0, 1] by the caller; a fractional outcome counts as that fraction of a success in the Beta posteriors (the
pseudo-count reading of Bernoulli bandits on [0, 1] rewards, Agrawal and Goyal 2012). Randomness comes only from
the ``rng`` argument, so a caller that derives it from a seed and the number of recorded trials gets the same
proposals after a restart.

| rule | proposes | source |
|---|---|---|
| ``uniform`` | the arm with the fewest trials (round-robin, earliest first) | the baseline (Kurenkov and Kolesnikov 2022) |
| ``successive_halving`` | rounds of equal trials over the surviving arms; the better half survives each round | Karnin et al. 2013 |
| ``thompson`` | the arm whose Beta(1 + s, 1 + f) posterior sample is largest | Thompson 1933; Chapelle and Li 2011 |
| ``top_two_thompson`` | the Thompson arm with probability 1/2, else the best arm of a sample where another arm wins | Russo 2016 |
| ``offline_prior`` | the largest upper confidence bound (mean + 2 sd) of a Gaussian process over the arms' success whose prior mean comes from an offline rule's scores | A-OPS, Konyushkova et al. 2021; GP-UCB, Srinivas et al. 2010 |

Every rule deploys the arm with the highest posterior mean under the empirical-Bayes prior of
:func:`posterior_mean`, a hierarchical Beta-Bernoulli model (``offline_prior``: the highest GP posterior mean), ties broken at random.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RULES: dict[str, str] = {
    "uniform": "round-robin over the checkpoints",
    "successive_halving": "equal rounds over the survivors; the better half survives each round (Karnin et al. 2013)",
    "thompson": "Thompson sampling from Beta-Bernoulli posteriors",
    "top_two_thompson": "top-two Thompson sampling, for identifying the best arm (Russo 2016)",
    "offline_prior": "GP-UCB with a prior mean from an offline rule's scores (A-OPS-like)",
}
# Pre-registered constants (docs/selection.md, "The robot check").
DEFAULT_CONFIDENCE = 0.95  # early stop: P(best) at or above this
INTERVAL_LEVEL = 0.90  # the reported interval of the deployed arm's success
TOP_TWO_BETA = 0.5  # Russo 2016's default share of the leader
PRIOR_SCALE = 0.2  # offline_prior: prior means span base +- PRIOR_SCALE / 2 over the rank-normalised scores
GP_SD = 0.25  # offline_prior: prior sd of an arm's success around its prior mean
GP_LENGTH = 0.5  # offline_prior: squared-exponential length scale, in checkpoint spacings
GP_NOISE_VAR = 0.25  # offline_prior: per-episode outcome variance (the Bernoulli maximum)
UCB_SD = 2.0  # offline_prior: the upper bound is the posterior mean plus this many sd
PROB_BEST_SAMPLES = 4000  # Monte-Carlo draws of P(best)


@dataclass(frozen=True)
class Arms:
    """The outcomes of B checks over K arms.

    Attributes:
        counts: ``(B, K)`` int, trials recorded per arm.
        sums: ``(B, K)`` float, sum of the outcomes (each in [0, 1]) per arm.
        available: ``(B, K)`` bool or None (all): arms that may still be proposed (the replay marks an arm whose
            pool of archived episodes is used up).
    """

    counts: np.ndarray
    sums: np.ndarray
    available: np.ndarray | None = None

    @staticmethod
    def empty(k: int, batch: int = 1) -> Arms:
        """No trials yet on ``k`` arms, for ``batch`` checks."""
        return Arms(np.zeros((batch, k), np.int64), np.zeros((batch, k), np.float64))

    @staticmethod
    def from_trials(k: int, arms: Sequence[int], outcomes: Sequence[float]) -> Arms:
        """One check's state (B = 1) from its trials: arm indices in ``[0, k)`` and outcomes in [0, 1]."""
        counts = np.zeros((1, k), np.int64)
        sums = np.zeros((1, k), np.float64)
        np.add.at(counts[0], np.asarray(arms, np.int64), 1)
        np.add.at(sums[0], np.asarray(arms, np.int64), np.asarray(outcomes, np.float64))
        return Arms(counts, sums)

    def mask(self) -> np.ndarray:
        """``(B, K)`` bool: the arms that may be proposed."""
        return np.ones(self.counts.shape, bool) if self.available is None else self.available


def _argmax_masked(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    # (B, K) -> (B,): the first maximum among the masked arms (the first arm when a row has none).
    return np.argmax(np.where(mask, values, -np.inf), axis=1)


def _argmax_random_ties(values: np.ndarray, rng: np.random.Generator, mask: np.ndarray | None = None) -> np.ndarray:
    # (B, K) -> (B,): a maximum chosen uniformly at random among ties (a tiny random key breaks them).
    v = values if mask is None else np.where(mask, values, -np.inf)
    top = v >= v.max(axis=1, keepdims=True) - 1e-12
    return np.argmax(np.where(top, rng.random(v.shape), -1.0), axis=1)


# The hierarchical prior's grid: the arms' success rates are Beta(m s, (1 - m) s) draws, with the mean m uniform
# over (0, 1) and the strength s log-uniform over [1, 200] pseudo-episodes (both on a grid).
_GRID_M = (np.arange(20) + 0.5) / 20
_GRID_S = np.geomspace(1.0, 200.0, 12)
GRID_A = (_GRID_M[:, None] * _GRID_S[None, :]).ravel()  # (G,)
GRID_B = ((1 - _GRID_M[:, None]) * _GRID_S[None, :]).ravel()


def hyper_posterior(arms: Arms) -> np.ndarray:
    """``(B, G)``: the posterior weight of each hyperparameter pair ``(GRID_A[g], GRID_B[g])`` of each check.

    The hierarchical (beta-binomial) model: every arm's success rate is a draw from one Beta(a, b) shared by the
    check's arms, the outcomes Bernoulli given it. The weight of ``(a, b)`` is its marginal likelihood over the
    arms, ``prod_k B(a + s_k, b + f_k) / B(a, b)`` (s, f: successes, failures), under a flat hyperprior on the
    grid (Gelman et al. 2013, Bayesian Data Analysis, Sec. 5.3). Integrating over (a, b), rather than plugging in
    a point estimate, keeps the interval honest when few episodes say little about how much the arms differ."""
    from scipy.special import gammaln

    s = arms.sums[:, None, :]
    f = (arms.counts - arms.sums)[:, None, :]
    a, b = GRID_A[None, :, None], GRID_B[None, :, None]
    # log B(a + s, b + f) - log B(a, b), with log B(x, y) = lgamma(x) + lgamma(y) - lgamma(x + y); the log B(a, b)
    # of the grid is computed once.
    log_b0 = gammaln(GRID_A) + gammaln(GRID_B) - gammaln(GRID_A + GRID_B)
    loglik = (gammaln(a + s) + gammaln(b + f) - gammaln(a + b + s + f)).sum(axis=2) - arms.counts.shape[1] * log_b0
    w = np.exp(loglik - loglik.max(axis=1, keepdims=True))
    return w / w.sum(axis=1, keepdims=True)


def posterior_mean(arms: Arms, weights: np.ndarray | None = None) -> np.ndarray:
    """``(B, K)``: each arm's posterior mean success under the hierarchical prior (:func:`hyper_posterior`).

    Every arm is shrunk toward what the check's other arms say, by as much as their spread allows: the
    winner's-curse correction (Efron 2011, "Tweedie's formula and selection bias"; a Bayesian posterior under a
    prior that fits the arms is unaffected by selecting the largest, Dawid 1994, "Selection paradoxes of Bayesian
    inference"). ``weights``: :func:`hyper_posterior`'s, when the caller has them."""
    w = hyper_posterior(arms) if weights is None else weights
    a, b = GRID_A[None, :, None], GRID_B[None, :, None]
    means = (a + arms.sums[:, None, :]) / (a + b + arms.counts[:, None, :])  # (B, G, K)
    return np.einsum("bg,bgk->bk", w, means)


def posterior_draws(arms: Arms, rng: np.random.Generator, samples: int,
                    weights: np.ndarray | None = None) -> np.ndarray:
    """``(S, B, K)`` joint draws of the arms' success rates from the hierarchical posterior: a hyperparameter pair
    per draw and check (shared by the arms), then each arm's Beta(a + s, b + f)."""
    w = hyper_posterior(arms) if weights is None else weights
    cum = np.cumsum(w, axis=1)
    u = rng.random((samples, w.shape[0], 1))
    g = np.minimum((u > cum[None]).sum(axis=2), len(GRID_A) - 1)  # (S, B): inverse-CDF draws of the grid index
    a, b = GRID_A[g][..., None], GRID_B[g][..., None]
    return rng.beta(a + arms.sums[None], b + (arms.counts - arms.sums)[None])


def _uniform(arms: Arms, rng: np.random.Generator) -> np.ndarray:
    return _argmax_masked(-arms.counts.astype(np.float64), arms.mask())


def _thompson(arms: Arms, rng: np.random.Generator) -> np.ndarray:
    # Thompson 1933 with a uniform Beta(1, 1) prior per arm (Chapelle and Li 2011).
    draw = rng.beta(1.0 + arms.sums, 1.0 + arms.counts - arms.sums)
    return _argmax_masked(draw, arms.mask())


def _top_two_thompson(arms: Arms, rng: np.random.Generator, tries: int = 64) -> np.ndarray:
    # Russo 2016 ("Simple Bayesian algorithms for best-arm identification"): the leader I of one posterior draw
    # with probability beta; otherwise redraw until another arm leads and play that one. The redraws are
    # vectorised: ``tries`` draws at once, the first whose leader differs from I (I again if none does).
    mask = arms.mask()
    a, b = 1.0 + arms.sums, 1.0 + arms.counts - arms.sums
    leader = _argmax_masked(rng.beta(a, b), mask)
    draws = rng.beta(a[None], b[None], size=(tries, *a.shape))  # (tries, B, K)
    leaders = np.argmax(np.where(mask[None], draws, -np.inf), axis=2)  # (tries, B)
    other = leaders != leader[None]
    first = np.argmax(other, axis=0)
    challenger = np.where(other.any(axis=0), leaders[first, np.arange(len(leader))], leader)
    return np.where(rng.random(len(leader)) < TOP_TWO_BETA, leader, challenger)


def halving_schedule(k: int, budget: int) -> tuple[list[int], list[int]]:
    """Successive halving's rounds (Karnin et al. 2013, "Almost optimal exploration in multi-armed bandits").

    Round r keeps ``S_r`` arms (``S_0 = k``, ``S_{r+1} = ceil(S_r / 2)``, until one remains) and gives each
    ``max(1, floor(budget / (S_r * R)))`` trials, R the number of rounds; after the last round what budget is
    left goes to the survivor.

    Returns:
        ``(survivors, cumulative)``: the arms kept in each round (length R + 1, ending with 1) and the trials an
        arm that survives round r has had by its end (length R).
    """
    survivors = [k]
    while survivors[-1] > 1:
        survivors.append(math.ceil(survivors[-1] / 2))
    rounds = max(len(survivors) - 1, 1)
    per = [max(1, budget // (s * rounds)) for s in survivors[:-1]] or [budget]
    return survivors, list(np.cumsum(per).astype(int))


def _successive_halving(arms: Arms, rng: np.random.Generator, budget: int) -> np.ndarray:
    # Stateless: the survivors of each round are recovered from the counts. At the end of round r every
    # survivor has exactly cumulative[r] trials; an arm with more has survived it, and the arms still at
    # cumulative[r] have not changed since the round ended, so ranking them by mean repeats the decision then.
    counts, sums, mask = arms.counts, arms.sums, arms.mask()
    bsz, k = counts.shape
    survivors, cumulative = halving_schedule(k, budget)
    alive = np.ones((bsz, k), bool)
    out = np.full(bsz, -1)
    means = sums / np.maximum(counts, 1)
    for r, target in enumerate(cumulative):
        need = alive & (counts < target) & mask
        todo = (out < 0) & need.any(axis=1)
        out = np.where(todo, _argmax_masked(-counts.astype(np.float64), need), out)
        keep = survivors[r + 1] if r + 1 < len(survivors) else 1
        committed = alive & (counts > target)
        score = np.where(committed, np.inf, np.where(alive, means, -np.inf))
        # Top ``keep`` by score, ties to the earlier arm (a stable sort of the negated scores).
        order = np.argsort(-score, axis=1, kind="stable")[:, :keep]
        new = np.zeros_like(alive)
        np.put_along_axis(new, order, True, axis=1)
        alive = new & alive
    last = _argmax_masked(-counts.astype(np.float64), alive & mask)
    fallback = _argmax_masked(-counts.astype(np.float64), mask)  # the survivor is used up (replay only)
    last = np.where((alive & mask).any(axis=1), last, fallback)
    return np.where(out >= 0, out, last)


def rank_scores(scores: Sequence[float] | np.ndarray | None, k: int) -> np.ndarray:
    """An offline rule's scores as ranks in [-0.5, 0.5] (``(k,)`` float; 0 everywhere without scores).

    Ranks, not the scores themselves, because Q-values, FQE estimates and TD errors are on unrelated scales.
    Non-finite scores (a rule's excluded checkpoints, ``-inf``) rank lowest; ties share their mean rank."""
    if scores is None:
        return np.zeros(k)
    s = np.asarray(scores, np.float64)
    if len(s) != k or not np.isfinite(s).any():
        return np.zeros(k)
    from scipy.stats import rankdata

    s = np.where(np.isfinite(s), s, np.nanmin(np.where(np.isfinite(s), s, np.nan)) - 1.0)
    if k == 1 or np.ptp(s) == 0:
        return np.zeros(k)
    return (rankdata(s) - 1) / (k - 1) - 0.5


def gp_posterior(arms: Arms, prior: np.ndarray, positions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and sd of the arms' success under ``offline_prior``'s Gaussian process.

    Prior: mean ``base + PRIOR_SCALE * prior`` (``prior`` the rank scores of :func:`rank_scores`; ``base`` the
    pooled success so far, 0.5 before any trial) and squared-exponential covariance ``GP_SD^2 exp(-d^2 / (2
    GP_LENGTH^2))`` over ``d``, the distance of two checkpoints in checkpoint spacings (A-OPS, Konyushkova et al.
    2021, whose kernel compares the policies' actions on dataset states; the archive keeps no actions, so
    closeness in training time stands in for it). Each trial is a Gaussian observation of its arm's success with
    variance GP_NOISE_VAR. Precision form (Rasmussen and Williams 2006, eq. 2.7-2.8 with repeated inputs):
    ``Sigma = (K^-1 + diag(n / s2))^-1``, ``mu = Sigma (K^-1 m0 + sums / s2)``.

    Args:
        arms: the state (B checks, K arms).
        prior: ``(K,)`` rank scores in [-0.5, 0.5].
        positions: ``(K,)`` checkpoint positions in spacings; default ``0 .. K-1``.

    Returns:
        ``(mean, sd)``, each ``(B, K)`` float64.
    """
    bsz, k = arms.counts.shape
    x = np.arange(k, dtype=np.float64) if positions is None else np.asarray(positions, np.float64)
    kern = GP_SD**2 * np.exp(-((x[:, None] - x[None, :]) ** 2) / (2 * GP_LENGTH**2)) + 1e-6 * np.eye(k)
    kinv = np.linalg.inv(kern)
    n = arms.counts.sum(axis=1)
    base = np.where(n > 0, (arms.sums.sum(axis=1) + 1.0) / (n + 2.0), 0.5)
    m0 = base[:, None] + PRIOR_SCALE * np.asarray(prior, np.float64)[None, :]  # (B, K)
    prec = kinv[None] + np.einsum("bk,kj->bkj", arms.counts / GP_NOISE_VAR, np.eye(k))
    cov = np.linalg.inv(prec)
    rhs = m0 @ kinv.T + arms.sums / GP_NOISE_VAR
    mean = np.einsum("bkj,bj->bk", cov, rhs)
    sd = np.sqrt(np.clip(np.einsum("bkk->bk", cov), 0.0, None))
    return mean, sd


class Rule:
    """An allocation rule: ``propose(arms, rng) -> (B,) int`` (the arm to try next) and ``recommend(arms, rng)
    -> (B,) int`` (the arm to deploy). Build one with :func:`make_rule`."""

    def __init__(self, name: str, budget: int, prior: np.ndarray | None = None, positions: np.ndarray | None = None):
        self.name, self.budget = name, int(budget)
        self.prior, self.positions = prior, positions

    def propose(self, arms: Arms, rng: np.random.Generator) -> np.ndarray:
        """The arm each check tries next, ``(B,)`` int64 in ``[0, K)``."""
        if self.name == "uniform":
            return _uniform(arms, rng)
        if self.name == "thompson":
            return _thompson(arms, rng)
        if self.name == "top_two_thompson":
            return _top_two_thompson(arms, rng)
        if self.name == "successive_halving":
            return _successive_halving(arms, rng, self.budget)
        mean, sd = gp_posterior(arms, self._prior(arms), self.positions)
        return _argmax_masked(mean + UCB_SD * sd, arms.mask())

    def recommend(self, arms: Arms, rng: np.random.Generator) -> np.ndarray:
        """The arm each check deploys, ``(B,)`` int64: the highest posterior mean (ties at random)."""
        if self.name == "offline_prior":
            mean, _ = gp_posterior(arms, self._prior(arms), self.positions)
            return _argmax_random_ties(mean, rng)
        return _argmax_random_ties(posterior_mean(arms), rng)

    def _prior(self, arms: Arms) -> np.ndarray:
        k = arms.counts.shape[1]
        return np.zeros(k) if self.prior is None else np.asarray(self.prior, np.float64)


def make_rule(name: str, budget: int, prior_scores: Sequence[float] | np.ndarray | None = None,
              positions: Sequence[float] | np.ndarray | None = None) -> Rule:
    """The allocation rule ``name`` (one of :data:`RULES`) for a check of ``budget`` episodes.

    Args:
        name: the rule.
        budget: episodes in all (successive halving plans its rounds from it; the others ignore it).
        prior_scores: ``offline_prior`` only: an offline rule's ``(K,)`` scores over the arms, higher preferred
            (:func:`offrl.workflow.rules.rule_scores`); None: a flat prior.
        positions: ``offline_prior`` only: ``(K,)`` checkpoint positions in checkpoint spacings.

    Raises:
        ValueError: an unknown rule or a budget below 1.
    """
    if name not in RULES:
        raise ValueError(f"unknown allocation rule {name!r}: choose one of {', '.join(RULES)}")
    if budget < 1:
        raise ValueError(f"the budget must be at least 1 episode, not {budget}")
    k = None if prior_scores is None else len(prior_scores)
    prior = None if prior_scores is None else rank_scores(prior_scores, k or 0)
    return Rule(name, budget, prior, None if positions is None else np.asarray(positions, np.float64))


def prob_best(arms: Arms, rng: np.random.Generator, samples: int = PROB_BEST_SAMPLES) -> np.ndarray:
    """``(B, K)``: the posterior probability that each arm is the best of the check's arms.

    Monte Carlo over :func:`posterior_draws` (``samples`` joint draws; the share in which the arm's draw is the
    largest); standard error at most ``0.5 / sqrt(samples)``."""
    best = np.argmax(posterior_draws(arms, rng, samples), axis=2)  # (S, B)
    k = arms.counts.shape[1]
    return np.stack([(best == j).mean(axis=0) for j in range(k)], axis=1)


def summarise(arms: Arms, arm: np.ndarray, rng: np.random.Generator, level: float = INTERVAL_LEVEL,
              samples: int = PROB_BEST_SAMPLES) -> dict[str, np.ndarray]:
    """The deployed arm's success estimate, its winner's-curse-corrected interval, and P(it is the best).

    The estimate is its posterior mean under the hierarchical prior fitted across the check's arms
    (:func:`posterior_mean`): shrunk toward the other arms, which corrects the upward bias of picking the
    highest of several noisy means. The interval is that posterior's equal-tailed ``level`` interval, and
    P(best) the share of joint posterior draws in which the arm is the largest, both from ``samples`` draws of
    :func:`posterior_draws` (Monte-Carlo error of a quantile about ``0.01`` at 4,000 draws).

    Args:
        arms: the state (B checks, K arms).
        arm: ``(B,)`` int, the deployed arm of each check.
        rng: the draws' generator.
        level: the interval's coverage.
        samples: posterior draws (at least 100).

    Returns:
        ``{"estimate", "low", "high", "prob_best", "raw_mean", "trials"}``, each ``(B,)``: the shrunk estimate,
        the interval, P(best), the arm's plain mean (NaN untried) and its number of trials.
    """
    rows = np.arange(len(arm))
    w = hyper_posterior(arms)
    draws = posterior_draws(arms, rng, samples, w)  # (S, B, K)
    mine = draws[:, rows, arm]  # (S, B)
    tail = (1 - level) / 2
    n = arms.counts[rows, arm]
    return {
        "estimate": posterior_mean(arms, w)[rows, arm],
        "low": np.quantile(mine, tail, axis=0),
        "high": np.quantile(mine, 1 - tail, axis=0),
        "prob_best": (np.argmax(draws, axis=2) == arm[None]).mean(axis=0),
        "raw_mean": np.where(n > 0, arms.sums[rows, arm] / np.maximum(n, 1), np.nan),
        "trials": n,
    }
