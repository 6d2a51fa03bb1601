"""Files written the way a user expects: atomically, and with the permissions of their umask."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _default_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: 0o666 less the process's umask."""
    mask = os.umask(0)
    os.umask(mask)  # reading the umask means setting it; put it straight back
    return 0o666 & ~mask


def temp_file_beside(path: Path) -> tuple[int, str]:
    """A temporary file in ``path``'s folder for an atomic replace, with the permissions a plain write would
    give (tempfile.mkstemp makes 0600 files, which would leave reports and datasets unreadable to the
    user's group). Returns ``(fd, name)`` like ``tempfile.mkstemp``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, _default_file_mode())
    return fd, tmp
