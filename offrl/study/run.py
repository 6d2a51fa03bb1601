"""Running a study: every cell not done yet, in one process, in several (file locks), or on a Ray cluster;
then the analysis and the results page."""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from offrl.runtime import SINGLE_THREAD_XLA
from offrl.study import cell as _cell
from offrl.study.config import Cell, StudyConfig, StudyConfigError, cells_of
from offrl.study.store import archive_cells, check_study_dir, failure_file, finished_cell, lock
from offrl.training import run_dir as rd

if TYPE_CHECKING:
    from offrl.cluster import RayOptions


def run_study(
    config: StudyConfig, analyse_only: bool = False, source: str | Path | None = None, workers: int = 1,
    ray: RayOptions | None = None,
) -> dict[str, Any]:
    """Run every cell not done yet, then analyse and write the results (analysis.json, results, figures).

    ``source``: the study file, copied into the study directory and named in the results' reproduce command.
    ``workers``: processes working on the cells at once (each takes the next cell no one holds). When the
    machine has no more cores than workers, each worker's XLA runs single-threaded, which on 2 cores trains
    faster in total than one process on both (see the module docstring).
    ``ray``: run the cells as tasks on a Ray cluster instead (:mod:`offrl.cluster`); ``workers`` must be 1.

    Returns:
        The analysis (see :func:`offrl.study.selectors.analyse`).

    Raises:
        FileExistsError: the study directory holds a study with another configuration.
        ValueError: ``workers`` < 1, or ``workers`` > 1 with ``ray``.
        RuntimeError: a worker process failed (its traceback is in the output above); with ``ray``: Ray is not
            installed or no cluster answers.
        SharedStorageError: with ``ray``: a node of the cluster does not see the study directory (a RuntimeError).
    """
    from offrl.study.results import write_results
    from offrl.study.selectors import analyse

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if ray is not None and not analyse_only:
        from offrl.cluster import import_ray, run_cells_on_ray

        if workers != 1:
            raise ValueError("--workers runs local processes; on Ray, set the cells' resources with "
                             "--ray-cpus-per-cell / --ray-gpus-per-cell instead")
        import_ray()  # says how to install it before anything is written
    check_study_dir(config, Path(source).read_text() if source else None)
    cells = cells_of(config)
    if not analyse_only:
        if ray is not None:
            run_cells_on_ray(config, cells, ray)
        elif workers == 1:
            _run_cells(config, cells)
        else:
            _run_workers(config, cells, workers)
    archive_cells(config)  # cells finished before the archive was configured, or by a worker without it
    done, failed = [], []
    for c in cells:
        res, failure = finished_cell(config, c), failure_file(config, c)
        if res is not None:
            done.append(res)
        elif failure.is_file():
            failed.append({"cell": c.name, "error": failure.read_text().strip()})
    analysis = analyse(done, config)
    analysis["cells_total"] = len(cells)
    analysis["failed"] = failed
    rd.write_json(config.out / "analysis.json", analysis)
    write_results(analysis, config, command=f"offrl study {source}" if source else None)
    return analysis


def _run_cells(config: StudyConfig, cells: list[Cell], prefix: str = "") -> None:
    """Run the cells that are neither done nor held by another process, in order."""
    from offrl.data import DatasetError
    from offrl.training.train import TrainingDiverged

    t0 = time.perf_counter()
    for i, cell in enumerate(cells):
        if finished_cell(config, cell) is not None:
            continue
        with lock(config, cell.name, wait=False) as held:
            if not held or finished_cell(config, cell) is not None:  # another process has it, or finished it
                continue
            print(f"{prefix}[study {i + 1}/{len(cells)}] {cell.name}", flush=True)
            t = time.perf_counter()
            failure = failure_file(config, cell)
            try:
                res = _cell.run_cell(cell, config, progress=False)
            except StudyConfigError:
                raise  # the study itself is wrong (e.g. an archive made under other settings): stop everything
            except Exception as e:
                # One unusable cell (a dataset with no success at all, a run that diverged before its first
                # checkpoint, or a fault of its own) must not stop a grid of hours: it is listed in the results
                # with its error, and retried on the next call. The Ray path does the same (offrl.cluster).
                if not isinstance(e, DatasetError | TrainingDiverged):
                    traceback.print_exc()
                message = str(e) if isinstance(e, DatasetError | TrainingDiverged) else f"{type(e).__name__}: {e}"
                print(f"{prefix}  failed: {message}", flush=True)
                failure.parent.mkdir(parents=True, exist_ok=True)
                rd.atomic_write_text(failure, f"{message}\n")
                continue
            failure.unlink(missing_ok=True)
            succ = [c["success_rate"] for c in res["checkpoints"]]
            print(f"{prefix}  verdict {res['verdict']}, success by checkpoint {[round(s, 2) for s in succ]} "
                  f"({time.perf_counter() - t:.0f} s; this process {time.perf_counter() - t0:.0f} s)", flush=True)


def _worker(config: StudyConfig, cells: list[Cell], prefix: str) -> None:
    _run_cells(config, cells, prefix)


def _run_workers(config: StudyConfig, cells: list[Cell], workers: int) -> None:
    """``workers`` fresh processes (multiprocessing "spawn": JAX must start after its flags are set) share the
    cells through the cell locks."""
    import multiprocessing as mp

    procs: list[Any] = []

    def stop(signum: int, frame: Any) -> None:
        # `kill PARENT` (how a background grid is stopped) must not leave its workers training on: they would hold
        # the cores and the cell locks of a restarted study.
        for p in procs:
            if p.pid is not None:
                p.terminate()
        raise SystemExit(128 + signum)

    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = signal.signal(signal.SIGTERM, stop) if main_thread else None
    env_before = os.environ.get("XLA_FLAGS")
    if (os.cpu_count() or 1) <= workers:
        os.environ["XLA_FLAGS"] = f"{env_before or ''} {SINGLE_THREAD_XLA}".strip()
    try:
        ctx = mp.get_context("spawn")
        for k in range(workers):
            procs.append(ctx.Process(target=_worker, args=(config, cells, f"[w{k}] "), name=f"offrl-study-w{k}"))
            procs[-1].start()
            time.sleep(1.0)  # start in order, so that worker k takes the k-th free cell
    except BaseException:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        raise
    finally:
        if env_before is None:
            os.environ.pop("XLA_FLAGS", None)
        else:
            os.environ["XLA_FLAGS"] = env_before
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    bad = [(p.name, p.exitcode) for p in procs if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"study worker(s) failed: {bad} (see the traceback above); run the same command again "
                           f"to resume: finished cells are kept")
