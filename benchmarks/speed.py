"""Side-by-side training speed of offrl and d3rlpy at the same settings, per algorithm: offrl's default job
(IQL with the ``iql-sparse`` preset's values) and the paper's CQL with Cal-QL's calibration on and off, each on
state and image observations.

Usage: pip install -e '.[bench]'; python benchmarks/speed.py [--steps 500] [--image-steps 20] [--skip-image]
       [--skip-d3rlpy] [--torch-compile] [--algos iql cql_calibrated cql] [--smoke]
Prints one JSON object on stdout (progress goes to stderr); docs/speed.md explains what is and is not matched.
Without d3rlpy installed the d3rlpy keys are null and ``notes.d3rlpy_skipped`` says why.

The settings (``ALGOS``): ``iql`` = offrl's IQLConfig with the iql-sparse preset (expectile 0.9, inverse
temperature 10, the actor's cosine learning-rate decay over the preset's 60,000 steps; 2 critics, V and actor of
2 x 256) against d3rlpy's IQLConfig (expectile, weight_temp, max_weight, a cosine-annealed actor Adam);
``cql_calibrated`` = offrl's CQLConfig() (Cal-QL, the default) against d3rlpy's CalQLConfig; ``cql`` =
CQLConfig(calibrated=False) against d3rlpy's CQLConfig. Both sides get the same networks, batch (256), critics
and CQL action samples, and the same random data (MetaWorld's shapes: 39-d observations or 48x48x3 uint8 frames,
4-d actions, episodes of 500 transitions ended by a timeout), built once as an offrl dataset: offrl trains on the
device arrays `offrl train` builds from it (timing.device_data: Cal-QL's Monte-Carlo returns included), d3rlpy
on an MDPDataset of the same arrays (its CalQL computes the same returns-to-go). Compilation and warm-up are
excluded from every number:

* offrl: a compiled chunk of gradient steps (one ``lax.scan`` for state, a Python loop of jitted steps for
  images, as ``offrl train`` does) is run once to compile, then once more timed (benchmarks/timing.py). The
  minibatch is drawn and assembled on the device inside the compiled step, so the number includes sampling.
* d3rlpy: ``<Algo>Config(...).create(device="cpu:0")``, a few warm-up ``algo.update(batch)`` calls, then
  ``algo.update`` timed over pre-sampled minibatches (``dataset.sample_transition_batch`` is a Python loop over
  transitions; the state sections also report the rate with sampling included). ``compile_graph=True`` is
  timed as asked, but d3rlpy 2.8.1 only compiles on CUDA devices (``algo.compiled`` is false on a CPU), so on
  a CPU it is the eager path again; ``--torch-compile`` additionally times the eager algorithm with its
  gradient functions wrapped in ``torch.compile`` (what compile_graph does on CUDA, minus the CUDA graph).

``matmul_gflops`` is the machine's dense float32 matmul rate measured with JAX; ``offrl_fraction_of_matmul[algo]``
is the FLOP/s that offrl's state step achieves (XLA's cost analysis of one step x steps/s) over that rate.
``--smoke`` runs every section at a tiny size (16-wide networks, 16x16 frames, batch 16, 2 steps) to check that
the script works; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
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
from timing import device_data, random_dataset, time_chunk

from offrl.agents import cql, get_agent
from offrl.presets import get_preset, train_fields
from offrl.runtime import reexec_with_hugepage_malloc
from offrl.training.train import make_train_chunk, sample_and_update

OBS_DIM, ACT_DIM = 39, 4
D3RLPY_WARMUP = 3


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The shapes both libraries train on. Units: transitions, pixels, gradient steps."""

    batch: int = 256
    state_transitions: int = 7500
    image_transitions: int = 5000
    image_size: int = 48
    episode_len: int = 500
    hidden: tuple[int, ...] | None = None
    """Every network's hidden widths (None: each algorithm's defaults); --smoke only."""


SMOKE = Sizes(batch=16, state_transitions=400, image_transitions=200, image_size=16, episode_len=100,
              hidden=(16, 16))


def offrl_config(name: str) -> tuple[str, Any]:
    """(offrl algorithm, its config) of a benchmark setting in ALGOS."""
    if name == "iql":  # the default job: `offrl workflow` trains IQL with the iql-sparse preset
        return "iql", train_fields(get_preset("iql-sparse"))["iql"]
    if name == "cql_calibrated":
        return "cql", cql.CQLConfig(calibrated=True)
    if name == "cql":
        return "cql", cql.CQLConfig(calibrated=False)
    raise ValueError(f"unknown benchmark setting {name!r}: choose from {', '.join(ALGOS)}")


