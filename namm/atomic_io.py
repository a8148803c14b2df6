"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half of one.

Every checkpoint, reference file, result table and plot goes through `atomic_write`: the bytes land in a
temporary file in the same folder, are flushed and fsynced, renamed over the target, and the folder is
fsynced so the rename survives a power cut. A failed write removes its temporary file; one cut by a kill
(`.<name>.<8 random characters>.tmp`) is removed by `remove_interrupted_writes` when the next run takes the
directory's lock (namm/run_lock.py), the only moment no writer can own it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

_TEMP_PREFIX, _TEMP_SUFFIX = ".", ".tmp"
# tempfile.mkstemp names: prefix + 8 characters of [a-z0-9_] + suffix
_TEMP_NAME = re.compile(rf"^{re.escape(_TEMP_PREFIX)}.+\.[a-z0-9_]{{8}}{re.escape(_TEMP_SUFFIX)}$")


def _fsync_directory(directory: Path) -> None:
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write(file)` on a temporary binary file, then move it to `path` (readable by all, 0644)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f"{_TEMP_PREFIX}{path.name}.", suffix=_TEMP_SUFFIX)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(staging, 0o644)  # mkstemp creates 0600; results and checkpoints are meant to be shared
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def atomic_write_json(path: str | Path, payload: Any) -> None:
    """Indented, key-sorted JSON (stable diffs between runs)."""
    atomic_write_text(path, json.dumps(payload, indent=1, sort_keys=True) + "\n")


def remove_interrupted_writes(directory: str | Path) -> list[Path]:
    """Delete the temporary files that killed `atomic_write`s left directly in `directory` (only names of its
    own pattern; subfolders are left alone, they may be other runs); returns what was removed. Call it only
    while no other process writes there (holding the run directory's lock)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    leftovers = sorted(path for path in directory.iterdir() if _TEMP_NAME.match(path.name) and path.is_file())
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers
