"""Start-up time of the `offrl` command: how long a user waits for `offrl --help` and `offrl select RUN`.

Usage: python benchmarks/startup.py [--repeats 5]
Prints one JSON object. Each command runs ``--repeats`` times as a fresh subprocess (wall clock, from spawn to
exit); ``best_s`` is the fastest run, the one least disturbed by other work on the machine, ``median_s`` the
typical one. Measured:

- ``python``: the bare interpreter (``python -c pass``), the floor under every command;
- ``import_cli``: ``python -c "import offrl.cli"``, the imports every command pays before it starts;
- ``help``: ``offrl --help``;
- ``select``: ``offrl select RUN`` on a tiny CQL run (20 gradient steps, 16x16 networks, a checkpoint every 5
  steps) that the script trains in a temporary folder first; it diagnoses the run and writes diagnosis.json;
- ``import_train``: ``python -c "import offrl.training.train"``, what train, tune, sweep and workflow import
  before they parse their flags (jax, flax, optax, orbax: the agents' config classes live beside their code);
- ``train_help``: ``offrl train --help`` (help is never restarted);
- ``train_error`` and ``train_error_no_reexec``: ``offrl train --out DIR`` without a dataset (it stops with
  "--dataset is required", status 1, after the imports), with and without (``OFFRL_HUGEPAGES=0``) the restart
  with huge-page malloc that training commands make (:mod:`offrl.runtime`); the pair shows what the restart
  costs.

The console script next to this interpreter (``.venv/bin/offrl``) is timed when it exists, else
``python -m offrl.cli``. The load average before and after is recorded: on a busy machine the times are upper
bounds, and ``notes`` says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def tiny_run(folder: Path) -> Path:
    """A CQL run of 20 steps on 6 random episodes, 4 checkpoints: enough for `offrl select` to diagnose."""
    from offrl.agents.cql import CQLConfig
    from offrl.data import make_dataset, save_dataset
    from offrl.training.train import TrainConfig, train

    rng = np.random.default_rng(0)
    episodes, length, obs_dim, act_dim = 6, 10, 3, 2
    obs = rng.normal(size=(episodes, length + 1, obs_dim)).astype(np.float32)
    rewards = np.zeros((episodes, length), np.float32)
    terminals = np.zeros((episodes, length), bool)
    timeouts = np.zeros((episodes, length), bool)
    rewards[::2, -1] = terminals[::2, -1] = 1  # every other episode succeeds at its last step
    timeouts[1::2, -1] = True
    arrays = {
        "observations": obs[:, :-1].reshape(-1, obs_dim),
        "next_observations": obs[:, 1:].reshape(-1, obs_dim),
        "actions": rng.uniform(-1, 1, (episodes * length, act_dim)).astype(np.float32),
        "rewards": rewards.ravel(),
        "terminals": terminals.ravel(),
        "timeouts": timeouts.ravel(),
    }
    data = save_dataset(folder / "tiny.h5", make_dataset(arrays, {"task": "toy"}))
    agent = CQLConfig(critic_hidden_dims=(16, 16), actor_hidden_dims=(16, 16), num_action_samples=2, bc_steps=0)
    config = TrainConfig(dataset=data, out=folder / "run", steps=20, checkpoint_every=5, chunk_steps=5,
                         batch_size=16, progress=False, agent=agent)
    return train(config)


def time_command(
    argv: list[str], repeats: int, env: dict[str, str] | None = None, status: int = 0
) -> dict[str, float]:
    """Best and median wall-clock seconds of ``repeats`` runs of ``argv``; raises if one exits with another status
    than ``status``."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        times.append(time.perf_counter() - t)
        if proc.returncode != status:
            raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}: {proc.stderr.decode()[-500:]}")
    return {"best_s": round(min(times), 3), "median_s": round(statistics.median(times), 3)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5, help="runs of each command (best and median reported)")
    args = p.parse_args()

    script = Path(sys.executable).parent / "offrl"
    offrl = [str(script)] if script.is_file() else [sys.executable, "-m", "offrl.cli"]
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="offrl-startup-") as tmp:
        t = time.perf_counter()
        run = tiny_run(Path(tmp))
        make_run_s = time.perf_counter() - t
        no_reexec = {**os.environ, "OFFRL_HUGEPAGES": "0"}
        no_data = str(Path(tmp) / "no-dataset")  # refused before anything is written
        out: dict = {
            "python": time_command([sys.executable, "-c", "pass"], args.repeats),
            "import_cli": time_command([sys.executable, "-c", "import offrl.cli"], args.repeats),
            "help": time_command([*offrl, "--help"], args.repeats),
            "select": time_command([*offrl, "select", str(run)], args.repeats),
            "import_train": time_command([sys.executable, "-c", "import offrl.training.train"], args.repeats),
            "train_help": time_command([*offrl, "train", "--help"], args.repeats),
            "train_error": time_command([*offrl, "train", "--out", no_data], args.repeats, status=1),
            "train_error_no_reexec": time_command([*offrl, "train", "--out", no_data], args.repeats, no_reexec, 1),
        }
    load_end = os.getloadavg()

    from offrl.runtime import hugepage_malloc_env

    cpus = os.cpu_count() or 1
    busy = max(load_start[0], load_end[0]) > 0.5 * cpus
    out["command"] = " ".join(offrl)
    out["repeats"] = args.repeats
    out["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "cpus": cpus,
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in load_start],
        "load_average_at_end": [round(x, 2) for x in load_end],
    }
    out["notes"] = {
        "machine_busy": busy,
        "load": (f"1-minute load average {max(load_start[0], load_end[0]):.2f} on {cpus} CPUs: other work shared "
                 f"the cores, so the times are upper bounds") if busy else "the machine was mostly idle",
        "reexec": "training commands restart once with huge-page malloc here"
        if hugepage_malloc_env() is not None else "no huge-page restart on this machine (see offrl/runtime.py)",
        "make_run_s": round(make_run_s, 1),
        "jax_platforms": os.environ.get("JAX_PLATFORMS"),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
