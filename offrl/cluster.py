"""Studies and sweeps on a Ray cluster: `offrl study CONFIG --ray [ADDRESS]`, `offrl sweep ... --ray [ADDRESS]`.

Every cell of a study, and every run of a sweep, is one Ray task that declares its resources
(``--ray-cpus-per-cell``, ``--ray-gpus-per-cell``); Ray starts it on a node that has them free. A task runs the
code of the local path (:func:`offrl.study.cell.run_cell` under the cell's lock; :func:`offrl.training.train.train`
for a sweep run) in the head's working directory and writes the same files; the head (the process that ran the
command) then analyses them exactly as a local run does. A study's run directories, analysis.json and results page
are therefore those of a local run (tests/test_ray.py compares them). A sweep run is trained as the separate
`offrl train` run that the local, vectorised sweep matches to float tolerance (same seed, value and held-out
split; tests/test_sweep.py), so that it can resume: the vectorised sweep cannot.

Fault tolerance
  * A worker process or a node that dies is a failure of the system: Ray runs the task again (``max_retries``
    times at most) on any node with the resources free, and the new attempt resumes the cell from its last
    complete checkpoint (training resumes; evaluation.json and fqe.json are reused when they cover the
    checkpoints). A finished cell (cell.json) is never submitted.
  * An exception of the cell's own (a bad setting, a dataset without a success, a run that diverged before its
    first checkpoint) is not retried: its message goes to STUDY/failed/<cell>.txt and to the results, and the
    other cells go on. The next call tries it again, as the local path does.

Shared storage
  Tasks read and write the study directory (a sweep's directory and dataset) at the path the head uses, relative
  paths from the head's working directory: it must be on a file system every node mounts at the same path (NFS,
  CephFS, Lustre, ...). Before any cell is submitted, one probe task per node checks that the node reads a file
  the head has just written there, can write beside it and can take a ``flock`` lock; otherwise the command stops
  with an error naming the nodes, and nothing runs. Every cell task checks again (for nodes that join later).

  The cell locks (STUDY/locks) are only a guard here: Ray gives a cell to one task at a time. They keep another
  `offrl study` process on the same directory (local workers, a second head) away from a cell a task holds, and
  a retried attempt waits up to :data:`LOCK_WAIT_S` for the lock of the attempt that died: the kernel frees it at
  once when only the process died, an NFS server when the lease of a dead node expires (90 s by default).

Layout added to a study directory: STUDY/ray/<cell>.json (the attempt: node, pid, step resumed from) and
STUDY/ray/<cell>.log (what the cell printed); a sweep keeps them in OUT/.ray/.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from offrl.study.config import Cell, StudyConfig

RAY_INSTALL = "pip install 'offrl[ray]'"
LOCAL = "local"
"""The address of a Ray instance on this machine only, started and stopped by the command."""
MAX_RETRIES = 3
LOCK_WAIT_S = 150.0
STUDY_RAY_DIR = "ray"
SWEEP_RAY_DIR = ".ray"
_PROBE_TIMEOUT_S = 300.0


class SharedStorageError(RuntimeError):
    """A node of the cluster does not see the study (or sweep) directory at the path the head uses."""


@dataclasses.dataclass(frozen=True)
class RayOptions:
    """Where and how the cells run on Ray."""

    address: str = LOCAL
    """``local``, ``auto`` (the cluster this machine joined with `ray start`), ``HOST:PORT`` or
    ``ray://HOST:10001``."""
    cpus_per_cell: float = 1.0
    """CPUs a cell reserves; below 2 its XLA runs single-threaded (one core per cell)."""
    gpus_per_cell: float = 0.0
    """GPUs a cell reserves; a fraction shares a GPU. 0: the cell's JAX uses the CPU only."""
    max_retries: int = MAX_RETRIES
    """Attempts after the first when a worker or node dies (not when the cell itself fails)."""

    def __post_init__(self) -> None:
        if not self.address:
            raise ValueError("--ray needs an address: local, auto, HOST:PORT or ray://HOST:10001")
        if self.cpus_per_cell <= 0:
            raise ValueError(f"--ray-cpus-per-cell must be > 0, got {self.cpus_per_cell}")
        if self.gpus_per_cell < 0:
            raise ValueError(f"--ray-gpus-per-cell must be >= 0, got {self.gpus_per_cell}")
        if self.gpus_per_cell > 1 and self.gpus_per_cell != int(self.gpus_per_cell):
            raise ValueError(f"--ray-gpus-per-cell above 1 must be a whole number, got {self.gpus_per_cell}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")


