"""Side-by-side training speed of CQL in offrl and in d3rlpy, on the same shapes, networks and batch size.

Usage: pip install -e '.[bench]'; python benchmarks/speed.py [--steps 500] [--image-steps 20] [--skip-image]
       [--skip-d3rlpy] [--torch-compile]
Prints one JSON object on stdout (progress goes to stderr); docs/speed.md explains what is and is not matched.

Both libraries run CQL with 2 critics, the offrl default network widths and number of CQL action samples,
batch 256, on random data of MetaWorld's shapes: state (39-d observations, 4-d actions) and image (48x48x3
uint8 frames, 4-d actions). Compilation and warm-up are excluded from every number:

* offrl: a compiled chunk of gradient steps (one ``lax.scan`` for state, a Python loop of jitted steps for
  images, as ``offrl train`` does) is run once to compile, then once more timed (benchmarks/timing.py). The
  minibatch is drawn and assembled on the device inside the compiled step, so the number includes sampling.
* d3rlpy: ``CQLConfig(...).create(device="cpu:0")``, a few warm-up ``algo.update(batch)`` calls, then
  ``algo.update`` timed over pre-sampled minibatches (``dataset.sample_transition_batch`` is a Python loop over
  transitions; the state section also reports the rate with sampling included). ``compile_graph=True`` is
  timed as asked, but d3rlpy 2.8.1 only compiles on CUDA devices (``algo.compiled`` is false on a CPU), so on
  a CPU it is the eager path again; ``--torch-compile`` additionally times the eager algorithm with its
  critic and actor gradient functions wrapped in ``torch.compile`` (what compile_graph does on CUDA, minus
  the CUDA graph).

``matmul_gflops`` is the machine's dense float32 matmul rate measured with JAX; ``offrl_fraction_of_matmul`` is
the FLOP/s that offrl's state CQL step achieves (XLA's cost analysis of one step x steps/s) over that rate.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from image_speed import measure as measure_offrl_image
from timing import state_data as shared_state_data
from timing import time_chunk

from offrl.agents import cql
from offrl.runtime import reexec_with_hugepage_malloc
from offrl.training.train import make_batch, make_train_chunk

OBS_DIM, ACT_DIM, IMAGE_SIZE, BATCH = 39, 4, 48, 256
N_STATE, N_IMAGE, EPISODE_LEN = 7500, 5000, 500
D3RLPY_WARMUP = 3


def log(msg: str) -> None:
    print(f"[speed] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------------
# offrl
# ------------------------------------------------------------------------------------------------------------


def state_data(n: int = N_STATE) -> dict[str, jnp.ndarray]:
    """The random state dataset of the other speed benchmarks (benchmarks/timing.py), held on the device."""
    return shared_state_data(n, OBS_DIM, ACT_DIM)


def offrl_state(agent: cql.CQLConfig, steps: int) -> tuple[float, float | None, str]:
    """(steps/s, FLOPs of one gradient step, how they were counted) of offrl's state CQL."""
    data = state_data()
    state = cql.init(agent, OBS_DIM, ACT_DIM, jax.random.PRNGKey(0))
    flops, source = step_flops(agent, state, data)
    chunk = make_train_chunk("cql", agent, BATCH, steps)
    _, timing = time_chunk(chunk, state, data, steps)
    log(f"offrl state: {timing}")
    return timing["steps_per_s"], flops, source


def step_flops(agent: cql.CQLConfig, state: Any, data: dict) -> tuple[float | None, str]:
    """FLOPs of one state CQL gradient step (minibatch gather included) from XLA's cost analysis of the
    compiled step, or an analytic count of the dense layers when the backend gives none."""

    def one_step(state, data, k):  # the step of make_train_chunk
        k_idx, k_upd = jax.random.split(k)
        idx = jax.random.randint(k_idx, (BATCH,), 0, data["rewards"].shape[0])
        return cql.update(state, make_batch(data, idx), k_upd, agent)

    try:
        analysis = jax.jit(one_step).lower(state, data, jax.random.PRNGKey(0)).compile().cost_analysis()
        if isinstance(analysis, list | tuple):
            analysis = analysis[0] if analysis else None
        flops = float(analysis["flops"]) if analysis and analysis.get("flops", 0) > 0 else None
    except Exception as e:  # noqa: BLE001 -- cost analysis is backend-dependent; fall back below
        log(f"XLA cost analysis unavailable ({e!r}); counting dense-layer FLOPs analytically")
        flops = None
    if flops is not None:
        return flops, "xla_cost_analysis"
    return analytic_state_flops(agent), "analytic_dense_layers"


