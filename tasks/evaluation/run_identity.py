"""What moves a score besides the policy, the task and the engine schedule: which weights, in which
precision, on which device, in which batches, under which library and code versions. Part of every sample
store's key (tasks/evaluation/policy_runs.py), so a change runs the samples again instead of reusing them.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from namm.models import LoadedModel

#: the packages whose code runs under every score
SOURCE_PACKAGES = ("namm", "tasks")
ROOT = Path(__file__).resolve().parents[2]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


@functools.cache
def source_digest(root: Path = ROOT) -> str:
    """sha256 of every .py file of namm/ and tasks/ (relative path and bytes), in path order: any code
    change, committed or not, is a new version (a git commit would miss an uncommitted edit)."""
    digest = hashlib.sha256()
    for package in SOURCE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def device_name(device: torch.device) -> str:
    """The resolved device and, on a GPU, its model (kernels, and so float sums, differ between models)."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


def score_inputs(loaded: LoadedModel, batch_size: int) -> dict[str, Any]:
    """The resolved model (weights id, dtype, device: never `auto`), the batch size (left padding moves
    float sums), and the library and code versions."""
    weight = next(loaded.model.parameters())
    return {
        "weights": loaded.weights_id,
        "dtype": str(weight.dtype).removeprefix("torch."),
        "device": device_name(weight.device),
        "batch_size": batch_size,
        "versions": {package: _version(package) for package in ("torch", "transformers", "namm")},
        "sources": source_digest(),
    }
