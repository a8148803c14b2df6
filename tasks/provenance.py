"""Which prompts a NAMM was trained and validated on, recorded in its checkpoints, so an evaluation can
prove its prompts are held out (tasks/evaluation/held_out.py).

A prompt is named two ways: by its identity, (task, synthetic seed, index) (a LongBench line has no seed:
its index is its line), which survives a change of tokenizer (zero-shot transfer); and by the hash of its
token ids, which catches the same prompt reached another way. Training records its whole training pool
(every prompt a generation may draw) and its validation set: what it could have seen, not only what it
drew. A run started from another run's centre (`init_from`) keeps that run's record under `init_from`
(None when the ancestor had none: the record is then incomplete).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tasks.fingerprints import prompt_digest
from tasks.runner import PreparedTask

PROVENANCE_FORMAT = 1


@dataclass(frozen=True)
class PromptKey:
    """A prompt's identity: the task, its synthetic seed (None: a LongBench line) and its index."""

    task: str
    seed: int | None
    index: int


def task_seed(task: PreparedTask) -> int | None:
    """The seed a synthetic task's samples are drawn from (None for LongBench data)."""
    return task.settings.seed if task.settings.data_source == "synthetic" else None


def split_record(task: PreparedTask, split: str, indices: Iterable[int]) -> dict[str, Any]:
    """One task's prompts of one split (indices are the samples' own: data line or synthetic number)."""
    by_index = {sample.index: sample for sample in task.samples}
    chosen = sorted(indices)
    return {
        "task": task.spec.name,
        "split": split,
        "seed": task_seed(task),
        "data_source": task.settings.data_source,
        "indices": chosen,
        "prompt_sha": [prompt_digest(by_index[index].prompt_ids) for index in chosen],
    }


def training_provenance(
    tasks: Sequence[PreparedTask], splits: Mapping[str, Mapping[str, Iterable[int]]]
) -> dict[str, Any]:
    """The record a training run writes into its checkpoints: `splits` is split -> task -> indices."""
    by_name = {task.spec.name: task for task in tasks}
    prompts = [
        split_record(by_name[name], split, indices)
        for split, per_task in splits.items()
        for name, indices in sorted(per_task.items())
    ]
    return {"format": PROVENANCE_FORMAT, "complete": True, "prompts": prompts}


@dataclass(frozen=True)
class TrainedPrompt:
    """Where a prompt of the record came from."""

    key: PromptKey
    split: str
    prompt_sha: str


@dataclass(frozen=True)
class TrainedPrompts:
    """A provenance record read back, indexed for overlap checks."""

    by_key: dict[PromptKey, TrainedPrompt]
    by_hash: dict[str, TrainedPrompt]
    complete: bool

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TrainedPrompts:
        """Read a record and the records of the runs it started from (`init_from`, recursively)."""
        prompts: list[TrainedPrompt] = []
        complete = True
        current: Mapping[str, Any] | None = record
        while current is not None:
            if current.get("format") != PROVENANCE_FORMAT:
                raise ValueError(f"provenance format {current.get('format')!r}, this code reads {PROVENANCE_FORMAT}")
            prompts += [
                TrainedPrompt(PromptKey(entry["task"], entry["seed"], index), entry["split"], sha)
                for entry in current["prompts"]
                for index, sha in zip(entry["indices"], entry["prompt_sha"])
            ]
            complete = complete and bool(current.get("complete", False))
            if "init_from" in current and current["init_from"] is None:
                complete = False
            current = current.get("init_from")
        return cls({p.key: p for p in prompts}, {p.prompt_sha: p for p in prompts}, complete)

    def indices_of(self, task: str, seed: int | None) -> set[int]:
        """The indices of `task` (drawn from `seed`) it was trained or validated on."""
        return {key.index for key in self.by_key if key.task == task and key.seed == seed}

    def find(self, task: PreparedTask) -> list[tuple[int, TrainedPrompt]]:
        """The samples of a prepared task found in the record (by identity or by prompt hash)."""
        seed = task_seed(task)
        found = []
        for sample in task.samples:
            match = self.by_key.get(PromptKey(task.spec.name, seed, sample.index)) or self.by_hash.get(
                prompt_digest(sample.prompt_ids)
            )
            if match is not None:
                found.append((sample.index, match))
        return found
