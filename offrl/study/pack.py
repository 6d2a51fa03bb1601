"""Archives packed into one file per study folder: whole run directories into ``runs.jsonl`` (one line per run: its
name and the verbatim text of each small file it holds), log files into ``logs.jsonl`` (one line per log), and a
study's per-cell archive files (``ARCHIVE/<cell>.json``, :mod:`offrl.study.store`) into ``cells.jsonl`` (one line
per cell: ``{"cell": <the record>, "name": <cell name>}``).

A study's committed archive is then a few files, not hundreds (studies/archive/default-job held 485: four files per
run plus its log; studies/archive/algorithms 66 cell files), so that grep and review do not wade through them;
nothing is lost: every run file's text is kept byte for byte and :func:`unpack_runs` restores the run directories,
which every offrl command reads as before (``offrl select``, ``offrl report`` ...); every cell's record is kept
as parsed, in its own key order, and :func:`unpack_cells` writes it back as the study writes it (indented JSON).
Checkpoints are never archived (only config.json, metrics.jsonl, diagnosis.json, evaluation.json and the like),
so the files are small text.

Cells are read where they lie: :func:`iter_archived_cells` yields the packed cells and then the loose
``<cell>.json`` files that a study still running writes beside the pack, and the study finds one cell either way
(:func:`archived_cell`, :func:`offrl.study.store.finished_cell`), so an archive may be packed at any time.

    python -m offrl.study.pack pack studies/archive/dev          # run dirs, logs, cell files -> *.jsonl
    python -m offrl.study.pack unpack studies/archive/dev DEST   # -> DEST/<run>/..., DEST/<cell>.json
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
CELLS_FILE = "cells.jsonl"
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


# ------------------------------------------------------------------------------------------------ cell files


def _cell_files(folder: Path) -> list[Path]:
    """The loose cell files of an archive folder: its top-level ``*.json`` files, sorted by file name (the order in
    which the archive's readers always read them)."""
    return sorted(p for p in folder.glob("*.json") if p.is_file())


def _read_cell(path: Path) -> dict[str, Any]:
    """One loose cell file's record.

    Raises:
        ValueError: the file is not JSON or not a JSON object.
    """
    try:
        cell = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a cell record (not JSON: {e})") from None
    if not isinstance(cell, dict):
        raise ValueError(f"{path} is not a cell record (a JSON {type(cell).__name__}, not an object)")
    return cell


def _cell_line(name: str, cell: dict[str, Any]) -> str:
    """One line of cells.jsonl. The line's keys are sorted ("cell", then "name"); the record keeps its own key
    order, so that a reader gets the dict that the loose file gave and unpacking writes the file the study wrote."""
    return json.dumps({"cell": cell, "name": name}) + "\n"


# The packed lines of each cells.jsonl read so far: absolute path -> ((mtime_ns, size, inode), {name: line}).
# A study looks up hundreds of cells one by one (finished_cell); the file is read once per version of it.
_PACKED_CELLS: dict[Path, tuple[tuple[int, int, int], dict[str, str]]] = {}


def _packed_cell_lines(folder: Path) -> dict[str, str]:
    """``{cell name: its line of folder/cells.jsonl}`` in file order (empty when there is none); cached by the
    file's path, mtime, size and inode, so a rewrite (atomic: a new inode) is read again. Do not mutate.

    Raises:
        ValueError: a line is not a packed cell, or two lines hold one name.
    """
    path = (folder / CELLS_FILE).absolute()
    try:
        st = path.stat()  # before the read: a file replaced meanwhile is then read again on the next call
    except FileNotFoundError:
        return {}
    key = (st.st_mtime_ns, st.st_size, st.st_ino)
    hit = _PACKED_CELLS.get(path)
    if hit is not None and hit[0] == key:
        return hit[1]
    lines: dict[str, str] = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            name = rec["name"]
            ok = isinstance(name, str) and isinstance(rec["cell"], dict)
        except (json.JSONDecodeError, KeyError, TypeError):
            ok = False
        if not ok:
            raise ValueError(f"{path} line {i} is not a packed cell ({{\"cell\": {{...}}, \"name\": ...}})")
        if name in lines:
            raise ValueError(f"{path} holds {name} twice (line {i}): keep one of the two lines")
        lines[name] = line
    _PACKED_CELLS[path] = (key, lines)
    return lines


def _same_or_raise(folder: Path, name: str, loose: dict[str, Any], packed_line: str) -> dict[str, Any]:
    packed = json.loads(packed_line)["cell"]
    if loose != packed:
        raise ValueError(f"{folder / (name + '.json')} differs from the copy packed in {folder / CELLS_FILE}: "
                         f"remove one of the two")
    return packed


def iter_archived_cells(folder: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(cell name, record)`` of every cell of an archive folder: those packed in ``cells.jsonl`` (in file order),
    then the loose top-level ``<cell>.json`` files (by file name) that a study still running writes beside the pack.
    The one reader of a cell archive; a folder with neither yields nothing. A loose file equal to its packed copy
    (:func:`pack_cells` between writing the pack and removing the files) is yielded once.

    Raises:
        ValueError: a loose file is not a JSON object, differs from its packed copy, or cells.jsonl is malformed.
    """
    folder = Path(folder)
    packed = _packed_cell_lines(folder)
    for name, line in packed.items():
        yield name, json.loads(line)["cell"]
    for path in _cell_files(folder):
        try:
            cell = _read_cell(path)
        except FileNotFoundError:  # packed and removed since the listing: yielded above, or by the next call
            continue
        if path.stem in packed:
            _same_or_raise(folder, path.stem, cell, packed[path.stem])
            continue
        yield path.stem, cell


def archived_cell(folder: str | Path, name: str) -> dict[str, Any] | None:
    """The record of the one cell ``name`` of an archive folder, by the rules of :func:`iter_archived_cells`
    (loose ``<name>.json`` or packed), or None when the folder has neither; cells.jsonl is parsed once per version
    of the file, not once per look-up.

    Raises:
        ValueError: as :func:`iter_archived_cells`.
    """
    folder = Path(folder)
    loose = folder / f"{name}.json"
    try:  # the loose file first: if pack_cells removes it meanwhile, the pack read next holds it already
        cell = _read_cell(loose)
    except FileNotFoundError:
        cell = None
    line = _packed_cell_lines(folder).get(name)
    if line is None:
        return cell
    return json.loads(line)["cell"] if cell is None else _same_or_raise(folder, name, cell, line)


def _cells_to_pack(folder: Path) -> tuple[list[Path], str]:
    """The loose cell files of ``folder`` and the lines that pack them; writes nothing.

    Raises:
        FileExistsError: a cell of that name is packed already.
        ValueError: a file is not a cell record (not a JSON object), or cells.jsonl is malformed.
    """
    packed = _packed_cell_lines(folder)
    files = _cell_files(folder)
    lines = []
    for f in files:
        if f.stem in packed:
            raise FileExistsError(f"{folder / CELLS_FILE} already holds {f.stem}: remove {f.name} or rename it")
        lines.append(_cell_line(f.stem, _read_cell(f)))
    return files, "".join(lines)


def _write_cells(folder: Path, files: list[Path], lines: str, remove: bool) -> None:
    from offrl.training.run_dir import atomic_write_text

    path = folder / CELLS_FILE
    if lines:
        old = path.read_text() if path.is_file() else ""
        atomic_write_text(path, old + ("\n" if old and not old.endswith("\n") else "") + lines)
    if remove:
        for f in files:
            f.unlink()


def pack_cells(folder: str | Path, remove: bool = True) -> tuple[Path, int]:
    """Pack every loose cell file of ``folder`` (its top-level ``*.json``) into ``folder/cells.jsonl``, appended
    (atomically) to what is packed already, one line per cell in file-name order; with ``remove`` the files are
    deleted once the pack is written. Read back with :func:`iter_archived_cells`.

    Returns:
        ``(cells.jsonl path, cells packed)``.

    Raises:
        FileExistsError: a cell of that name is packed already (nothing is written).
        ValueError: a file is not a cell record (a JSON object), or cells.jsonl is malformed (nothing is written).
    """
    folder = Path(folder)
    files, lines = _cells_to_pack(folder)
    _write_cells(folder, files, lines, remove)
    return folder / CELLS_FILE, len(files)


def unpack_cells(folder: str | Path, dest: str | Path, names: tuple[str, ...] = ()) -> list[Path]:
    """Write the packed cells (all, or those in ``names``) back as ``dest/<cell>.json``, as the study writes them
    (:func:`offrl.training.run_dir.write_json`: the record, indented, in its own key order).

    Raises:
        FileExistsError: a cell file exists at the destination already (never overwritten).
        KeyError: a name in ``names`` is not packed.
    """
    from offrl.training.run_dir import write_json

    dest = Path(dest)
    packed = _packed_cell_lines(Path(folder))
    missing = sorted(set(names) - set(packed))
    if missing:
        raise KeyError(f"not packed in {Path(folder) / CELLS_FILE}: {', '.join(missing)}")
    wanted = [n for n in packed if not names or n in names]
    taken = [dest / f"{n}.json" for n in wanted if (dest / f"{n}.json").exists()]
    if taken:
        raise FileExistsError(f"{taken[0]} exists: unpack somewhere else")
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name in wanted:
        write_json(dest / f"{name}.json", json.loads(packed[name])["cell"])
        out.append(dest / f"{name}.json")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m offrl.study.pack pack FOLDER`` | ``unpack FOLDER DEST [NAME ...]`` (NAME: a run or a cell)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if len(args) == 2 and args[0] == "pack":
            folder = Path(args[1])
            if not folder.is_dir():
                raise FileNotFoundError(f"no folder {folder}")
            files, lines = _cells_to_pack(folder)  # checked before anything is written
            path, n_runs, n_logs = pack_runs(folder)
            _write_cells(folder, files, lines, remove=True)
            written = [f for f, n in ((RUNS_FILE, n_runs), (LOGS_FILE, n_logs), (CELLS_FILE, len(files))) if n]
            print(f"packed {n_runs} runs, {n_logs} logs and {len(files)} cells into {folder}"
                  + (f" ({', '.join(written)})" if written else ""))
            return 0
        if len(args) >= 3 and args[0] == "unpack":
            folder, names = Path(args[1]), tuple(args[3:])
            runs = {n for n, _ in iter_packed_runs(folder)}
            cells = set(_packed_cell_lines(folder))
            missing = [n for n in names if n not in runs | cells]
            if missing:
                raise KeyError(f"not packed in {folder}: {', '.join(missing)}")
            run_names = tuple(n for n in names if n in runs)
            cell_names = tuple(n for n in names if n in cells)
            unpacked = unpack_runs(folder, args[2], run_names) if run_names or not names else []
            restored = unpack_cells(folder, args[2], cell_names) if cell_names or not names else []
            print(f"unpacked {len(unpacked)} runs and {len(restored)} cells under {args[2]}")
            return 0
    except (FileExistsError, ValueError, KeyError, OSError) as e:
        print(f"offrl: error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 1
    print("usage: python -m offrl.study.pack pack FOLDER | unpack FOLDER DEST [RUN_OR_CELL ...]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
