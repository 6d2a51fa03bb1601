"""What a study directory holds and who holds it: finished cells (cell.json), their committed archive (loose
``<cell>.json`` files and/or one packed ``cells.jsonl``, :mod:`offrl.study.pack`), the per-cell failure notes, the
configuration check and the file locks that let several processes share a grid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
from pathlib import Path
from typing import Any

from offrl.study.config import Cell, StudyConfig, StudyConfigError, cell_settings, cells_of, json_roundtrip
from offrl.study.pack import archived_cell
from offrl.training import run_dir as rd

CELL_FILE = "cell.json"


def _raw_config_text(config: StudyConfig) -> str:
    d = dataclasses.asdict(config)
    return json.dumps(d, default=str, sort_keys=True, indent=1)


def check_study_dir(config: StudyConfig, source_text: str | None = None) -> None:
    """Never mix two different studies in one directory; keep a copy of the study file (study.toml)."""
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "study.json"
    text = _raw_config_text(config)
    if saved.is_file():
        old = saved.read_text()
        if old != text:
            a, b = json.loads(old), json.loads(text)
            # Scenarios may be added or removed (every run is its own cell); what a finished run was made with
            # may not change.
            free = ("results", "scenarios", "bootstrap_samples", "archive")
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in free)
            if diff:
                raise FileExistsError(
                    f"{out} holds a study with a different configuration (differs in {diff}): pass another --out, "
                    f"or restore the original config to resume it"
                )
    rd.atomic_write_text(saved, text)
    if source_text is not None:
        rd.atomic_write_text(out / "study.toml", source_text)


def archive_file(config: StudyConfig, cell: Cell) -> Path | None:
    """Where :func:`archive_cell` writes the cell's loose archive file (None without an archive); the archive may
    hold the cell packed instead (:mod:`offrl.study.pack`, cells.jsonl): read it with :func:`archived`."""
    return None if config.archive is None else config.archive / f"{cell.name}.json"


def archived(config: StudyConfig, cell: Cell) -> dict[str, Any] | None:
    """The cell's record in the archive, loose (``ARCHIVE/<cell>.json``) or packed (``ARCHIVE/cells.jsonl``), as it
    was archived (no settings check); None without an archive or when it holds no such cell.

    Raises:
        StudyConfigError: the archive is unreadable there (a malformed file, or loose and packed copies differ).
    """
    if config.archive is None:
        return None
    try:
        return archived_cell(config.archive, cell.name)
    except ValueError as e:
        raise StudyConfigError(str(e)) from None


def finished_cell(config: StudyConfig, cell: Cell) -> dict[str, Any] | None:
    """The result of a finished cell: ``STUDY/cells/<cell>/cell.json``, else its archived record (loose or packed,
    :func:`archived`); None if not done.

    Raises:
        StudyConfigError: the archived record was made under other settings (:func:`cell_settings`), or the
            archive is unreadable there.
    """
    path = config.out / "cells" / cell.name / CELL_FILE
    if path.is_file():
        return rd.read_json(path)
    res = archived(config, cell)
    if res is None:
        return None
    want = json_roundtrip(cell_settings(config, cell))
    if res.get("study_settings") != want:
        raise StudyConfigError(
            f"{config.archive} holds {cell.name} made with {res.get('study_settings')}, this study runs {want}: "
            f"point `archive` at another folder, or restore the settings it was made with"
        )
    return res


def archive_cells(config: StudyConfig) -> int:
    """Copy every finished cell.json that the archive lacks into it (atomically); returns how many were copied."""
    return sum(archive_cell(config, cell) for cell in cells_of(config)) if config.archive is not None else 0


def archive_cell(config: StudyConfig, cell: Cell) -> bool:
    """Copy the cell's cell.json, with the settings it was made under (:func:`cell_settings`), into the archive as
    a loose ``ARCHIVE/<cell>.json`` unless the archive holds the cell already (loose or packed), or there is no
    archive or no cell.json; returns whether it copied."""
    target = archive_file(config, cell)
    path = config.out / "cells" / cell.name / CELL_FILE
    if target is None or not path.is_file() or target.is_file() or archived(config, cell) is not None:
        return False
    res = rd.read_json(path)
    res["study_settings"] = cell_settings(config, cell)
    target.parent.mkdir(parents=True, exist_ok=True)
    rd.write_json(target, res)
    return True


def failure_file(config: StudyConfig, cell: Cell) -> Path:
    return config.out / "failed" / f"{cell.name}.txt"


@contextlib.contextmanager
def lock(config: StudyConfig, name: str, wait: bool):
    """Hold STUDY/locks/NAME.lock exclusively; yields False (holding nothing) when another process has it and
    ``wait`` is False. The kernel drops the lock when the holder exits, however it exits."""
    path = config.out / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
