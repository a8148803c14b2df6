"""Training checkpoints: one typed record (`TrainingCheckpoint`), saved as a small torch dict, written
atomically, checked field by field when read.

`torch.load` does not verify the data it reads (a flipped byte loads silently), so each checkpoint
carries a SHA-256 digest of its content. `latest.pt` is rotated to `latest.prev.pt` before each
write; a truncated or corrupted `latest.pt` is reported and the previous good one is used.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import platform
from dataclasses import MISSING, dataclass, field, fields, replace
from importlib import metadata
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

import torch

from namm.atomic_io import atomic_write

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: adds `provenance`; format 1 files (no provenance) are still read
READABLE_VERSIONS = (1, 2)
LATEST = "latest.pt"
PREVIOUS = "latest.prev.pt"
BEST = "best.pt"
_DIGEST_KEY = "sha256"
_FORMAT_KEY = "format_version"
_FIX = "use another checkpoint of the run (latest.prev.pt, best.pt) or start a new run"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, truncated, tampered with or incomplete."""


@dataclass(eq=False)
class TrainingCheckpoint:
    """Everything a run needs to continue bit-exactly, and what evaluation and export read back.

    On disk it is a torch-saved dict of these fields (a plain torch file for users), plus `format_version` and
    the SHA-256 digest of the rest. Fields after `versions` were added over time: a file without them reads
    as the default. `provenance` is free-form (what the run was trained and validated on, for example), so
    recording more there needs no new format version.
    """

    generation: int
    center: torch.Tensor  # the search mean after `generation`
    sigma: torch.Tensor | float  # the searcher's step-size parameter (scalar, vector or matrix)
    best_params: torch.Tensor  # the best validated centre so far (what evaluation and export use)
    best_validation_fitness: float | None
    config: dict[str, Any]  # the resolved train config
    searcher_state: dict[str, Any]  # the searcher's state dict (namm.evolution.searchers)
    rng_state: dict[str, Any]
    normalisation_state: dict[str, Any]  # the scorer's calibrated statistics (opaque here)
    wandb_run_id: str | None
    versions: dict[str, str]  # library_versions() of the writer
    best_generation: int | None = None  # None: a format 1 file written before it was recorded
    best_validation_retained_ratio: float | None = None
    best_validation_score_vs_full_cache: float | None = None
    param_count: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None  # the digest the file was read with (not written as a field: it covers the rest)

    def to_payload(self) -> dict[str, Any]:
        """The dict written to disk (without its digest)."""
        values = {item.name: getattr(self, item.name) for item in fields(self) if item.name != _DIGEST_KEY}
        return {_FORMAT_KEY: FORMAT_VERSION, **values}

    @classmethod
    def from_payload(cls, payload: dict[str, Any], where: Path | str) -> TrainingCheckpoint:
        """Check a dict read from `where` field by field; raises CheckpointError naming the field and the fix."""
        version = payload.get(_FORMAT_KEY)
        if version not in READABLE_VERSIONS:
            raise CheckpointError(
                f"{where} has format {version!r}, this code reads {list(READABLE_VERSIONS)}; it is not a training "
                f"checkpoint of this project, or was written by a newer version"
            )
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(payload) - known - {_FORMAT_KEY})
        if unknown:
            raise CheckpointError(f"{where} holds fields this version does not know: {unknown}; {_FIX}")
        missing = [item.name for item in fields(cls) if item.name not in payload and _required(item)]
        if missing:
            raise CheckpointError(f"{where} lacks {missing}; it is not a complete training checkpoint; {_FIX}")
        record = cls(**{name: value for name, value in payload.items() if name != _FORMAT_KEY})
        record.check(where)
        return record

    def check(self, where: Path | str) -> None:
        """Types, shapes and finite numbers; raises CheckpointError naming `where`, the field and the fix."""
        hints = get_type_hints(type(self))
        for item in fields(self):
            value = getattr(self, item.name)
            if not _has_type(value, hints[item.name]):
                raise CheckpointError(
                    f"{where}: field {item.name!r} holds a {type(value).__name__}, expected {item.type}; {_FIX}"
                )
        if self.generation < 0:
            raise CheckpointError(f"{where}: field 'generation' is {self.generation}, expected >= 0; {_FIX}")
        for name in ("center", "best_params"):
            tensor = getattr(self, name)
            if tensor.dim() != 1 or not tensor.is_floating_point():
                raise CheckpointError(
                    f"{where}: field {name!r} is a {tensor.dtype} tensor of shape {tuple(tensor.shape)}, expected a "
                    f"float vector; {_FIX}"
                )
        if self.best_params.shape != self.center.shape:
            raise CheckpointError(
                f"{where}: field 'best_params' has {self.best_params.numel()} parameters but 'center' has "
                f"{self.center.numel()}; {_FIX}"
            )
        for name in (
            "center",
            "sigma",
            "best_params",
            "best_validation_fitness",
            "best_validation_retained_ratio",
            "best_validation_score_vs_full_cache",
            "searcher_state",
            "normalisation_state",
        ):
            bad = _first_non_finite(getattr(self, name), name)
            if bad is not None:
                raise CheckpointError(f"{where}: field '{bad}' holds a non-finite number (NaN or inf); {_FIX}")


