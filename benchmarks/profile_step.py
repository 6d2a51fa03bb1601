"""Where the time of one state gradient step goes: XLA's own per-operation profile of the compiled chunk, grouped.

Usage: python benchmarks/profile_step.py [--algos iql,cql_calibrated,cql] [--steps 200] [--image 48] [--smoke]

For each benchmark setting of benchmarks/speed.py (``iql`` = the default job's IQL, ``cql_calibrated`` = Cal-QL,
``cql`` = the paper's CQL(H)), the state chunk `offrl train` compiles (with ``--image SIZE``: the image steps, a
Python loop of jitted steps on SIZE x SIZE x 3 frames, batch 256) (one ``lax.scan`` of ``--steps`` gradient
steps, minibatch sampling included) is compiled, run once, then run once more under ``jax.profiler``. The trace's
per-operation events (one per XLA CPU thunk) are summed by kind:

- ``matmul``: ``dot`` ops and the XNNPACK/YNNPACK fusions that XLA builds around them (``*nn_fusion``),
- ``gather``: the minibatch draw from the device-resident data,
- ``elementwise``: every other fusion (activations, losses, Adam, the Polyak averages),
- ``copy``, ``other``, and ``control``: loops inside the step (on the CPU, threefry's random-number loops of
  the minibatch draw and the agents' sampling); a loop's span includes its body, so the groups can overlap there;

``untraced_ms`` is the wall time the events do not cover (thunk dispatch between operations). Also printed:
XLA's cost-analysis FLOPs of one step, the FLOP rate the step achieves, the rate the matmul operations alone
achieve (all FLOPs over matmul time: an upper bound, elementwise FLOPs are few), and the machine's dense float32
matmul rate at 2048^2 and at the layers' own shape (256 x 256 x 256), so that "how far from the hardware" has a
number. The trace's own overhead makes ``steps_per_s_traced`` a little lower than benchmarks/speed.py's.
Prints one JSON object; progress on stderr. Needs an otherwise idle machine, like every speed benchmark.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import jax
from speed import ALGOS, matmul_gflops, offrl_config, step_flops
from timing import device_data, random_dataset, state_data, time_chunk

from offrl.agents import get_agent
from offrl.runtime import reexec_with_hugepage_malloc
from offrl.training.train import make_train_chunk

KINDS = ("matmul", "gather", "elementwise", "copy", "control", "other")
"""The groups of XLA operations the profile reports (module docstring)."""


def kind_of(op: str) -> str:
    """The group of an XLA CPU operation, from its name in the trace (``dot.138``, ``ynn_fusion.13``, ...)."""
    base = op.removeprefix("end: ").split(".")[0]
    if base == "dot" or base.endswith("nn_fusion"):
        return "matmul"
    if "gather" in base:
        return "gather"
    if base.endswith("_fusion") or base.startswith("wrapped_"):
        return "elementwise"
    if base == "copy":
        return "copy"
    if base in ("while", "call", "conditional"):
        return "control"
    return "other"


def op_times(trace_dir: Path) -> dict[str, float]:
    """Milliseconds per operation name, summed over the trace's complete events of XLA operations (the runtime's
    own spans, Python frames and the executor's wrappers left out)."""
    files = sorted(trace_dir.rglob("*.trace.json.gz"))
    if not files:
        raise RuntimeError(f"jax.profiler wrote no trace under {trace_dir}")
    events = json.load(gzip.open(files[-1]))["traceEvents"]
    out: collections.Counter = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or name.startswith("$") or "::" in name or name[:1].isupper():
            continue
        out[name] += e.get("dur", 0) / 1000.0
    return dict(out)


