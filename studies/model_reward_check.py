"""How a MOPO/COMBO run's selected model predicts the reward on its dataset's transitions (analysis only).

    python studies/model_reward_check.py RUN_DIR STEP

prints, for the transitions with a non-zero reward and for 4,000 transitions with reward 0: the elites' mean
predicted reward, their mean predicted standard deviation, and the mean of a sampled reward clipped to [0, 1]
(what a rollout uses, ``offrl.agents.model_based.model_rollout``), then the data's mean reward. It measured the
reward head's failure on the sparse dev tasks (docs/model-based.md, "Measured"); runs from 2026-12-04 log the
same failure as ``model_reward_mse_rewarded``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from offrl.agents import model_based as mb
from offrl.data import load_dataset
from offrl.training.policy import config_from_dict, load_state


def main(run: str, step: int) -> None:
    cfg = json.loads((Path(run) / "config.json").read_text())
    state, _ = load_state(run, step)
    ds = load_dataset(cfg["dataset"]["path"])
    mean, std = np.array(cfg["normalizer"]["mean"]), np.array(cfg["normalizer"]["std"])
    obs = ((ds.observations - mean) / std).astype(np.float32)
    act = ds.actions.astype(np.float32)
    model = mb._networks(config_from_dict(cfg["algo"], cfg["agent"]), obs.shape[1], act.shape[1])[0]
    rng = np.random.default_rng(0)
    zero = np.where(ds.rewards == 0)[0]
    rows = {"reward != 0": np.where(ds.rewards != 0)[0], "reward 0": rng.choice(zero, min(4000, len(zero)), False)}
    elites = np.asarray(state.elite_idx)
    for name, idx in rows.items():
        mu, log_var = model.apply(state.selected_model_params, jnp.asarray(obs[idx]), jnp.asarray(act[idx]))
        mu_r, sd_r = np.asarray(mu)[elites, :, -1], np.exp(0.5 * np.asarray(log_var)[elites, :, -1])
        sample = np.clip(mu_r + sd_r * rng.standard_normal(mu_r.shape), 0.0, 1.0)
        print(f"{name}: {len(idx)} transitions, predicted reward {mu_r.mean():.4f} (std {sd_r.mean():.4f}), "
              f"clipped sample {sample.mean():.4f}")
    print(f"data mean reward {ds.rewards.mean():.4f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
