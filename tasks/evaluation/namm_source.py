"""Which NAMM is evaluated: a training checkpoint (file or run directory), the newest one of the default
training run, or the zero-parameter NAMM. Reads small files only, so a bad checkpoint fails before any
model is loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from namm.evolution.checkpoint import BEST, LATEST, CheckpointError, load_checkpoint, resolve_checkpoint_path
from namm.network.config import NAMMConfig
from namm.network.namm import NAMM
from namm.network.parameters import parameter_layout
from namm.policies.namm_policy import NAMMPolicy
from tasks.evaluation.config import AUTO_CHECKPOINT, ZERO_CHECKPOINT

log = logging.getLogger(__name__)


@dataclass
class NAMMSource:
    """The parameters, config and normalisation statistics of the NAMM under evaluation, and their origin."""

    parameters: torch.Tensor  # (P,) float32
    config: NAMMConfig
    normalization: dict[str, torch.Tensor] = field(default_factory=dict)  # FeatureNormalizer state; {}: none
    path: Path | None = None  # None: the zero-parameter NAMM
    generation: int | None = None
    params_kind: str = "zero"  # best | center | zero
    trained_on: str | None = None  # model name of the training run
    checkpoint_sha256: str | None = None
    training_engine: dict[str, Any] | None = None  # the engine schedule the NAMM was evolved with, if saved

    @property
    def is_zero(self) -> bool:
        return self.path is None

    @property
    def param_count(self) -> int:
        return int(self.parameters.numel())

    def fingerprint(self) -> str:
        """Hash of everything that changes the NAMM's decisions (keys its per-sample results)."""
        digest = hashlib.sha256(self.parameters.double().numpy().tobytes())
        digest.update(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        for name in sorted(self.normalization):
            digest.update(name.encode() + torch.as_tensor(self.normalization[name]).double().numpy().tobytes())
        return digest.hexdigest()[:12]

    def build_policy(self) -> NAMMPolicy:
        namm = NAMM(self.config, self.parameters)
        namm.normalizer.load_state_dict(self.normalization)
        return NAMMPolicy(namm)

    def describe(self) -> dict[str, Any]:
        """JSON-ready record for results.json."""
        return {
            "kind": "zero" if self.is_zero else "checkpoint",
            "path": None if self.path is None else str(self.path),
            "generation": self.generation,
            "params": self.params_kind,
            "param_count": self.param_count,
            "sha256": self.checkpoint_sha256,
            "fingerprint": self.fingerprint(),
            "trained_on_model": self.trained_on,
            "normalization": bool(self.normalization),
            "namm": self.config.to_dict(),
        }


def newest_checkpoint(train_dir: Path) -> Path | None:
    """The most recently written checkpoint of the runs under `train_dir` (its seed*/ folders, or itself)."""
    run_dirs = [train_dir, *sorted(path for path in train_dir.glob("*") if path.is_dir())] if train_dir.is_dir() else []
    found = [run / name for run in run_dirs for name in (BEST, LATEST) if (run / name).is_file()]
    if not found:
        return None
    newest_run = max(found, key=lambda path: path.stat().st_mtime).parent
    return resolve_checkpoint_path(newest_run)  # that run's best.pt, else its latest.pt


def _namm_config(values: dict[str, Any] | None, where: str) -> NAMMConfig:
    try:
        return NAMMConfig.from_dict(dict(values or {}))
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from error


def _check_shape(requested: NAMMConfig, saved: NAMMConfig, parameters: torch.Tensor, path: Path) -> None:
    """The requested NAMM must have the checkpoint's parameter layout (block names and shapes)."""
    wanted, stored = parameter_layout(requested), parameter_layout(saved)
    if parameters.numel() != stored.size:
        raise CheckpointError(
            f"{path} holds {parameters.numel()} NAMM parameters but its own namm config describes {stored.size}; "
            "the checkpoint is inconsistent (was it written by another version?)."
        )
    shape = [(block.name, block.shape) for block in wanted.blocks]
    saved_shape = [(block.name, block.shape) for block in stored.blocks]
    if shape != saved_shape:
        raise ValueError(
            f"checkpoint {path} is a NAMM of {stored.size} parameters ({saved.scorer}, hidden={saved.hidden}, "
            f"heads={saved.heads}, bias={saved.bias}, recency_dims={saved.recency_dims}, n_fft={saved.n_fft}) but "
            f"the namm config asks for {wanted.size} ({requested.scorer}, hidden={requested.hidden}, "
            f"heads={requested.heads}, bias={requested.bias}, recency_dims={requested.recency_dims}, "
            f"n_fft={requested.n_fft}). Drop the namm= overrides to use the checkpoint's own config, or give a "
            "checkpoint trained with this one."
        )


def _normalization(state: Any, path: Path, config: NAMMConfig) -> dict[str, torch.Tensor]:
    """The FeatureNormalizer statistics inside a checkpoint's `normalisation_state` (or {} when none)."""
    if not state:
        return {}
    stats = state.get("normalization", state) if isinstance(state, dict) else None
    if not isinstance(stats, dict) or (stats and not {"count", "mean", "var"} <= set(stats)):
        raise CheckpointError(
            f"{path}: normalisation_state has keys {sorted(state) if isinstance(state, dict) else type(state)}; "
            "expected the NAMM's normalisation statistics (count, mean, var)."
        )
    if stats and torch.as_tensor(stats["mean"]).numel() != config.bins:
        raise CheckpointError(
            f"{path}: normalisation statistics have {torch.as_tensor(stats['mean']).numel()} "
            f"bins, the NAMM config has {config.bins}."
        )
    return dict(stats)


def load_namm_source(path: Path, params_kind: str, namm_override: dict[str, Any] | None) -> NAMMSource:
    """Read and check a checkpoint; `namm_override` (the `namm` group, if given) must match its shape."""
    if not path.exists():
        raise CheckpointError(
            f"checkpoint={path} does not exist. Give a .pt file (best.pt, latest.pt) or a training run directory "
            "(e.g. runs/<name>/seed0), or checkpoint=zero for the zero-parameter NAMM."
        )
    path = resolve_checkpoint_path(path)
    state = load_checkpoint(path)
    saved_config = state["config"] if isinstance(state["config"], dict) else {}
    saved = _namm_config(saved_config.get("namm"), f"the namm config saved in {path}")
    parameters = state["best_params"] if params_kind == "best" else state["center"]
    parameters = torch.as_tensor(parameters).detach().float().reshape(-1)
    requested = saved if namm_override is None else _namm_config(namm_override, "namm")
    _check_shape(requested, saved, parameters, path)
    model = saved_config.get("model")
    normalization = _normalization(state.get("normalisation_state"), path, requested)
    if requested.normalise and not normalization and parameters.any():
        log.warning(
            "%s has no normalisation statistics although namm.normalise is on: its NAMM will see raw "
            "spectrograms, unlike in training",
            path,
        )
    return NAMMSource(
        parameters=parameters,
        config=requested,
        normalization=normalization,
        path=path,
        generation=int(state["generation"]),
        params_kind=params_kind,
        trained_on=model.get("name") if isinstance(model, dict) else None,
        checkpoint_sha256=state.get("sha256"),
        training_engine=saved_config.get("engine"),
    )


def zero_namm_source(namm_override: dict[str, Any] | None) -> NAMMSource:
    """The NAMM with every parameter zero: every score is 0 >= threshold 0, so it keeps every token."""
    config = _namm_config(namm_override, "namm")
    return NAMMSource(parameters=torch.zeros(parameter_layout(config).size), config=config)


def resolve_namm_source(
    checkpoint: str, train_dir: str | Path, params_kind: str, namm_override: dict[str, Any] | None
) -> NAMMSource:
    """`checkpoint`: auto (newest under `train_dir`, else zero, saying so), zero, or a path."""
    if checkpoint == ZERO_CHECKPOINT:
        log.info("checkpoint=zero: evaluating the zero-parameter NAMM (keeps every token)")
        return zero_namm_source(namm_override)
    if checkpoint == AUTO_CHECKPOINT:
        found = newest_checkpoint(Path(train_dir))
        if found is None:
            log.warning(
                "No training checkpoint under %s: evaluating the zero-parameter NAMM (it keeps every token, so it "
                "matches the full cache). Train one with `python train.py`, or pass checkpoint=<run dir or .pt>.",
                train_dir,
            )
            return zero_namm_source(namm_override)
        log.info("checkpoint=auto: evaluating %s, the newest checkpoint under %s", found, train_dir)
        return load_namm_source(found, params_kind, namm_override)
    return load_namm_source(Path(checkpoint).expanduser(), params_kind, namm_override)