def profile(name: str, steps: int, hidden: tuple[int, ...] | None, image: int | None = None) -> dict:
    """The grouped profile of one benchmark setting's state chunk, or with ``image`` (the frame size) its image
    steps (a Python loop of jitted steps, as `offrl train --obs image` runs them) (module docstring)."""
    algo, agent = offrl_config(name)
    if hidden is not None:
        import dataclasses

        agent = dataclasses.replace(agent, **{f.name: hidden for f in dataclasses.fields(agent)
                                              if f.name.endswith("_hidden_dims")})
    small = hidden is not None
    batch = 16 if small and image else 256
    if image:
        ds = random_dataset(200 if small else 5000, 39, 4, image_size=image)
        data, spec = device_data(ds, algo, agent, "image")
    else:
        data, spec = state_data(512 if small else 7500, 39, 4, algo, agent), 39
    state = get_agent(algo).init(agent, spec, 4, jax.random.PRNGKey(0))
    flops, source = step_flops(algo, agent, state, data, batch)
    chunk = make_train_chunk(algo, agent, batch, steps)
    state, timing = time_chunk(chunk, state, data, steps)
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp)
        t = time.perf_counter()
        state, _ = chunk(state, data, jax.random.PRNGKey(3))
        jax.block_until_ready(state)
        wall_ms = (time.perf_counter() - t) * 1000.0
        jax.profiler.stop_trace()
        ops = op_times(Path(tmp))
    by_kind = {k: 0.0 for k in KINDS}
    for op, ms in ops.items():
        by_kind[kind_of(op)] += ms
    traced = sum(by_kind.values())
    per_step = {k: round(v / steps, 4) for k, v in by_kind.items()}
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:8]
    result = {
        "algo": algo,
        "steps_per_s": timing["steps_per_s"],
        "steps_per_s_traced": round(steps / wall_ms * 1000.0, 2),
        "step_ms": round(wall_ms / steps, 4),
        "ms_per_step_by_kind": per_step,
        "untraced_ms_per_step": round(max(wall_ms - traced, 0.0) / steps, 4),
        "share_by_kind": {k: round(v / wall_ms, 3) for k, v in by_kind.items()},
        "top_ops_ms_per_step": {op: round(ms / steps, 4) for op, ms in top},
        "step_flops": flops,
        "flops_source": source,
    }
    if flops:
        result["achieved_gflops"] = round(flops * steps / wall_ms / 1e6, 1)
        if by_kind["matmul"] > 0:
            result["gflops_over_matmul_time"] = round(flops * steps / by_kind["matmul"] / 1e6, 1)
    print(f"[profile] {name}: {result['steps_per_s_traced']} steps/s traced, {per_step}", file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algos", default=",".join(ALGOS), help=f"comma-separated settings of {ALGOS}")
    p.add_argument("--steps", type=int, default=200, help="gradient steps in the profiled chunk")
    p.add_argument("--image", type=int, default=None, metavar="SIZE",
                   help="profile the image step on SIZE x SIZE x 3 frames (48: benchmarks/speed.py's) instead of state")
    p.add_argument("--smoke", action="store_true", help="16-wide networks, 2 steps (numbers meaningless)")
    p.add_argument("--no-hugepages", action="store_true",
                   help="do not restart with glibc's huge-page malloc (offrl.runtime), which offrl train uses")
    args = p.parse_args(argv)
    if not (args.no_hugepages or args.smoke):  # profile the process `offrl train` runs (docs/speed.md)
        reexec_with_hugepage_malloc([os.path.abspath(__file__)])
    steps, hidden = (2, (16, 16)) if args.smoke else (args.steps, None)
    image = (16 if args.smoke else args.image) if args.image else None
    repeats = 2 if args.smoke else 10
    out = {
        "steps": steps,
        "matmul_gflops_2048": round(matmul_gflops(256 if args.smoke else 2048, repeats), 1),
        "matmul_gflops_256": round(matmul_gflops(256, repeats, batch=64), 1),
        "observations": f"image {image}x{image}x3" if image else "state 39-d",
        "results": {name: profile(name, steps, hidden, image) for name in args.algos.split(",")},
        "devices": [str(d) for d in jax.devices()],
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
