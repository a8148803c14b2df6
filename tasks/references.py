"""Full-cache reference scores per sample, in evo-memory's JSON shape `{"lb/<task>": {"<index>": score}}`.

Fitness divides a candidate's task score by the full-cache score of the same samples, so references must
come from the identical pipeline: the on-disk cache is keyed by model and by the hash of the task's
settings record and by everything else that moves a score (weights, dtype, device type, generator), all
stored next to it. A published file of the same shape can be read directly.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any

from tqdm.auto import tqdm

from namm.atomic_io import atomic_write_json
from namm.engine import EngineConfig
from namm.errors import CorruptFileError
from namm.models import LoadedModel
from namm.read_back import finite_number, read_json, set_aside
from tasks.fingerprints import settings_digest
from tasks.prompts import Tokenizer
from tasks.runner import Generator, PreparedTask, run_task
from tasks.task_settings import TaskSettings

PREFIX = "lb/"
REFERENCE_FIX = "delete the file (its scores are recomputed) or restore it"


def _reference_score(value: Any, path: Path, field: str) -> float:
    score = finite_number(value, path, field, REFERENCE_FIX)
    if not 0.0 <= score <= 1.0:
        raise CorruptFileError(f"{path}: field {field} is {score}; a reference score lies in [0, 1]; {REFERENCE_FIX}")
    return score


def default_reference_dir() -> Path:
    """$NAMM_REFERENCE_CACHE, else ~/.cache/namm/references."""
    return Path(os.environ.get("NAMM_REFERENCE_CACHE", Path.home() / ".cache" / "namm" / "references"))


@dataclass
class ReferenceScores:
    """Per-sample scores in [0, 1] by task and sample index."""

    scores: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> ReferenceScores:
        """Read and check a reference file: every score a finite number in [0, 1] (raises CorruptFileError)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Reference score file {path} not found.")
        raw = read_json(path, REFERENCE_FIX)
        if (
            isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], dict)
        ):  # evo-memory's aggregate form: [{..., "performance_per_request": ...}]
            raw = raw[0].get("performance_per_request", raw[0])
        if not isinstance(raw, dict):
            raise CorruptFileError(f'{path}: expected {{"lb/<task>": {{"<index>": score}}}}; {REFERENCE_FIX}')
        scores: dict[str, dict[str, float]] = {}
        for task, by_index in raw.items():
            if not task.startswith(PREFIX):
                continue
            if not isinstance(by_index, dict):
                raise CorruptFileError(f"{path}: field {task!r} must map sample indices to scores; {REFERENCE_FIX}")
            scores[task] = {
                index: _reference_score(score, path, f"{task}.{index}") for index, score in by_index.items()
            }
        return cls(scores)

    def save(self, path: str | Path) -> None:
        atomic_write_json(Path(path), self.scores)

    def get(self, task: str, index: int) -> float | None:
        return self.scores.get(PREFIX + task, {}).get(str(index))

    def put(self, task: str, index: int, score: float) -> None:
        self.scores.setdefault(PREFIX + task, {})[str(index)] = float(score)

    def missing(self, task: str, indices: Iterable[int]) -> list[int]:
        return [i for i in indices if self.get(task, i) is None]

    def task_score(self, task: str, indices: Sequence[int]) -> float:
        """100 x mean reference over exactly these samples (the fitness denominator)."""
        absent = self.missing(task, indices)
        if absent:
            raise KeyError(
                f"No reference score for {task!r} samples {absent[:10]}; run scripts/fill_reference_scores.py."
            )
        return 100 * mean(self.get(task, i) for i in indices)


@dataclass(frozen=True)
class ReferenceContext:
    """What changes a full-cache score besides the task's settings: which weights, in which precision, on
    which kind of device, generated how (the engine's chunking moves float sums; plain transformers
    decoding is another pipeline)."""

    weights: str  # namm.models.LoadedModel.weights_id: a file digest, a hub commit, a tiny model's seed
    dtype: str
    device_type: str
    generator: dict[str, Any]  # {"name": "engine", **EngineConfig fields} or {"name": "transformers"}

    @classmethod
    def of(cls, loaded: LoadedModel, generator: dict[str, Any]) -> ReferenceContext:
        weight = next(loaded.model.parameters())
        return cls(loaded.weights_id, str(weight.dtype).removeprefix("torch."), weight.device.type, generator)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def engine_generator_record(config: EngineConfig) -> dict[str, Any]:
    """The `generator` entry of a context whose references come from the engine's full-cache policy: only
    the settings that move a full-cache score (how the prefill is chunked), so runs that differ in eviction
    settings share their references."""
    return {"name": "engine", "update_interval": config.update_interval, "prefill_chunk": config.prefill_chunk}


@dataclass(frozen=True)
class ReferenceCache:
    """Reference files on disk: <root>/<model>/<task>-<hash>.json, the hash over the task's settings and
    the context, both recorded beside it in <task>-<hash>.settings.json."""

    root: Path
    context: ReferenceContext

    def key(self, settings: TaskSettings) -> str:
        record = {"task_settings": settings.key(), "context": self.context.to_dict()}
        return settings_digest(record, 16)

    def path(self, settings: TaskSettings) -> Path:
        model = settings.model.replace("/", "--")
        return Path(self.root) / model / f"{settings.task}-{self.key(settings)}.json"

    def load(self, settings: TaskSettings) -> ReferenceScores:
        """The cached scores; a corrupt file (unparsable, NaN, out of range) is set aside and starts afresh."""
        path = self.path(settings)
        if not path.is_file():
            return ReferenceScores()
        try:
            return ReferenceScores.load(path)
        except CorruptFileError as error:
            set_aside(path, str(error))
            return ReferenceScores()

    def save(self, settings: TaskSettings, scores: ReferenceScores) -> None:
        """Merge `scores` into what is on disk (another run may have added samples) and write atomically."""
        path = self.path(settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.with_suffix(".lock").open("w") as lock:  # runs sharing the cache merge one at a time
            fcntl.flock(lock, fcntl.LOCK_EX)
            merged = self.load(settings)
            for task, by_index in scores.scores.items():
                merged.scores.setdefault(task, {}).update(by_index)
            record = {"task_settings": settings.to_dict(), "context": self.context.to_dict()}
            atomic_write_json(path.with_suffix(".settings.json"), record)
            merged.save(path)


def full_cache_scores(
    task: PreparedTask, generate: Generator, tokenizer: Tokenizer, indices: Sequence[int], batch_size: int
) -> dict[int, float]:
    """Per-sample scores of `generate` (a full-cache generator) on `indices`, nothing written."""
    run = run_task(task, generate, tokenizer, list(indices), batch_size)
    return dict(zip(run.indices, run.sample_scores))


def fill_references(
    task: PreparedTask,
    generate: Generator,
    tokenizer: Tokenizer,
    cache: ReferenceCache,
    indices: Sequence[int] | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> ReferenceScores:
    """Score the samples not yet cached with `generate` (a full-cache generator), saving after every batch."""
    scores = cache.load(task.settings)
    wanted = range(len(task.samples)) if indices is None else indices
    todo = scores.missing(task.spec.name, wanted)
    bar = tqdm(total=len(todo), desc=f"{task.spec.name} references", disable=not progress)
    for start in range(0, len(todo), batch_size):
        batch = full_cache_scores(task, generate, tokenizer, todo[start : start + batch_size], batch_size)
        for index, score in batch.items():
            scores.put(task.spec.name, index, score)
        cache.save(task.settings, scores)
        bar.update(len(batch))
    bar.close()
    return scores
