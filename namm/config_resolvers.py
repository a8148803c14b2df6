"""OmegaConf resolvers the configs use to name run directories.

`${path_name:meta-llama/Llama-3.1-8B-Instruct}` -> `meta-llama--Llama-3.1-8B-Instruct` (a model name that is
safe as one path component, so two hub models never share a run directory), and
`${sweep_subdir:${hydra:mode},${hydra:job.override_dirname}}` -> `/evo.sigma=0.03` in a multirun job (each job
of a sweep gets its own directory, whatever keys it sweeps: Hydra's override_dirname holds all of the job's
overrides but those excluded in conf/train.yaml) and `` in a single run.
"""

from __future__ import annotations

import hashlib
from typing import Any

from omegaconf import OmegaConf


def path_name(value: Any) -> str:
    """One path component: '/' becomes '--' (the hub's own cache spelling)."""
    return str(value).strip("/").replace("/", "--")


MAX_SUBDIR = 96  # longer override lists keep a readable head and a hash of the whole (path limit: 255)


def sweep_subdir(mode: Any, override_dirname: Any) -> str:
    """'/<overrides>' for a multirun job with overrides, '' otherwise."""
    multirun = str(mode).endswith("MULTIRUN")
    dirname = path_name(override_dirname or "")
    if len(dirname) > MAX_SUBDIR:
        dirname = f"{dirname[: MAX_SUBDIR - 17]}-{hashlib.sha256(dirname.encode()).hexdigest()[:16]}"
    return f"/{dirname}" if multirun and dirname else ""


def register_resolvers() -> None:
    """Idempotent: both entry points and the tests call it."""
    OmegaConf.register_new_resolver("path_name", path_name, replace=True)
    OmegaConf.register_new_resolver("sweep_subdir", sweep_subdir, replace=True)