def import_ray() -> Any:
    """The ``ray`` module, or a RuntimeError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RuntimeError(f"--ray needs Ray, which is not installed: {RAY_INSTALL} (docs/cluster.md)") from None
    return ray


@contextlib.contextmanager
def connected(address: str) -> Iterator[Any]:
    """Connect to the cluster at ``address`` (or start a local Ray instance) for the duration of the block. A Ray
    session the caller has opened already (a notebook, a test) is used as it is and left open."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    kw: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    _check_reachable(address)
    try:
        if address == LOCAL:
            ray.init(include_dashboard=False, **kw)
        else:
            ray.init(address=address, **kw)
    except ConnectionError as e:
        raise RuntimeError(
            f"no Ray cluster at {address!r} ({str(e).splitlines()[0]}): start one with `ray start --head` "
            f"(docs/cluster.md), or pass --ray local for a Ray instance on this machine only"
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """A ``HOST:PORT`` (or ``ray://HOST:PORT``) that takes no connection fails here within ``timeout_s``, not after
    Ray's own retries (minutes)."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or address in (LOCAL, "auto"):
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise RuntimeError(
            f"no Ray cluster answers at {address!r} ({e}): check the head's address and port (`ray start --head` "
            f"prints them; docs/cluster.md), or pass --ray local for a Ray instance on this machine only"
        ) from None


def _task_env(options: RayOptions) -> dict[str, str]:
    """Environment of the cells' worker processes (Ray starts workers of their own for it)."""
    from offrl.runtime import SINGLE_THREAD_XLA

    env = {}
    if options.gpus_per_cell == 0:
        env["JAX_PLATFORMS"] = "cpu"  # a cell that reserved no GPU must not take one
    elif options.gpus_per_cell < 1:
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # cells that share a GPU must not preallocate it
    if options.cpus_per_cell < 2:
        env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SINGLE_THREAD_XLA}".strip()
    return env


def warn_if_infeasible(ray: Any, options: RayOptions, out: Any = sys.stderr) -> None:
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    fits = [n for n in nodes if n["Resources"].get("CPU", 0) >= options.cpus_per_cell
            and n["Resources"].get("GPU", 0) >= options.gpus_per_cell]
    if not fits:
        have = "; ".join(f"{n['NodeManagerAddress']}: {n['Resources'].get('CPU', 0):g} CPU, "
                         f"{n['Resources'].get('GPU', 0):g} GPU" for n in nodes)
        print(f"offrl: warning: no node of the cluster has {options.cpus_per_cell:g} CPU and "
              f"{options.gpus_per_cell:g} GPU for a cell ({have}): the cells wait until such a node joins; "
              f"lower --ray-cpus-per-cell / --ray-gpus-per-cell, or add nodes", file=out, flush=True)


def _node() -> tuple[str, str]:
    """(node id, IP address) of the calling task."""
    import ray

    return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()


def enter(cwd: str, path: Path) -> None:
    """Work in the head's directory ``cwd``, so that relative paths mean what they mean to the head."""
    if os.path.isdir(cwd):
        os.chdir(cwd)
    elif not path.is_absolute():
        raise SharedStorageError(
            f"node {_node()[1]} has no folder {cwd} (the head's working directory), which {path} is relative to: "
            f"pass an absolute path on storage every node mounts at the same path (docs/cluster.md)"
        )


