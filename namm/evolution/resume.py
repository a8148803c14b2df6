"""Where a run starts: fresh, from its own latest checkpoint (`resume`), or from another run's centre (`init_from`).

Everything here reads small files only, so a wrong `resume`/`init_from` fails before any model loads.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from namm.evolution.checkpoint import (
    BEST,
    LATEST,
    PREVIOUS,
    CheckpointError,
    TrainingCheckpoint,
    load_checkpoint,
    load_latest,
    resolve_checkpoint_path,
)
from namm.evolution.config import ConfigError, TrainConfig
from namm.evolution.scorer_protocol import scorer_factory

log = logging.getLogger(__name__)

# Keys that may change when a run is continued: they do not change the search trajectory.
RESUMABLE_CHANGES = (
    "evo.generations",
    "evo.num_actors",
    "evo.num_gpus_per_actor",
    "evo.max_batch_rows",
    "evo.eval_interval",
    "logger",
    "resume",
    "init_from",
    "init_from_any_model",
    "out_dir",
)

# Settings added after runs were already saved, with the value that reproduces what those runs did. A saved run
# lacking one of them ran with that value; resuming it needs the same (or the key is only read under another
# choice: `None` means the key is unused by the old behaviour, so any value continues the same search).
ADDED_SETTINGS: dict[str, Any] = {
    "evo.objective": "score",
    "evo.init": "zeros",
    "evo.reference_floor_share": 0.0,
    "evo.memory_weight": None,  # read only by objective=memory_penalty
    "evo.init_margin": None,  # read only by init=keep_all
    "evo.evolve": [],  # every parameter searched
}

# Settings a later version no longer has: ignored when only a saved run holds them. (The scorer's parameter
# count and input checks were reached through these; they are members of the class `scorer._target_` names now.)
RETIRED_SETTINGS = ("scorer.param_count_target", "scorer.check_target")


@dataclass
class StartPoint:
    resume_state: TrainingCheckpoint | None = None  # continue this run exactly
    resume_path: Path | None = None
    init_state: TrainingCheckpoint | None = None  # start a new run from this checkpoint's centre
    init_path: Path | None = None


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def config_differences(
    saved: dict[str, Any], current: dict[str, Any], former_targets: tuple[str, ...] = ()
) -> list[str]:
    """Settings that differ between a saved run and this one, except those a resume may change.
    `former_targets`: earlier spellings of this run's `scorer._target_` (the scorer's `former_targets`)."""
    old, new = _flatten(saved), _flatten(current)
    if old.get("scorer._target_") in former_targets:
        old["scorer._target_"] = new.get("scorer._target_")
    changed = []
    for key in sorted(set(old) | set(new)):
        if any(key == allowed or key.startswith(allowed + ".") for allowed in RESUMABLE_CHANGES):
            continue
        if key in RETIRED_SETTINGS and key not in new:
            continue
        if key not in old and key in ADDED_SETTINGS:
            if ADDED_SETTINGS[key] is None:
                continue
            old[key] = ADDED_SETTINGS[key]
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            changed.append(f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}")
    return changed


def slurm_requeued() -> bool:
    """SLURM sets SLURM_RESTART_COUNT >= 1 when it requeues a job (timeout, preemption)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


def find_start_point(config: TrainConfig, resolved: dict[str, Any]) -> StartPoint:
    """Decide how this run starts; raise with the fix when the request cannot be honoured."""
    run_dir = Path(config.out_dir)
    mode = config.resume
    if mode == "never" and slurm_requeued():
        log.info("SLURM requeued this job (restart %s): continuing from %s", os.environ["SLURM_RESTART_COUNT"], run_dir)
        mode = "auto"
    if mode == "never":
        existing = [name for name in (LATEST, PREVIOUS, BEST) if (run_dir / name).exists()]
        if existing:
            raise ConfigError(
                f"{run_dir} already holds a run ({', '.join(existing)}). Continue it with resume=auto, or start "
                f"a new one with another seed=/name=/out_dir=, or delete that directory."
            )
        found = None
    elif mode == "auto":
        found = load_latest(run_dir)
    else:
        path = Path(mode)
        found = load_latest(path) if path.is_dir() else (load_checkpoint(path), path)
        if found is None:
            raise CheckpointError(f"resume={mode!r}: that directory holds no {LATEST}")
    if found is not None:
        record, path = found
        changed = config_differences(record.config, resolved, scorer_factory(resolved).former_targets)
        if changed:
            raise ConfigError(
                f"cannot resume from {path}: these settings differ from the saved run, so it would not continue "
                f"the same search: {'; '.join(changed)}. Restore them, or start a new run (another name=/seed=/out_dir=)."
            )
        if config.init_from is not None:
            log.info("resuming %s; init_from is ignored (it only seeds a new run)", path)
        return StartPoint(resume_state=record, resume_path=path)
    if config.init_from is not None:
        path = resolve_checkpoint_path(config.init_from)
        record = load_checkpoint(path)
        if not config.init_from_any_model:
            _check_same_model(record.config, resolved, path)
        return StartPoint(init_state=record, init_path=path)
    return StartPoint()


MODEL_IDENTITY = ("name", "seed")  # the model (a tiny model's weights follow its seed), not how it is run


def _model_identity(config: dict[str, Any]) -> dict[str, Any]:
    model = config.get("model") or {}
    return {key: model.get(key) for key in MODEL_IDENTITY}


def _check_same_model(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """A NAMM's features (attention statistics, normalisation) are the model's own: starting from
    another model's centre is a transfer experiment, so it must be asked for."""
    trained_on, running = _model_identity(saved), _model_identity(current)
    if trained_on != running:
        raise ConfigError(
            f"init_from={path} was trained on model {trained_on['name']!r} ({trained_on}), this run uses "
            f"{running['name']!r} ({running}). Start from a checkpoint of the same model, or set "
            "init_from_any_model=true to transfer it on purpose."
        )
