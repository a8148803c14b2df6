"""A directory built once and published atomically, with a manifest that tells a complete copy from a
killed or damaged one (the converted GGUF lives in one)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
CACHE_MANIFEST = "namm-cache.json"
Loaded = TypeVar("Loaded")


def load_or_build_cached(directory: Path, build: Callable[[Path], None], load: Callable[[Path], Loaded]) -> Loaded:
    """Load from `directory`, first (re)building it if it is missing, incomplete or damaged.

    `build` writes into a fresh staging directory that is renamed into place only once complete, with a
    manifest of sizes and sha256 digests, so a killed build never leaves a cache that looks valid. Sizes
    are checked on every load; digests only when loading fails, to tell damage from a genuine error."""
    if _cache_is_complete(directory, check_digests=False):
        try:
            return load(directory)
        except Exception as error:
            if _cache_is_complete(directory, check_digests=True):
                raise  # the files are intact: the failure is not the cache's
            logger.warning("Cached model in %s is damaged (%s); rebuilding it", directory, error)
    elif directory.exists():
        logger.warning("Cached model in %s is incomplete; rebuilding it", directory)
    _build_atomically(directory, build)
    return load(directory)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _cache_is_complete(directory: Path, check_digests: bool) -> bool:
    try:
        manifest = json.loads((directory / CACHE_MANIFEST).read_text())
        if manifest["format"] != CACHE_FORMAT:
            return False
        for name, expected in manifest["files"].items():
            path = directory / name
            if path.stat().st_size != expected["size"]:
                return False
            if check_digests and file_sha256(path) != expected["sha256"]:
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _build_atomically(directory: Path, build: Callable[[Path], None]) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.building-", dir=directory.parent))
    try:
        build(staging)
        files = {
            str(path.relative_to(staging)): {"size": path.stat().st_size, "sha256": file_sha256(path)}
            for path in sorted(staging.rglob("*"))
            if path.is_file()
        }
        (staging / CACHE_MANIFEST).write_text(json.dumps({"format": CACHE_FORMAT, "files": files}, indent=1))
        if directory.exists():
            stale = Path(tempfile.mkdtemp(prefix=f".{directory.name}.stale-", dir=directory.parent))
            os.replace(directory, stale / "old")
            shutil.rmtree(stale)
        try:
            os.rename(staging, directory)
        except OSError:
            # Another process published a complete copy first; keep it.
            if not _cache_is_complete(directory, check_digests=False):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