def analytic_state_flops(agent: cql.CQLConfig) -> float:
    """Multiply-adds x 2 of the dense layers in one state CQL step, forward x 3 for forward + backward where
    gradients flow. A lower bound: elementwise work, the optimizer and the gather are left out."""

    def mlp(in_dim: int, hidden: tuple[int, ...], out: int) -> int:
        dims = [in_dim, *hidden, out]
        return sum(2 * a * b for a, b in zip(dims[:-1], dims[1:], strict=True))

    q = mlp(OBS_DIM + ACT_DIM, agent.critic_hidden_dims, 1) * agent.num_critics
    pi = mlp(OBS_DIM, agent.actor_hidden_dims, 2 * ACT_DIM)
    n = agent.num_action_samples
    # Critic loss: Q(s, a_data) + Q at 3 proposals x n samples (trained), target Q(s', pi(s')) (forward only),
    # the policy at s and s' for the proposals and the target (forward only).
    critic = 3 * q * (1 + 3 * n) + q + 3 * pi
    # Actor loss: pi(s) and Q(s, pi(s)) with gradients to the actor.
    actor = 3 * (pi + q)
    return float(BATCH * (critic + actor))


def offrl_image(agent: cql.CQLConfig, steps: int) -> float:
    timing = measure_offrl_image(agent, steps, IMAGE_SIZE, BATCH)
    log(f"offrl image: {timing}")
    return timing["steps_per_s"]


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Dense float32 matmul rate of this machine under JAX: best of ``repeats`` jitted n x n products."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    jax.block_until_ready(f(a, b))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(a, b))
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


# ------------------------------------------------------------------------------------------------------------
# d3rlpy
# ------------------------------------------------------------------------------------------------------------


def offrl_cnn_factory(hidden: tuple[int, ...]):
    """A d3rlpy encoder factory that builds offrl's image networks exactly: the paper's CNN (conv 3x3/16 pad 1,
    ReLU, max-pool 2; twice; conv 3x3/16, ReLU; flatten: 2,304 features at 48x48), then the FC stack
    ``hidden`` with ReLU after each layer; critics concatenate the action to the flat conv features.
    d3rlpy's own PixelEncoderFactory cannot express padding, max-pooling or more than one FC layer."""
    import d3rlpy
    import torch
    from d3rlpy.models.torch import Encoder, EncoderWithAction
    from torch import nn

    def cnn(channels: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
        )

    def fc(in_dim: int) -> nn.Module:
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), nn.ReLU()]
            in_dim = width
        return nn.Sequential(*layers)

    def flat_size(shape) -> int:
        with torch.no_grad():
            return cnn(shape[0])(torch.zeros(1, *shape)).shape[1]

    class CNNEncoder(Encoder):
        def __init__(self, shape):
            super().__init__()
            self.cnn, self.fc = cnn(shape[0]), fc(flat_size(shape))

        def forward(self, x):
            return self.fc(self.cnn(x))

    class CNNEncoderWithAction(EncoderWithAction):
        def __init__(self, shape, action_size: int):
            super().__init__()
            self.cnn, self.fc = cnn(shape[0]), fc(flat_size(shape) + action_size)

        def forward(self, x, action):
            return self.fc(torch.cat([self.cnn(x), action], dim=1))

    @dataclass()
    class OffrlCNNEncoderFactory(d3rlpy.models.EncoderFactory):
        def create(self, observation_shape):
            return CNNEncoder(observation_shape)

        def create_with_action(self, observation_shape, action_size, discrete_action=False):
            assert not discrete_action
            return CNNEncoderWithAction(observation_shape, action_size)

        @staticmethod
        def get_type() -> str:
            return "offrl_cnn"

    return OffrlCNNEncoderFactory()