ALGOS = ("iql", "cql_calibrated", "cql")
"""The benchmark's settings: offrl's default job, and the paper's CQL with Cal-QL's calibration on and off."""


def sized(agent: Any, sizes: Sizes) -> Any:
    """``agent`` with every ``*_hidden_dims`` field set to ``sizes.hidden`` (unchanged when None)."""
    if sizes.hidden is None:
        return agent
    fields = {f.name: sizes.hidden for f in dataclasses.fields(agent) if f.name.endswith("_hidden_dims")}
    return dataclasses.replace(agent, **fields)


def log(msg: str) -> None:
    print(f"[speed] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------------
# offrl
# ------------------------------------------------------------------------------------------------------------


def offrl_state(algo: str, agent: Any, ds: Any, steps: int, batch: int) -> tuple[float, float | None, str]:
    """(steps/s, FLOPs of one gradient step, how they were counted) of offrl's state update of ``algo`` on the
    state dataset ``ds``."""
    data, spec = device_data(ds, algo, agent, "state")
    module = get_agent(algo)
    state = module.init(agent, spec, ACT_DIM, jax.random.PRNGKey(0))
    flops, source = step_flops(algo, agent, state, data, batch)
    chunk = make_train_chunk(algo, agent, batch, steps)
    _, timing = time_chunk(chunk, state, data, steps)
    log(f"offrl {algo} state: {timing}")
    return timing["steps_per_s"], flops, source


def step_flops(algo: str, agent: Any, state: Any, data: dict, batch: int) -> tuple[float | None, str]:
    """FLOPs of one state gradient step (minibatch draw and gather included: ``sample_and_update``, the step of
    every training loop) from XLA's cost analysis of the compiled step; for CQL an analytic count of the dense
    layers when the backend gives none; else None."""
    module = get_agent(algo)

    def one_step(state, data, k):
        return sample_and_update(module, agent, batch, state, data, k)

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
    if algo != "cql":
        return None, "unavailable"
    return analytic_state_flops(agent, batch), "analytic_dense_layers"


def analytic_state_flops(agent: cql.CQLConfig, batch: int) -> float:
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
    return float(batch * (critic + actor))


def offrl_image(algo: str, agent: Any, ds: Any, steps: int, batch: int) -> float:
    """Steps/s of offrl's image update of ``algo`` on the image dataset ``ds`` (benchmarks/image_speed.py)."""
    timing = measure_offrl_image(agent, steps, 0, batch, algo=algo, dataset=ds)
    log(f"offrl {algo} image: {timing}")
    return timing["steps_per_s"]


def matmul_gflops(n: int = 2048, repeats: int = 10, batch: int = 1) -> float:
    """Dense float32 matmul rate of this machine under JAX, GFLOP/s: best of ``repeats`` jitted n x n products
    (``batch`` > 1: a batch of that many per call, so that a call of small products is long enough to time)."""
    shape = (n, n) if batch == 1 else (batch, n, n)
    a = jax.random.normal(jax.random.PRNGKey(0), shape, jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), shape, jnp.float32)
    f = jax.jit(jnp.matmul)
    jax.block_until_ready(f(a, b))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(a, b))
        best = min(best, time.perf_counter() - t)
    return 2 * batch * n**3 / best / 1e9


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


def d3rlpy_dataset(ds: Any, image: bool):
    """The offrl dataset ``ds`` as a d3rlpy MDPDataset: the same transitions and episode ends; images as
    channel-first uint8 frames (N, 3, H, W), as d3rlpy's pixel pipeline expects."""
    import d3rlpy

    obs = ds.images[ds.image_index].transpose(0, 3, 1, 2) if image else ds.observations
    return d3rlpy.dataset.MDPDataset(
        observations=obs,
        actions=ds.actions,
        rewards=ds.rewards[:, None],
        terminals=ds.terminals.astype(np.float32),
        timeouts=ds.timeouts.astype(np.float32),
    )


