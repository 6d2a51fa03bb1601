"""The training loop: compiled chunks of gradient steps, workflow metrics at every checkpoint, resume.

Gradient steps run inside ``lax.scan`` over chunks of ``chunk_steps`` steps with the dataset resident on the
device and minibatches sampled on the device, so the host syncs once per chunk; the loop around the chunks
stays in Python so checkpoints, metrics and the progress bar are easy to follow (Unifloral / ReBRAC style).
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import math
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from offrl.agents import (
    DISCRETE,
    MODEL_BASED,
    WARMUP_FIELD,
    common,
    config_from_dict,
    cql,
    get_agent,
    legacy_states,
    warmup_steps,
)
from offrl.agents.awac import AWACConfig
from offrl.agents.bc import BCConfig
from offrl.agents.bear import BEARConfig
from offrl.agents.brac import BRACConfig
from offrl.agents.combo import COMBOConfig
from offrl.agents.common import DEFINED
from offrl.agents.dqn import DQNConfig
from offrl.agents.iql import IQLConfig
from offrl.agents.mopo import MOPOConfig
from offrl.agents.trajectory_transformer import TTConfig
from offrl.data import (
    Dataset,
    DatasetError,
    Normalizer,
    divergence_limit,
    fingerprint,
    load_dataset,
    mc_returns,
    q_value_range,
    split_episodes,
    transform_rewards,
)
from offrl.data.dataset import reward_transform_problems
from offrl.data.images import (
    ObsMode,
    frame_stack_indices,
    image_batch,
    obs_spec,
    resolve_obs_mode,
    state_columns,
)
from offrl.training import run_dir as rd
from offrl.training.loggers import MetricsLogger

# Transitions per evaluation chunk: the workflow metrics are computed in fixed-size chunks (padded and masked)
# so evaluation sets of any size compile once.
_EVAL_CHUNK = 1024


# Training settings renamed since runs were first written: old config.json key -> new name (read on --resume).
TRAINING_RENAMED = {"log_every": "chunk_steps"}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What `offrl train` does. Units: steps are gradient steps."""

    out: Path
    """Run directory to create (or, with --resume, to continue)."""
    dataset: Path | None = None
    """An offrl HDF5 file (``offrl collect``, ``offrl import``); --resume: the run's own when not given."""
    dataset_format: Literal["offrl", "robomimic", "d4rl", "minari", "npz"] = "offrl"
    """Read --dataset directly in another format (as `offrl import` would; see its --help)."""
    obs_keys: tuple[str, ...] | None = None
    """With --dataset-format: the low-dimensional observation keys to concatenate (default: all)."""
    obs: ObsMode = "auto"
    """state, image (pixels, the paper's setting), image+proprio (with the robot's own state), or auto."""
    frame_stack: int = 1
    """Image runs: frames stacked along the channel axis (the newest last)."""
    steps: int | None = None
    """Gradient steps in all; None: 100,000, or with --resume the run's own total (a larger one extends it)."""
    checkpoint_every: int = 5_000
    """Gradient steps between checkpoints (the paper: 5,000); each logs the workflow metrics."""
    chunk_steps: int = 500
    """Gradient steps per compiled chunk (one host sync each); it changes neither the step budget nor the
    checkpoints, and training losses are averaged over each checkpoint interval. Named ``log_every`` before,
    which it never set: older config.json files are read through ``TRAINING_RENAMED``."""
    batch_size: int = 256
    """Transitions per gradient step."""
    seed: int = 0
    """Seeds the initialisation, the minibatches and the held-out split."""
    split_seed: int | None = None
    """Seeds the held-out split and the evaluation subsets; None: --seed. Runs that differ only in --seed but
    share --split-seed train on the same episodes (what `offrl sweep` does for all its runs)."""
    heldout_fraction: float = 0.1
    """Fraction of episodes held out from training, for the held-out metrics (0 for none)."""
    eval_transitions: int = 10_000
    """Size of the fixed evaluation sets of training and held-out transitions (at most this many each)."""
    normalize_observations: bool = True
    """Standardise observations with statistics of the training episodes."""
    overwrite: bool = False
    """Delete an existing run directory first (without it, an existing run is never touched)."""
    resume: bool = False
    """Continue an existing run from its last complete checkpoint."""
    progress: bool = True
    """Show a progress bar with steps/s."""
    wandb_project: str | None = None
    """Also log every checkpoint record to this Weights & Biases project (needs `pip install 'offrl[wandb]'`).
    TensorBoard event files are always written to RUN_DIR/tensorboard."""
    on_divergence: Literal["stop", "flag"] = "stop"
    """When q_data exceeds the divergence limit (docs/metrics.md): stop, keeping the last good checkpoint, or
    flag the record (``"diverged": true``) and go on. NaN/inf always stops."""
    divergence_factor: float = 10.0
    """Divergence limit: q_max + divergence_factor * max(Q range width, |q_max|, 1)."""
    reward_scale: float = 1.0
    """Train on ``reward_scale * r + reward_shift`` (> 0; the file is kept, the Q range follows)."""
    # With Cal-QL and a negative shift the Monte-Carlo return of a timed-out episode is no longer a lower bound
    # of its value (the truncated tail of -|shift| rewards is missing): the calibration is then approximate.
    reward_shift: float = 0.0
    """See --reward-scale (IQL's sparse-reward setting: -1)."""
    preset: str | None = None
    """``paper`` or ``iql-sparse`` (offrl/presets.py): sets the algorithm, its hyperparameters, budget, reward
    transform and selector; explicit flags win."""
    selector: str | None = None
    """Checkpoint rule, recorded in config.json for every later command (offrl/workflow/rules.py); None: the
    preset's, else IQL ``last``, the others ``q_peak``."""
    algo: Literal["cql", "brac", "bc", "iql", "awac", "bear", "tt", "dqn", "mopo", "combo"] = "cql"
    """Algorithm: CQL (paper Eq. 1), BRAC (needs --behavior-run), BC, IQL, AWAC, BEAR, the Trajectory
    Transformer, model-based MOPO and COMBO (docs/model-based.md), or for discrete actions the DQN family
    (--dqn.variant: Nature DQN, Double DQN, QR-DQN, Ensemble-DQN, REM, discrete CQL; Agarwal et al. 2020)."""
    agent: cql.CQLConfig = dataclasses.field(default_factory=cql.CQLConfig)
    """CQL hyperparameters (used with --algo cql)."""
    brac: BRACConfig = dataclasses.field(default_factory=BRACConfig)
    """BRAC hyperparameters (used with --algo brac)."""
    bc: BCConfig = dataclasses.field(default_factory=BCConfig)
    """Behaviour-cloning hyperparameters (used with --algo bc)."""
    iql: IQLConfig = dataclasses.field(default_factory=IQLConfig)
    """IQL hyperparameters (used with --algo iql)."""
    awac: AWACConfig = dataclasses.field(default_factory=AWACConfig)
    """AWAC hyperparameters (used with --algo awac)."""
    bear: BEARConfig = dataclasses.field(default_factory=BEARConfig)
    """BEAR hyperparameters (used with --algo bear)."""
    tt: TTConfig = dataclasses.field(default_factory=TTConfig)
    """Trajectory Transformer hyperparameters (used with --algo tt)."""
    dqn: DQNConfig = dataclasses.field(default_factory=DQNConfig)
    """DQN-family hyperparameters (used with --algo dqn, on datasets of discrete actions)."""
    mopo: MOPOConfig = dataclasses.field(default_factory=MOPOConfig)
    """MOPO hyperparameters (used with --algo mopo)."""
    combo: COMBOConfig = dataclasses.field(default_factory=COMBOConfig)
    """COMBO hyperparameters (used with --algo combo)."""
    behavior_run: Path | None = None
    """BRAC: a run of `offrl train --algo bc` on the same dataset, whose policy becomes pi_beta."""
    behavior_step: int | None = None
    """BRAC: the checkpoint of the behaviour run to use; default: the highest held-out log-likelihood."""


class TrainingDiverged(RuntimeError):
    """Losses or Q-values became NaN/inf; the last good checkpoint is kept."""


def checkpoint_record(ev: dict[str, float], horizon: float, prefix: str = "") -> dict[str, float | None]:
    """The logged workflow metrics of one evaluation set from the agent's means ``ev`` (docs/metrics.md).

    Adds ``q_error_estimate = td_error * horizon`` (paper Sec. 3) and, when the agent reports the mean squared
    target ``target_q_sq``, ``target_q_var = E[y^2] - E[y]^2`` (the spread of the TD targets over the set) and
    ``td_error_over_target_var``: the fraction of that spread the critic leaves unexplained (1 - R^2 of the
    Bellman regression). Unlike ``q_error_estimate`` it does not carry CQL's level offset: shifting every Q-value
    by a constant changes neither. A key ``K`` with a companion ``K`` + :data:`DEFINED` (1 on the rows where ``K`` is
    defined, 0 elsewhere, where the agent set ``K`` to 0) is logged as the mean over its defined rows, None when
    no row defines it.
    """
    out = {prefix + k: v for k, v in ev.items() if k != "target_q_sq" and not k.endswith(DEFINED)}
    for k in ev:
        # A per-row term that exists on some rows only: the agent's mean counted the others as 0, so divide
        # by the fraction of rows where it is defined (a mean over those rows).
        if k.endswith(DEFINED) and k[: -len(DEFINED)] in ev:
            frac = ev[k]
            # None, not NaN, where no row defines it: an absent quantity, which the NaN check must not call
            # a divergence.
            out[prefix + k[: -len(DEFINED)]] = ev[k[: -len(DEFINED)]] / frac if frac > 0 else None
    if "td_error" in ev:
        out[prefix + "q_error_estimate"] = ev["td_error"] * horizon
    if "target_q_sq" in ev and "target_q" in ev:
        var = max(ev["target_q_sq"] - ev["target_q"] ** 2, 0.0)
        out[prefix + "target_q_var"] = var
        out[prefix + "td_error_over_target_var"] = ev["td_error"] / var if var > 0 else float("inf")
    return out


def _calibration_gamma(config: TrainConfig) -> float | None:
    """The discount of the Monte-Carlo returns a calibrated CQL run (or a sequence model's returns-to-go) needs in
    its batches; None otherwise."""
    agent = active_agent_config(config)
    return float(agent.gamma) if getattr(agent, "calibrated", False) or _sequence_window(config) else None


def _sequence_window(config: TrainConfig) -> int:
    """Transitions per training window of a sequence model (an agent module with ``sequence_window``); 0 else."""
    module = get_agent(config.algo)
    return int(module.sequence_window(active_agent_config(config))) if hasattr(module, "sequence_window") else 0


DEFAULT_STEPS = 100_000
"""Gradient steps of a new run when --steps is not given."""


def resolve_train_config(config: TrainConfig) -> TrainConfig:
    """Fill what the command line may leave out: ``steps`` (100,000 for a new run; with ``resume`` the recorded
    total) and, with ``resume``, the recorded ``dataset``.

    Raises:
        FileNotFoundError: ``resume`` on a directory without config.json.
        ValueError: a new run without a dataset, or ``resume`` with fewer steps than the run already took.
    """
    saved = None
    if config.resume:
        if not (Path(config.out) / rd.CONFIG_FILE).is_file():
            raise FileNotFoundError(
                f"cannot resume: {config.out} has no {rd.CONFIG_FILE}; start a new run without --resume"
            )
        saved = rd.read_json(Path(config.out) / rd.CONFIG_FILE)
    if config.dataset is None:
        if saved is None:
            raise ValueError("--dataset is required for a new run (an offrl HDF5 file from `offrl collect` or "
                             "`offrl import`)")
        config = dataclasses.replace(config, dataset=Path(saved["dataset"]["path"]))
    if config.steps is None:
        steps = int(saved["training"]["steps"]) if saved is not None else DEFAULT_STEPS
        config = dataclasses.replace(config, steps=steps)
    elif saved is not None and config.steps < int(saved["training"]["steps"]):
        done = rd.checkpoint_steps(Path(config.out))
        if done and config.steps < done[-1]:
            raise ValueError(
                f"--steps {config.steps} is below the {done[-1]} steps {config.out} has already taken: pass a larger "
                f"--steps, or leave it out to finish the recorded {saved['training']['steps']}"
            )
    return config


