"""The training scorer: NAMM candidates run through the engine on sampled task prompts and scored by task metrics.

Every candidate of a generation sees the same prompts; each prompt is run once for the whole population
as batches (at most `evo.max_batch_rows` rows) whose rows carry different parameter vectors (same prompt,
so no padding). Full-cache references come from the on-disk reference cache, keyed on everything that
moves a score; training fills the missing ones once before generation 1 (tasks/references.py).

With `evo.signal=answer_likelihood` the training prompts are scored by teacher-forcing the gold answer
(tasks/training/answer_likelihood.py) against the full cache's likelihood of it, cached beside the task-score
references; validation always decodes and uses the task metric.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from namm.budget import Budget
from namm.engine import EngineConfig, GenerationResult, GenerationSettings, MemoryEngine
from namm.errors import ConfigError
from namm.evolution.distillation import DistillConfig, DistillFit, DistillTarget
from namm.evolution.scorer_protocol import (
    TRAIN_SPLIT,
    VALIDATION_SPLIT,
    CandidateScores,
    Objective,
    PromptId,
    PromptRecord,
    Signal,
    mean_in_order,
)
from namm.models import ModelConfig, check_model_config, load_model, max_context_without_weights
from namm.network.config import NAMMConfig
from namm.network.normalisation import check_statistics
from namm.network.parameters import ParameterLayout, keep_all_centre, param_count, parameter_layout
from namm.plain_generation import padding_token_id
from namm.policies import PolicyConfig, build_policy
from namm.policies.namm_policy import NAMMPolicy
from namm.population_batches import PopulationBatches
from namm.typed_config import typed_config
from tasks.generators import engine_generator
from tasks.preparation import check_prompt_lengths, prepare_tasks
from tasks.provenance import training_provenance
from tasks.references import (
    ReferenceCache,
    ReferenceContext,
    ReferenceScores,
    default_reference_dir,
    engine_generator_record,
    full_cache_scores,
)
from tasks.runner import PreparedTask
from tasks.task_config import TaskConfig, task_config
from tasks.task_data import check_task_data
from tasks.task_scores import score_prediction
from tasks.training.answer_likelihood import (
    likelihood_score,
    log_likelihood,
    mean_logprob,
    teacher_forced_generator_record,
)
from tasks.training.distillation_examples import check_distill_target, distil, distillation_prompts
from tasks.training.gold_answers import check_gold_answers, gold_continuation

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger(__name__)

REFERENCE_BATCH = 4  # prompts per full-cache batch (left-padded); batches are fixed, whoever computes them


@dataclass(frozen=True)
class FullCacheReference:
    """The full cache on one prompt: its task score and (answer_likelihood) the gold answer's likelihood, both
    in [0, 1] as the reference files hold them; None where it was known already and not recomputed."""

    score: float | None
    answer_likelihood: float | None = None


@dataclass(frozen=True, kw_only=True)
class TaskScorerConfig:
    """What the scorer reads of a run config, typed. Training builds it from Hydra's config; a script
    that runs without Hydra or omegaconf (scripts/device_check.py) builds it directly.

    The `evo` settings it reads have no defaults here: their defaults are stated once, in `EvoConfig`
    (namm/evolution/config.py), and a script that builds this directly says what it wants."""

    model: ModelConfig
    task: TaskConfig
    namm: NAMMConfig = field(default_factory=NAMMConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    prompts_per_task: int  # evo.prompts_per_task
    validation_prompts: int  # evo.validation_prompts
    seed: int
    max_batch_rows: int | None  # evo.max_batch_rows: candidate rows per engine batch (None: all); halved on OOM
    signal: Signal  # evo.signal: how training prompts are scored (validation: the task metric)

    def __post_init__(self) -> None:
        for name in ("prompts_per_task", "validation_prompts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1 (evo.{name} in a run config), got {getattr(self, name)}.")

    @classmethod
    def from_run_config(cls, cfg: DictConfig) -> TaskScorerConfig:
        """Validate the run config's `model`, `task`, `namm`, `engine`, `evo` and `seed` (no model is loaded);
        raises ConfigError."""
        from omegaconf import OmegaConf  # here: a TaskScorerConfig built directly needs no omegaconf

        return cls(
            model=typed_config(ModelConfig, cfg.model, "model"),
            task=task_config(cfg.task),
            namm=typed_config(
                NAMMConfig, OmegaConf.to_container(cfg.namm, resolve=True) if cfg.get("namm") else None, "namm"
            ),
            # resolved here: engine.schedule is `${schedule}`, a key of the run config's root
            engine=typed_config(
                EngineConfig, OmegaConf.to_container(cfg.engine, resolve=True) if cfg.get("engine") else None, "engine"
            ),
            prompts_per_task=int(cfg.evo.prompts_per_task),
            validation_prompts=int(cfg.evo.validation_prompts),
            seed=int(cfg.seed),
            max_batch_rows=cfg.evo.max_batch_rows,
            signal=Signal(_setting(cfg.evo.signal)),
        )


def _setting(value: Any) -> Any:
    """A run config's choice as its plain value: an Enum in the typed config, a str in a plain one."""
    return getattr(value, "value", value)


