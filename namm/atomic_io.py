"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half of one.

Every checkpoint, reference file, result table and plot goes through `atomic_write`: the bytes land in a
temporary file in the same folder, are flushed and fsynced, renamed over the target, and the folder is
fsynced so the rename survives a power cut. A failed write removes its temporary file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


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
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