def _chunk_size(config: TrainConfig) -> int:
    # Model-based runs end a chunk at the end of the model phase, so model selection sees the final model before
    # any policy step rolls it out.
    model_steps = active_agent_config(config).model_steps if config.algo in MODEL_BASED else 0
    return math.gcd(config.chunk_steps, config.checkpoint_every, config.steps, model_steps)


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What the networks see of a dataset: observation mode (resolved, see :mod:`offrl.data.images`), the
    ``observations`` columns used and their normalisation, and the frame stack of image runs."""

    mode: str
    columns: tuple[int, ...]
    normalizer: Normalizer
    frame_stack: int = 1
    gamma: float | None = None
    """Discount of the Monte-Carlo returns added to every batch as ``mc_returns`` (Cal-QL's reference values,
    :func:`offrl.data.mc_returns`); None leaves them out."""
    window: int = 0
    """Sequence models (with ``gamma``): every batch also holds the windows of this many transitions starting at
    its transitions (``seq_*`` keys, :func:`make_batch`) and ``next_mc_returns`` = G_(t+1) (0 at an episode's
    end); 0 for none."""

    @property
    def images(self) -> bool:
        return self.mode != "state"

    def state(self, observations: np.ndarray) -> np.ndarray:
        """Normalised state features the networks see, (N, len(columns)) float32."""
        if not self.images:  # all columns, in order: no copy before normalising
            return self.normalizer(observations)
        return self.normalizer(observations[:, list(self.columns)])


def _host_arrays(ds: Dataset, inputs: Inputs) -> dict[str, np.ndarray]:
    """Transition arrays as the compiled loop stores them; image runs add the frames (once) and the (N, k)
    frame indices of s and s' (:func:`offrl.data.images.frame_stack_indices`)."""
    arrays = {
        "observations": inputs.state(ds.observations),
        "actions": ds.actions,
        "rewards": ds.rewards,
        "terminals": ds.terminals.astype(np.float32),
        "next_observations": inputs.state(ds.next_observations),
    }
    if inputs.gamma is not None:
        arrays["mc_returns"] = mc_returns(ds, inputs.gamma)
    if inputs.window:
        arrays["window"] = sequence_windows(ds, inputs.window)
        # G_(t+1), the return after the reward (0 after an episode's last transition): a sequence model's value.
        after = np.concatenate([arrays["mc_returns"][1:], [0.0]]).astype(np.float32)
        after[ds.episode_ends] = 0.0
        arrays["next_mc_returns"] = after
    if inputs.images:
        arrays["obs_frames"], arrays["next_obs_frames"] = frame_stack_indices(ds, inputs.frame_stack)
        arrays["images"] = ds.images
    return arrays


def _device_arrays(ds: Dataset, inputs: Inputs) -> dict[str, jnp.ndarray]:
    # device_put, not jnp.asarray: on the CPU backend asarray transiently holds two extra copies of an array,
    # which for a million 48x48x3 frames (6.9 GB) would not fit in 24 GB.
    return {k: jax.device_put(v) for k, v in _host_arrays(ds, inputs).items()}


SEQUENCE_KEYS = ("observations", "actions", "rewards", "next_mc_returns")
"""The arrays a sequence model's batches also hold per window (``seq_`` + key, (B, W, ...))."""


def sequence_windows(ds: Dataset, window: int) -> np.ndarray:
    """(N, window) int32: the indices of the ``window`` transitions starting at each transition, -1 past the end
    of its episode."""
    ends = np.repeat(ds.episode_ends, [s.stop - s.start for s in ds.episode_slices()])
    idx = np.arange(len(ds))[:, None] + np.arange(window)[None, :]
    return np.where(idx <= ends[:, None], idx, -1).astype(np.int32)


def make_batch(data: dict[str, Any], idx: Any) -> dict[str, Any]:
    """Transitions ``idx`` of device (or host) arrays as an agent batch; image runs assemble the frame stacks
    from indices (:func:`offrl.data.images.image_batch`). Sequence models' data (a ``window`` array) adds the
    windows starting at those transitions: ``seq_`` + each of :data:`SEQUENCE_KEYS` present, (B, W, ...), and
    ``seq_mask`` (B, W), 1 inside the episode (rows past its end repeat its first transition, masked)."""
    if "images" in data:
        return image_batch(data, idx)
    batch = {k: v[idx] for k, v in data.items() if k != "window"}
    if "window" in data:
        w = data["window"][idx]
        inside = w >= 0
        rows = w * inside + (w[:, :1] * ~inside)
        batch.update({f"seq_{k}": data[k][rows] for k in SEQUENCE_KEYS if k in data})
        batch["seq_mask"] = inside.astype(np.float32)
    return batch


def _eval_arrays(
    ds: Dataset, inputs: Inputs, max_transitions: int, seed: int
) -> tuple[dict[str, Any], jnp.ndarray]:
    """A fixed subset of transitions, padded to whole chunks: (num_chunks, _EVAL_CHUNK, ...) and a mask.
    Image stacks are materialised here (at most ``max_transitions`` of them)."""
    n = len(ds)
    idx = np.arange(n) if n <= max_transitions else np.sort(np.random.default_rng(seed).permutation(n)[:max_transitions])
    return eval_chunks(ds, inputs, idx)


def eval_chunks(ds: Dataset, inputs: Inputs, idx: np.ndarray) -> tuple[dict[str, Any], jnp.ndarray]:
    """The transitions ``idx`` ((m,) int) of ``ds`` as :func:`make_evaluator` reads them: the batch arrays padded
    to whole chunks, (num_chunks, _EVAL_CHUNK, ...), and the (num_chunks, _EVAL_CHUNK) float32 mask of valid rows.
    Image stacks are materialised here.

    Raises:
        ValueError: ``idx`` is empty."""
    idx = np.asarray(idx, np.int64)
    if idx.size == 0:
        raise ValueError("no transitions to evaluate on")
    batch = make_batch(_host_arrays(ds, inputs), idx)
    m = len(idx)
    chunks = -(-m // _EVAL_CHUNK)
    pad = chunks * _EVAL_CHUNK - m

    def chunked(v: np.ndarray) -> jnp.ndarray:
        v = np.asarray(v)
        return jnp.asarray(np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)]).reshape(chunks, _EVAL_CHUNK, *v.shape[1:]))

    out = jax.tree.map(chunked, batch)
    mask = jnp.asarray(np.concatenate([np.ones(m, np.float32), np.zeros(pad, np.float32)]).reshape(chunks, _EVAL_CHUNK))
    return out, mask


# The TrainConfig field that holds each algorithm's hyperparameters (CQL's is `agent`, the paper's algorithm).
ALGO_FIELD = {"cql": "agent", "brac": "brac", "bc": "bc", "iql": "iql", "awac": "awac", "bear": "bear", "tt": "tt",
              "dqn": "dqn", "mopo": "mopo", "combo": "combo"}


def active_agent_config(config: TrainConfig) -> Any:
    """The hyperparameters of the algorithm that ``config.algo`` names."""
    return getattr(config, ALGO_FIELD[config.algo])


def _with_agent_config(config: TrainConfig, agent_config: Any) -> TrainConfig:
    return dataclasses.replace(config, **{ALGO_FIELD[config.algo]: agent_config})


