"""Which NAMM is evaluated: a training checkpoint (file or run directory), an exported NAMM folder
(`scripts/export_namm.py`), the newest checkpoint of the default training run, or the zero-parameter NAMM.
All are read through `namm.pretrained.PretrainedNAMM`; only small files are read, so a bad input fails
before any model is loaded.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from namm.errors import ConfigError
from namm.evolution.checkpoint import BEST, LATEST, CheckpointError, resolve_checkpoint_path
from namm.evolution.sweep import read_job_statuses
from namm.network.config import NAMMConfig
from namm.network.namm import NAMM
from namm.network.parameters import parameter_layout
from namm.pretrained import PretrainedNAMM, is_exported_namm
from namm.typed_config import typed_config
from tasks.evaluation.config import AUTO_CHECKPOINT, NAMM_POLICY, ZERO_CHECKPOINT
from tasks.fingerprints import canonical_json

log = logging.getLogger(__name__)


@dataclass
class NAMMSource:
    """The NAMM under evaluation (use `pretrained` for its config, parameters and training record) and where it
    came from."""

    pretrained: PretrainedNAMM
    kind: str = "zero"  # checkpoint | exported | zero
    path: Path | None = None  # None: the zero-parameter NAMM
    params_kind: str = "zero"  # best | center (checkpoints) | exported | zero

    @property
    def is_zero(self) -> bool:
        return self.kind == "zero"

    @property
    def training_engine(self) -> dict[str, Any] | None:
        """The engine schedule the NAMM was evolved with (None for the zero NAMM: the engine defaults)."""
        return None if self.is_zero else asdict(self.pretrained.engine)

    def fingerprint(self) -> str:
        """Hash of everything that changes the NAMM's decisions (keys its per-sample results)."""
        namm = self.pretrained.namm
        normalisation = namm.normaliser.state_dict()
        digest = hashlib.sha256(namm.parameters.double().numpy().tobytes())
        digest.update(canonical_json(namm.config.to_dict()))
        for name in sorted(normalisation):
            digest.update(name.encode() + torch.as_tensor(normalisation[name]).double().numpy().tobytes())
        return digest.hexdigest()[:12]

    def describe(self) -> dict[str, Any]:
        """JSON-ready record for results.json."""
        training = self.pretrained.training
        return {
            "kind": self.kind,
            "path": None if self.path is None else str(self.path),
            "generation": training.get("generation"),
            "params": self.params_kind,
            "param_count": int(self.pretrained.namm.parameters.numel()),
            "sha256": (training.get("checkpoint") or {}).get("sha256"),
            "fingerprint": self.fingerprint(),
            "trained_on_model": self.pretrained.trained_on,
            "normalization": bool(self.pretrained.namm.normaliser.state_dict()),
            "namm": self.pretrained.config.to_dict(),
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
    """The `namm` node of the command line, types and values checked, the key named."""
    return typed_config(NAMMConfig, values, where)


def _check_shape(requested: NAMMConfig, saved: NAMMConfig, path: Path) -> None:
    """The requested NAMM must have the saved one's parameter layout (block names and shapes)."""
    wanted, stored = parameter_layout(requested), parameter_layout(saved)
    shape = [(block.name, block.shape) for block in wanted.blocks]
    saved_shape = [(block.name, block.shape) for block in stored.blocks]
    if shape != saved_shape:
        raise ConfigError(
            f"checkpoint {path} is a NAMM of {stored.size} parameters ({saved.scorer}, hidden={saved.hidden}, "
            f"heads={saved.heads}, bias={saved.bias}, recency_dims={saved.recency_dims}, n_fft={saved.n_fft}) but "
            f"the namm config asks for {wanted.size} ({requested.scorer}, hidden={requested.hidden}, "
            f"heads={requested.heads}, bias={requested.bias}, recency_dims={requested.recency_dims}, "
            f"n_fft={requested.n_fft}). Drop the namm= overrides to use the checkpoint's own config, or give a "
            "checkpoint trained with this one."
        )


def load_namm_source(path: Path, params_kind: str, namm_override: dict[str, Any] | None) -> NAMMSource:
    """Read and check a checkpoint (file or run directory) or an exported NAMM folder; `namm_override` (the
    `namm` group, if given) must match its shape and replaces its settings (e.g. a budget)."""
    if not path.exists():
        raise CheckpointError(
            f"checkpoint={path} does not exist. Give a .pt file (best.pt, latest.pt), a training run directory "
            "(e.g. runs/<name>/seed0) or an exported NAMM folder, or checkpoint=zero for the zero-parameter NAMM."
        )
    if is_exported_namm(path):
        artefact, kind, params_kind = PretrainedNAMM.from_pretrained(path), "exported", "exported"
    else:
        path = resolve_checkpoint_path(path)
        artefact, kind = PretrainedNAMM.from_checkpoint(path, params_kind), "checkpoint"
    if namm_override is not None:
        requested = _namm_config(namm_override, "namm")
        _check_shape(requested, artefact.config, path)
        namm = NAMM(requested, artefact.namm.parameters)
        namm.normaliser.load_state_dict(artefact.namm.normaliser.state_dict())
        artefact = replace(artefact, namm=namm)
    if artefact.config.normalise and artefact.namm.normaliser.stats is None and artefact.namm.parameters.any():
        log.warning(
            "%s has no normalisation statistics although namm.normalise is on: its NAMM will see raw "
            "spectrograms, unlike in training",
            path,
        )
    return NAMMSource(artefact, kind=kind, path=path, params_kind=params_kind)


def zero_namm_source(namm_override: dict[str, Any] | None) -> NAMMSource:
    """The NAMM with every parameter zero: every score is 0 >= threshold 0, so it keeps every token."""
    return NAMMSource(PretrainedNAMM(NAMM(_namm_config(namm_override, "namm"))))


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


def _is_single_namm(path: Path) -> bool:
    return path.is_file() or is_exported_namm(path) or any((path / name).is_file() for name in (BEST, LATEST))


def expand_sweep(path: Path) -> list[tuple[str, Path]]:
    """A checkpoint, run directory or exported folder as itself; a sweep directory as each of its runs.

    A Hydra multirun directory lists its finished jobs' run directories in job_status/ (namm.evolution.sweep);
    any other directory is searched for run directories (those holding latest.pt). Each run is tagged by
    its path below `path`, or by its job overrides."""
    path = path.expanduser()
    if not path.exists() or _is_single_namm(path):
        return [(path.name, path)]
    jobs = [job for job in read_job_statuses(path) if job["status"] == "finished"]
    if jobs:
        return [(",".join(job["overrides"]) or f"job{job['job']}", Path(job["out_dir"])) for job in jobs]
    runs = sorted(found.parent for found in path.rglob(LATEST))
    if not runs:
        raise CheckpointError(
            f"checkpoints: {path} holds no training run (no {LATEST} below it) and is not a sweep directory "
            "(no job_status/); give run directories, checkpoint files or a multirun directory"
        )
    return [(str(run.relative_to(path)).replace("/", ","), run) for run in runs]


def check_checkpoint_choice(checkpoint: str, checkpoints: list[str] | None, runs_namm: bool) -> None:
    """`checkpoints` replaces `checkpoint` and only a NAMM reads it: refuse what it would silently ignore."""
    if checkpoints is None:
        return
    if not runs_namm:
        raise ConfigError(
            f"checkpoints={list(checkpoints)} is given but no NAMM runs: add {NAMM_POLICY} to compare "
            f"(e.g. compare=[full,{NAMM_POLICY}]), or drop checkpoints"
        )
    if checkpoint != AUTO_CHECKPOINT:
        raise ConfigError(
            f"checkpoint={checkpoint} and checkpoints={list(checkpoints)} are both given, and checkpoints replaces "
            "checkpoint: give the NAMM(s) in one of them and drop the other"
        )


def resolve_namm_sources(
    checkpoint: str,
    checkpoints: list[str] | None,
    train_dir: str | Path,
    params_kind: str,
    namm_override: dict[str, Any] | None,
) -> list[tuple[str, NAMMSource]]:
    """(label, source) of every NAMM under evaluation: `checkpoint` alone is labelled `namm`; `checkpoints`
    (files, run or sweep directories) give one `namm:<tag>` per run, or `namm` when there is only one."""
    if checkpoints is None:
        return [(NAMM_POLICY, resolve_namm_source(checkpoint, train_dir, params_kind, namm_override))]
    runs = [run for entry in checkpoints for run in expand_sweep(Path(entry))]
    sources = [(tag, load_namm_source(path, params_kind, namm_override)) for tag, path in runs]
    if len(sources) == 1:
        return [(NAMM_POLICY, sources[0][1])]
    labels = [f"{NAMM_POLICY}:{tag}" for tag, _ in sources]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ConfigError(f"checkpoints: two NAMMs would share the label(s) {repeated}; give distinct run directories")
    return [(label, source) for label, (_, source) in zip(labels, sources)]