def check_objective_budget(objective: Objective, budget: Budget | None) -> None:
    """`budget` trains under a hard NAMM budget and the other objectives without one, so the recorded objective
    says what the fitness rewarded."""
    if objective == Objective.budget and budget is None:
        raise ConfigError(
            "evo.objective=budget trains under a hard per-KV-head budget: set namm.budget_ratio (e.g. 0.5) "
            "or namm.budget_tokens"
        )
    if objective != Objective.budget and budget is not None:
        raise ConfigError(
            f"namm.budget_ratio/budget_tokens set a hard budget, so the retained ratio is fixed: use "
            f"evo.objective=budget instead of {objective.value}, or drop the budget"
        )


def check_split_sizes(
    sample_counts: dict[str, int], validation_prompts: int, draw: int, draw_key: str = "evo.prompts_per_task"
) -> None:
    """Every task needs its validation prompts plus a training pool of at least one draw of `draw` prompts (each
    generation's, or the distilled start's): a smaller pool would silently shrink the draw to the whole pool, so
    each generation would score the same few prompts and the search would fit them instead of the task."""
    pools = {name: count - validation_prompts for name, count in sample_counts.items()}
    short = {name: pool for name, pool in pools.items() if pool < draw}
    if short:
        raise ConfigError(
            f"after {validation_prompts} validation prompts (evo.validation_prompts) the training pools of tasks "
            f"{short} hold fewer prompts than the {draw} that {draw_key} draws from them: raise task.num_samples "
            f"or lower evo.validation_prompts or {draw_key}. Each generation draws anew from the pool, so two "
            "generations share about prompts_per_task^2 / pool prompts: for synthetic tasks a pool of many "
            "times prompts_per_task x generations keeps the draws nearly fresh."
        )


@dataclass(frozen=True)
class Splits:
    """Disjoint sample indices per task: a fixed validation set and the training pool."""

    train: dict[str, list[int]]
    validation: dict[str, list[int]]

    @classmethod
    def of(cls, tasks: list[PreparedTask], validation_prompts: int, prompts_per_task: int, seed: int) -> Splits:
        check_split_sizes({task.spec.name: len(task.samples) for task in tasks}, validation_prompts, prompts_per_task)
        train, validation = {}, {}
        for task in tasks:
            order = list(range(len(task.samples)))
            random.Random(f"{seed}-{task.spec.name}").shuffle(order)
            validation[task.spec.name] = sorted(order[:validation_prompts])
            train[task.spec.name] = order[validation_prompts:]
        return cls(train, validation)


