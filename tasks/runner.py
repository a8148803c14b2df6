"""The seam between tasks and whatever generates text: prompts in, token ids out, scores back.

Nothing here runs the engine. A generator is any callable
`generate(prompts: list[list[int]], settings: GenerationSettings) -> Sequence[object with .token_ids]`;
the settings are the engine's own (`namm.engine.GenerationSettings`), so `engine.generate` plugs in as it is
(`tasks.generators.engine_generator`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tqdm.auto import tqdm

from namm.engine import GenerationSettings
from namm.plain_generation import padding_token_id
from tasks.prompts import Tokenizer
from tasks.task_scores import length_buckets, score_prediction, task_score
from tasks.task_settings import TaskSettings
from tasks.task_spec import Sample, TaskSpec


class Generated(Protocol):
    token_ids: list[int]  # the new tokens only (a stop token may end them)


class Generator(Protocol):
    def __call__(self, prompts: list[list[int]], settings: GenerationSettings) -> Sequence[Generated]: ...


@dataclass(frozen=True)
class PreparedTask:
    """A task ready to run: its rules, its settings record and its tokenized samples (index order)."""

    spec: TaskSpec
    settings: TaskSettings
    samples: tuple[Sample, ...]

    def generation_settings(self, tokenizer: Tokenizer) -> GenerationSettings:
        """Decoding settings of this task, with `namm.plain_generation.padding_token_id` filling the padding."""
        return GenerationSettings(
            max_new_tokens=self.settings.max_new_tokens,
            stop_on_newline=self.settings.stop_on_newline,
            eos_token_ids=self.settings.eos_token_ids,
            newline_token_ids=self.settings.newline_token_ids,
            pad_token_id=padding_token_id(tokenizer, self.settings.eos_token_ids),
        )


@dataclass
class TaskRun:
    """Predictions and scores of some of a task's samples, with the settings that produced them."""

    settings: TaskSettings
    indices: list[int]
    predictions: list[str]
    sample_scores: list[float]  # in [0, 1]
    generations: list[Any]  # the generator's own results (e.g. the engine's retained ratios)
    lengths: list[int | None]

    @property
    def score(self) -> float:
        return task_score(self.sample_scores)

    def length_buckets(self) -> dict[str, float]:
        if any(length is None for length in self.lengths):
            raise ValueError(f"Task {self.settings.task!r} has no record lengths (only LongBench tasks do).")
        return length_buckets(self.sample_scores, self.lengths)

    def to_dict(self) -> dict:
        """JSON-ready: settings, task score and per-sample predictions/scores."""
        return {
            "settings": self.settings.to_dict(),
            "score": self.score,
            "samples": [
                {"index": i, "prediction": p, "score": s}
                for i, p, s in zip(self.indices, self.predictions, self.sample_scores)
            ],
        }


def run_task(
    task: PreparedTask,
    generate: Generator,
    tokenizer: Tokenizer,
    indices: Sequence[int] | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> TaskRun:
    """Generate for the chosen samples (all by default) in batches of `batch_size`, decode and score them."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    chosen = list(range(len(task.samples))) if indices is None else list(indices)
    bad = [i for i in chosen if not 0 <= i < len(task.samples)]
    if bad:
        raise IndexError(f"Task {task.spec.name!r} has samples 0..{len(task.samples) - 1}; got indices {bad}.")
    settings = task.generation_settings(tokenizer)
    run = TaskRun(task.settings, [], [], [], [], [])
    bar = tqdm(total=len(chosen), desc=task.spec.name, disable=not progress)
    for start in range(0, len(chosen), batch_size):
        batch = [task.samples[i] for i in chosen[start : start + batch_size]]
        results = generate([list(sample.prompt_ids) for sample in batch], settings)
        if len(results) != len(batch):
            raise RuntimeError(f"The generator returned {len(results)} results for {len(batch)} prompts.")
        for sample, result in zip(batch, results):
            prediction = tokenizer.decode(result.token_ids, skip_special_tokens=True)
            run.indices.append(sample.index)
            run.predictions.append(prediction)
            run.sample_scores.append(score_prediction(prediction, sample, task.spec, task.settings.code_sim_backend))
            run.generations.append(result)
            run.lengths.append(sample.length)
        bar.update(len(batch))
    bar.close()
    return run