def d3rlpy_algo(name: str, agent: Any, image: bool, compile_graph: bool, dataset, batch: int,
                device: str = "cpu:0"):
    """d3rlpy's counterpart of the benchmark setting ``name`` with offrl's ``agent`` values, built on
    ``dataset``."""
    import d3rlpy

    def encoder(hidden: tuple[int, ...]):
        if image:
            return offrl_cnn_factory(hidden)
        return d3rlpy.models.VectorEncoderFactory(hidden_units=list(hidden))

    common = dict(
        batch_size=batch,
        actor_encoder_factory=encoder(agent.actor_hidden_dims),
        critic_encoder_factory=encoder(agent.critic_hidden_dims),
        observation_scaler=d3rlpy.preprocessing.PixelObservationScaler() if image else None,  # uint8 -> [0, 1]
        n_critics=agent.num_critics,
        gamma=agent.gamma,
        tau=agent.tau,
        actor_learning_rate=agent.actor_lr,
        critic_learning_rate=agent.critic_lr,
        compile_graph=compile_graph,
    )
    if name == "iql":
        decay = d3rlpy.optimizers.CosineAnnealingLRFactory(T_max=agent.actor_lr_decay_steps)
        config = d3rlpy.algos.IQLConfig(
            **common,
            value_encoder_factory=encoder(agent.value_hidden_dims),
            expectile=agent.expectile,
            weight_temp=agent.inverse_temperature,
            max_weight=agent.max_weight,
            actor_optim_factory=d3rlpy.optimizers.AdamFactory(lr_scheduler_factory=decay),
        )
    else:
        cls = d3rlpy.algos.CalQLConfig if agent.calibrated else d3rlpy.algos.CQLConfig
        config = cls(
            **common,
            n_action_samples=agent.num_action_samples,
            temp_learning_rate=agent.temperature_lr,
            initial_temperature=agent.init_temperature,
            conservative_weight=agent.alpha,
            alpha_learning_rate=0.0,  # a fixed CQL weight, as offrl's default (lagrange=False)
        )
    algo = config.create(device=device)
    algo.build_with_dataset(dataset)
    return algo


def time_d3rlpy(algo, batches: list, steps: int, batch: int, dataset=None) -> float:
    """Steps/s of ``algo.update`` after D3RLPY_WARMUP updates; cycles through pre-sampled ``batches``, or
    samples each minibatch of ``batch`` transitions from ``dataset`` inside the timed loop when it is given."""
    for i in range(D3RLPY_WARMUP):
        algo.update(batches[i % len(batches)])
    t = time.perf_counter()
    for i in range(steps):
        algo.update(dataset.sample_transition_batch(batch) if dataset is not None else batches[i % len(batches)])
    return steps / (time.perf_counter() - t)


def d3rlpy_side(name: str, agent: Any, ds: Any, image: bool, steps: int, batch: int, torch_compile: bool) -> dict:
    import torch

    dataset = d3rlpy_dataset(ds, image)
    t = time.perf_counter()
    batches = [dataset.sample_transition_batch(batch) for _ in range(min(steps, 8 if image else 64))]
    sample_s = (time.perf_counter() - t) / len(batches)
    out: dict[str, Any] = {"d3rlpy_sample_batch_ms": round(1e3 * sample_s, 2), "presampled_batches": len(batches)}
    what = f"d3rlpy {name} {'image' if image else 'state'}"

    algo = d3rlpy_algo(name, agent, image, False, dataset, batch)
    out["d3rlpy_algo"] = type(algo).__name__
    out["d3rlpy_steps_per_s"] = time_d3rlpy(algo, batches, steps, batch)
    log(f"{what} eager: {out['d3rlpy_steps_per_s']:.2f} steps/s")
    if not image:
        out["d3rlpy_steps_per_s_incl_sampling"] = time_d3rlpy(algo, batches, steps, batch, dataset)
    del algo

    algo = d3rlpy_algo(name, agent, image, True, dataset, batch)
    out["d3rlpy_compiled_is_compiled"] = bool(algo.compiled)  # d3rlpy 2.8.1: only on CUDA devices
    out["d3rlpy_compiled_steps_per_s"] = time_d3rlpy(algo, batches, steps, batch)
    log(f"{what} compile_graph=True: {out['d3rlpy_compiled_steps_per_s']:.2f} steps/s "
        f"(algo.compiled={algo.compiled})")
    del algo

    out["d3rlpy_torch_compile_steps_per_s"] = None
    if torch_compile:
        # device "cpu", not d3rlpy's usual "cpu:0": under torch.compile, tensors that d3rlpy creates on "cpu:0"
        # inside the traced loss meet parameters on "cpu" and dynamo stops with "Tensor device mismatch".
        algo = d3rlpy_algo(name, agent, image, False, dataset, batch, device="cpu")
        impl = algo.impl
        impl._compute_critic_grad = torch.compile(impl.compute_critic_grad)
        impl._compute_actor_grad = torch.compile(impl.compute_actor_grad)
        t = time.perf_counter()
        try:
            out["d3rlpy_torch_compile_steps_per_s"] = time_d3rlpy(algo, batches, steps, batch)
        except Exception as e:  # a torch.compile failure is a finding to report, not a reason to lose the run
            out["d3rlpy_torch_compile_error"] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
            log(f"{what} torch.compile failed: {out['d3rlpy_torch_compile_error']}")
        else:
            log(f"{what} torch.compile: {out['d3rlpy_torch_compile_steps_per_s']:.2f} steps/s "
                f"({time.perf_counter() - t:.0f} s with compilation)")
    return out


