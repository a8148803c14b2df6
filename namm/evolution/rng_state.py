"""Every random number generator a run touches, as plain tensors (loadable with weights_only=True)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture_rng_state(search_generator: torch.Generator | None) -> dict[str, Any]:
    """Python, NumPy, torch CPU, every CUDA device, and the searcher's own generator."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "search": None if search_generator is None else search_generator.get_state(),
    }


def restore_rng_state(state: dict[str, Any], search_generator: torch.Generator | None) -> None:
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch_cpu"])
    if state["torch_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"][: torch.cuda.device_count()])
    if search_generator is not None and state["search"] is not None:
        search_generator.set_state(state["search"])
