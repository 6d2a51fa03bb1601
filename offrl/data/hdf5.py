"""Reading and writing datasets as HDF5 files (schema: ``docs/dataset-format.md``).

Files are D4RL-compatible: the transition arrays sit at the root under their D4RL names, and metadata is
stored as root attributes (JSON-encoded when not a scalar or string).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from offrl.data.dataset import IMAGE_KEYS, REQUIRED_KEYS, Dataset, DatasetError, make_dataset
from offrl.fileio import temp_file_beside

FORMAT_VERSION = 1
_JSON_PREFIX = "json:"


def _encode_attr(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool, np.integer, np.floating, np.bool_)):
        return value
    return _JSON_PREFIX + json.dumps(value)


def _decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value.startswith(_JSON_PREFIX):
        return json.loads(value[len(_JSON_PREFIX) :])
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_dataset(path: str | Path, dataset: Dataset, *, overwrite: bool = False) -> Path:
    """Write a dataset to an HDF5 file atomically (temporary file in the same folder, then rename).

    Args:
        path: destination ``.h5`` file; its folder is created if missing.
        dataset: the dataset to write.
        overwrite: replace an existing file. Without it an existing file is never touched.

    Returns:
        The path written.

    Raises:
        FileExistsError: the file exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists: choose another --out, or pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path)  # the user's umask, not mkstemp's 0600
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            for k, v in dataset.arrays().items():
                # Frames are chunked a few hundred at a time: whole frames, so reading any subset decompresses
                # little beyond it, and large enough for gzip to find the redundancy between frames.
                chunks = (min(len(v), 256), *v.shape[1:]) if k == "images" else True
                f.create_dataset(k, data=v, compression="gzip", compression_opts=4, chunks=chunks)
            f.attrs["offrl_format_version"] = FORMAT_VERSION
            for k, v in dataset.metadata.items():
                f.attrs[k] = _encode_attr(v)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_dataset(path: str | Path, *, check_continuity: bool = True) -> Dataset:
    """Read and validate an HDF5 dataset.

    Args:
        path: an ``.h5`` file in the offrl / D4RL layout.
        check_continuity: see :func:`offrl.data.dataset.make_dataset`.

    Raises:
        FileNotFoundError: the file does not exist.
        DatasetError: the file is not readable HDF5 (truncated or corrupted), a key is missing, or the
            arrays fail validation.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"dataset {path} not found: create one with `offrl collect --out {path}` or check the path"
        )
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in REQUIRED_KEYS if k not in f]
            if missing:
                layout = _foreign_layout(f)
                hint = (f"it looks like a {layout} file: convert it with `offrl import {path} --format {layout} "
                        f"--out DATA.h5`, or train on it directly with --dataset-format {layout}"
                        if layout else "see docs/dataset-format.md, or `offrl import` for robomimic, D4RL, "
                        "Minari and NumPy files")
                raise DatasetError(
                    f"{path} is missing {missing}; an offrl dataset needs {list(REQUIRED_KEYS)} at the file's "
                    f"root: {hint}"
                )
            arrays = {k: f[k][()] for k in REQUIRED_KEYS + IMAGE_KEYS if k in f}
            metadata = {k: _decode_attr(v) for k, v in f.attrs.items()}
    except OSError as e:
        raise DatasetError(
            f"{path} is not a readable HDF5 file ({e}); it may be truncated or corrupted: re-create it"
        ) from e
    try:
        return make_dataset(arrays, metadata, check_continuity=check_continuity)
    except DatasetError as e:
        raise DatasetError(f"{path}: {e}") from e


def _foreign_layout(f: h5py.File) -> str | None:
    """The `offrl import` format an HDF5 file that is no offrl dataset looks like, or None."""
    if "data" in f and isinstance(f["data"], h5py.Group) and any(k.startswith("demo") for k in f["data"]):
        return "robomimic"
    if "observations" in f and "actions" in f and ("terminals" in f or "timeouts" in f or "rewards" in f):
        return "d4rl"
    return None


def fingerprint(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """sha256 hex digest of a file's bytes (of a folder's files, with their relative paths, for datasets
    stored as folders such as Minari's), recorded in every run so results can be traced to their data."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            h.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as f:
            while chunk := f.read(chunk_bytes):
                h.update(chunk)
    return h.hexdigest()
