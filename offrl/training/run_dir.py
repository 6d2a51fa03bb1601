"""The run directory: resolved config, metrics log and checkpoints, written so that nothing is lost.

Layout::

    RUN_DIR/config.json       resolved config, seed, dataset fingerprint, package versions (written once)
    RUN_DIR/metrics.jsonl     one JSON object per checkpoint, appended and flushed
    RUN_DIR/checkpoints/STEP/ one Orbax checkpoint per checkpoint step (atomic: temporary folder + rename,
                              with a commit marker), holding the agent state and a JSON description
    RUN_DIR/diagnosis.json    the workflow's verdict and pick (offrl diagnose / select)
    RUN_DIR/evaluation.json   analysis only: every checkpoint's success in the simulator (offrl evaluate)
    RUN_DIR/fqe.json          fitted-Q-evaluation estimates per checkpoint (offrl fqe; the fqe selector)
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import offrl
from offrl.fileio import temp_file_beside

if TYPE_CHECKING:  # jax and orbax take ~1.5 s to import: only the checkpoint functions load them
    import orbax.checkpoint as ocp

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
# Written by the workflow (offrl.workflow.diagnosis, evaluate, fqe); named here, with the rest of the run
# directory, so that neither module needs the other for a file name.
DIAGNOSIS_FILE = "diagnosis.json"
EVALUATION_FILE = "evaluation.json"
FQE_FILE = "fqe.json"
SOFTOPC_FILE = "softopc.json"
CHECKPOINT_DIR = "checkpoints"


def offrl_version() -> str:
    return offrl.__version__


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages that decide numerical results."""
    out = {"python": platform.python_version(), "offrl": offrl_version()}
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "h5py", "metaworld", "mujoco"):
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            pass
    return out


def state_run(run_dir: str | Path, steps: Any, purpose: str) -> tuple[dict[str, Any], list[int]]:
    """The config.json of a state-observation run and the checkpoint steps to score (``steps``, default all), for an
    offline estimator named ``purpose`` (FQE, SoftOPC) that reads state observations only.

    Raises:
        FileNotFoundError: not a run directory, or no checkpoints.
        ValueError: an image run."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {CONFIG_FILE})")
    cfg = read_json(run_dir / CONFIG_FILE)
    if cfg["dataset"].get("obs_mode", "state") != "state":
        raise ValueError(f"{run_dir} is an image run: {purpose} in offrl scores state-observation runs only")
    chosen = list(checkpoint_steps(run_dir) if steps is None else steps)
    if not chosen:
        raise FileNotFoundError(f"{run_dir} has no checkpoints for {purpose}: train it first")
    return cfg, chosen


def platform_facts() -> dict[str, Any]:
    """Where a run trained, as far as it can change floating point (not results' meaning): the machine, the JAX
    backend, the CPU count and the XLA flags (one XLA thread per study worker, ``offrl.runtime.SINGLE_THREAD_XLA``,
    sums in another order than two). Recorded in config.json when a run starts."""
    import jax

    return {"machine": platform.machine(), "system": platform.system(), "cpu_count": os.cpu_count(),
            "jax_backend": jax.default_backend(), "xla_flags": os.environ.get("XLA_FLAGS", "")}


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file so that readers see the old content or the new, never a torn file. The file gets the
    permissions of the user's umask."""
    path = Path(path)
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x)}")


