"""Behaviour regimes: each one's documented statistical property, determinism, and the dataset metadata."""

from __future__ import annotations

import numpy as np
import pytest

from offrl.envs import behaviour as bh


def _actions(regime: bh.Regime, episodes: int, horizon: int, seed: int = 0, act_dim: int = 4):
    """Executed actions (before clipping) against a zero expert: (episodes, horizon, act_dim), and the kinds."""
    rng = np.random.default_rng(seed)
    out = np.empty((episodes, horizon, act_dim))
    kinds, switches = [], []
    for e in range(episodes):
        ep = bh.EpisodeBehaviour(regime, act_dim, horizon, rng)
        kinds.append(ep.kind)
        switches.append(ep.switch_step)
        for t in range(horizon):
            out[e, t] = ep.act(np.zeros(act_dim), t)
    return out, kinds, switches


def test_ar1_is_stationary_with_geometric_autocorrelation():
    rng = np.random.default_rng(0)
    rho, sigma, n, chains = 0.9, 0.5, 400, 200
    x = rng.standard_normal(chains) * sigma
    path = np.empty((n, chains))
    for t in range(n):
        path[t] = x
        x = bh.ar1_step(x, rho, sigma, rng)
    # Stationary from the start: same std at the first and the last step (80,000 draws in all).
    assert path[0].std() == pytest.approx(sigma, rel=0.15)
    assert path.std() == pytest.approx(sigma, rel=0.03)
    for lag in (1, 5, 10):
        corr = np.mean(path[:-lag] * path[lag:]) / path.var()
        assert corr == pytest.approx(rho**lag, abs=0.03)


def test_white_regime_reproduces_the_first_collector_draws():
    # offrl's first collector drew rng.normal(0, sigma, act_dim) once per step: old seeds give old data.
    regime = bh.make_regime("white")
    acts, kinds, _ = _actions(regime, 2, 5, seed=3)
    rng = np.random.default_rng(3)
    expected = np.stack([rng.normal(0.0, 0.8, 4) for _ in range(10)]).reshape(2, 5, 4)
    np.testing.assert_array_equal(acts, expected)
    assert kinds == ["white", "white"]
    assert bh.make_regime("white", 0.0).sigma == 0.0


def test_correlated_deviation_is_slow_and_its_std_varies_between_episodes():
    regime = bh.make_regime("correlated")
    acts, _, _ = _actions(regime, 300, 60, seed=1)
    dev = acts  # zero expert: the action is the deviation plus the jitter
    # Lag-1 correlation of a deviation with std s ~ U[0, 0.8] (mean E[s^2] = 0.213) plus jitter 0.1: close to rho.
    lag1 = np.mean(dev[:, :-1] * dev[:, 1:]) / np.mean(dev**2)
    expected = bh.CORRELATED_RHO * (4 / 3 * 0.4**2) / (4 / 3 * 0.4**2 + bh.JITTER_SIGMA**2)
    assert lag1 == pytest.approx(expected, abs=0.03)
    # Per-episode std ~ U[0, 2 sigma]: some episodes are near-clean, others sloppy.
    per_episode = dev.std(axis=(1, 2))
    assert per_episode.min() < 0.2 and per_episode.max() > 0.6
    assert np.mean(dev**2) == pytest.approx(4 / 3 * 0.4**2 + 0.1**2, rel=0.15)


def test_mixed_proportions_and_kinds():
    regime = bh.make_regime("mixed")
    horizon = 40
    acts, kinds, switches = _actions(regime, 2000, horizon, seed=2)
    counts = np.array([kinds.count(k) for k in bh.KINDS]) / len(kinds)
    # Binomial standard error at n = 2,000 is at most 0.011; allow 4 of them.
    np.testing.assert_allclose(counts, bh.MIXED_PROPORTIONS, atol=0.045)
    for kind, switch in zip(kinds, switches, strict=True):
        if kind == "partial":
            assert 0 <= switch < horizon
        else:
            assert switch is None
    # Expert steps stay near the (zero) expert action: deviation std 0.1 plus jitter 0.1.
    expert_steps = acts[[k == "expert" for k in kinds]]
    assert expert_steps.std() == pytest.approx(np.hypot(0.1, 0.1), rel=0.1)
    explore_steps = acts[[k == "exploratory" for k in kinds]]
    assert explore_steps.std() == pytest.approx(bh.EXPLORE_SIGMA, rel=0.1)


def test_regime_determinism_for_a_seed():
    for name in bh.REGIMES:
        a, k, _ = _actions(bh.make_regime(name), 5, 20, seed=7)
        b, k2, _ = _actions(bh.make_regime(name), 5, 20, seed=7)
        c, _, _ = _actions(bh.make_regime(name), 5, 20, seed=8)
        np.testing.assert_array_equal(a, b)
        assert k == k2
        assert not np.array_equal(a, c)


def test_regime_errors_name_the_fix():
    with pytest.raises(ValueError, match="white, correlated, mixed"):
        bh.make_regime("pink")
    with pytest.raises(ValueError, match="noise_sigma"):
        bh.make_regime("correlated", -0.1)
    with pytest.raises(ValueError, match="noise_sigma"):
        bh.make_regime("white", float("nan"))


def test_regime_info_records_every_parameter():
    assert bh.make_regime("white").to_info() == {"regime": "white", "sigma": 0.8}
    info = bh.make_regime("mixed").to_info()
    assert info["regime"] == "mixed" and info["proportions"] == dict(zip(bh.KINDS, bh.MIXED_PROPORTIONS, strict=True))
    assert {"sigma", "rho", "jitter", "explore_sigma"} <= set(info)


@pytest.mark.sim
def test_collected_mixed_dataset_metadata_and_determinism(tmp_path):
    pytest.importorskip("metaworld")
    from offrl.data import load_dataset
    from offrl.data.collect import collect

    ds = collect("reach-v3", 6, tmp_path / "a.h5", horizon=30, seed=4, progress=False, regime="mixed")
    again = collect("reach-v3", 6, tmp_path / "b.h5", horizon=30, seed=4, progress=False, regime="mixed")
    np.testing.assert_array_equal(ds.actions, again.actions)
    meta = load_dataset(tmp_path / "a.h5").metadata
    assert meta["regime"] == "mixed" and meta["behaviour"]["regime"] == "mixed"
    assert meta["noise_sigma"] == bh.EXPERT_SIGMA
    assert len(meta["episode_kinds"]) == 6 and set(meta["episode_kinds"]) <= set("epx")
    assert sum(meta["episode_kind_counts"].values()) == 6
    assert ds.actions.shape == (len(ds), 4) and np.all(np.abs(ds.actions) <= 1.0)
    white = collect("reach-v3", 2, tmp_path / "w.h5", horizon=30, seed=4, progress=False, regime="white")
    assert white.metadata["regime"] == "white" and "episode_kinds" not in white.metadata
    default = collect("reach-v3", 2, tmp_path / "c.h5", horizon=30, seed=4, progress=False)
    assert default.metadata["behaviour"] == {"regime": "correlated", "sigma": 0.4, "rho": 0.95, "jitter": 0.1}
