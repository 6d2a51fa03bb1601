"""`offrl sweep`: K runs (seeds, and values of one hyperparameter) in one command; CQL's vectorised in one process.

The workflow's remedies call for small sweeps (the CQL weight alpha, the DR3 or VIB coefficients, seeds). On a
machine whose cores one small MLP step does not fill, running the K runs as one ``jax.vmap``-ed program does
more work per dispatch and per memory pass than K separate processes or K runs one after another.

Each member of a sweep is an ordinary run directory (config.json, metrics.jsonl, checkpoints, TensorBoard), the
same as ``offrl train`` with that seed and value would write: the same initialisation, minibatches and keys
(member k uses ``PRNGKey(seed_k)`` split exactly as :func:`offrl.training.train.train` does), so its metrics
match a separate run's to float tolerance (tests/test_sweep.py). All members share one train/held-out split:
the split of ``train.seed`` (``TrainConfig.split_seed`` gives a separate run the same split).

What can be swept: any float field of :class:`offrl.agents.cql.CQLConfig` that enters the update only
arithmetically (alpha, vib_beta, dr3_coef, l2_coef, l1_coef, gamma, tau, learning rates, ...). Fields that change
the networks' shapes or the program (hidden sizes, vib_dim, num_action_samples, lagrange) cannot share one
compiled program: run them separately (:func:`sweep` says so). State observations only.

Every other algorithm (``--train.algo brac|bc|iql|awac|bear|tt|dqn|mopo|combo``) is swept **one run after
another** in this process: each member is exactly the `offrl train` run of its seed and value (same split of
``train.seed``), so any float hyperparameter of that algorithm can be varied (MOPO's ``penalty_coef``, IQL's
``expectile``, ...). Not vectorised: MOPO's and COMBO's model phase selects the model on the host between
compiled chunks, and on a 2-core machine K runs in sequence match a vmapped sweep's throughput anyway
(docs/speed.md, "Many runs at once").

On a Ray cluster (``--ray ADDRESS``, :mod:`offrl.cluster`) every run is a task of its own, trained as the separate
`offrl train` run above (seed, value, and the split of ``train.seed``): the same run directories, with metrics
equal to the vectorised sweep's to float tolerance, and a run whose worker dies resumes from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from offrl import cluster
from offrl.agents import cql, get_agent
from offrl.data import (
    Normalizer,
    divergence_limit,
    fingerprint,
    load_dataset,
    q_value_range,
    split_episodes,
    transform_rewards,
)
from offrl.data.images import obs_spec, resolve_obs_mode, state_columns
from offrl.training import run_dir as rd
from offrl.training.loggers import MetricsLogger
from offrl.training.train import (
    ALGO_FIELD,
    Inputs,
    TrainConfig,
    TrainingDiverged,
    _calibration_gamma,
    _chunk_size,
    _device_arrays,
    _eval_arrays,
    _resolved_config,
    check_config,
    check_trainable,
    checkpoint_record,
    evaluate_chunks,
    resolve_train_config,
    scan_steps,
    train,
)

# Fields whose value changes the program, not just numbers inside it.
_STRUCTURAL = {"critic_hidden_dims", "actor_hidden_dims", "num_critics", "vib_dim", "num_action_samples",
               "lagrange", "deterministic_backup", "critic_layer_norm", "critic_encoder", "actor_encoder",
               "shared_encoder", "crop_padding", "bc_steps", "critic_dropout", "target_entropy"}


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """What `offrl sweep` does: the runs are every (seed, value) pair, trained together (CQL) or in turn."""

    train: TrainConfig
    """The base run (dataset, steps, checkpoints, the hyperparameters of ``train.algo``); ``train.out`` is the
    sweep directory."""
    seeds: tuple[int, ...] = (0,)
    """Seeds of the runs."""
    param: str | None = None
    """A float hyperparameter of ``train.algo`` to vary (e.g. CQL's alpha, dr3_coef, vib_beta; MOPO's
    penalty_coef); None: seeds only."""
    values: tuple[float, ...] = ()
    """Values of ``param``."""
    ray: str | None = None
    """Train the runs as Ray tasks, one run each, instead of vectorised in this process (docs/cluster.md): on the
    cluster at this address (``auto``: the cluster this machine joined with `ray start`; ``HOST:PORT``;
    ``ray://HOST:10001``) or ``local`` (a Ray instance on this machine only). ``--ray`` alone means local. Needs
    `pip install 'offrl[ray]'`."""
    ray_cpus_per_cell: float = 1.0
    """With --ray: CPUs each run reserves (below 2, its XLA runs single-threaded)."""
    ray_gpus_per_cell: float = 0.0
    """With --ray: GPUs each run reserves; a fraction shares a GPU (0.25: four runs per GPU); 0: CPU only."""


def member_name(seed: int, param: str | None, value: float | None) -> str:
    """Run directory name of a sweep member, e.g. ``alpha=3_s1``."""
    return f"s{seed}" if param is None else f"{param}={value:g}_s{seed}"


def _with_value(agent: Any, param: str | None, value: Any) -> Any:
    if param is None:
        return agent
    return dataclasses.replace(agent, **{param: value})


def vectorised(config: SweepConfig) -> bool:
    """Whether the sweep trains its runs as one vmapped program (CQL, without --ray) rather than one by one."""
    return config.train.algo == "cql" and config.ray is None


def check_sweep(config: SweepConfig) -> list[tuple[int, float | None]]:
    """The (seed, value) members, or a ValueError naming the problem and the fix."""
    algo = config.train.algo
    agent = getattr(config.train, ALGO_FIELD[algo])
    if not config.seeds:
        raise ValueError("--seeds needs at least one seed")
    if len(set(config.seeds)) != len(config.seeds):
        raise ValueError(f"--seeds repeats a seed: {config.seeds}")
    if config.param is None:
        if config.values:
            raise ValueError(f"--values needs --param (the {algo.upper()} hyperparameter they are values of)")
        return [(s, None) for s in config.seeds]
    floats = [f.name for f in dataclasses.fields(agent) if isinstance(getattr(agent, f.name), float)]
    if algo != "cql" and config.param not in floats:
        raise ValueError(f"--param {config.param!r} is not a float hyperparameter of {algo.upper()}; one of: "
                         f"{', '.join(floats)}")
    fields = {f.name: f for f in dataclasses.fields(cql.CQLConfig)}
    if algo == "cql" and config.param not in fields:
        raise ValueError(f"--param {config.param!r} is not a CQL hyperparameter; floats such as alpha, vib_beta, "
                         f"dr3_coef, l2_coef can be swept")
    if algo == "cql" and (config.param in _STRUCTURAL or not isinstance(getattr(agent, config.param), float)):
        raise ValueError(
            f"--param {config.param} changes the networks or the program, so its runs cannot share one compiled "
            f"program: run `offrl train` once per value instead (a sweep varies float hyperparameters such as "
            f"alpha, beta, dr3_coef)"
        )
    if not config.values:
        raise ValueError(f"--param {config.param} needs --values")
    return list(itertools.product(config.seeds, [float(v) for v in config.values]))


def _stack(trees: list[Any]) -> Any:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _member(tree: Any, k: int) -> Any:
    return jax.tree.map(lambda x: x[k], tree)


def member_train_config(config: SweepConfig, seed: int, value: float | None) -> TrainConfig:
    """The `offrl train` run a member matches: its seed and value, the held-out split of ``train.seed``."""
    base = config.train
    field = ALGO_FIELD[base.algo]
    return dataclasses.replace(base, out=Path(base.out) / member_name(seed, config.param, value), seed=seed,
                               split_seed=base.seed,
                               **{field: _with_value(getattr(base, field), config.param, value)})


def prepare_sweep(config: SweepConfig) -> tuple[SweepConfig, list[tuple[int, float | None]], Any]:
    """Every check of :func:`sweep` before anything is written: the config with ``train`` resolved, the members,
    and the dataset.

    Raises: as :func:`sweep`.
    """
    config = dataclasses.replace(config, train=resolve_train_config(config.train))
    members = check_sweep(config)
    base = config.train
    check_config(base)
    if config.param == "gamma":
        raise ValueError("--param gamma changes the Q range each run is diagnosed against: run it separately")
    if vectorised(config) and float(getattr(base.agent, "actor_ema_decay", 0.0) or 0.0) > 0:
        raise ValueError("offrl sweep's vectorised CQL keeps no averaged actor: drop --agent.actor-ema-decay, or "
                         "train each run with `offrl train`")
    out = Path(base.out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"sweep directory {out} already exists: choose another --train.out")
    if base.dataset_format == "offrl":
        dataset = load_dataset(base.dataset)
    else:
        from offrl.data.importers import import_dataset

        dataset = import_dataset(base.dataset_format, base.dataset, obs_keys=base.obs_keys)
    check_trainable(dataset, base)
    dataset = transform_rewards(dataset, base.reward_scale, base.reward_shift)
    mode = resolve_obs_mode(base.obs, dataset)
    if mode != "state" and vectorised(config):
        raise ValueError("offrl sweep vectorises CQL on state observations; image runs: use `offrl train` per run")
    return config, members, dataset


def sweep(config: SweepConfig) -> list[Path]:
    """Train every member of the sweep together (with ``config.ray``: one Ray task per member, see
    :mod:`offrl.cluster`); returns the run directories (``train.out/<member>``).

    Raises:
        FileExistsError: the sweep directory has runs already (a sweep never overwrites; pass another --out).
        ValueError: a setting cannot be swept (see the module doc), or the dataset is image-only.
        DatasetError: the dataset is malformed or has no rewards.
        RuntimeError: with ``ray``: Ray is missing, no cluster answers, a node does not see the files, or runs
            failed.
    """
    if config.ray is not None:
        options = cluster.RayOptions(config.ray, config.ray_cpus_per_cell, config.ray_gpus_per_cell)
        cluster.import_ray()
    config, members, dataset = prepare_sweep(config)
    if config.ray is not None:
        del dataset
        return sweep_on_ray(config, members, options)
    if not vectorised(config):
        del dataset
        return sweep_in_turn(config, members)
    base = config.train
    out = Path(base.out)
    mode = resolve_obs_mode(base.obs, dataset)
    train_ds, heldout_ds = split_episodes(dataset, base.heldout_fraction, base.seed)
    columns = state_columns(mode, dataset)
    normalizer = (Normalizer.fit(train_ds.observations[:, columns]) if base.normalize_observations
                  else Normalizer.identity(len(columns)))
    inputs = Inputs(mode, tuple(columns), normalizer, 1, _calibration_gamma(base))
    spec = obs_spec(mode, dataset, 1)
    module = get_agent("cql")
    agents = [_with_value(base.agent, config.param, v) for _, v in members]
    q_range = q_value_range(train_ds, base.agent.gamma)
    dataset_fp = fingerprint(base.dataset)
    keys = [jax.random.split(jax.random.PRNGKey(s), 3) for s, _ in members]
    states = _stack([module.init(a, spec, dataset.act_dim, k[0]) for a, k in zip(agents, keys, strict=True)])
    k_train = jnp.stack([k[1] for k in keys])
    k_eval = jnp.stack([k[2] for k in keys])
    values = jnp.asarray([0.0 if v is None else v for _, v in members], jnp.float32)

    dataset_info = {
        "path": str(Path(base.dataset).absolute()), "fingerprint": dataset_fp, "num_transitions": len(dataset),
        "num_episodes": dataset.num_episodes, "train_episodes": train_ds.num_episodes,
        "heldout_episodes": 0 if heldout_ds is None else heldout_ds.num_episodes, "obs_dim": dataset.obs_dim,
        "act_dim": dataset.act_dim, "obs_mode": mode, "state_columns": columns, "obs_spec": spec,
        "image_shape": None, "metadata": dataset.metadata, "task": dataset.metadata.get("task"),
        "q_range": [q_range["q_min"], q_range["q_max"]], "reward_structure": q_range,
    }
    data = _device_arrays(train_ds, inputs)
    eval_sets = {"": _eval_arrays(train_ds, inputs, base.eval_transitions, base.seed)}
    if heldout_ds is not None:
        eval_sets["heldout/"] = _eval_arrays(heldout_ds, inputs, base.eval_transitions, base.seed)
    chunk_steps = _chunk_size(base)
    param, agent = config.param, base.agent

    # The dataset is an argument, not a closure: XLA would fold a closed-over array in as a constant.
    def member_chunk(state: Any, data: dict[str, Any], key: jax.Array, value: jnp.ndarray):
        return scan_steps(module, _with_value(agent, param, value), base.batch_size, chunk_steps, state, data, key)

    def member_eval(state: Any, chunks: Any, mask: Any, key: jax.Array, value: jnp.ndarray):
        return evaluate_chunks(module, _with_value(agent, param, value), state, chunks, mask, key)

    try:
        train_chunk = jax.jit(jax.vmap(member_chunk, in_axes=(0, None, 0, 0)))
        evaluate = jax.jit(jax.vmap(member_eval, in_axes=(0, None, None, 0, 0)))
        chunks0, mask0 = eval_sets[""]
        valid = int(np.asarray(mask0[0]).sum())
        srank_batch = jax.tree.map(lambda v: v[0][:valid], chunks0)
        srank = jax.jit(jax.vmap(lambda st, v: module.feature_srank(st, srank_batch, _with_value(agent, param, v))))
        train_chunk.lower(states, data, k_train, values)  # trace now: a program-changing field fails here, clearly
    except jax.errors.ConcretizationTypeError as e:
        raise ValueError(f"--param {param} decides which program runs, so its runs cannot be vectorised: run "
                         f"`offrl train` once per value instead ({type(e).__name__})") from None

    out.mkdir(parents=True)
    run_dirs, loggers, managers = [], [], []
    for (seed, value), a in zip(members, agents, strict=True):
        run = out / member_name(seed, param, value)
        run.mkdir()
        member_cfg = dataclasses.replace(base, out=run, seed=seed, agent=a, split_seed=base.seed)
        extra = {"dataset": dataset_info, "normalizer": normalizer.to_dict(),
                 "num_params": module.param_counts(_member(states, 0)),
                 "sweep": {"dir": str(out), "members": len(members), "param": param}}
        rd.write_json(run / rd.CONFIG_FILE, _resolved_config(member_cfg, extra))
        run_dirs.append(run)
        loggers.append(MetricsLogger(run, rd.read_json(run / rd.CONFIG_FILE), base.wandb_project))
        managers.append(rd.checkpoint_manager(run))

    horizon = q_range["effective_horizon"]
    q_limit = divergence_limit(q_range["q_min"], q_range["q_max"], base.divergence_factor)
    alive = np.ones(len(members), bool)
    sums: dict[str, np.ndarray] = {}
    n_chunks, train_time, t0, step = 0, 0.0, time.perf_counter(), 0
    bar = tqdm(total=base.steps, disable=not base.progress, unit="step", dynamic_ncols=True,
               desc=f"sweep x{len(members)}")
    try:
        while step < base.steps:
            t = time.perf_counter()
            chunk_keys = jax.vmap(lambda k, i=step // chunk_steps: jax.random.fold_in(k, i))(k_train)
            states, metrics = train_chunk(states, data, chunk_keys, values)
            metrics = jax.device_get(metrics)
            train_time += time.perf_counter() - t
            step += chunk_steps
            bar.update(chunk_steps)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + np.asarray(v, np.float64)
            n_chunks += 1
            if step % base.checkpoint_every and step != base.steps:
                continue
            evs = {p: jax.device_get(evaluate(states, c, m, k_eval, values)) for p, (c, m) in eval_sets.items()}
            sr = np.asarray(srank(states, values))
            for i in np.flatnonzero(alive):
                record: dict[str, Any] = {"step": step, "time_s": round(time.perf_counter() - t0, 3)}
                for prefix, ev in evs.items():
                    record.update(checkpoint_record({k: float(v[i]) for k, v in ev.items()}, horizon, prefix))
                record["srank"] = float(sr[i])
                record.update({f"train/{k}": float(v[i]) / n_chunks for k, v in sums.items()})
                record["steps_per_s"] = round(n_chunks * chunk_steps / (train_time + 1e-9), 2)
                record["sweep_members"] = len(members)
                bad = [k for k, v in record.items() if isinstance(v, float) and not np.isfinite(v)]
                reason = None
                if bad:
                    reason = f"{bad} are NaN/inf at step {step}"
                elif record.get("q_data", -np.inf) > q_limit:
                    reason = f"q_data = {record['q_data']:.4g} at step {step} is above {q_limit:.4g}"
                if reason and base.on_divergence == "stop" or bad:
                    # This member stops here (its earlier checkpoints stay); the others go on.
                    loggers[i].write({**record, "diverged": True, "divergence_reason": reason})
                    alive[i] = False
                    tqdm.write(f"offrl: {run_dirs[i].name} diverged: {reason}; its earlier checkpoints are kept")
                    continue
                if reason:
                    record["diverged"] = True
                loggers[i].write(record)
                rd.save_checkpoint(managers[i], step, _member(states, i),
                                   {"step": step, "offrl_version": rd.offrl_version(), "algo": "cql"})
            sums, n_chunks, train_time = {}, 0, 0.0
            if not alive.any():
                break
    finally:
        bar.close()
        for logger in loggers:
            logger.close()
    return run_dirs


def sweep_in_turn(config: SweepConfig, members: list[tuple[int, float | None]]) -> list[Path]:
    """Train every member of a checked sweep (:func:`prepare_sweep`) one after another, each the `offrl train` run
    of its seed and value; returns the run directories, in the order of the members. A member that diverges stops
    there (its earlier checkpoints stay) and the others go on, as in the vectorised sweep.

    Raises:
        TrainingDiverged: a member diverged before its first checkpoint (nothing of it to keep).
        Any error of :func:`offrl.training.train.train` (the same for every member: raised at the first).
    """
    out = Path(config.train.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for i, (seed, value) in enumerate(members):
        member = member_train_config(config, seed, value)
        run = Path(member.out)
        tqdm.write(f"[sweep {i + 1}/{len(members)}] {run.name}")
        try:
            train(member)
        except TrainingDiverged as e:
            if not rd.checkpoint_steps(run):
                raise
            tqdm.write(f"offrl: {run.name} diverged: {e}; its earlier checkpoints are kept")
        _record_sweep(run, config, len(members))
        runs.append(run)
    return runs


def _record_sweep(run: Path, config: SweepConfig, members: int) -> None:
    """Add the ``sweep`` entry the vectorised sweep writes to a member's config.json."""
    cfg = rd.read_json(run / rd.CONFIG_FILE)
    if "sweep" not in cfg:
        cfg["sweep"] = {"dir": str(config.train.out), "members": members, "param": config.param}
        rd.write_json(run / rd.CONFIG_FILE, cfg)


# -------------------------------------------------------------------------------------------- on a Ray cluster


def _member_task(config: SweepConfig, seed: int, value: float | None, members: int, cwd: str) -> dict[str, Any]:
    """One run of a sweep, on a worker: an `offrl train` run that resumes when it exists."""
    t_task = time.perf_counter()
    cluster.enter(cwd, Path(config.train.out))
    run = Path(member_train_config(config, seed, value).out)
    done = rd.checkpoint_steps(run) if (run / rd.CONFIG_FILE).is_file() else []
    record = Path(config.train.out) / cluster.SWEEP_RAY_DIR / f"{run.name}.json"
    rec = cluster.start_attempt(record, run=run.name, resumed_from=done[-1] if done else None)
    with cluster.output_to(record.with_suffix(".log"), cluster.header(run.name, rec)):
        res = _member_attempt(config, seed, value, members)
    return cluster.finish_attempt(record, rec, res, t_task)


def _member_attempt(config: SweepConfig, seed: int, value: float | None, members: int) -> dict[str, Any]:
    member = member_train_config(config, seed, value)
    run = Path(member.out)
    resume = (run / rd.CONFIG_FILE).is_file()
    if run.exists() and not resume:  # an interrupted start holds no training: set it aside, never delete
        shutil.move(str(run), str(run.with_name(run.name + f".incomplete-{int(time.time())}")))
    result: dict[str, Any] = {"run": str(run)}
    t = time.perf_counter()
    try:
        train(dataclasses.replace(member, resume=resume, progress=False))
    except TrainingDiverged as e:
        # As in the local sweep: the run stops there, its earlier checkpoints stay, the others go on.
        if not rd.checkpoint_steps(run):
            return {**result, "status": "failed", "error": cluster.message(e)}
        result["diverged"] = str(e)
    except Exception as e:
        traceback.print_exc()
        return {**result, "status": "failed", "error": cluster.message(e)}
    _record_sweep(run, config, members)  # what the local sweep records
    return {**result, "status": "done", "cell_s": time.perf_counter() - t}


def sweep_on_ray(config: SweepConfig, members: list[tuple[int, float | None]], options: cluster.RayOptions) -> list[Path]:
    """Train every member of a checked sweep (:func:`offrl.training.sweep.prepare_sweep`) as one Ray task each;
    returns the run directories, in the order of the members.

    Raises:
        RuntimeError: Ray is missing, no cluster answers, or some runs failed (the others are finished).
        SharedStorageError: a node does not see the sweep directory or the dataset.
    """

    base = config.train
    out = Path(base.out)
    names = [member_name(s, config.param, v) for s, v in members]
    with cluster.connected(options.address) as ray:
        cluster.warn_if_infeasible(ray, options)
        out.mkdir(parents=True, exist_ok=True)
        if options.address != cluster.LOCAL:
            cluster.check_shared_storage(ray, out / cluster.SWEEP_RAY_DIR, must_exist=(base.dataset,) if base.dataset else (),
                                 options=options)

        def describe(name: str, res: dict[str, Any]) -> str:
            head = f"[sweep {names.index(name) + 1}/{len(names)}] {name}"
            if res["status"] == "failed":
                return f"{head} failed: {res['error']}"
            note = f"; {res['diverged']}" if res.get("diverged") else ""
            again = f", attempt {res['attempt']}" if res.get("attempt", 1) > 1 else ""
            return f"{head}: trained ({res['cell_s']:.0f} s on {res['ip']}{again}){note}"

        calls = [(n, (config, s, v, len(members), os.getcwd())) for n, (s, v) in zip(names, members, strict=True)]
        results = cluster.run_tasks(ray, _member_task, calls, options, out / cluster.SWEEP_RAY_DIR, "sweep", "run",
                                    describe)
    bad = {n: r["error"] for n, r in results.items() if r["status"] == "failed"}
    if bad:
        raise RuntimeError(
            f"{len(bad)} of {len(names)} sweep runs failed: "
            + "; ".join(f"{n}: {e}" for n, e in bad.items())
            + f". The others are finished in {out}"
        )
    return [out / n for n in names]