def sample_and_update(module: Any, agent: Any, batch_size: int, state: Any, data: dict[str, Any], k: jax.Array):
    """One gradient step on a minibatch of ``batch_size`` transitions drawn uniformly (with replacement) from
    the device-resident ``data`` with key ``k``: ``(state, metrics)``. Pure; the unit every training loop runs."""
    n = data["rewards"].shape[0]
    k_idx, k_upd = jax.random.split(k)
    idx = jax.random.randint(k_idx, (batch_size,), 0, n)
    # With an averaged actor (offrl.agents.common.ActorAveraged) its Polyak step follows the agent's update here,
    # inside the compiled chunk; a bare state is updated by the agent alone.
    return common.averaged_update(module.update, state, make_batch(data, idx), k_upd, agent)


def scan_steps(
    module: Any, agent: Any, batch_size: int, num_steps: int, state: Any, data: dict[str, Any], key: jax.Array
):
    """``num_steps`` gradient steps in one ``lax.scan`` (keys ``split(key, num_steps)``): ``(state, mean
    metrics)``. Pure and traceable, so :mod:`offrl.training.sweep` can ``vmap`` it over runs."""

    def body(carry, k):
        state, sums = carry
        state, metrics = sample_and_update(module, agent, batch_size, state, data, k)
        return (state, jax.tree.map(jnp.add, sums, metrics)), None

    zeros = jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype),
        jax.eval_shape(lambda: module.update(common.agent_state(state), make_batch(data, jnp.arange(batch_size)), key,
                                             agent)[1]),
    )
    (state, sums), _ = jax.lax.scan(body, (state, zeros), jax.random.split(key, num_steps))
    return state, jax.tree.map(lambda s: s / num_steps, sums)


def make_train_chunk(
    algo: str, agent: Any, batch_size: int, num_steps: int, loop: Literal["auto", "scan", "python"] = "auto"
):
    """A ``(state, data, key) -> (state, mean metrics)`` function running ``num_steps`` gradient steps.

    Minibatches are drawn uniformly with replacement from the device-resident ``data`` (dict of (N, ...)
    arrays) inside the compiled step; metrics are averaged over the steps. State runs compile the whole chunk
    as one ``lax.scan``. Image runs compile one step and loop in Python: XLA's CPU backend runs convolutions
    inside a loop body about 8x slower than the same step compiled alone (5.8 s vs 0.72 s per CQL step at
    batch 256, 48x48, measured on 2 cores), while the host's dispatch cost per step is negligible next to a
    convolutional step. Both draw the same minibatches and keys. ``loop`` forces one or the other
    (benchmarks/image_speed.py --compare-loops measures both).
    """

    module = get_agent(algo)

    def one_step(state: Any, data: dict[str, jnp.ndarray], k: jax.Array):
        return sample_and_update(module, agent, batch_size, state, data, k)

    scanned = jax.jit(lambda state, data, key: scan_steps(module, agent, batch_size, num_steps, state, data, key))
    step_jit = jax.jit(one_step)

    def looped(state: Any, data: dict[str, jnp.ndarray], key: jax.Array):
        sums = None
        for k in jax.random.split(key, num_steps):
            state, metrics = step_jit(state, data, k)
            sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
        return state, jax.tree.map(lambda s: s / num_steps, sums)

    def chunk(state: Any, data: dict[str, jnp.ndarray], key: jax.Array):
        python = loop == "python" or (loop == "auto" and "images" in data)
        return (looped if python else scanned)(state, data, key)

    return chunk


def chunk_sums(module: Any, agent: Any, state: Any, batch: dict[str, Any], m: jnp.ndarray, key: jax.Array):
    """The agent's evaluation terms of one padded chunk, summed over its valid rows (``m``: 1 valid, 0 pad). A
    state with an averaged actor is evaluated with the averaged actor acting (the one it deploys:
    :func:`offrl.agents.common.acting_state`); the record says so (``actor``)."""
    return jax.tree.map(lambda v: jnp.sum(v * m), module.evaluate(common.acting_state(state), batch, key, agent))


def evaluate_chunks(module: Any, agent: Any, state: Any, chunks: dict[str, Any], mask: jnp.ndarray, key: jax.Array):
    """The workflow metrics averaged over padded evaluation chunks (``lax.map`` over them). Pure and traceable
    (vmapped by :mod:`offrl.training.sweep`)."""

    sums = jax.lax.map(lambda args: chunk_sums(module, agent, state, args[0], args[1], key), (chunks, mask))
    return jax.tree.map(lambda s: s.sum() / mask.sum(), sums)


def make_evaluator(algo: str, agent: Any):
    """A ``(state, chunks, mask, key) -> metrics`` function giving the workflow metrics averaged over a fixed
    evaluation set (each agent's ``evaluate``, e.g. :func:`offrl.agents.cql.critic_terms`). The same key is used
    at every checkpoint so the sampling noise in the regularizer and the target is the same along the curve.
    State runs map over the chunks inside one compiled call; image runs loop over them in Python, for the
    reason given in :func:`make_train_chunk`."""

    module = get_agent(algo)

    mapped = jax.jit(lambda state, chunks, mask, key: evaluate_chunks(module, agent, state, chunks, mask, key))

    one_jit = jax.jit(lambda state, batch, m, key: chunk_sums(module, agent, state, batch, m, key))

    def looped(state: Any, chunks: dict[str, Any], mask: jnp.ndarray, key: jax.Array):
        sums = None
        for i in range(mask.shape[0]):
            part = one_jit(state, jax.tree.map(lambda v, i=i: v[i], chunks), mask[i], key)
            sums = part if sums is None else jax.tree.map(jnp.add, sums, part)
        return jax.tree.map(lambda s: s / mask.sum(), sums)

    def evaluate(state: Any, chunks: dict[str, Any], mask: jnp.ndarray, key: jax.Array):
        images = isinstance(chunks.get("observations"), dict)
        return (looped if images else mapped)(state, chunks, mask, key)

    return evaluate