# ------------------------------------------------------------------------------------------------------------


def section(name: str, image: bool, steps: int, sizes: Sizes, args, d3rlpy: bool) -> tuple[dict, dict]:
    """One setting on one observation kind: the side-by-side keys, and the extras (for notes; state: offrl's
    FLOPs per step)."""
    algo, agent = offrl_config(name)
    agent = sized(agent, sizes)
    n = sizes.image_transitions if image else sizes.state_transitions
    ds = random_dataset(n, OBS_DIM, ACT_DIM, sizes.image_size if image else None, sizes.episode_len)
    extra: dict[str, Any] = {}
    if image:
        offrl_sps = offrl_image(algo, agent, ds, steps, sizes.batch)
    else:
        offrl_sps, extra["flops"], extra["flops_source"] = offrl_state(algo, agent, ds, steps, sizes.batch)
    res = {"offrl_steps_per_s": round(offrl_sps, 2), "d3rlpy_steps_per_s": None,
           "d3rlpy_compiled_steps_per_s": None, "d3rlpy_torch_compile_steps_per_s": None,
           "ratio_vs_compiled": None, "ratio_vs_fastest_d3rlpy": None}
    if d3rlpy:
        d3 = d3rlpy_side(name, agent, ds, image, steps, sizes.batch, args.torch_compile)
        for k in ("d3rlpy_steps_per_s", "d3rlpy_compiled_steps_per_s", "d3rlpy_torch_compile_steps_per_s"):
            v = d3.pop(k)
            res[k] = None if v is None else round(v, 2)
        res["ratio_vs_compiled"] = round(offrl_sps / res["d3rlpy_compiled_steps_per_s"], 2)
        # On a CPU compile_graph=True does not compile (see notes), so also compare with d3rlpy's fastest path.
        fastest = max(v for v in (res["d3rlpy_steps_per_s"], res["d3rlpy_compiled_steps_per_s"],
                                  res["d3rlpy_torch_compile_steps_per_s"]) if v)
        res["ratio_vs_fastest_d3rlpy"] = round(offrl_sps / fastest, 2)
        extra.update({k: round(v, 2) if isinstance(v, float) else v for k, v in d3.items()})
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


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` (default: the command line), run, print the JSON on stdout."""
    # d3rlpy logs through structlog to stdout: keep stdout for the JSON alone.
    args = parse_args(argv)
    if not args.no_hugepages:
        # The same process set-up as the `offrl` command, for both libraries (offrl.runtime).
        reexec_with_hugepage_malloc([os.path.abspath(__file__)])
    with contextlib.redirect_stdout(sys.stderr):
        out = run(args)
    print(json.dumps(out, indent=2))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=500, help="timed gradient steps, state")
    p.add_argument("--image-steps", type=int, default=20, help="timed gradient steps, image")
    p.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS,
                   help="benchmark settings (default: all): iql = the iql-sparse preset, offrl's default job; "
                        "cql_calibrated = CQLConfig() (Cal-QL), cql = CQLConfig(calibrated=False)")
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
    p.add_argument("--smoke", action="store_true",
                   help="check that the script runs: tiny networks, data and frames, 2 steps (numbers meaningless)")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.image_steps, args.matmul_size, args.matmul_repeats = 2, 1, 64, 1
    return args


def d3rlpy_available(args: argparse.Namespace) -> str | None:
    """None when d3rlpy is to be timed; else why not (``--skip-d3rlpy``, or d3rlpy/torch not installed)."""
    if args.skip_d3rlpy:
        return "--skip-d3rlpy"
    try:
        import d3rlpy  # noqa: F401
        import torch
    except ImportError as e:
        log(f"d3rlpy side skipped: {e} (install it with: pip install torch==2.13.0 && pip install -e '.[bench]')")
        return f"not installed ({e})"
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    return None


def run(args: argparse.Namespace) -> dict:
    load_at_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    skipped = d3rlpy_available(args)
    if load_at_start and load_at_start[0] > 0.5:
        log(f"load average {load_at_start[0]:.2f} at start: other work on the machine skews the numbers (torch's "
            "OpenMP threads suffer most from a busy core)")
    sizes = SMOKE if args.smoke else Sizes()
    results: dict[str, dict] = {}
    extras: dict[str, dict] = {}
    for name in args.algos:
        results[name], extras[name] = {}, {}
        for image, steps in ((False, args.steps), (True, args.image_steps)):
            kind = "image" if image else "state"
            if image and args.skip_image:
                results[name][kind] = None
                continue
            log(f"{name} {kind}: {steps} timed steps")
            results[name][kind], extras[name][kind] = section(name, image, steps, sizes, args, skipped is None)
    log("matmul")
    gflops = matmul_gflops(args.matmul_size, args.matmul_repeats)
    flops = {name: extras[name]["state"].pop("flops") for name in args.algos}
    configs = {name: dataclasses.asdict(sized(offrl_config(name)[1], sizes)) for name in args.algos}
    out = {
        "results": results,
        "matmul_gflops": round(gflops, 1),
        "offrl_fraction_of_matmul": {
            name: round(f * results[name]["state"]["offrl_steps_per_s"] / (gflops * 1e9), 4) if f else None
            for name, f in flops.items()},
        "offrl_state_step_flops": flops,
        "offrl_state_step_flops_source": {name: extras[name]["state"].pop("flops_source") for name in args.algos},
        "machine": {"cpu": platform.processor() or platform.machine(), "platform": platform.platform(),
                    "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(),
                    "load_average_at_start": [round(x, 2) for x in load_at_start] if load_at_start else None},
        "notes": {
            "smoke": args.smoke,
            "d3rlpy_skipped": skipped,
            "sizes": dataclasses.asdict(sizes),
            "offrl_configs": configs,
            "d3rlpy_counterparts": {"iql": "IQLConfig (expectile, weight_temp = inverse_temperature, max_weight; "
                                           "actor Adam with CosineAnnealingLRFactory(T_max=actor_lr_decay_steps))",
                                    "cql_calibrated": "CalQLConfig", "cql": "CQLConfig"},
            "cql_action_samples_meaning": "per state from each of the 3 proposals (uniform, pi(s), pi(s')) on "
                                          "both sides (d3rlpy n_action_samples)",
            "state_shapes": {"obs": [OBS_DIM], "act": [ACT_DIM], "dataset_size": sizes.state_transitions},
            "image_shapes": {"obs": [sizes.image_size, sizes.image_size, 3], "act": [ACT_DIM],
                             "dataset_size": sizes.image_transitions,
                             "d3rlpy_layout": "uint8 (N, 3, H, W) with PixelObservationScaler"},
            "data": f"random, built once per section as an offrl dataset (episodes of {sizes.episode_len} "
                    "transitions, timeouts, rewards 0/1) and given to both libraries; offrl trains on the arrays "
                    "`offrl train` builds from it (Cal-QL's mc_returns included)",
            "image_encoder": "both: the paper's CNN (3 conv 3x3/16, pad 1, max-pool 2 after the first two), "
                             "separate per network, then the same FC stack; d3rlpy via a custom EncoderFactory "
                             "in this script",
            "not_matched": {
                "augmentation": "offrl random-crops (pad 4) image observations on device; d3rlpy does not",
                "cql_encoder_reuse": "d3rlpy re-runs the critic CNN on each repeated observation of the CQL "
                                     "action samples; offrl encodes each state once",
                "iql_policy": "offrl: tanh-Gaussian with a state-dependent std; d3rlpy: its NormalPolicy",
                "iql_reward_shift": "the preset's rewards r - 1 are a data transform outside the step: not applied",
            },
            "steps_timed": {"state": args.steps, "image": None if args.skip_image else args.image_steps},
            "offrl_loop": {"state": "lax.scan chunk", "image": "python loop of jitted steps"},
            "offrl_sampling": "minibatch drawn and gathered on device inside the compiled step (included)",
            "d3rlpy_warmup_updates": D3RLPY_WARMUP,
            "d3rlpy_sampling": "pre-sampled minibatches (cycled) excluded from the main keys; "
                               "d3rlpy_steps_per_s_incl_sampling (state) samples inside the timed loop",
            "d3rlpy_compile_graph": "d3rlpy 2.8.1 compiles (torch.compile + CUDA graph) only on CUDA devices; "
                                    "on a CPU compile_graph=True runs the eager path",
            "d3rlpy_alpha": "fixed CQL weight (alpha_learning_rate=0), as offrl's default lagrange=False",
            "extra": extras,
            "versions": versions(),
            "threads": {**threads(), "torch_threads_set_by_flag": args.torch_threads},
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        },
    }
    return out


if __name__ == "__main__":
    main()
