"""The training scorer: NAMM candidates run through the engine on sampled task prompts and scored by task metrics.

Every candidate of a generation sees the same prompts; each prompt is run once for the whole population
as batches (at most `evo.max_batch_rows` rows) whose rows carry different parameter vectors (same prompt,
so no padding). Full-cache references come from the on-disk reference cache, keyed on everything that
moves a score; training fills the missing ones once before generation 1 (tasks/references.py).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from namm.engine import EngineConfig, GenerationResult, GenerationSettings, MemoryEngine
from namm.errors import ConfigError
from namm.evolution.scoring import (
    TRAIN_SPLIT,
    VALIDATION_SPLIT,
    CandidateScores,
    PromptId,
    PromptRecord,
    mean_in_order,
)
from namm.models import ModelConfig, check_model_config, load_model
from namm.network.config import NAMMConfig
from namm.policies import PolicyConfig, build_policy
from namm.policies.namm_policy import NAMMPolicy
from namm.row_batches import RowBatches
from namm.typed_config import typed_config
from tasks.config import TaskConfig, task_config
from tasks.generators import engine_generator
from tasks.preparation import prepare_tasks
from tasks.references import (
    ReferenceCache,
    ReferenceContext,
    default_reference_dir,
    engine_generator_record,
    full_cache_scores,
)
from tasks.runner import PreparedTask
from tasks.scoring import score_prediction
from tasks.task_data import check_task_data

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger(__name__)

REFERENCE_BATCH = 4  # prompts per full-cache batch (left-padded); batches are fixed, whoever computes them


@dataclass(frozen=True)
class TaskScorerConfig:
    """What the scorer reads of a run config, typed. Training builds it from Hydra's config; a script
    that runs without Hydra or omegaconf (scripts/device_check.py) builds it directly."""

    model: ModelConfig
    task: TaskConfig
    namm: NAMMConfig = field(default_factory=NAMMConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    prompts_per_task: int = 2
    validation_prompts: int = 2
    seed: int = 0
    max_batch_rows: int | None = None  # candidate rows per engine batch (None: all); halved on out-of-memory

    def __post_init__(self) -> None:
        for name in ("prompts_per_task", "validation_prompts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1 (evo.{name} in a run config), got {getattr(self, name)}.")

    @classmethod
    def from_run_config(cls, cfg: DictConfig) -> TaskScorerConfig:
        """Validate the run config's `model`, `task`, `namm`, `engine`, `evo` and `seed` (no model is loaded);
        raises ConfigError."""
        from omegaconf import OmegaConf  # here: a TaskScorerConfig built directly needs no omegaconf

        try:
            namm = NAMMConfig.from_dict(OmegaConf.to_container(cfg.namm, resolve=True) if cfg.get("namm") else {})
        except ValueError as error:
            raise ConfigError(f"namm: {error}") from error
        return cls(
            model=typed_config(ModelConfig, cfg.model, "model"),
            task=task_config(cfg.task),
            namm=namm,
            engine=typed_config(EngineConfig, cfg.get("engine"), "engine"),
            prompts_per_task=int(cfg.evo.prompts_per_task),
            validation_prompts=int(cfg.evo.validation_prompts),
            seed=int(cfg.seed),
            max_batch_rows=cfg.evo.max_batch_rows,
        )


def check_inputs(cfg: DictConfig) -> None:
    """`scorer.check_target`: the model, engine, task and NAMM settings and the task data, checked before
    any model loads (so a missing LongBench file or an offline hub fails in seconds, with the fix)."""
    config = TaskScorerConfig.from_run_config(cfg)
    check_model_config(config.model)
    config.namm.check_update_interval(config.engine.update_interval)
    counts = check_task_data(config.task)
    check_split_sizes(counts, config.validation_prompts)


def check_split_sizes(sample_counts: dict[str, int], validation_prompts: int) -> None:
    """Every task needs its validation prompts plus at least one training prompt."""
    short = {name: count for name, count in sample_counts.items() if count <= validation_prompts}
    if short:
        raise ConfigError(
            f"tasks {short} have too few samples for {validation_prompts} validation prompts plus a "
            "training pool: raise task.num_samples or lower evo.validation_prompts."
        )


@dataclass(frozen=True)
class Splits:
    """Disjoint sample indices per task: a fixed validation set and the training pool."""

    train: dict[str, list[int]]
    validation: dict[str, list[int]]

    @classmethod
    def of(cls, tasks: list[PreparedTask], validation_prompts: int, seed: int) -> Splits:
        check_split_sizes({task.spec.name: len(task.samples) for task in tasks}, validation_prompts)
        train, validation = {}, {}
        for task in tasks:
            order = list(range(len(task.samples)))
            random.Random(f"{seed}-{task.spec.name}").shuffle(order)
            validation[task.spec.name] = sorted(order[:validation_prompts])
            train[task.spec.name] = order[validation_prompts:]
        return cls(train, validation)


class TaskScorer:
    """A `CandidateScorer` over the configured tasks (see namm.evolution.scoring)."""

    def __init__(self, cfg: DictConfig | TaskScorerConfig) -> None:
        # every setting is validated before the model loads
        config = cfg if isinstance(cfg, TaskScorerConfig) else TaskScorerConfig.from_run_config(cfg)
        self.loaded = load_model(config.model)
        self.tasks = prepare_tasks(config.task, self.loaded)
        self.task_by_name = {task.spec.name: task for task in self.tasks}
        self.policy = NAMMPolicy(config.namm)
        self.param_count = self.policy.param_count
        self.engine = MemoryEngine(self.loaded.model, self.policy, config.engine)
        self.full_engine = MemoryEngine(self.loaded.model, build_policy(PolicyConfig(name="full")), config.engine)
        self.prompts_per_task = config.prompts_per_task
        self.seed = config.seed
        self.splits = Splits.of(self.tasks, config.validation_prompts, self.seed)
        context = ReferenceContext.of(self.loaded, engine_generator_record(config.engine))
        self.reference_cache = ReferenceCache(default_reference_dir(), context)
        self.references = {task.spec.name: self.reference_cache.load(task.settings) for task in self.tasks}
        self.row_batches = RowBatches(config.max_batch_rows)
        self.calibrated = not self.policy.namm.config.normalise

    # -- CandidateScorer ------------------------------------------------------------------------
    def prompts(self, split: str, generation: int) -> list[PromptId]:
        return [(task.spec.name, index) for task in self.tasks for index in self.indices(task, split, generation)]

    def score(
        self, parameters: torch.Tensor, split: str, generation: int, prompts: list[PromptId] | None = None
    ) -> CandidateScores:
        self._calibrate()
        wanted = self.prompts(split, generation) if prompts is None else list(prompts)
        missing = self.missing_references(wanted + self.prompts(VALIDATION_SPLIT, 0))
        if missing:  # a scorer used on its own; training computes every reference before generation 1
            self.add_references(self.compute_references(missing), save=True)
        records = []
        for name, index in wanted:
            task = self.task_by_name[name]
            results, sample_scores = self._run_population(task, index, parameters)
            records.append(
                PromptRecord(
                    task=name,
                    index=index,
                    scores=[100.0 * score for score in sample_scores],
                    reference=100.0 * self.references[name].get(name, index),
                    pool_reference=self._validation_reference(name),
                    retained_ratio=[result.retained_ratio for result in results],
                    retained_ratio_per_layer=[list(result.retained_ratio_per_layer) for result in results],
                    tokens=sum(result.tokens_seen + 1 for result in results),
                )
            )
        return CandidateScores.from_prompts(records)

    def missing_references(self, prompts: list[PromptId]) -> list[PromptId]:
        return [(name, index) for name, index in prompts if self.references[name].get(name, index) is None]

    def reference_batches(self, prompts: list[PromptId]) -> list[list[PromptId]]:
        batches = []
        for task in self.tasks:
            indices = sorted(index for name, index in prompts if name == task.spec.name)
            batches += [
                [(task.spec.name, index) for index in indices[start : start + REFERENCE_BATCH]]
                for start in range(0, len(indices), REFERENCE_BATCH)
            ]
        return batches

    def compute_references(self, prompts: list[PromptId]) -> dict[PromptId, float]:
        full_cache = engine_generator(self.full_engine)
        computed: dict[PromptId, float] = {}
        for batch in self.reference_batches(prompts):
            name = batch[0][0]
            indices = [index for _, index in batch]
            scores = full_cache_scores(
                self.task_by_name[name], full_cache, self.loaded.tokenizer, indices, len(indices)
            )
            computed.update({(name, index): score for index, score in scores.items()})
        return computed

    def add_references(self, references: dict[PromptId, float], save: bool) -> None:
        touched = set()
        for (name, index), score in references.items():
            self.references[name].put(name, index, score)
            touched.add(name)
        if save:
            for name in sorted(touched):
                self.reference_cache.save(self.task_by_name[name].settings, self.references[name])

    def normalisation_state(self) -> dict[str, Any]:
        self._calibrate()
        return self.policy.namm.normaliser.state_dict()

    def load_normalisation_state(self, state: dict[str, Any]) -> None:
        if state:
            self.policy.namm.normaliser.load_state_dict(dict(state))
            self.calibrated = True

    # -- helpers ----------------------------------------------------------------------------------
    def _validation_reference(self, name: str) -> float:
        """The task's full-cache mean (0-100) over its fixed validation prompts, summed in index order."""
        return 100.0 * mean_in_order([self.references[name].get(name, index) for index in self.splits.validation[name]])

    def indices(self, task: PreparedTask, split: str, generation: int) -> list[int]:
        """Validation: the fixed held-out set. Train: a fresh seeded draw per generation."""
        if split == VALIDATION_SPLIT:
            return self.splits.validation[task.spec.name]
        if split != TRAIN_SPLIT:
            raise ValueError(f"unknown split {split!r}; expected {TRAIN_SPLIT!r} or {VALIDATION_SPLIT!r}.")
        pool = self.splits.train[task.spec.name]
        draw = random.Random(f"{self.seed}-{task.spec.name}-{generation}")
        return sorted(draw.sample(pool, min(self.prompts_per_task, len(pool))))

    def _generation_settings(self, task: PreparedTask) -> GenerationSettings:
        return task.generation_settings(self.loaded.tokenizer)

    def _run_population(self, task: PreparedTask, index: int, parameters: torch.Tensor):
        """One prompt, every candidate a batch row with its own parameter vector (micro-batched)."""
        sample = task.samples[index]
        settings = self._generation_settings(task)

        def run_rows(start: int, stop: int) -> list[GenerationResult]:
            prompts = [list(sample.prompt_ids)] * (stop - start)
            return self.engine.generate(prompts, settings, row_parameters=parameters[start:stop])

        results = self.row_batches.run(parameters.shape[0], run_rows)
        run_scores = []
        for result in results:
            prediction = self.loaded.tokenizer.decode(result.token_ids, skip_special_tokens=True)
            run_scores.append(score_prediction(prediction, sample, task.spec, task.settings.code_sim_backend))
        return results, run_scores

    def _calibrate(self) -> None:
        """Collect the frozen normalisation statistics once, with the all-keep NAMM on training prompts."""
        if self.calibrated:
            return
        log.info("calibrating NAMM feature normalisation on the training prompts (all-keep parameters)")
        with self.policy.namm.calibration():
            for task in self.tasks:
                for index in self.indices(task, TRAIN_SPLIT, generation=-1):
                    prompt = list(task.samples[index].prompt_ids)
                    self.engine.generate([prompt], self._generation_settings(task))
        self.calibrated = True


def build_scorer(cfg: DictConfig) -> TaskScorer:
    """`scorer._target_` of conf/train.yaml: loads the model and prepares the tasks."""
    return TaskScorer(cfg)