def _required(item: Any) -> bool:
    return item.default is MISSING and item.default_factory is MISSING


def _has_type(value: Any, hint: Any) -> bool:
    """isinstance against a field's type hint (unions, parametrised containers; an int is a float)."""
    options = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
    for option in options:
        kind = get_origin(option) or option
        if kind is Any or (kind is type(None) and value is None):
            return True
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return True
        if kind is not type(None) and isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return True
    return False


def _first_non_finite(value: Any, path: str) -> str | None:
    """The path (`searcher_state['m']`) of the first NaN or inf in nested dicts/lists/tensors/floats, else None."""
    if isinstance(value, torch.Tensor):
        finite = not value.is_floating_point() or bool(torch.isfinite(value).all())
        return None if finite else path
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _first_non_finite(item, f"{path}[{key!r}]")
        if found is not None:
            return found
    return None


def library_versions() -> dict[str, str]:
    """Versions that change results, recorded with every checkpoint."""
    versions = {"python": platform.python_version()}
    for package in ("torch", "evotorch", "transformers", "numpy", "hydra-core", "omegaconf", "wandb", "namm"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def with_provenance(record: TrainingCheckpoint, provenance: dict[str, Any] | None) -> TrainingCheckpoint:
    """`record` with the scorer's record of its training and validation prompts (unchanged without one)."""
    return record if provenance is None else replace(record, provenance=provenance)


def read_provenance(record: TrainingCheckpoint) -> dict[str, Any] | None:
    """The prompts record of a checkpoint; None for one written before it existed (held-out unknown)."""
    return dict(record.provenance) if record.provenance else None


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


def content_digest(payload: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's dict, its own digest left out."""
    digest = hashlib.sha256()
    _update_digest(digest, {key: value for key, value in payload.items() if key != _DIGEST_KEY})
    return digest.hexdigest()


def save_checkpoint(record: TrainingCheckpoint, path: Path) -> None:
    """Write `record` (plus its digest) to `path` atomically: temp file, fsync, rename."""
    record.check(path)  # what is written must read back
    payload = record.to_payload()
    payload[_DIGEST_KEY] = content_digest(payload)
    atomic_write(path, lambda file: torch.save(payload, file))


def load_checkpoint(path: Path) -> TrainingCheckpoint:
    """Read and verify a checkpoint; raises CheckpointError saying what is wrong and what to do."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"{path} could not be read ({type(error).__name__}: {error}); it may be truncated; {_FIX}"
        ) from error
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} holds a {type(payload).__name__}, not a training checkpoint")
    digest = payload.pop(_DIGEST_KEY, None)
    if digest is None:
        raise CheckpointError(
            f"{path} lacks its {_DIGEST_KEY!r} digest; it is not a training checkpoint of this project"
        )
    if payload.get(_FORMAT_KEY) in READABLE_VERSIONS and content_digest(payload) != digest:
        raise CheckpointError(f"{path} failed its checksum; its content is corrupted; {_FIX}")
    record = TrainingCheckpoint.from_payload(payload, path)
    record.sha256 = digest
    return record


def save_latest(record: TrainingCheckpoint, run_dir: Path) -> None:
    """Keep the previous `latest.pt` as `latest.prev.pt`, then write the new one."""
    latest = run_dir / LATEST
    if latest.exists():
        os.replace(latest, run_dir / PREVIOUS)
    save_checkpoint(record, latest)


def load_latest(run_dir: Path) -> tuple[TrainingCheckpoint, Path] | None:
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
        record = load_checkpoint(previous)
    except CheckpointError as error:
        raise CheckpointError(f"both {LATEST} and {PREVIOUS} in {run_dir} are unusable: {error}") from error
    log.warning("resuming from %s (generation %d)", previous, record.generation)
    return record, previous


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (its best.pt, else its latest.pt)."""
    path = Path(path)
    if path.is_dir():
        for name in (BEST, LATEST):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"run directory {path} holds neither {BEST} nor {LATEST}")
    return path