def write_json(path: str | Path, obj: Any) -> None:
    """Atomic JSON write; NaN/inf become null so that the file stays standard JSON."""
    atomic_write_text(path, json.dumps(_finite(obj), indent=2, default=_json_default) + "\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


def append_metrics(run_dir: str | Path, record: dict[str, Any]) -> None:
    """Append one record to metrics.jsonl as a single line, flushed and fsynced."""
    line = json.dumps(_finite(record), default=_json_default)
    with open(Path(run_dir) / METRICS_FILE, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


# The per-checkpoint scores of the offline estimators, each file's ``value`` under the key its rule reads
# (offrl.workflow.rules): fqe.json -> ``fqe_value``, softopc.json -> ``softopc_value``.
SCORE_FILES = {FQE_FILE: "fqe_value", SOFTOPC_FILE: "softopc_value"}


def with_scores(run_dir: str | Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records`` (metrics.jsonl lines with ``step``) with the offline estimators' scores of the same checkpoints
    added (:data:`SCORE_FILES`; a run without a file gets no key), as new dicts; the input is not changed."""
    out = [dict(r) for r in records]
    by_step = {int(r["step"]): r for r in out if "step" in r}
    for name, key in SCORE_FILES.items():
        path = Path(run_dir) / name
        if not path.is_file():
            continue
        for row in read_json(path).get("results", []):
            if "step" in row and "value" in row and int(row["step"]) in by_step:
                by_step[int(row["step"])][key] = row["value"]
    return out


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All complete records of metrics.jsonl, in order; a torn last line (a crash mid-write) is dropped.

    Raises:
        FileNotFoundError: the run has no metrics.jsonl.
        ValueError: a line other than the last is not valid JSON (the file was edited or corrupted).
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a run directory made by `offrl train`?")
    lines = path.read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}, line {i + 1} is not valid JSON ({e}): the log is corrupted") from e
    return records


def truncate_metrics(run_dir: str | Path, max_step: int) -> None:
    """Keep only records with ``step <= max_step`` (used on resume, after the last complete checkpoint)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    keep = [r for r in read_metrics(run_dir) if int(r["step"]) <= max_step]
    atomic_write_text(path, "".join(json.dumps(_finite(r)) + "\n" for r in keep))


def checkpoint_manager(run_dir: str | Path) -> ocp.CheckpointManager:
    """Orbax manager over RUN_DIR/checkpoints, synchronous so a checkpoint is complete when save returns."""
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        Path(run_dir).absolute() / CHECKPOINT_DIR,
        options=ocp.CheckpointManagerOptions(max_to_keep=None, enable_async_checkpointing=False, create=True),
    )


def save_checkpoint(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Save the agent state and its JSON description at a step (atomic; an existing step is never replaced)."""
    import orbax.checkpoint as ocp

    if step in manager.all_steps():
        raise FileExistsError(f"checkpoint {step} already exists in {manager.directory}: refusing to replace it")
    manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(_finite(meta))),
    )
    manager.wait_until_finished()
    # Orbax skips, without an error, a step older than the newest folder it sees; never accept that silently.
    if step not in manager.all_steps() or not _complete(Path(manager.directory) / str(step)):
        raise RuntimeError(
            f"checkpoint {step} was not written to {manager.directory} (a newer step folder is in the way?): "
            f"move folders of later steps out of the checkpoints folder"
        )


def restore_checkpoint(
    manager: ocp.CheckpointManager, step: int, like: Any, legacy: list[tuple[Any, Any]] = ()
) -> tuple[Any, dict[str, Any]]:
    """Restore ``(state, meta)`` at a step; ``like`` is a state of the same structure (e.g. a fresh init).

    ``legacy`` lists older state layouts as ``(like_old, upgrade)`` pairs: a checkpoint written by an older
    offrl is restored into the first layout that fits and upgraded to the current one.

    Raises:
        FileNotFoundError: no checkpoint at that step.
        ValueError: the checkpoint fits neither the current nor any legacy layout.
    """
    import jax
    import orbax.checkpoint as ocp

    if step not in manager.all_steps():
        raise FileNotFoundError(
            f"no checkpoint at step {step} in {manager.directory}; available: {list(manager.all_steps())}"
        )

    def restore(target: Any) -> dict[str, Any]:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        return manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        )

    try:
        restored = restore(like)
        return restored["state"], restored["meta"]
    except ValueError as error:
        for like_old, upgrade in legacy:
            try:
                restored = restore(like_old)
            except ValueError:
                continue
            return upgrade(restored["state"]), restored["meta"]
        raise ValueError(
            f"checkpoint {step} in {manager.directory} does not match this offrl's state layout "
            f"(written by another version?): {str(error)[:300]}"
        ) from error


def _complete(step_dir: Path) -> bool:
    # Orbax writes a step into a temporary folder and renames it into place once finalised, with this file.
    return (step_dir / "_CHECKPOINT_METADATA").is_file()


def checkpoint_steps(run_dir: str | Path) -> list[int]:
    """Steps of the complete checkpoints of a run, ascending; temporary and incomplete folders are ignored."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    return sorted(s for s in checkpoint_manager(run_dir).all_steps() if _complete(folder / str(s)))


def set_aside_incomplete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Move step folders that are not complete checkpoints to ``checkpoints/incomplete-STEP-TIME`` (never
    deleted), so that a resumed run can write those steps again. Returns the new paths."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    moved = []
    for d in sorted(folder.iterdir()):
        if d.is_dir() and d.name.isdigit() and not _complete(d):
            target = folder / f"incomplete-{d.name}-{int(time.time())}"
            d.rename(target)
            moved.append(target)
    return moved


def load_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The resolved config of a run (config.json)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a run directory made by `offrl train`")
    return json.loads(path.read_text())


# The field of each algorithm's config that holds its actor warm start, in gradient steps: CQL's optional
# behaviour-cloning warm start, BEAR's MMD-only start. Checkpoints within it are not the algorithm's policies.
WARMUP_FIELD = {"cql": "bc_steps", "bear": "warmstart_steps", "mopo": "model_steps", "combo": "model_steps"}
# What those first steps are, for messages: the diagnosis and the study name the phase a run had.
WARMUP_PHASE = {"cql": "the actor's behaviour-cloning warm start", "bear": "the actor's MMD-only warm start",
                "mopo": "the dynamics model's training phase (no policy yet)",
                "combo": "the dynamics model's training phase (no policy yet)"}


def warmup_steps(algo: str, agent: Any) -> int:
    """The actor warm start of a run, in gradient steps, from its agent config (a dataclass, or its dict in
    config.json); 0 for algorithms without one or a config that does not say."""
    field = WARMUP_FIELD.get(algo)
    if field is None:
        return 0
    value = agent.get(field, 0) if isinstance(agent, dict) else getattr(agent, field, 0)
    try:
        return max(int(value or 0), 0)
    except (TypeError, ValueError):
        return 0
