"""Peak memory (RSS) of `offrl train --obs image` on a large image dataset.

Usage: python benchmarks/image_memory.py --transitions 100000 [--size 48] [--steps 20] [--workdir /tmp/offrl-mem]
       [--smoke]   (16-wide FC layers and batch 16 in the child: checks that the script runs)
Writes a synthetic image dataset (episodes of 150 steps, every state's frame once, frames of a moving square on
a gradient so gzip behaves as on rendered scenes), trains a few CQL steps on it in a child process, and prints
one JSON object: dataset size on disk, frames in memory, wall time, and the child's peak RSS in GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from offrl.data import make_dataset, save_dataset


def synthetic_dataset(n: int, size: int, horizon: int = 150, seed: int = 0):
    rng = np.random.default_rng(seed)
    episodes = -(-n // horizon)
    frames_per_episode = horizon + 1
    m = episodes * frames_per_episode
    base = np.linspace(0, 200, size, dtype=np.float32)[None, :, None] * np.ones((size, 1, 3), np.float32)
    images = np.empty((m, size, size, 3), np.uint8)
    images[:] = base.astype(np.uint8)
    pos = rng.integers(0, size - 6, (m, 2))
    for f in range(m):  # a 6x6 "object" whose position changes from frame to frame
        y, x = pos[f]
        images[f, y:y + 6, x:x + 6] = (200, 30, 30)
    t = np.arange(episodes * horizon)
    image_index = (t // horizon) * frames_per_episode + t % horizon
    state = rng.normal(size=(m, 4)).astype(np.float32)
    timeouts = np.zeros(len(t), bool)
    timeouts[horizon - 1 :: horizon] = True
    terminals = np.zeros(len(t), bool)
    rewards = np.zeros(len(t), np.float32)
    rewards[rng.random(len(t)) < 0.01] = 1.0  # sparse rewards, not ending episodes
    arrays = {
        "observations": state[image_index],
        "next_observations": state[image_index + 1],
        "actions": rng.uniform(-1, 1, (len(t), 4)).astype(np.float32),
        "rewards": rewards,
        "terminals": terminals,
        "timeouts": timeouts,
        "images": images,
        "image_index": image_index,
        "next_image_index": image_index + 1,
    }
    return make_dataset(arrays, {"task": "synthetic"})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--transitions", type=int, default=100_000)
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/offrl-mem"))
    p.add_argument("--smoke", action="store_true",
                   help="train with 16-wide FC layers and batch 16: checks that the script runs (RSS meaningless)")
    args = p.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = args.workdir / f"img_{args.transitions}_{args.size}.h5"
    t = time.perf_counter()
    if not path.exists():
        ds = synthetic_dataset(args.transitions, args.size)
        save_dataset(path, ds)
        frames = ds.images.shape[0]
        del ds
    else:
        import h5py

        with h5py.File(path) as f:
            frames = f["images"].shape[0]
    write_s = time.perf_counter() - t
    run = args.workdir / f"run_{args.transitions}_{args.size}"
    cmd = [sys.executable, "-m", "offrl.cli", "train", "--dataset", str(path), "--out", str(run), "--overwrite",
           "--obs", "image", "--steps", str(args.steps), "--checkpoint-every", str(args.steps),
           "--chunk-steps", str(args.steps), "--no-progress"]
    if args.smoke:
        cmd += ["--batch-size", "16", "--cql.critic-hidden-dims", "16", "16", "--cql.actor-hidden-dims", "16", "16",
                "--eval-transitions", "64"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    train_s = time.perf_counter() - t
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({
        "transitions": args.transitions,
        "frames": frames,
        "image": [args.size, args.size, 3],
        "frames_gb": round(frames * args.size * args.size * 3 / 1e9, 2),
        "file_gb": round(path.stat().st_size / 1e9, 2),
        "write_dataset_s": round(write_s, 1),
        "train_wall_s": round(train_s, 1),
        "train_steps": args.steps,
        "peak_rss_gb": round(peak_kb / 1e6, 2),
    }, indent=2))


if __name__ == "__main__":
    main()
