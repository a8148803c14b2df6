"""Training checkpoints: small torch-saved dicts, written atomically, checked when read.

`torch.load` does not verify the data it reads (a flipped byte loads silently), so each checkpoint
carries a SHA-256 digest of its content. `latest.pt` is rotated to `latest.prev.pt` before each
write; a truncated or corrupted `latest.pt` is reported and the previous good one is used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from namm.atomic_io import atomic_write

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
LATEST = "latest.pt"
PREVIOUS = "latest.prev.pt"
BEST = "best.pt"
REQUIRED_KEYS = (
    "format_version",
    "generation",
    "center",
    "sigma",
    "best_params",
    "best_validation_fitness",
    "config",
    "searcher_state",
    "rng_state",
    "normalisation_state",
    "wandb_run_id",
    "versions",
)
_DIGEST_KEY = "sha256"
#: optional: the prompts the run trained and validated on (written by the scorer, read by evaluation)
PROVENANCE_KEY = "provenance"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, truncated, tampered with or incomplete."""


def library_versions() -> dict[str, str]:
    """Versions that change results, recorded with every checkpoint."""
    versions = {"python": platform.python_version()}
    for package in ("torch", "evotorch", "transformers", "numpy", "hydra-core", "omegaconf", "wandb", "namm"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def with_provenance(state: dict[str, Any], provenance: dict[str, Any] | None) -> dict[str, Any]:
    """`state` with the scorer's record of its training and validation prompts (unchanged without one)."""
    return state if provenance is None else {**state, PROVENANCE_KEY: provenance}


def read_provenance(state: dict[str, Any]) -> dict[str, Any] | None:
    """The prompts record of a checkpoint; None for one written before it existed (held-out unknown)."""
    record = state.get(PROVENANCE_KEY)
    return dict(record) if isinstance(record, dict) else None


def _update_digest(digest: Any, value: Any) -> None:
    """Feed a canonical encoding of nested dicts/lists/tensors/scalars into `digest`."""
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{flat.dtype}{tuple(value.shape)}:".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}:".encode())
        for key in sorted(value, key=repr):
            _update_digest(digest, key)
            _update_digest(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"L{len(value)}:".encode())
        for item in value:
            _update_digest(digest, item)
    elif value is None or isinstance(value, (bool, int, float, str)):
        digest.update(f"{type(value).__name__}:{value!r};".encode())
    else:
        raise TypeError(f"checkpoints hold tensors, containers and scalars only, got {type(value).__name__}")


def content_digest(state: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    _update_digest(digest, {key: value for key, value in state.items() if key != _DIGEST_KEY})
    return digest.hexdigest()


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write `state` (plus its digest) to `path` atomically: temp file, fsync, rename."""
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    payload = {**state, _DIGEST_KEY: content_digest(state)}
    atomic_write(path, lambda file: torch.save(payload, file))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read and verify a checkpoint; raises CheckpointError saying what is wrong."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"{path} could not be read ({type(error).__name__}: {error}); it may be truncated"
        ) from error
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a checkpoint dict")
    missing = [key for key in (*REQUIRED_KEYS, _DIGEST_KEY) if key not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}; it is not a training checkpoint of this version")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format {state['format_version']}, this code reads {FORMAT_VERSION}")
    if content_digest(state) != state[_DIGEST_KEY]:
        raise CheckpointError(f"{path} failed its checksum; its content is corrupted")
    return state


def save_latest(state: dict[str, Any], run_dir: Path) -> None:
    """Keep the previous `latest.pt` as `latest.prev.pt`, then write the new one."""
    latest = run_dir / LATEST
    if latest.exists():
        os.replace(latest, run_dir / PREVIOUS)
    save_checkpoint(state, latest)


def load_latest(run_dir: Path) -> tuple[dict[str, Any], Path] | None:
    """The newest readable checkpoint of a run (None if it has none); says so when it falls back."""
    latest, previous = run_dir / LATEST, run_dir / PREVIOUS
    if not latest.exists() and not previous.exists():
        return None
    try:
        return load_checkpoint(latest), latest
    except CheckpointError as error:
        if not previous.exists():
            raise CheckpointError(f"{error}, and there is no {PREVIOUS} to fall back to") from error
        log.warning("%s; falling back to the previous good checkpoint %s", error, previous)
    try:
        state = load_checkpoint(previous)
    except CheckpointError as error:
        raise CheckpointError(f"both {LATEST} and {PREVIOUS} in {run_dir} are unusable: {error}") from error
    log.warning("resuming from %s (generation %d)", previous, state["generation"])
    return state, previous


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (its best.pt, else its latest.pt)."""
    path = Path(path)
    if path.is_dir():
        for name in (BEST, LATEST):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"run directory {path} holds neither {BEST} nor {LATEST}")
    return path