def _probe(probe: str, cwd: str, token: str, must_exist: list[str]) -> dict[str, Any]:
    """Run on one node: does it read the head's probe file, write beside it, lock there, see ``must_exist``?"""
    import fcntl

    node, ip = _node()
    problem = None
    try:
        path = Path(probe)
        enter(cwd, path)
        if not path.is_file() or path.read_text() != token:
            problem = f"does not see {path.absolute()}, which the head has just written"
        else:
            for m in must_exist:
                if not Path(m).exists():
                    problem = f"does not see {Path(m).absolute()}"
            back = path.with_name(f"{path.name}.{node}")
            back.write_text(token)
            with open(back, "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
    except (OSError, SharedStorageError) as e:
        problem = f"cannot use it: {e}"
    return {"node": node, "ip": ip, "problem": problem}


def check_shared_storage(ray: Any, folder: Path, must_exist: tuple[str | Path, ...] = (),
                         options: RayOptions | None = None) -> None:
    """One probe task on every live node: raises :class:`SharedStorageError` naming the nodes that do not see
    ``folder`` (and ``must_exist``) at the head's path, cannot write there, or cannot take a lock there.
    ``options``: the cells' (their environment: a probe's worker process is then reused by a cell)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    folder.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    probe = folder / f"probe-{token}"
    probe.write_text(token)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    remote = ray.remote(_probe)
    try:
        env = {"runtime_env": {"env_vars": _task_env(options)}} if options is not None else {}
        refs = [remote.options(num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False), **env).remote(str(probe), os.getcwd(), token, [str(m) for m in must_exist])
            for n in nodes]
        try:
            answers = ray.get(refs, timeout=_PROBE_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise SharedStorageError(
                f"not every node of the cluster answered the shared-storage check within {_PROBE_TIMEOUT_S:.0f} s"
            ) from None
    finally:
        for p in folder.glob(f"probe-{token}*"):
            p.unlink(missing_ok=True)
    bad = [a for a in answers if a["problem"]]
    if bad:
        raise SharedStorageError(
            f"{len(bad)} of {len(answers)} nodes of the cluster cannot work on {folder.absolute()}: "
            + "; ".join(f"node {a['ip']} {a['problem']}" for a in bad)
            + ". Put it on storage every node mounts at the same path (NFS, ...), run the command from there or "
            "pass absolute paths, and install offrl on every node (docs/cluster.md); nothing has run"
        )


@contextlib.contextmanager
def output_to(log: Path, header: str) -> Iterator[None]:
    """What the task prints goes to ``log`` (appended: one section per attempt)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", buffering=1) as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        print(f"--- {header}", flush=True)
        yield


def start_attempt(record: Path, **info: Any) -> dict[str, Any]:
    """Write the attempt's record (node, pid, ...); the attempt number counts the records before it."""
    from offrl.training import run_dir as rd

    attempt = 1
    if record.is_file():
        with contextlib.suppress(ValueError, OSError, KeyError):
            attempt = int(rd.read_json(record)["attempt"]) + 1
    node, ip = _node()
    rec = {"attempt": attempt, "node_id": node, "ip": ip, "host": os.uname().nodename, "pid": os.getpid(),
           "started": time.time(), **info}
    record.parent.mkdir(parents=True, exist_ok=True)
    rd.write_json(record, rec)
    return rec


def message(e: BaseException) -> str:
    """One line naming the error: the message of offrl's own errors, type and message of anything else."""
    from offrl.data import DatasetError
    from offrl.training.train import TrainingDiverged

    text = " ".join(str(e).split())
    return text if isinstance(e, (DatasetError, TrainingDiverged)) else f"{type(e).__name__}: {text}"


# --------------------------------------------------------------------------------------------------- study


def _cell_task(config: StudyConfig, cell: Cell, cwd: str, study_json: str) -> dict[str, Any]:
    """One cell, on a worker: the head's working directory, the cell's lock, :func:`run_cell`."""
    from offrl.training import run_dir as rd

    t_task = time.perf_counter()
    enter(cwd, config.out)
    saved = config.out / "study.json"
    if not saved.is_file() or saved.read_text() != study_json:
        raise SharedStorageError(
            f"node {_node()[1]} does not see the study {Path(config.out).absolute()} the head prepared: put it on "
            f"storage every node mounts at the same path (docs/cluster.md)"
        )
    run = config.out / "cells" / cell.name
    done = rd.checkpoint_steps(run) if (run / rd.CONFIG_FILE).is_file() else []
    record = config.out / STUDY_RAY_DIR / f"{cell.name}.json"
    rec = start_attempt(record, cell=cell.name, resumed_from=done[-1] if done else None)
    with output_to(record.with_suffix(".log"), header(cell.name, rec)):
        res = _cell_attempt(config, cell, rec["attempt"])
    return finish_attempt(record, rec, res, t_task)


def _cell_attempt(config: StudyConfig, cell: Cell, attempt: int) -> dict[str, Any]:
    from offrl.study import cell as study_cell
    from offrl.study import store
    from offrl.training import run_dir as rd

    with _lock_within(config, cell.name, LOCK_WAIT_S if attempt > 1 else 0.0) as held:
        if not held:
            return {"status": "held"}
        if (res := store.finished_cell(config, cell)) is not None:  # finished by another process meanwhile
            return {"status": "done", "cell": res}
        failure = store.failure_file(config, cell)
        t = time.perf_counter()
        try:
            res = study_cell.run_cell(cell, config, progress=False)
        except Exception as e:  # the cell's own failure: recorded once, not retried (retry_exceptions=False)
            traceback.print_exc()
            failure.parent.mkdir(parents=True, exist_ok=True)
            rd.atomic_write_text(failure, f"{message(e)}\n")
            return {"status": "failed", "error": message(e)}
        failure.unlink(missing_ok=True)
        return {"status": "done", "cell": res, "cell_s": time.perf_counter() - t}


def header(name: str, rec: dict[str, Any]) -> str:
    start = f"resuming from step {rec['resumed_from']}" if rec["resumed_from"] else "from the start"
    return f"{name}: attempt {rec['attempt']} on {rec['ip']} (pid {rec['pid']}), {start}"


def finish_attempt(record: Path, rec: dict[str, Any], res: dict[str, Any], t_task: float) -> dict[str, Any]:
    """Complete the attempt's record (status, seconds in the cell and in the task); the task's answer."""
    from offrl.training import run_dir as rd

    res = {**res, "attempt": rec["attempt"], "ip": rec["ip"], "resumed_from": rec["resumed_from"],
           "task_s": time.perf_counter() - t_task}
    rd.write_json(record, {**rec, "finished": time.time(), "status": res["status"],
                           **{k: res[k] for k in ("cell_s", "task_s", "error") if k in res}})
    return res


@contextlib.contextmanager
def _lock_within(config: StudyConfig, name: str, wait_s: float) -> Iterator[bool]:
    """The cell's lock, tried every 2 s for ``wait_s``; yields whether it is held."""
    from offrl.study.store import lock

    deadline = time.monotonic() + wait_s
    while True:
        with lock(config, name, wait=False) as held:
            if held or time.monotonic() >= deadline:
                yield held
                return
        time.sleep(2.0)


def run_cells_on_ray(config: StudyConfig, cells: list[Cell], options: RayOptions) -> dict[str, dict[str, Any]]:
    """Run the cells without a cell.json as Ray tasks; returns what each task reported, by cell name.

    The study directory is prepared (:func:`offrl.study.store.check_study_dir`) before this is called.

    Raises:
        RuntimeError: Ray is not installed, or no cluster answers at the address.
        SharedStorageError: a node does not see the study directory.
    """
    from offrl.study.store import failure_file, finished_cell
    from offrl.training import run_dir as rd

    todo = [c for c in cells if finished_cell(config, c) is None]
    if not todo:
        return {}
    with connected(options.address) as ray:
        warn_if_infeasible(ray, options)
        if options.address != LOCAL:
            check_shared_storage(ray, config.out / STUDY_RAY_DIR, options=options)
        study_json = (config.out / "study.json").read_text()
        index = {c.name: cells.index(c) + 1 for c in todo}

        def describe(name: str, res: dict[str, Any]) -> str:
            where = f"on {res['ip']}" if "ip" in res else ""
            if res.get("attempt", 1) > 1:
                start = f"step {res['resumed_from']}" if res.get("resumed_from") else "the start"
                where += f", attempt {res['attempt']} resumed from {start}"
            head = f"[study {index[name]}/{len(cells)}] {name}"
            if res["status"] == "failed":
                return f"{head} failed ({where.lstrip(', ')}): {res['error']}"
            if res["status"] == "held":
                return f"{head}: another process holds it; skipped"
            succ = [round(c["success_rate"], 2) for c in res["cell"]["checkpoints"]]
            took = f"{res['cell_s']:.0f} s " if "cell_s" in res else ""
            return f"{head}: verdict {res['cell']['verdict']}, success by checkpoint {succ} ({took}{where})"

        def failed(name: str, res: dict[str, Any]) -> None:
            # Failures the task could not write itself (its worker died every time, or Ray refused it).
            path = failure_file(config, next(c for c in todo if c.name == name))
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                rd.atomic_write_text(path, f"{res['error']}\n")

        calls = [(c.name, (config, c, os.getcwd(), study_json)) for c in todo]
        return run_tasks(ray, _cell_task, calls, options, config.out / STUDY_RAY_DIR, "study", "cell",
                          describe, failed)


# ------------------------------------------------------------------------------------------------ the head


def run_tasks(
    ray: Any,
    fn: Callable[..., dict[str, Any]],
    calls: list[tuple[str, tuple[Any, ...]]],
    options: RayOptions,
    records: Path,
    what: str,
    unit: str,
    describe: Callable[[str, dict[str, Any]], str],
    on_failure: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Submit one task per call, then show cells done / running / failed with a bar until every task has
    answered. A task that raised, or whose worker died more than ``max_retries`` times, reads as failed."""
    from tqdm.auto import tqdm

    remote = ray.remote(fn)
    resources = {"num_cpus": options.cpus_per_cell, "num_gpus": options.gpus_per_cell,
                 "max_retries": options.max_retries, "retry_exceptions": False,
                 "runtime_env": {"env_vars": _task_env(options)}}
    for name, _ in calls:
        (records / f"{name}.json").unlink(missing_ok=True)
    pending = {remote.options(name=f"offrl {what} {name}", **resources).remote(*args): name for name, args in calls}
    results: dict[str, dict[str, Any]] = {}
    counts = {"done": 0, "failed": 0}
    bar = tqdm(total=len(calls), unit=unit, desc=f"{what} on ray", dynamic_ncols=True, file=sys.stderr)

    def show() -> None:
        running = sum((records / f"{n}.json").is_file() for n in pending.values())
        bar.set_postfix_str(f"done {counts['done']}, running {running}, failed {counts['failed']}, "
                            f"queued {len(pending) - running}")

    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=2.0, fetch_local=False)
            for ref in ready:
                name = pending.pop(ref)
                try:
                    res = ray.get(ref)
                except ray.exceptions.RayTaskError as e:  # raised outside the cell's own try (shared storage)
                    cause = getattr(e, "cause", None)
                    res = {"status": "failed", "error": message(cause) if cause is not None else str(e)}
                except ray.exceptions.RayError as e:  # the worker or node died on every attempt
                    res = {"status": "failed", "error": (
                        f"its worker died {options.max_retries + 1} times ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:300]}); run the command again to resume it")}
                results[name] = res
                if res["status"] == "failed":
                    counts["failed"] += 1
                    if on_failure is not None:
                        on_failure(name, res)
                elif res["status"] == "done":
                    counts["done"] += 1
                bar.write(describe(name, res))
                show()
                bar.update(1)
            show()
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        bar.close()
    return results