class TaskScorer:
    """A `CandidateScorer` over the configured tasks, and its `ScorerFactory` (`scorer._target_` of
    conf/train.yaml; see namm.evolution.scorer_protocol): the candidates are NAMM parameter vectors."""

    #: earlier spellings of this `_target_`: the three-function scorer node (runs saved before the scorer was one
    #: class) and this class's path before the training scorer moved to tasks/training/
    former_targets: ClassVar[tuple[str, ...]] = (
        "tasks.evolution_scorer.build_scorer",
        "tasks.evolution_scorer.TaskScorer",
    )

    # -- ScorerFactory: no model is loaded ----------------------------------------------------------
    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        """The model, engine, task and NAMM settings, the prompt lengths and the task data (so a missing LongBench
        file or an offline hub fails in seconds, with the fix)."""
        config = TaskScorerConfig.from_run_config(cfg)
        check_model_config(config.model)
        check_prompt_lengths(config.task, config.model.name, max_context_without_weights(config.model))
        config.namm.check_update_interval(config.engine.update_interval)
        counts = check_task_data(config.task)
        check_split_sizes(counts, config.validation_prompts, config.prompts_per_task)
        check_objective_budget(Objective(_setting(cfg.evo.objective)), config.namm.budget)
        if _setting(cfg.evo.init) == "distill":
            check_distill_target(DistillTarget(_setting(cfg.evo.distill.target)), config.task, config.namm)
            distill_prompts = int(_setting(cfg.evo.distill.prompts_per_task))
            check_split_sizes(counts, config.validation_prompts, distill_prompts, "evo.distill.prompts_per_task")
        if config.signal == Signal.answer_likelihood:
            check_gold_answers(config.task, "evo.signal=answer_likelihood", "train on it with evo.signal=task_metric")

    @classmethod
    def solution_length(cls, cfg: DictConfig) -> int:
        """The NAMM parameter vector's length for the `namm` group."""
        return param_count(TaskScorerConfig.from_run_config(cfg).namm)

    @classmethod
    def parameter_layout(cls, cfg: DictConfig) -> ParameterLayout:
        """The NAMM's named weight blocks (what `evo.evolve` chooses from)."""
        return parameter_layout(TaskScorerConfig.from_run_config(cfg).namm)

    @classmethod
    def initial_centre(cls, cfg: DictConfig, init: str, margin: float) -> torch.Tensor:
        """`zeros`, or `keep_all`: the NAMM's read-out bias at threshold + `margin`, so at the centre every token
        scores that margin above the threshold (nothing is evicted) and the first draws explore around it."""
        namm = TaskScorerConfig.from_run_config(cfg).namm
        return torch.zeros(param_count(namm)) if init == "zeros" else keep_all_centre(namm, margin)

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
        self.splits = Splits.of(self.tasks, config.validation_prompts, config.prompts_per_task, self.seed)
        context = ReferenceContext.of(self.loaded, engine_generator_record(config.engine))
        self.reference_cache = ReferenceCache(default_reference_dir(), context)
        self.references = {task.spec.name: self.reference_cache.load(task.settings) for task in self.tasks}
        self.signal = config.signal
        likelihood_context = ReferenceContext.of(self.loaded, teacher_forced_generator_record(config.engine))
        self.likelihood_cache = ReferenceCache(default_reference_dir(), likelihood_context)
        self.answer_likelihoods = {  # the full cache's likelihood of each gold answer (answer_likelihood only)
            task.spec.name: self.likelihood_cache.load(task.settings) if self.uses_likelihood else ReferenceScores()
            for task in self.tasks
        }
        self.population_batches = PopulationBatches(config.max_batch_rows)
        self.calibrated = not self.policy.namm.config.normalise

    # -- CandidateScorer ------------------------------------------------------------------------
    def prompts(self, split: str, generation: int) -> list[PromptId]:
        return [(task.spec.name, index) for task in self.tasks for index in self.indices(task, split, generation)]

    def score(
        self, parameters: torch.Tensor, split: str, generation: int, prompts: list[PromptId] | None = None
    ) -> CandidateScores:
        self._calibrate()
        wanted = self.prompts(split, generation) if prompts is None else list(prompts)
        missing = self._missing_references(wanted + self.prompts(VALIDATION_SPLIT, 0))
        if missing:  # a scorer used on its own; training computes every reference before generation 1
            self.add_references(self.compute_references(missing), save=True)
        likelihood = split == TRAIN_SPLIT and self.uses_likelihood
        records = []
        for name, index in wanted:
            task = self.task_by_name[name]
            if likelihood:
                results = self._teacher_force_population(task, index, parameters)
                full = log_likelihood(self.answer_likelihoods[name].get(name, index))
                scores = [likelihood_score(mean_logprob(result.token_logprobs), full) for result in results]
                reference = pool_reference = 100.0  # the full cache against itself
            else:
                results, sample_scores = self._run_population(task, index, parameters)
                scores = [100.0 * score for score in sample_scores]
                reference = 100.0 * self.references[name].get(name, index)
                pool_reference = self._validation_reference(name)
            records.append(
                PromptRecord(
                    task=name,
                    index=index,
                    scores=scores,
                    reference=reference,
                    pool_reference=pool_reference,
                    retained_ratio=[result.retained_ratio for result in results],
                    retained_ratio_per_layer=[list(result.retained_ratio_per_layer) for result in results],
                    tokens=sum(result.tokens_seen + 1 for result in results),
                )
            )
        return CandidateScores.from_prompts(records)

    @property
    def uses_likelihood(self) -> bool:
        return self.signal == Signal.answer_likelihood

    def reference_batches(self, generations: list[int]) -> list[list[PromptId]]:
        needed = {prompt for generation in generations for prompt in self.prompts(TRAIN_SPLIT, generation)}
        needed.update(self.prompts(VALIDATION_SPLIT, 0))
        return self._batched(self._missing_references(sorted(needed)))

    def _missing_references(self, prompts: list[PromptId]) -> list[PromptId]:
        """Prompts without a full-cache task score, or (answer_likelihood) without the gold answer's likelihood."""
        return [
            (name, index)
            for name, index in prompts
            if self.references[name].get(name, index) is None
            or (self.uses_likelihood and self.answer_likelihoods[name].get(name, index) is None)
        ]

    def _batched(self, prompts: list[PromptId]) -> list[list[PromptId]]:
        """Per task, in sorted index order, REFERENCE_BATCH prompts at a time: the one batching of references."""
        batches = []
        for task in self.tasks:
            indices = sorted(index for name, index in prompts if name == task.spec.name)
            batches += [
                [(task.spec.name, index) for index in indices[start : start + REFERENCE_BATCH]]
                for start in range(0, len(indices), REFERENCE_BATCH)
            ]
        return batches

    def compute_references(self, prompts: list[PromptId]) -> dict[PromptId, FullCacheReference]:
        """The missing task scores of each batch, decoded together; the missing answer log-probs, one prompt
        at a time (so no batch composition moves them)."""
        full_cache = engine_generator(self.full_engine)
        computed: dict[PromptId, FullCacheReference] = {}
        for batch in self._batched(prompts):
            name = batch[0][0]
            task = self.task_by_name[name]
            indices = [index for _, index in batch if self.references[name].get(name, index) is None]
            scores = (
                full_cache_scores(task, full_cache, self.loaded.tokenizer, indices, len(indices)) if indices else {}
            )
            for _, index in batch:
                likelihood = None
                if self.uses_likelihood and self.answer_likelihoods[name].get(name, index) is None:
                    forced = self._teacher_force(self.full_engine, task, index, 1)[0]
                    likelihood = math.exp(mean_logprob(forced.token_logprobs))
                computed[(name, index)] = FullCacheReference(scores.get(index), likelihood)
        return computed

    def add_references(self, references: dict[PromptId, FullCacheReference], save: bool) -> None:
        scores, logprobs = set(), set()
        for (name, index), reference in references.items():
            if reference.score is not None:
                self.references[name].put(name, index, reference.score)
                scores.add(name)
            if reference.answer_likelihood is not None:
                self.answer_likelihoods[name].put(name, index, reference.answer_likelihood)
                logprobs.add(name)
        if save:
            for name in sorted(scores):
                self.reference_cache.save(self.task_by_name[name].settings, self.references[name])
            for name in sorted(logprobs):
                self.likelihood_cache.save(self.task_by_name[name].settings, self.answer_likelihoods[name])

    def full_cache_accuracy(self, prompts: list[PromptId]) -> dict[str, tuple[float, int]]:
        """task -> (the full cache's mean task score in [0, 1], prompts) over those of `prompts` it has."""
        accuracy = {}
        for task in self.tasks:
            name = task.spec.name
            known = [self.references[name].get(name, i) for n, i in sorted(prompts) if n == name]
            known = [score for score in known if score is not None]
            if known:
                accuracy[name] = (mean_in_order(known), len(known))
        return accuracy

    def prompt_provenance(self) -> dict[str, Any]:
        """Every prompt a generation may draw (the training pool) and the validation set, for checkpoints."""
        return training_provenance(
            self.tasks, {TRAIN_SPLIT: self.splits.train, VALIDATION_SPLIT: self.splits.validation}
        )

    def normalisation_state(self) -> dict[str, Any]:
        self._calibrate()
        return self.policy.namm.normaliser.state_dict()

    def load_normalisation_state(self, state: dict[str, Any]) -> None:
        check_statistics(state, self.policy.namm.config.bins)
        if state:
            self.policy.namm.normaliser.load_state_dict(dict(state))
            self.calibrated = True

    def distilled_centre(self, settings: DistillConfig) -> DistillFit:
        """evo.init=distill: a start fitted on training prompts to rank tokens like `settings.target`."""
        self._calibrate()
        prompts = distillation_prompts(self.splits.train, settings, self.seed)
        tokenizer = self.loaded.tokenizer
        return distil(
            self.policy,
            self.loaded.model,
            self.engine.config,
            self.tasks,
            prompts,
            tokenizer,
            settings,
            padding_token_id(tokenizer),
        )

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
        return sorted(draw.sample(pool, self.prompts_per_task))

    def _generation_settings(self, task: PreparedTask) -> GenerationSettings:
        return task.generation_settings(self.loaded.tokenizer)

    def _run_population(self, task: PreparedTask, index: int, parameters: torch.Tensor):
        """One prompt, every candidate a batch row with its own parameter vector (micro-batched)."""
        sample = task.samples[index]
        settings = self._generation_settings(task)

        def run_rows(start: int, stop: int) -> list[GenerationResult]:
            prompts = [list(sample.prompt_ids)] * (stop - start)
            return self.engine.generate(prompts, settings, row_parameters=parameters[start:stop])

        results = self.population_batches.run(parameters.shape[0], run_rows)
        run_scores = []
        for result in results:
            prediction = self.loaded.tokenizer.decode(result.token_ids, skip_special_tokens=True)
            run_scores.append(score_prediction(prediction, sample, task.spec, task.settings.code_sim_backend))
        return results, run_scores

    def _teacher_force(self, engine: MemoryEngine, task: PreparedTask, index: int, rows: int, parameters=None):
        """The gold answer teacher-forced after prompt `index`, in `rows` copies of the prompt."""
        sample = task.samples[index]
        continuation = gold_continuation(sample, task.spec, self.loaded.tokenizer)
        return engine.teacher_force([list(sample.prompt_ids)] * rows, continuation, row_parameters=parameters)

    def _teacher_force_population(self, task: PreparedTask, index: int, parameters: torch.Tensor):
        """Every candidate's teacher-forced answer on one prompt, each candidate alone.

        The log-probs are floats, not a decoded answer, so their last bits count, and CPU kernels round
        differently for another number of rows (measured: 2 vs 5 rows change them). One row per forward gives
        every candidate the same shapes however the population is split (actors, `evo.max_batch_rows`), so
        its score cannot depend on the split. On CPU this costs little: a prefill chunk fills the matrix
        multiplies with one row."""
        return [
            self._teacher_force(self.engine, task, index, 1, parameters[row : row + 1])[0]
            for row in range(parameters.shape[0])
        ]

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