def d3rlpy_dataset(image: bool):
    import d3rlpy

    rng = np.random.default_rng(0)
    n = N_IMAGE if image else N_STATE
    if image:  # channel-first uint8 frames, as d3rlpy's pixel pipeline expects
        obs = rng.integers(0, 256, (n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    else:
        obs = rng.normal(size=(n, OBS_DIM)).astype(np.float32)
    timeouts = np.zeros(n, np.float32)
    timeouts[EPISODE_LEN - 1 :: EPISODE_LEN] = 1.0
    timeouts[-1] = 1.0
    return d3rlpy.dataset.MDPDataset(
        observations=obs,
        actions=rng.uniform(-1, 1, (n, ACT_DIM)).astype(np.float32),
        rewards=rng.integers(0, 2, (n, 1)).astype(np.float32),
        terminals=np.zeros(n, np.float32),
        timeouts=timeouts,
    )


def d3rlpy_algo(agent: cql.CQLConfig, image: bool, compile_graph: bool, dataset, device: str = "cpu:0"):
    import d3rlpy

    if image:
        actor_enc = offrl_cnn_factory(agent.actor_hidden_dims)
        critic_enc = offrl_cnn_factory(agent.critic_hidden_dims)
        scaler = d3rlpy.preprocessing.PixelObservationScaler()  # uint8 -> [0, 1], as offrl's encoder does
    else:
        actor_enc = d3rlpy.models.VectorEncoderFactory(hidden_units=list(agent.actor_hidden_dims))
        critic_enc = d3rlpy.models.VectorEncoderFactory(hidden_units=list(agent.critic_hidden_dims))
        scaler = None
    algo = d3rlpy.algos.CQLConfig(
        batch_size=BATCH,
        n_action_samples=agent.num_action_samples,
        n_critics=agent.num_critics,
        actor_encoder_factory=actor_enc,
        critic_encoder_factory=critic_enc,
        observation_scaler=scaler,
        gamma=agent.gamma,
        tau=agent.tau,
        actor_learning_rate=agent.actor_lr,
        critic_learning_rate=agent.critic_lr,
        temp_learning_rate=agent.temperature_lr,
        initial_temperature=agent.init_temperature,
        conservative_weight=agent.alpha,
        alpha_learning_rate=0.0,  # a fixed CQL weight, as offrl's default (lagrange=False)
        compile_graph=compile_graph,
    ).create(device=device)
    algo.build_with_dataset(dataset)
    return algo


def time_d3rlpy(algo, batches: list, steps: int, dataset=None) -> float:
    """Steps/s of ``algo.update`` after D3RLPY_WARMUP updates; cycles through pre-sampled ``batches``, or
    samples each minibatch from ``dataset`` inside the timed loop when it is given."""
    for i in range(D3RLPY_WARMUP):
        algo.update(batches[i % len(batches)])
    t = time.perf_counter()
    for i in range(steps):
        algo.update(dataset.sample_transition_batch(BATCH) if dataset is not None else batches[i % len(batches)])
    return steps / (time.perf_counter() - t)


def d3rlpy_side(agent: cql.CQLConfig, image: bool, steps: int, torch_compile: bool) -> dict:
    import torch

    dataset = d3rlpy_dataset(image)
    t = time.perf_counter()
    batches = [dataset.sample_transition_batch(BATCH) for _ in range(min(steps, 8 if image else 64))]
    sample_s = (time.perf_counter() - t) / len(batches)
    out: dict[str, Any] = {"d3rlpy_sample_batch_ms": round(1e3 * sample_s, 2), "presampled_batches": len(batches)}

    algo = d3rlpy_algo(agent, image, False, dataset)
    out["d3rlpy_steps_per_s"] = time_d3rlpy(algo, batches, steps)
    log(f"d3rlpy {'image' if image else 'state'} eager: {out['d3rlpy_steps_per_s']:.2f} steps/s")
    if not image:
        out["d3rlpy_steps_per_s_incl_sampling"] = time_d3rlpy(algo, batches, steps, dataset)
    del algo

    algo = d3rlpy_algo(agent, image, True, dataset)
    out["d3rlpy_compiled_is_compiled"] = bool(algo.compiled)  # d3rlpy 2.8.1: only on CUDA devices
    out["d3rlpy_compiled_steps_per_s"] = time_d3rlpy(algo, batches, steps)
    log(f"d3rlpy compile_graph=True: {out['d3rlpy_compiled_steps_per_s']:.2f} steps/s "
        f"(algo.compiled={algo.compiled})")
    del algo

    out["d3rlpy_torch_compile_steps_per_s"] = None
    if torch_compile:
        # device "cpu", not d3rlpy's usual "cpu:0": under torch.compile, tensors that d3rlpy creates on "cpu:0"
        # inside the traced loss meet parameters on "cpu" and dynamo stops with "Tensor device mismatch".
        algo = d3rlpy_algo(agent, image, False, dataset, device="cpu")
        impl = algo.impl
        impl._compute_critic_grad = torch.compile(impl.compute_critic_grad)
        impl._compute_actor_grad = torch.compile(impl.compute_actor_grad)
        t = time.perf_counter()
        try:
            out["d3rlpy_torch_compile_steps_per_s"] = time_d3rlpy(algo, batches, steps)
        except Exception as e:  # a torch.compile failure is a finding to report, not a reason to lose the run
            out["d3rlpy_torch_compile_error"] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
            log(f"d3rlpy torch.compile failed: {out['d3rlpy_torch_compile_error']}")
        else:
            log(f"d3rlpy torch.compile: {out['d3rlpy_torch_compile_steps_per_s']:.2f} steps/s "
                f"({time.perf_counter() - t:.0f} s with compilation)")
    return out


# ------------------------------------------------------------------------------------------------------------


def section(agent: cql.CQLConfig, image: bool, steps: int, args) -> tuple[dict, dict]:
    """The four required keys, the extra d3rlpy numbers (for notes), and for state the offrl FLOP count."""
    extra: dict[str, Any] = {}
    if image:
        offrl_sps = offrl_image(agent, steps)
    else:
        offrl_sps, extra["flops"], extra["flops_source"] = offrl_state(agent, steps)
    res = {"offrl_steps_per_s": round(offrl_sps, 2), "d3rlpy_steps_per_s": None,
           "d3rlpy_compiled_steps_per_s": None, "ratio_vs_compiled": None}
    if not args.skip_d3rlpy:
        d3 = d3rlpy_side(agent, image, steps, args.torch_compile)
        res["d3rlpy_steps_per_s"] = round(d3.pop("d3rlpy_steps_per_s"), 2)
        res["d3rlpy_compiled_steps_per_s"] = round(d3.pop("d3rlpy_compiled_steps_per_s"), 2)
        res["ratio_vs_compiled"] = round(offrl_sps / res["d3rlpy_compiled_steps_per_s"], 2)
        extra.update({k: round(v, 2) if isinstance(v, float) else v for k, v in d3.items()})
        # On a CPU compile_graph=True does not compile (see notes), so also compare with d3rlpy's fastest path.
        fastest = max(v for v in (res["d3rlpy_steps_per_s"], res["d3rlpy_compiled_steps_per_s"],
                                  extra.get("d3rlpy_torch_compile_steps_per_s")) if v)
        extra["ratio_vs_fastest_d3rlpy"] = round(offrl_sps / fastest, 2)
    return res, extra


def versions() -> dict:
    out = {"jax": jax.__version__, "numpy": np.__version__}
    try:
        import d3rlpy
        import torch

        out.update(torch=torch.__version__, d3rlpy=d3rlpy.__version__)
    except ImportError:
        out.update(torch=None, d3rlpy=None)
    return out


def threads() -> dict:
    out: dict[str, Any] = {"cpu_count": os.cpu_count(), "XLA_FLAGS": os.environ.get("XLA_FLAGS"),
                           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    try:
        import torch

        out.update(torch_num_threads=torch.get_num_threads(), torch_num_interop_threads=torch.get_num_interop_threads())
    except ImportError:
        pass
    if hasattr(os, "sched_getaffinity"):
        out["usable_cores"] = len(os.sched_getaffinity(0))
    return out


def main() -> None:
    # d3rlpy logs through structlog to stdout: keep stdout for the JSON alone.
    args = parse_args()
    if not args.no_hugepages:
        # The same process set-up as the `offrl` command, for both libraries (offrl.runtime).
        reexec_with_hugepage_malloc([os.path.abspath(__file__)])
    with contextlib.redirect_stdout(sys.stderr):
        out = run(args)
    print(json.dumps(out, indent=2))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=500, help="timed gradient steps, state")
    p.add_argument("--image-steps", type=int, default=20, help="timed gradient steps, image")
    p.add_argument("--skip-image", action="store_true")
    p.add_argument("--skip-d3rlpy", action="store_true", help="offrl only; the d3rlpy keys are null")
    p.add_argument("--no-hugepages", action="store_true",
                   help="do not restart with glibc's huge-page malloc (offrl.runtime), which the offrl command uses")
    p.add_argument("--torch-compile", action="store_true",
                   help="also time d3rlpy with torch.compile on its gradient functions (slow to compile)")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch.set_num_threads for d3rlpy (default: leave torch's default, recorded in notes)")
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument("--matmul-repeats", type=int, default=10)
    return p.parse_args()


def run(args: argparse.Namespace) -> dict:
    load_at_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    if not args.skip_d3rlpy:
        import d3rlpy  # noqa: F401 -- fail early with the install hint
        import torch

        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
    if load_at_start and load_at_start[0] > 0.5:
        log(f"load average {load_at_start[0]:.2f} at start: other work on the machine skews the numbers (torch's "
            "OpenMP threads suffer most from a busy core)")
    agent = cql.CQLConfig()  # offrl's defaults: the networks and action samples both sides use

    log(f"state: {args.steps} timed steps")
    state, state_extra = section(agent, False, args.steps, args)
    image, image_extra = (None, {})
    if not args.skip_image:
        log(f"image: {args.image_steps} timed steps")
        image, image_extra = section(agent, True, args.image_steps, args)
    if image is None:
        image = dict.fromkeys(state)
    log("matmul")
    gflops = matmul_gflops(args.matmul_size, args.matmul_repeats)
    flops = state_extra.pop("flops")
    out = {
        "state": state,
        "image": image,
        "matmul_gflops": round(gflops, 1),
        "offrl_fraction_of_matmul": round(flops * state["offrl_steps_per_s"] / (gflops * 1e9), 4),
        "offrl_state_step_flops": flops,
        "offrl_state_step_flops_source": state_extra.pop("flops_source"),
        "machine": {"cpu": platform.processor() or platform.machine(), "platform": platform.platform(),
                    "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(),
                    "load_average_at_start": [round(x, 2) for x in load_at_start] if load_at_start else None},
        "notes": {
            "batch_size": BATCH,
            "num_critics": agent.num_critics,
            "critic_hidden_dims": list(agent.critic_hidden_dims),
            "actor_hidden_dims": list(agent.actor_hidden_dims),
            "cql_action_samples": agent.num_action_samples,
            "cql_action_samples_meaning": "per state from each of the 3 proposals (uniform, pi(s), pi(s')) on "
                                          "both sides (d3rlpy n_action_samples)",
            "state_shapes": {"obs": [OBS_DIM], "act": [ACT_DIM], "dataset_size": N_STATE},
            "image_shapes": {"obs": [IMAGE_SIZE, IMAGE_SIZE, 3], "act": [ACT_DIM], "dataset_size": N_IMAGE,
                             "d3rlpy_layout": "uint8 (N, 3, 48, 48) with PixelObservationScaler"},
            "image_encoder": "both: the paper's CNN (3 conv 3x3/16, pad 1, max-pool 2 after the first two), "
                             "separate per critic and actor, then the same FC stack; d3rlpy via a custom "
                             "EncoderFactory in this script",
            "image_not_matched": "offrl random-crops (pad 4) on device for critic, target and actor; d3rlpy "
                                 "has no augmentation. d3rlpy re-runs the critic CNN on each repeated "
                                 "observation of the CQL action samples; offrl encodes each state once",
            "steps_timed": {"state": args.steps, "image": None if args.skip_image else args.image_steps},
            "offrl_loop": {"state": "lax.scan chunk", "image": "python loop of jitted steps"},
            "offrl_sampling": "minibatch drawn and gathered on device inside the compiled step (included)",
            "d3rlpy_warmup_updates": D3RLPY_WARMUP,
            "d3rlpy_sampling": "pre-sampled minibatches (cycled) excluded from the main keys; "
                               "d3rlpy_steps_per_s_incl_sampling (state) samples inside the timed loop",
            "d3rlpy_compile_graph": "d3rlpy 2.8.1 compiles (torch.compile + CUDA graph) only on CUDA devices; "
                                    "on a CPU compile_graph=True runs the eager path",
            "d3rlpy_alpha": "fixed CQL weight (alpha_learning_rate=0), as offrl's default lagrange=False",
            "d3rlpy_extra": {"state": state_extra, "image": image_extra},
            "versions": versions(),
            "threads": {**threads(), "torch_threads_set_by_flag": args.torch_threads},
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        },
    }
    return out


if __name__ == "__main__":
    main()