def _resolved_config(config: TrainConfig, extra: dict[str, Any]) -> dict[str, Any]:
    skip = (*ALGO_FIELD.values(), "dataset", "out", "behavior_run", "behavior_step", "algo")
    training = {k: v for k, v in dataclasses.asdict(config).items() if k not in skip}
    training.pop("overwrite")
    training.pop("resume")
    training.pop("progress")
    training.pop("selector")
    from offrl.workflow.rules import deployment_selector

    return {
        "algo": config.algo,
        "seed": config.seed,
        "agent": dataclasses.asdict(active_agent_config(config)),
        "training": training,
        # What decides the deployed checkpoint, read by every later command (offrl.workflow.rules.run_selector).
        "deployment": {"selector": deployment_selector(config.algo, config.selector, config.preset),
                       "preset": config.preset, "reward_scale": config.reward_scale,
                       "reward_shift": config.reward_shift,
                       # Which actor acts (offrl.workflow.rules.run_actor): its Polyak average when one is kept.
                       **({"actor": "averaged"} if common.actor_ema_decay(active_agent_config(config)) > 0 else {})},
        **extra,
        "offrl_version": rd.offrl_version(),
        "versions": rd.package_versions(),
        "platform": rd.platform_facts(),
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def check_config(config: TrainConfig) -> None:
    """Refuse settings that cannot work before anything is read or written (the run's own flags, the agent's
    ``config_problems``, a warm start longer than the run, ...).

    Raises:
        ValueError: every problem found, joined by "; ", each naming its flag and the fix.
    """
    problems = []
    if config.preset is not None:
        from offrl.presets import PRESETS

        if config.preset not in PRESETS:
            problems.append(f"--preset {config.preset!r} is unknown: choose one of {', '.join(PRESETS)}")
    if config.steps < 1:
        problems.append(f"--steps must be >= 1 (got {config.steps})")
    if config.checkpoint_every < 1:
        problems.append(f"--checkpoint-every must be >= 1 (got {config.checkpoint_every})")
    if config.checkpoint_every > config.steps >= 1:
        problems.append(
            f"--checkpoint-every {config.checkpoint_every} is larger than --steps {config.steps}: the run would "
            f"save no checkpoint to diagnose; lower --checkpoint-every"
        )
    warm = warmup_steps(config.algo, active_agent_config(config))
    if warm and config.steps <= warm:
        flag = f"--{config.algo}.{WARMUP_FIELD[config.algo].replace('_', '-')}"  # each algorithm's flag group is its name
        problems.append(
            f"--steps {config.steps} is not more than the actor's warm start ({flag} {warm}): the run would "
            f"train only the warm start; raise --steps or lower {flag}"
        )
    if config.chunk_steps < 1:
        problems.append(f"--chunk-steps must be >= 1 (got {config.chunk_steps})")
    if config.batch_size < 1:
        problems.append(f"--batch-size must be >= 1 (got {config.batch_size})")
    problems += reward_transform_problems(config.reward_scale, config.reward_shift)
    gamma = getattr(active_agent_config(config), "gamma", 0.99)
    if not 0.0 <= gamma < 1.0:
        problems.append(f"gamma must be in [0, 1) (got {gamma})")
    agent = active_agent_config(config)
    if getattr(agent, "shared_encoder", False):
        if config.algo != "cql":
            problems.append("shared_encoder is implemented for CQL only: drop it for --algo " + config.algo)
        elif agent.critic_encoder != agent.actor_encoder:
            problems.append(
                f"shared_encoder needs one encoder kind, but critic_encoder={agent.critic_encoder} and "
                f"actor_encoder={agent.actor_encoder}: set both to the same"
            )
    module = get_agent(config.algo)
    if hasattr(module, "config_problems"):
        problems.extend(module.config_problems(agent))
    problems.extend(common.actor_average_problems(ALGO_FIELD[config.algo], agent))
    if hasattr(module, "split_sizes") and config.batch_size >= 1 and not module.config_problems(agent):
        try:
            module.split_sizes(agent, config.batch_size)
        except ValueError as e:
            problems.append(str(e))
    if config.frame_stack < 1:
        problems.append(f"--frame-stack must be >= 1 (got {config.frame_stack})")
    if config.wandb_project and importlib.util.find_spec("wandb") is None:
        problems.append("--wandb-project needs wandb, which is not installed: pip install 'offrl[wandb]'")
    if config.algo == "brac" and config.behavior_run is None and not config.resume:  # resume: from config.json
        problems.append(
            "BRAC needs a behaviour policy: train one with `offrl train --algo bc ...` and pass --behavior-run"
        )
    if problems:
        raise ValueError("; ".join(problems))


def check_trainable(dataset: Dataset, config: TrainConfig) -> None:
    """Refuse datasets that pass format validation but cannot be trained on as asked.

    Raises:
        DatasetError: every reward is 0 (there is nothing for Q to learn), the dataset has a single episode
            while held-out metrics are requested, or an agent of state observations only is asked for images.
    """
    discrete = dataset.num_actions is not None
    if discrete != (config.algo in DISCRETE):
        raise DatasetError(
            f"{config.dataset} has {'discrete' if discrete else 'continuous'} actions and --algo {config.algo} "
            + ("acts continuously: use --algo dqn (--dqn.variant dqn|double_dqn|qr_dqn|ensemble|rem|cql)" if discrete
               else "needs discrete actions (metadata action_space 'discrete'): use cql, iql, awac, bear, brac, bc "
                    "or tt")
        )
    if not np.any(dataset.rewards):
        raise DatasetError(
            f"'rewards' are all 0 in {config.dataset}: Q-learning has nothing to learn; check which key holds "
            f"the reward, or relabel successes as reward 1"
        )
    if getattr(get_agent(config.algo), "STATE_OBSERVATIONS_ONLY", False) and \
            resolve_obs_mode(config.obs, dataset) != "state":
        raise DatasetError(f"--algo {config.algo} models state observations only: pass --obs state")
    if config.algo in MODEL_BASED and (config.heldout_fraction <= 0 or dataset.num_episodes < 2):
        raise DatasetError(
            f"--algo {config.algo} selects its dynamics model on held-out episodes, but "
            + (f"{config.dataset} has {dataset.num_episodes} episode(s)" if dataset.num_episodes < 2 else
               "--heldout-fraction is 0")
            + ": use a dataset of at least 2 episodes and --heldout-fraction > 0 (default 0.1)"
        )
    if dataset.num_episodes < 2 and config.heldout_fraction > 0:
        raise DatasetError(
            f"{config.dataset} has a single episode, so no episode can be held out for the held-out metrics: "
            f"add episodes, or pass --heldout-fraction 0 to train without them"
        )


def _resume_settings(config: TrainConfig) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The configuration a run trains under, and the saved config.json of the run it resumes (None for a new run).

    A resumed run takes back its own algorithm, seed, agent and data settings (a resume continues the run it
    started, whatever the command line says); only ``steps`` may grow.

    Raises:
        FileNotFoundError: ``resume`` on a directory that is not a run.
        FileExistsError: a new run into a non-empty directory without ``overwrite``.
        ValueError: a setting is invalid (:func:`check_config`).
    """
    out = Path(config.out)
    if not config.resume:
        check_config(config)
        if out.exists() and any(out.iterdir()) and not config.overwrite:
            raise FileExistsError(
                f"run directory {out} already exists: choose another --out, pass --resume to continue it, "
                f"or --overwrite to delete it"
            )
        return config, None
    if not (out / rd.CONFIG_FILE).is_file():
        raise FileNotFoundError(f"cannot resume: {out} has no {rd.CONFIG_FILE}; start a new run without --resume")
    saved = rd.read_json(out / rd.CONFIG_FILE)
    config = dataclasses.replace(config, algo=saved.get("algo", "cql"), seed=saved["seed"])
    config = _with_agent_config(config, config_from_dict(config.algo, saved["agent"]))
    if "behavior" in saved:  # BRAC: the same pi_beta, even when no checkpoint exists yet to restore
        config = dataclasses.replace(
            config, behavior_run=Path(saved["behavior"]["run"]), behavior_step=saved["behavior"]["step"]
        )
    restored = ("checkpoint_every", "chunk_steps", "batch_size", "heldout_fraction", "eval_transitions",
                "normalize_observations", "dataset_format", "obs_keys", "obs", "frame_stack", "split_seed",
                "reward_scale", "reward_shift")
    training = {TRAINING_RENAMED.get(k, k): v for k, v in saved["training"].items()}
    for k in restored:
        if k in training:
            v = training[k]
            config = dataclasses.replace(config, **{k: tuple(v) if isinstance(v, list) else v})
    check_config(config)  # with the run's own settings restored
    return config, saved


def _read_dataset(config: TrainConfig, dataset: Dataset | None) -> Dataset:
    """The dataset to train on, checked (:func:`check_trainable`) and with the run's reward transform applied.

    Raises:
        FileNotFoundError, DatasetError, ValueError: as :func:`train`.
    """
    if dataset is None:
        if config.dataset_format == "offrl":
            dataset = load_dataset(config.dataset)
        else:
            from offrl.data.importers import import_dataset

            dataset = import_dataset(config.dataset_format, config.dataset, obs_keys=config.obs_keys)
    check_trainable(dataset, config)
    return transform_rewards(dataset, config.reward_scale, config.reward_shift)


@dataclasses.dataclass
class _Setup:
    """Everything a run builds from its config and dataset before the first gradient step."""

    config: TrainConfig  # BRAC's agent config gains its behaviour network's shape
    agent: Any
    module: Any
    inputs: Inputs
    spec: Any
    num_outputs: int  # discrete agents: actions; continuous: the action dimension
    state: Any  # freshly initialised (a resumed run restores its checkpoint over it)
    averaged: bool  # the Polyak average of the actor is kept beside the agent's state
    q_range: dict[str, Any]
    data_seed: int
    k_train: jax.Array
    k_eval: jax.Array
    extra: dict[str, Any]  # what config.json records beyond the resolved config (dataset, normalizer, ...)


def _setup(config: TrainConfig, dataset: Dataset, dataset_fp: str) -> tuple[_Setup, Dataset, Dataset | None]:
    """Split the episodes, fit the normaliser, initialise the agent; returns the setup and the training and
    held-out episodes (None when ``heldout_fraction`` is 0).

    Raises:
        FileNotFoundError, ValueError: BRAC's behaviour run is missing or does not match (:func:`_load_behavior`).
    """
    data_seed = config.seed if config.split_seed is None else config.split_seed
    train_ds, heldout_ds = split_episodes(dataset, config.heldout_fraction, data_seed)
    mode = resolve_obs_mode(config.obs, dataset)
    columns = state_columns(mode, dataset)
    normalizer = (
        Normalizer.fit(train_ds.observations[:, columns])
        if config.normalize_observations
        else Normalizer.identity(len(columns))
    )
    inputs = Inputs(mode, tuple(columns), normalizer, config.frame_stack, _calibration_gamma(config),
                    _sequence_window(config))
    spec = obs_spec(mode, dataset, config.frame_stack)
    agent = active_agent_config(config)
    module = get_agent(config.algo)
    if hasattr(module, "config_for_data"):  # settings an agent reads from the dataset (DQN: the grid's shape)
        agent = module.config_for_data(agent, dataset.metadata)
        config = _with_agent_config(config, agent)
    q_range = q_value_range(train_ds, getattr(agent, "gamma", 0.99))
    k_init, k_train, k_eval = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    behavior_info = None
    if config.algo == "brac":
        behavior_params, behavior_info = _load_behavior(config, inputs, dataset_fp)
        agent = dataclasses.replace(
            agent,
            behavior_hidden_dims=tuple(behavior_info["actor_hidden_dims"]),
            behavior_encoder=behavior_info["actor_encoder"],
        )
        config = _with_agent_config(config, agent)
    num_outputs = dataset.num_actions or dataset.act_dim
    state = module.init(agent, spec, num_outputs, k_init)
    if hasattr(module, "fit_data"):  # the Trajectory Transformer's bins come from the training data
        state = module.fit_data(state, _host_arrays(train_ds, inputs), agent)
    if behavior_info is not None:
        state = module.with_behavior(state, behavior_params)
    averaged = common.actor_ema_decay(agent) > 0
    if averaged:  # the Polyak average of the actor, kept and checkpointed beside the agent's state
        state = common.with_actor_average(state)
    dataset_info = {
        "path": str(Path(config.dataset).absolute()),
        "fingerprint": dataset_fp,
        "num_transitions": len(dataset),
        "num_episodes": dataset.num_episodes,
        "train_episodes": train_ds.num_episodes,
        "heldout_episodes": 0 if heldout_ds is None else heldout_ds.num_episodes,
        "obs_dim": dataset.obs_dim,
        "act_dim": dataset.act_dim,
        "obs_mode": mode,
        "state_columns": columns,
        "obs_spec": spec,
        "image_shape": dataset.image_shape,
        "metadata": dataset.metadata,
        "task": dataset.metadata.get("task"),
        "q_range": [q_range["q_min"], q_range["q_max"]],
        "reward_structure": q_range,
    }
    extra = {
        "dataset": dataset_info,
        "normalizer": normalizer.to_dict(),
        "num_params": module.param_counts(common.agent_state(state)),
        **({"behavior": behavior_info} if behavior_info else {}),
    }
    setup = _Setup(config, agent, module, inputs, spec, num_outputs, state, averaged, q_range, data_seed, k_train,
                   k_eval, extra)
    return setup, train_ds, heldout_ds


def _start(out: Path, setup: _Setup, saved: dict[str, Any] | None) -> tuple[Any, int, Any]:
    """Write a new run's config.json, or restore a resumed run's last complete checkpoint (incomplete checkpoint
    folders are moved aside, metrics past it dropped); returns ``(state, start step, checkpoint manager)``.

    Raises:
        ValueError: the dataset differs from the one the resumed run started with.
    """
    config = setup.config
    if saved is None:
        rd.write_json(out / rd.CONFIG_FILE, _resolved_config(config, setup.extra))
        return setup.state, 0, rd.checkpoint_manager(out)
    dataset_fp = setup.extra["dataset"]["fingerprint"]
    if saved["dataset"]["fingerprint"] != dataset_fp:
        raise ValueError(
            f"cannot resume {out}: the dataset {config.dataset} differs from the one the run started with "
            f"(fingerprint {dataset_fp[:12]} != {saved['dataset']['fingerprint'][:12]}); "
            f"pass the original dataset"
        )
    for moved in rd.set_aside_incomplete_checkpoints(out):
        tqdm.write(f"offrl: warning: incomplete checkpoint folder moved aside to {moved}")
    manager = rd.checkpoint_manager(out)
    state, start_step = setup.state, 0
    steps_done = rd.checkpoint_steps(out)
    if steps_done:
        start_step = steps_done[-1]
        # Averaged runs postdate every older checkpoint layout.
        legacy = [] if setup.averaged else legacy_states(config.algo, setup.agent, setup.spec, setup.num_outputs)
        state, _ = rd.restore_checkpoint(manager, start_step, state, legacy)
    rd.truncate_metrics(out, start_step)
    saved["training"]["steps"] = config.steps
    rd.write_json(out / rd.CONFIG_FILE, saved)
    return state, start_step, manager


def train(config: TrainConfig, dataset: Dataset | None = None) -> Path:
    """Train an offline RL agent (``config.algo``) on a dataset, writing a run directory (see
    :mod:`offrl.training.run_dir`).

    ``dataset``: the contents of ``config.dataset`` already loaded (the automated workflow loads it once for
    all its runs); None reads the file. The run records the file's fingerprint either way.

    At every checkpoint the workflow metrics (docs/metrics.md) are computed on a fixed set of training
    transitions and, under a ``heldout/`` prefix, on the held-out episodes, and appended to metrics.jsonl
    with the training losses averaged over the interval (``train/`` prefix).

    Returns:
        The run directory.

    Raises:
        FileExistsError: the run directory exists and neither ``overwrite`` nor ``resume`` is set.
        FileNotFoundError: ``resume`` on a directory that is not a run, or the dataset is missing.
        ValueError: the dataset changed since the run started (``resume``), or a setting is invalid.
        DatasetError: the dataset is malformed.
        TrainingDiverged: a loss or metric became NaN/inf; checkpoints written before are kept.
    """
    config, saved = _resume_settings(resolve_train_config(config))
    out = Path(config.out)
    # Validate everything before touching the run directory: bad input must leave no partial run behind,
    # and --overwrite must not delete the old run for a dataset that cannot be trained on.
    dataset = _read_dataset(config, dataset)
    dataset_fp = fingerprint(config.dataset)
    setup, train_ds, heldout_ds = _setup(config, dataset, dataset_fp)  # may still refuse the settings
    if saved is None and out.exists() and config.overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    state, start_step, manager = _start(out, setup, saved)
    if start_step >= setup.config.steps:
        return out
    data = _device_arrays(train_ds, setup.inputs)
    eval_sets = {"": _eval_arrays(train_ds, setup.inputs, config.eval_transitions, setup.data_seed)}
    if heldout_ds is not None:
        eval_sets["heldout/"] = _eval_arrays(heldout_ds, setup.inputs, config.eval_transitions, setup.data_seed)
    # The host copies are no longer needed; dropping them halves the memory of large image datasets.
    del dataset, train_ds, heldout_ds
    _train_loop(out, setup, state, start_step, manager, data, eval_sets)
    return out


def _postfix(metrics: dict[str, Any], step: int, agent: Any) -> dict[str, str]:
    """The progress bar's numbers: the last chunk's minibatch averages (train/*), not metrics.jsonl's fixed
    evaluation set, so each name says ``(batch)``."""
    if "model_nll" in metrics and step <= getattr(agent, "model_steps", 0):
        return {"model_nll(batch)": f"{metrics['model_nll']:.3g}"}
    if "q_data" in metrics:
        return {"q_data(batch)": f"{metrics['q_data']:.3g}", "td(batch)": f"{metrics['td_error']:.2g}"}
    name = "log_likelihood" if "log_likelihood" in metrics else "token_log_likelihood"
    return {f"{name}(batch)": f"{metrics[name]:.3g}"}


def _train_loop(out: Path, setup: _Setup, state: Any, start_step: int, manager: Any, data: dict[str, Any],
                eval_sets: dict[str, Any]) -> None:
    """Run the compiled chunks from ``start_step`` to ``config.steps``; at every checkpoint append the workflow
    metrics to metrics.jsonl and save the state.

    Raises:
        TrainingDiverged: a loss or metric became NaN/inf, or q_data passed the divergence limit with
            ``on_divergence = "stop"``.
    """
    config, agent, module = setup.config, setup.agent, setup.module
    # The effective rank of the critic's features (srank, beyond the paper), on the first evaluation chunk.
    srank_fn = None
    if hasattr(module, "feature_srank"):
        chunks0, mask0 = eval_sets[""]
        valid = int(np.asarray(mask0[0]).sum())
        srank_batch = jax.tree.map(lambda v: v[0][:valid], chunks0)
        srank_fn = jax.jit(lambda st: module.feature_srank(common.agent_state(st), srank_batch, agent))
    chunk_steps = _chunk_size(config)
    train_chunk = make_train_chunk(config.algo, agent, config.batch_size, chunk_steps)
    evaluate = make_evaluator(config.algo, agent)
    select_model = None
    if hasattr(module, "select_model"):  # model-based: per-member snapshots and elites on the held-out episodes
        select_model = jax.jit(lambda st, chunks, mask: common.replace_agent(
            st, module.select_model(common.agent_state(st), chunks, mask, agent)))
    q_range = setup.q_range
    horizon = q_range["effective_horizon"]
    q_limit = divergence_limit(q_range["q_min"], q_range["q_max"], config.divergence_factor)

    t0 = time.perf_counter()
    interval_sums: dict[str, float] = {}
    interval_chunks = 0
    train_time = 0.0
    logger = MetricsLogger(out, rd.read_json(out / rd.CONFIG_FILE), config.wandb_project)
    bar = tqdm(
        total=config.steps, initial=start_step, disable=not config.progress, unit="step", dynamic_ncols=True
    )
    step = start_step
    try:
        while step < config.steps:
            # The key of a chunk depends only on its index, so a resumed run draws the same minibatches.
            t_chunk = time.perf_counter()
            state, metrics = train_chunk(state, data, jax.random.fold_in(setup.k_train, step // chunk_steps))
            if select_model is not None and step < agent.model_steps:
                state = select_model(state, *eval_sets["heldout/"])
            metrics = jax.device_get(metrics)
            train_time += time.perf_counter() - t_chunk
            step += chunk_steps
            bar.update(chunk_steps)
            bad = [k for k, v in metrics.items() if not np.isfinite(v)]
            if bad:
                _stop_diverged(
                    logger, manager, step, {f"train/{k}": float(v) for k, v in metrics.items()},
                    f"{bad} became NaN/inf between steps {step - chunk_steps} and {step}",
                )
            for k, v in metrics.items():
                interval_sums[k] = interval_sums.get(k, 0.0) + float(v)
            interval_chunks += 1
            bar.set_postfix(_postfix(metrics, step, agent))
            if step % config.checkpoint_every != 0 and step != config.steps:
                continue
            record: dict[str, Any] = {"step": step, "time_s": round(time.perf_counter() - t0, 3)}
            for prefix, (chunks, mask) in eval_sets.items():
                ev = jax.device_get(evaluate(state, chunks, mask, setup.k_eval))
                record.update(checkpoint_record({k: float(v) for k, v in ev.items()}, horizon, prefix))
            if srank_fn is not None:
                record["srank"] = float(srank_fn(state))
            if setup.averaged:  # the actor the workflow metrics above read (q_policy and the like)
                record["actor"] = "averaged"
            record.update({f"train/{k}": v / interval_chunks for k, v in interval_sums.items()})
            # Throughput of this interval's gradient steps (the first interval includes compilation).
            record["steps_per_s"] = round(interval_chunks * chunk_steps / (train_time + 1e-9), 2)
            _check_record(logger, manager, config, record, q_range, q_limit)
            # Record first, checkpoint second: a crash in between leaves a record without its checkpoint,
            # which resume drops and recomputes identically from the previous checkpoint. The other order
            # would leave a checkpoint whose record is lost for good.
            logger.write(record)
            rd.save_checkpoint(
                manager, step, state, {"step": step, "offrl_version": rd.offrl_version(), "algo": config.algo}
            )
            interval_sums, interval_chunks, train_time = {}, 0, 0.0
    finally:
        bar.close()
        logger.close()


def _check_record(logger: MetricsLogger, manager: Any, config: TrainConfig, record: dict[str, Any],
                  q_range: dict[str, Any], q_limit: float) -> None:
    """Stop on a NaN/inf metric; flag (``"diverged": true``) or stop, by ``on_divergence``, on q_data beyond
    ``q_limit`` (:func:`offrl.data.divergence_limit`).

    Raises:
        TrainingDiverged: as :func:`_stop_diverged`.
    """
    step = record["step"]
    nonfinite = [k for k, v in record.items() if isinstance(v, float) and not np.isfinite(v)]
    if nonfinite:
        _stop_diverged(logger, manager, step, record, f"{nonfinite} are NaN/inf at step {step}")
    if record.get("q_data", -np.inf) > q_limit:
        reason = (
            f"q_data = {record['q_data']:.4g} at step {step} is above {q_limit:.4g}, far beyond the "
            f"largest return the rewards allow ({q_range['q_max']:.4g})"
        )
        if config.on_divergence == "stop":
            _stop_diverged(logger, manager, step, record, reason)
        record["diverged"] = True
        tqdm.write(f"offrl: warning: {reason}; flagged in metrics.jsonl, training goes on")


def _load_behavior(config: TrainConfig, inputs: Inputs, dataset_fp: str) -> tuple[Any, dict[str, Any]]:
    """pi_beta for BRAC: the actor of a BC run's checkpoint, checked to match this run's data and inputs.

    Raises:
        FileNotFoundError: the behaviour run or step does not exist.
        ValueError: it is not a BC run, was trained on another dataset or with another normalisation.
    """
    from offrl.training.policy import best_step_by, load_state

    run = Path(config.behavior_run)
    bcfg = rd.load_run_config(run)
    if bcfg.get("algo") != "bc":
        raise ValueError(f"--behavior-run {run} is a {bcfg.get('algo')!r} run; pi_beta comes from `--algo bc`")
    if bcfg["dataset"]["fingerprint"] != dataset_fp:
        raise ValueError(
            f"--behavior-run {run} was trained on another dataset ({bcfg['dataset']['path']}): train BC on "
            f"{config.dataset}"
        )
    normalizer = inputs.normalizer
    bc_inputs = (bcfg["dataset"].get("obs_mode", "state"), bcfg["training"].get("frame_stack", 1))
    if bc_inputs != (inputs.mode, inputs.frame_stack):
        raise ValueError(
            f"--behavior-run {run} sees observations as (obs, frame stack) = {bc_inputs}, this run as "
            f"{(inputs.mode, inputs.frame_stack)}: train BC with the same --obs and --frame-stack"
        )
    if Normalizer.from_dict(bcfg["normalizer"]).to_dict() != normalizer.to_dict():
        raise ValueError(
            f"--behavior-run {run} normalises observations differently: train BC with the same --seed, "
            f"--heldout-fraction and --normalize-observations as this run"
        )
    step = config.behavior_step
    if step is None:
        step = best_step_by(run, "heldout/log_likelihood", fallback="log_likelihood")
    bstate, _ = load_state(run, step)
    info = {
        "run": str(run.absolute()),
        "step": step,
        "actor_hidden_dims": bcfg["agent"]["actor_hidden_dims"],
        "actor_encoder": bcfg["agent"].get("actor_encoder", "cnn"),
    }
    return bstate.actor_params, info


def _stop_diverged(logger: MetricsLogger, manager: Any, step: int, record: dict[str, Any], reason: str) -> None:
    """Log a record marked ``"diverged": true`` (no checkpoint is saved for it) and raise TrainingDiverged.

    The diagnosis reads the record as the verdict ``diverged``; earlier checkpoints are untouched.
    """
    logger.write({"step": step, **record, "diverged": True, "divergence_reason": reason})
    last = max(rd.checkpoint_steps(logger.run_dir), default=None)
    raise TrainingDiverged(
        f"training diverged: {reason}. "
        + (f"The last good checkpoint, step {last}, is kept. " if last is not None else "No checkpoint was kept. ")
        + "Lower the learning rates, check the rewards' scale and terminals, or raise the CQL weight alpha; "
        "`offrl diagnose` reports it"
    )
