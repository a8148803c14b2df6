"""The training scorer: NAMM candidates run through the engine on sampled task prompts and scored by task metrics.

Every candidate of a generation sees the same prompts; each prompt is run once for the whole population
as one batch whose rows carry different parameter vectors (same prompt, so no padding). Full-cache
references come from the on-disk reference cache, filled on first use with the same pipeline.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from namm.engine import EngineConfig, GenerationSettings, MemoryEngine
from namm.evolution.scoring import TRAIN_SPLIT, VALIDATION_SPLIT, CandidateScores
from namm.models import ModelConfig, load_model
from namm.network.config import NAMMConfig
from namm.policies import PolicyConfig, build_policy
from namm.policies.namm_policy import NAMMPolicy
from tasks.config import TaskConfig, task_config
from tasks.generators import engine_generator, generation_settings
from tasks.preparation import prepare_tasks
from tasks.references import ReferenceCache, default_reference_dir, fill_references
from tasks.runner import PreparedTask
from tasks.scoring import score_prediction

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger(__name__)


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

    def __post_init__(self) -> None:
        for name in ("prompts_per_task", "validation_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (evo.{name} in a run config), got {getattr(self, name)}.")

    @classmethod
    def from_run_config(cls, cfg: DictConfig) -> TaskScorerConfig:
        """Validate the run config's `model`, `task`, `namm`, `engine`, `evo` and `seed` (no model is loaded)."""
        from omegaconf import OmegaConf  # here: a TaskScorerConfig built directly needs no omegaconf

        def plain(key: str) -> dict:  # an optional node as a dict (defaults when absent)
            return OmegaConf.to_container(cfg[key], resolve=True) if cfg.get(key) is not None else {}

        return cls(
            model=OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), cfg.model)),
            task=task_config(cfg.task),
            namm=NAMMConfig.from_dict(plain("namm")),
            engine=EngineConfig(**plain("engine")),
            prompts_per_task=int(cfg.evo.prompts_per_task),
            validation_prompts=int(cfg.evo.validation_prompts),
            seed=int(cfg.seed),
        )


@dataclass(frozen=True)
class Splits:
    """Disjoint sample indices per task: a fixed validation set and the training pool."""

    train: dict[str, list[int]]
    validation: dict[str, list[int]]

    @classmethod
    def of(cls, tasks: list[PreparedTask], validation_prompts: int, seed: int) -> Splits:
        train, validation = {}, {}
        for task in tasks:
            order = list(range(len(task.samples)))
            random.Random(f"{seed}-{task.spec.name}").shuffle(order)
            if len(order) <= validation_prompts:
                raise ValueError(
                    f"task {task.spec.name!r} has {len(order)} samples, too few for {validation_prompts} validation "
                    "prompts plus a training pool: raise task.num_samples or lower evo.validation_prompts."
                )
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
        self.policy = NAMMPolicy(config.namm)
        self.param_count = self.policy.param_count
        self.engine = MemoryEngine(self.loaded.model, self.policy, config.engine)
        self.full_engine = MemoryEngine(self.loaded.model, build_policy(PolicyConfig(name="full")), config.engine)
        self.prompts_per_task = config.prompts_per_task
        self.seed = config.seed
        self.splits = Splits.of(self.tasks, config.validation_prompts, self.seed)
        self.references = ReferenceCache(default_reference_dir())
        self.calibrated = not self.policy.namm.config.normalise

    # -- CandidateScorer ------------------------------------------------------------------------
    def score(self, parameters: torch.Tensor, split: str, generation: int) -> CandidateScores:
        self._calibrate()
        task_scores, reference_scores = {}, {}
        retained, per_layer, tokens = [], [], 0
        for task in self.tasks:
            indices = self.indices(task, split, generation)
            reference = self._references(task, indices)
            reference_scores[task.spec.name] = reference.task_score(task.spec.name, indices)
            scores = torch.zeros(parameters.shape[0], dtype=torch.float64)
            for index in indices:
                results, sample_scores = self._run_population(task, index, parameters)
                scores += torch.tensor(sample_scores, dtype=torch.float64)
                retained.append(torch.tensor([r.retained_ratio for r in results]))
                per_layer.append(torch.tensor([r.retained_ratio_per_layer for r in results]))
                tokens += sum(r.tokens_seen + 1 for r in results)
            task_scores[task.spec.name] = (100.0 * scores / len(indices)).float()
        return CandidateScores(
            task_scores=task_scores,
            reference_scores=reference_scores,
            retained_ratio=torch.stack(retained).mean(dim=0).float(),
            retained_ratio_per_layer=torch.stack(per_layer).mean(dim=0).float(),
            tokens_processed=tokens,
        )

    def normalisation_state(self) -> dict[str, Any]:
        self._calibrate()
        return self.policy.namm.normalizer.state_dict()

    def load_normalisation_state(self, state: dict[str, Any]) -> None:
        if state:
            self.policy.namm.normalizer.load_state_dict(dict(state))
            self.calibrated = True

    # -- helpers ----------------------------------------------------------------------------------
    def indices(self, task: PreparedTask, split: str, generation: int) -> list[int]:
        """Validation: the fixed held-out set. Train: a fresh seeded draw per generation."""
        if split == VALIDATION_SPLIT:
            return self.splits.validation[task.spec.name]
        if split != TRAIN_SPLIT:
            raise ValueError(f"unknown split {split!r}; expected {TRAIN_SPLIT!r} or {VALIDATION_SPLIT!r}.")
        pool = self.splits.train[task.spec.name]
        draw = random.Random(f"{self.seed}-{task.spec.name}-{generation}")
        return sorted(draw.sample(pool, min(self.prompts_per_task, len(pool))))

    def _decode_settings(self, task: PreparedTask) -> GenerationSettings:
        return generation_settings(task.decode_settings(self.loaded.tokenizer.pad_token_id or 0))

    def _run_population(self, task: PreparedTask, index: int, parameters: torch.Tensor):
        """One prompt, every candidate as a batch row with its own parameter vector."""
        sample = task.samples[index]
        prompts = [list(sample.prompt_ids)] * parameters.shape[0]
        results = self.engine.generate(prompts, self._decode_settings(task), row_parameters=parameters)
        run_scores = []
        for result in results:
            prediction = self.loaded.tokenizer.decode(result.token_ids, skip_special_tokens=True)
            run_scores.append(score_prediction(prediction, sample, task.spec, task.settings.code_sim_backend))
        return results, run_scores

    def _references(self, task: PreparedTask, indices: list[int]):
        full_cache = engine_generator(self.full_engine)
        return fill_references(
            task, full_cache, self.loaded.tokenizer, self.references, indices, batch_size=4, progress=False
        )

    def _calibrate(self) -> None:
        """Collect the frozen normalisation statistics once, with the all-keep NAMM on training prompts."""
        if self.calibrated:
            return
        log.info("calibrating NAMM feature normalisation on the training prompts (all-keep parameters)")
        with self.policy.namm.calibration():
            for task in self.tasks:
                for index in self.indices(task, TRAIN_SPLIT, generation=-1):
                    prompt = list(task.samples[index].prompt_ids)
                    self.engine.generate([prompt], self._decode_settings(task))
        self.calibrated = True


def build_scorer(cfg: DictConfig) -> TaskScorer:
    """`scorer._target_` of conf/train.yaml: loads the model and prepares the tasks."""
    return TaskScorer(cfg)
