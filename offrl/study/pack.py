"""Archives of whole run directories packed into one file per study: ``runs.jsonl`` (one line per run: its name and
the verbatim text of each small file it holds) and ``logs.jsonl`` (one line per log file).

A study's committed archive is then a few files, not hundreds (studies/archive/default-job held 485: four files per
run plus its log), so that grep and review do not wade through them; nothing is lost, since every file's text is
kept byte for byte and :func:`unpack_runs` restores the run directories, which every offrl command reads as
before (``offrl select``, ``offrl report`` ...). Checkpoints are never archived (only config.json, metrics.jsonl,
diagnosis.json, evaluation.json and the like), so the files are small text.

    python -m offrl.study.pack pack studies/archive/default-job          # run dirs + logs -> runs.jsonl, logs.jsonl
    python -m offrl.study.pack unpack studies/archive/default-job DEST   # runs.jsonl -> DEST/<run>/...
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RUNS_FILE = "runs.jsonl"
LOGS_FILE = "logs.jsonl"
# The largest file packed verbatim: archives hold the run's JSON records, not checkpoints or datasets.
MAX_FILE_BYTES = 8 * 1024 * 1024


def _run_dirs(folder: Path) -> list[Path]:
    """The run directories under ``folder`` (any depth): those holding a config.json."""
    return sorted(p.parent for p in folder.rglob("config.json") if p.parent != folder)


def pack_runs(folder: str | Path, remove: bool = True) -> tuple[Path, int, int]:
    """Pack every run directory and every ``*.log`` file under ``folder`` into ``folder/runs.jsonl`` and
    ``folder/logs.jsonl``, appended to what is packed already; with ``remove`` the packed files are deleted once
    both files are written (atomically).

    Returns:
        ``(runs.jsonl path, runs packed, logs packed)``.

    Raises:
        FileExistsError: a run or log of that name is packed already (nothing is written).
        ValueError: a run holds a file over :data:`MAX_FILE_BYTES`, a binary file, or a subdirectory (a
            checkpoint): archives hold records only; nothing is written.
    """
    from offrl.training.run_dir import atomic_write_text

    folder = Path(folder)
    packed = {name for name, _ in iter_packed_runs(folder)}
    logged = {name for name, _ in iter_packed_logs(folder)}
    runs, logs = [], []
    for run in _run_dirs(folder):
        name = str(run.relative_to(folder))
        if name in packed:
            raise FileExistsError(f"{folder / RUNS_FILE} already holds {name}: unpack it or rename the run")
        files = {}
        for f in sorted(run.rglob("*")):
            if f.is_dir():
                raise ValueError(f"{f} is a folder (a checkpoint?): an archive packs records only; remove it first")
            if f.stat().st_size > MAX_FILE_BYTES:
                raise ValueError(f"{f} is over {MAX_FILE_BYTES} bytes: an archive packs records only")
            try:
                files[str(f.relative_to(run))] = f.read_text()
            except UnicodeDecodeError:
                raise ValueError(f"{f} is not text: an archive packs records only") from None
        runs.append({"name": name, "files": files})
    for log in sorted(folder.rglob("*.log")):
        name = str(log.relative_to(folder))
        if name in logged:
            raise FileExistsError(f"{folder / LOGS_FILE} already holds {name}")
        logs.append({"name": name, "text": log.read_text(errors="replace")})
    for path, new in ((folder / RUNS_FILE, runs), (folder / LOGS_FILE, logs)):
        if new:
            old = path.read_text() if path.is_file() else ""
            atomic_write_text(path, old + "".join(json.dumps(r, sort_keys=True) + "\n" for r in new))
    if remove:
        for r in runs:
            shutil.rmtree(folder / r["name"])
        for lg in logs:
            (folder / lg["name"]).unlink()
    return folder / RUNS_FILE, len(runs), len(logs)


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                yield json.loads(line)


def iter_packed_runs(folder: str | Path) -> Iterator[tuple[str, dict[str, str]]]:
    """``(run name, {relative file path: text})`` for every run packed in ``folder/runs.jsonl``, in file order."""
    for r in _lines(Path(folder) / RUNS_FILE):
        yield r["name"], r["files"]


def iter_packed_logs(folder: str | Path) -> Iterator[tuple[str, str]]:
    """``(log name, text)`` for every log packed in ``folder/logs.jsonl``."""
    for r in _lines(Path(folder) / LOGS_FILE):
        yield r["name"], r["text"]


def unpack_runs(folder: str | Path, dest: str | Path, names: tuple[str, ...] = ()) -> list[Path]:
    """Restore the packed run directories (all, or those in ``names``) under ``dest``, byte for byte.

    Raises:
        FileExistsError: a run directory exists at the destination already (never overwritten).
        KeyError: a name in ``names`` is not packed.
    """
    from offrl.training.run_dir import atomic_write_text

    dest = Path(dest)
    wanted = set(names)
    out = []
    for name, files in iter_packed_runs(folder):
        if wanted and name not in wanted:
            continue
        wanted.discard(name)
        run = dest / name
        if run.exists():
            raise FileExistsError(f"{run} exists: unpack somewhere else")
        for rel, text in files.items():
            (run / rel).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run / rel, text)
        out.append(run)
    if names and wanted:
        raise KeyError(f"not packed in {Path(folder) / RUNS_FILE}: {', '.join(sorted(wanted))}")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m offrl.study.pack pack FOLDER`` | ``unpack FOLDER DEST [RUN ...]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if len(args) == 2 and args[0] == "pack":
            path, n_runs, n_logs = pack_runs(args[1])
            print(f"packed {n_runs} runs and {n_logs} logs into {path} (and {LOGS_FILE})")
            return 0
        if len(args) >= 3 and args[0] == "unpack":
            runs = unpack_runs(args[1], args[2], tuple(args[3:]))
            print(f"unpacked {len(runs)} runs under {args[2]}")
            return 0
    except (FileExistsError, ValueError, KeyError, OSError) as e:
        print(f"offrl: error: {e}", file=sys.stderr)
        return 1
    print("usage: python -m offrl.study.pack pack FOLDER | unpack FOLDER DEST [RUN ...]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
