"""Gradient steps per second of the state update under XLA CPU flag sets and matmul precisions, side by side.

Usage: python benchmarks/xla_flags.py [--algos cql,iql] [--steps 500] [--rounds 3] [--smoke]

Each (flag set, algorithm) is timed in its own process (XLA reads ``XLA_FLAGS`` once, at start), and the flag sets
are run in turn, ``--rounds`` times, so a load change on the machine hits every set alike; the median of the
rounds is reported with the spread. Shapes as benchmarks/speed.py's state section: 39-d observations, 4-d actions,
batch 256, every algorithm's defaults. Prints one JSON object: ``results.<algo>.<setting>`` = ``{"steps_per_s":
median, "rounds": [...]}`` and ``ratio_to_default``. Compilation is excluded (time_chunk).

Settings (the question each answers):
- ``default``: no flags, what `offrl train` runs;
- ``xnnpack``: XLA's XNNPACK dot/fusion path (``--xla_cpu_use_xnnpack``), built for small CPU matmuls;
- ``onednn``: oneDNN (``--xla_cpu_use_onednn``), Intel's library, which can use AMX;
- ``no_thunks``: the older, whole-program CPU runtime (``--xla_cpu_use_thunk_runtime=false``);
- ``vector512``: 512-bit vectors (``--xla_cpu_prefer_vector_width=512``) on AVX-512 machines;
- ``bf16_matmul``: ``jax_default_matmul_precision=bfloat16`` (matmul inputs rounded to bfloat16), the
  lower-precision candidate; whether the workflow metrics stay within their noise is a separate measurement;
- ``concurrent``: XLA's scheduler that orders independent operations to run side by side
  (``--xla_cpu_enable_concurrency_optimized_scheduler``), for updates with independent networks (IQL's actor and
  critics);
- ``one_thread``: one intra-op thread (what a study's worker gets, offrl.runtime.SINGLE_THREAD_XLA), the scale
  against which the two-thread default is read;
- ``rbg_prng``: ``jax_default_prng_impl=rbg`` (XLA's RngBitGenerator instead of threefry, whose CPU lowering runs
  as loops inside the step); it changes every random stream, so it is a measurement, not a default.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

SETTINGS: dict[str, dict[str, str]] = {
    "default": {},
    "xnnpack": {"XLA_FLAGS": "--xla_cpu_use_xnnpack=true"},
    "onednn": {"XLA_FLAGS": "--xla_cpu_use_onednn=true"},
    "no_thunks": {"XLA_FLAGS": "--xla_cpu_use_thunk_runtime=false"},
    "vector512": {"XLA_FLAGS": "--xla_cpu_prefer_vector_width=512"},
    "bf16_matmul": {"JAX_DEFAULT_MATMUL_PRECISION": "bfloat16"},
    "concurrent": {"XLA_FLAGS": "--xla_cpu_enable_concurrency_optimized_scheduler=true"},
    "one_thread": {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"},
    "rbg_prng": {"JAX_DEFAULT_PRNG_IMPL": "rbg"},
}


def child(algo: str, steps: int, smoke: bool) -> None:
    """Time one algorithm's compiled chunk in this process and print ``{"steps_per_s": ...}``."""
    sys.path.insert(0, str(Path(__file__).parent))
    import jax
    from timing import state_data, time_chunk

    from offrl.agents import CONFIGS, get_agent
    from offrl.training.train import make_train_chunk

    agent = CONFIGS[algo]()
    if smoke:  # every network tiny, as speed.py's --smoke (IQL's value network included)
        agent = dataclasses.replace(agent, **{f.name: (8,) for f in dataclasses.fields(agent)
                                              if f.name.endswith("_hidden_dims")})
    data = state_data(512 if smoke else 7500, 39, 4, algo, agent)
    state = get_agent(algo).init(agent, 39, 4, jax.random.PRNGKey(0))
    chunk = make_train_chunk(algo, agent, 256, steps)
    print(json.dumps(time_chunk(chunk, state, data, steps)[1]))


def measure(setting: str, algo: str, steps: int, smoke: bool) -> float | None:
    """steps/s of ``algo`` under ``setting`` in a fresh process; None (and the error on stderr) if it failed."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    for key, value in SETTINGS[setting].items():
        env[key] = f"{env.get(key, '')} {value}".strip() if key == "XLA_FLAGS" else value
    cmd = [sys.executable, __file__, "--child", algo, "--steps", str(steps)] + (["--smoke"] if smoke else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"{setting}/{algo} failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])["steps_per_s"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algos", default="cql,iql", help="comma-separated algorithms")
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated settings (default: all)")
    p.add_argument("--steps", type=int, default=500, help="timed gradient steps per measurement")
    p.add_argument("--rounds", type=int, default=3, help="times each setting is measured, in turn")
    p.add_argument("--smoke", action="store_true", help="tiny networks, 2 steps, 1 round (numbers meaningless)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.child, args.steps, args.smoke)
    steps, rounds = (2, 1) if args.smoke else (args.steps, args.rounds)
    algos, settings = args.algos.split(","), args.settings.split(",")
    unknown = set(settings) - set(SETTINGS)
    if unknown:
        raise SystemExit(f"unknown settings {sorted(unknown)}: choose from {list(SETTINGS)}")
    raw: dict[str, dict[str, list[float | None]]] = {a: {s: [] for s in settings} for a in algos}
    for r in range(rounds):
        for algo in algos:
            for setting in settings:
                raw[algo][setting].append(measure(setting, algo, steps, args.smoke))
                print(f"round {r + 1}/{rounds} {algo} {setting}: {raw[algo][setting][-1]}", file=sys.stderr)
    results: dict[str, dict] = {}
    for algo in algos:
        results[algo] = {}
        for setting in settings:
            ok = [x for x in raw[algo][setting] if x is not None]
            results[algo][setting] = {"steps_per_s": statistics.median(ok) if ok else None,
                                      "rounds": raw[algo][setting]}
        base = results[algo].get("default", {}).get("steps_per_s")
        for setting in settings:
            v = results[algo][setting]["steps_per_s"]
            results[algo][setting]["ratio_to_default"] = round(v / base, 3) if base and v else None
    print(json.dumps({"steps": steps, "rounds": rounds, "load_average_at_end": os.getloadavg(),
                      "settings": {s: SETTINGS[s] for s in settings}, "results": results}, indent=2))


if __name__ == "__main__":
    main()
