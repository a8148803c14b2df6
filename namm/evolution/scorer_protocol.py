"""The seam between evolution and the model: a scorer turns parameter vectors into task scores.

Evolution never touches the model, and knows nothing of what the parameters mean. `scorer._target_` names a
`ScorerFactory` (the scorer's class): it checks the settings, gives the vector length and the initial centre
without a model, and builds a `CandidateScorer` once in every process that scores (the main process, or each
Ray actor), so the model is loaded where it is used and never pickled.
"""

from __future__ import annotations

import importlib
import logging
import time
import traceback
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from namm.errors import ConfigError

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from namm.evolution.distillation import DistillConfig, DistillFit
    from namm.network.parameters import ParameterLayout

log = logging.getLogger(__name__)

TRAIN_SPLIT = "train"
VALIDATION_SPLIT = "validation"


PromptId = tuple[str, int]  # (task name, sample index)


class Signal(Enum):
    """What a training candidate's task score is (`evo.signal`; validation always uses the task metric)."""

    task_metric = "task_metric"  # decode greedily and score the answer with the task's metric (0/1 on retrieval)
    answer_likelihood = "answer_likelihood"  # teacher-force the gold answer: its likelihood over the full cache's


class Objective(Enum):
    """What a candidate's fitness rewards (`evo.objective`, namm.evolution.fitness); here beside `Signal` because a
    scorer checks that its candidates fit it (the task scorer: `budget` needs a NAMM budget, the others none)."""

    score = "score"  # mean normalised task score (the reference's objective)
    budget = "budget"  # the same score, under the hard per-KV-head budget of `namm.budget_ratio`/`budget_tokens`
    memory_penalty = "memory_penalty"  # mean normalised score - evo.memory_weight x retained ratio


@dataclass
class PromptRecord:
    """One prompt's outcome for every candidate of a batch: the unit all scores are aggregated from."""

    task: str
    index: int
    scores: list[float]  # per candidate, in the task's units (LongBench: 0-100)
    reference: float  # full-cache score of this prompt, same units
    pool_reference: float  # the task's full-cache mean over its fixed validation prompts (fitness floors on it)
    retained_ratio: list[float]  # per candidate
    retained_ratio_per_layer: list[list[float]]  # per candidate, per layer
    tokens: int  # prompt + generated tokens over all candidates


def _stack_prompt_records(parts: list[CandidateScores]) -> list[PromptRecord] | None:
    """The per-prompt records of candidate batches scored on the same prompts, as if scored as one batch. None
    when a part has none or the parts' prompts differ: the records only feed metrics.jsonl, so a scorer whose
    pieces drew differently loses them, not the generation."""
    if any(part.prompts is None for part in parts):
        return None
    keys = [[(record.task, record.index) for record in part.prompts] for part in parts]
    if any(key != keys[0] for key in keys):
        log.warning("the population's pieces were scored on different prompts; per-prompt scores are not recorded")
        return None
    stacked = []
    for records in zip(*(part.prompts for part in parts), strict=True):
        stacked.append(
            replace(
                records[0],
                scores=[score for record in records for score in record.scores],
                retained_ratio=[ratio for record in records for ratio in record.retained_ratio],
                retained_ratio_per_layer=[row for record in records for row in record.retained_ratio_per_layer],
                tokens=sum(record.tokens for record in records),
            )
        )
    return stacked


def mean_in_order(values: list[float]) -> float:
    """Sequential float64 sum in the given order, one division: identical wherever it runs."""
    total = 0.0
    for value in values:
        total += value
    return total / len(values)


@dataclass
class CandidateScores:
    """Scores of P candidates on one generation's prompts (every candidate saw the same prompts).

    Scores are in the task's own units (LongBench: 0-100); `evo.reference_floor` uses the same units.
    Every figure is float64 and per candidate, so splitting a population over processes or batches cannot
    change a candidate's numbers.
    """

    task_scores: dict[str, torch.Tensor]  # task -> (P,) mean metric on this generation's prompts
    reference_scores: dict[str, float]  # task -> full-cache mean on the same prompts
    pool_references: dict[str, float]  # task -> full-cache mean on the fixed validation prompts
    retained_ratio: torch.Tensor  # (P,) retained / seen tokens, averaged over prompts, layers and heads
    retained_ratio_per_layer: torch.Tensor  # (P, L)
    tokens_processed: int  # prompt + generated tokens over all candidates and prompts
    prompts: list[PromptRecord] | None = None  # the per-prompt records, when built from them

    @property
    def num_candidates(self) -> int:
        return int(self.retained_ratio.shape[0])

    @classmethod
    def from_prompts(cls, records: list[PromptRecord]) -> CandidateScores:
        """Means over prompts, per candidate, summed in float64 in (task, index) order: the one order,
        however the prompts were split over processes."""
        if not records:
            raise ValueError("no prompt was scored; a scorer must score at least one prompt")
        records = sorted(records, key=lambda record: (record.task, record.index))
        candidates = len(records[0].scores)
        by_task: dict[str, list[PromptRecord]] = {}
        for record in records:
            if len(record.scores) != candidates or len(record.retained_ratio) != candidates:
                raise ValueError(f"prompt {record.task}[{record.index}] holds another number of candidates")
            by_task.setdefault(record.task, []).append(record)
        task_scores = {
            task: torch.tensor(
                [mean_in_order([r.scores[c] for r in group]) for c in range(candidates)], dtype=torch.float64
            )
            for task, group in by_task.items()
        }
        layers = len(records[0].retained_ratio_per_layer[0])
        per_layer = [
            [mean_in_order([r.retained_ratio_per_layer[c][layer] for r in records]) for layer in range(layers)]
            for c in range(candidates)
        ]
        return cls(
            task_scores=task_scores,
            reference_scores={task: mean_in_order([r.reference for r in group]) for task, group in by_task.items()},
            pool_references={task: group[0].pool_reference for task, group in by_task.items()},
            retained_ratio=torch.tensor(
                [mean_in_order([r.retained_ratio[c] for r in records]) for c in range(candidates)],
                dtype=torch.float64,
            ),
            retained_ratio_per_layer=torch.tensor(per_layer, dtype=torch.float64),
            tokens_processed=sum(record.tokens for record in records),
            prompts=records,
        )

    def check(self, num_candidates: int) -> None:
        """Raise ValueError when the shapes do not describe `num_candidates` candidates."""
        problems = []
        if set(self.task_scores) != set(self.reference_scores) or not self.task_scores:
            problems.append(
                f"task_scores and reference_scores need the same non-empty task keys, got "
                f"{sorted(self.task_scores)} and {sorted(self.reference_scores)}"
            )
        if set(self.pool_references) != set(self.task_scores):
            problems.append(f"pool_references covers {sorted(self.pool_references)}, not every task")
        for task, values in self.task_scores.items():
            if tuple(values.shape) != (num_candidates,):
                problems.append(f"task_scores[{task!r}] has shape {tuple(values.shape)}, expected ({num_candidates},)")
        if tuple(self.retained_ratio.shape) != (num_candidates,):
            problems.append(
                f"retained_ratio has shape {tuple(self.retained_ratio.shape)}, expected ({num_candidates},)"
            )
        per_layer = self.retained_ratio_per_layer
        if per_layer.dim() != 2 or per_layer.shape[0] != num_candidates:
            problems.append(
                f"retained_ratio_per_layer has shape {tuple(per_layer.shape)}, expected ({num_candidates}, L)"
            )
        if problems:
            raise ValueError("scorer returned malformed CandidateScores: " + "; ".join(problems))

    @staticmethod
    def concat(parts: list[CandidateScores]) -> CandidateScores:
        """Stack the candidates of several results computed on the same prompts."""
        first = parts[0]
        return CandidateScores(
            task_scores={task: torch.cat([p.task_scores[task] for p in parts]) for task in first.task_scores},
            reference_scores=dict(first.reference_scores),
            pool_references=dict(first.pool_references),
            retained_ratio=torch.cat([p.retained_ratio for p in parts]),
            retained_ratio_per_layer=torch.cat([p.retained_ratio_per_layer for p in parts]),
            tokens_processed=sum(p.tokens_processed for p in parts),
            prompts=_stack_prompt_records(parts),
        )

    @staticmethod
    def join_prompts(parts: list[CandidateScores]) -> CandidateScores:
        """The same candidates scored on disjoint sets of prompts, aggregated as if scored together."""
        records = [record for part in parts for record in (part.prompts or [])]
        if any(part.prompts is None for part in parts):
            raise ValueError("joining prompt shards needs scores built with CandidateScores.from_prompts")
        return CandidateScores.from_prompts(records)


class CandidateScorer(Protocol):
    """Scores parameter vectors; samples the prompts itself, seeded by (split, generation)."""

    def prompts(self, split: str, generation: int) -> list[PromptId]:
        """The prompts of a split at a generation: "train" draws afresh per generation, "validation" is
        the fixed held-out set, disjoint from training."""
        ...

    def score(
        self, parameters: torch.Tensor, split: str, generation: int, prompts: list[PromptId] | None = None
    ) -> CandidateScores:
        """`parameters` is (P, d); `prompts` a subset of `prompts(split, generation)` (None: all)."""
        ...

    def reference_batches(self, generations: list[int]) -> list[list[PromptId]]:
        """The full-cache references a run over `generations` (and the validation prompts) still lacks, grouped
        as the scorer computes them: a batch is computed as a whole, so the references do not depend on how
        batches are spread over processes."""
        ...

    def compute_references(self, prompts: list[PromptId]) -> dict[PromptId, Any]:
        """Full-cache references of one `reference_batches` batch (nothing is written): per prompt, whatever
        the scorer keeps (a score; the task scorer also a gold answer's likelihood), picklable, opaque here."""
        ...

    def add_references(self, references: dict[PromptId, Any], save: bool) -> None:
        """Use these references; `save` writes them to the shared cache (one process does)."""
        ...

    def normalisation_state(self) -> dict[str, Any]:
        """Opaque statistics the scorer calibrated (calibrating now if needed; may be empty); saved in
        checkpoints, so it may hold tensors, dicts, lists and scalars only."""
        ...

    def load_normalisation_state(self, state: dict[str, Any]) -> None:
        """Restore what `normalisation_state` returned (resume, init_from, the other actors); raise ValueError
        naming the field when the statistics are unusable."""
        ...


class ScorerFactory(Protocol):
    """What `scorer._target_` names, typically the scorer's class: everything evolution asks before a model loads.

    Calling it with the train config builds the scorer (loading the model): once in every process that scores."""

    former_targets: tuple[str, ...]  # earlier `scorer._target_` spellings of this scorer, so their runs resume

    def __call__(self, cfg: DictConfig) -> CandidateScorer: ...

    def check_config(self, cfg: DictConfig) -> None:
        """Raise ConfigError on bad settings or missing data (no model is loaded)."""
        ...

    def solution_length(self, cfg: DictConfig) -> int:
        """The length d of a candidate vector (no model is loaded)."""
        ...

    def initial_centre(self, cfg: DictConfig, init: str, margin: float) -> torch.Tensor:
        """Where a new run's search starts, for `evo.init` (`zeros` or `keep_all`) and `evo.init_margin`; raise
        ConfigError for a choice this scorer does not support."""
        ...


def _members(protocol: type) -> tuple[str, ...]:
    """A protocol's public members, read from the protocol itself so the list exists once."""
    names = [*vars(protocol).get("__annotations__", {}), *vars(protocol)]
    return tuple(dict.fromkeys(name for name in names if not name.startswith("_")))


# -- what a scorer may also offer: one protocol per optional method, checked with isinstance (a scorer without
# one still trains; the trainer skips what it would have recorded, or refuses the setting that needs it)


@runtime_checkable
class RecordsPromptProvenance(Protocol):
    """A scorer that names the prompts it trains and validates on."""

    def prompt_provenance(self) -> dict[str, Any]:
        """Written into every checkpoint (`TrainingCheckpoint.provenance`), so an evaluation can check that it
        holds those prompts out."""
        ...


@runtime_checkable
class ReportsFullCacheAccuracy(Protocol):
    """A scorer that knows how well the full cache does on its prompts (logged once when training starts)."""

    def full_cache_accuracy(self, prompts: list[PromptId]) -> dict[str, tuple[float, int]]:
        """task -> (the full cache's mean score in [0, 1], prompts), from the references already computed."""
        ...


@runtime_checkable
class DistilsCentre(Protocol):
    """A scorer that can fit a starting centre before the search (`evo.init=distill`; refused without one)."""

    def distilled_centre(self, settings: DistillConfig) -> DistillFit:
        """The start fitted on training prompts to rank tokens like `settings.target`."""
        ...


@runtime_checkable
class NamesParameterBlocks(Protocol):
    """A scorer factory whose candidate vector is made of named weight blocks (`evo.evolve`; refused without)."""

    def parameter_layout(self, cfg: DictConfig) -> ParameterLayout:
        """The blocks of the candidate vector, in order (no model is loaded)."""
        ...


SCORER_METHODS = _members(CandidateScorer)
FACTORY_MEMBERS = _members(ScorerFactory)


@dataclass
class ScoringOutcome:
    """Scores for the candidates whose evaluation ran, and the error of each one that raised."""

    num_candidates: int
    scored_rows: torch.Tensor  # (K,) int64 candidate indices covered by `scores`
    scores: CandidateScores | None  # over the K scored rows; None when K == 0
    errors: dict[int, str] = field(default_factory=dict)  # candidate index -> error summary
    seconds: float = 0.0

    @staticmethod
    def merge(parts: list[ScoringOutcome]) -> ScoringOutcome:
        """Join the outcomes of consecutive chunks of one population (actor pieces)."""
        offset, rows, scored, errors = 0, [], [], {}
        for part in parts:
            rows.append(part.scored_rows + offset)
            if part.scores is not None:
                scored.append(part.scores)
            errors.update({row + offset: message for row, message in part.errors.items()})
            offset += part.num_candidates
        return ScoringOutcome(
            num_candidates=offset,
            scored_rows=torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long),
            scores=CandidateScores.concat(scored) if scored else None,
            errors=errors,
            seconds=max((part.seconds for part in parts), default=0.0),  # chunks run in parallel
        )

    @staticmethod
    def join_prompt_shards(parts: list[ScoringOutcome]) -> ScoringOutcome:
        """One candidate (the validated centre) scored on disjoint prompt shards, joined; it failed if
        any shard failed."""
        if any(part.num_candidates != 1 for part in parts):
            raise ValueError("prompt shards are joined for a single candidate only")
        failures = [message for part in parts for message in part.errors.values()]
        if failures:
            return ScoringOutcome(1, torch.zeros(0, dtype=torch.long), None, {0: failures[0]})
        return ScoringOutcome(
            num_candidates=1,
            scored_rows=torch.zeros(1, dtype=torch.long),
            scores=CandidateScores.join_prompts([part.scores for part in parts]),
            seconds=max(part.seconds for part in parts),
        )


def _summarise(error: BaseException) -> str:
    frame = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    where = f" ({frame.filename}:{frame.lineno})" if frame else ""
    return f"{type(error).__name__}: {error}{where}"


def score_guarded(
    scorer: CandidateScorer,
    parameters: torch.Tensor,
    split: str,
    generation: int,
    prompts: list[PromptId] | None = None,
) -> ScoringOutcome:
    """Score a batch; if it raises, score the candidates one by one so only the culprits fail.

    Interrupts (KeyboardInterrupt, SystemExit) are not caught: a killed run must stop.
    """
    start = time.perf_counter()
    count = parameters.shape[0]
    all_rows = torch.arange(count)
    try:
        scores = scorer.score(parameters, split, generation, prompts)
        scores.check(count)
        return ScoringOutcome(count, all_rows, scores, {}, time.perf_counter() - start)
    except Exception as error:  # noqa: BLE001 - one bad candidate must not end the run
        if count == 1:
            return ScoringOutcome(1, all_rows[:0], None, {0: _summarise(error)}, time.perf_counter() - start)
        log.warning("scoring %d candidates together failed (%s); scoring them one by one", count, _summarise(error))
    parts, rows, errors = [], [], {}
    for row in range(count):
        try:
            scores = scorer.score(parameters[row : row + 1], split, generation, prompts)
            scores.check(1)
        except Exception as error:  # noqa: BLE001
            errors[row] = _summarise(error)
            continue
        parts.append(scores)
        rows.append(row)
    return ScoringOutcome(
        num_candidates=count,
        scored_rows=torch.tensor(rows, dtype=torch.long),
        scores=CandidateScores.concat(parts) if parts else None,
        errors=errors,
        seconds=time.perf_counter() - start,
    )


def _target(cfg: DictConfig | dict[str, Any]) -> str:
    return str(cfg["scorer"]["_target_"])


def scorer_factory(cfg: DictConfig | dict[str, Any]) -> ScorerFactory:
    """The object `scorer._target_` names (imported, not called), checked for every `ScorerFactory` member."""
    path = _target(cfg)
    module_name, _, name = path.rpartition(".")
    try:
        factory = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(
            f"scorer._target_={path!r} could not be imported ({error}); point it at an importable scorer class, "
            "e.g. scorer._target_=my_package.my_module.MyScorer"
        ) from error
    missing = [member for member in FACTORY_MEMBERS if not hasattr(factory, member)]
    if missing or not callable(factory):
        raise ConfigError(
            f"scorer._target_={path!r} lacks {missing or ['__call__']}; it must name a scorer class with "
            f"{list(FACTORY_MEMBERS)} (see namm.evolution.scorer_protocol.ScorerFactory)"
        )
    return factory


def check_scorer(cfg: DictConfig) -> None:
    """Import the scorer and run its own checks of the settings and data, so a typo or missing data fails
    before any model loads."""
    scorer_factory(cfg).check_config(cfg)


def build_scorer(cfg: DictConfig) -> CandidateScorer:
    """`scorer._target_(cfg)`: loads the model, so run it once per scoring process."""
    scorer = scorer_factory(cfg)(cfg)
    missing = [name for name in SCORER_METHODS if not hasattr(scorer, name)]
    if missing:
        raise TypeError(f"scorer._target_={_target(cfg)!r} returned {type(scorer).__name__}, which lacks {missing}")
    return scorer


def scorer_solution_length(cfg: DictConfig) -> int:
    """Length of a candidate vector (no model is loaded)."""
    count = int(scorer_factory(cfg).solution_length(cfg))
    if count < 1:
        raise ValueError(f"scorer {_target(cfg)} has {count} parameters; a candidate needs at least one")
    return count


def scorer_initial_centre(cfg: DictConfig, length: int, init: str, margin: float) -> torch.Tensor:
    """Where a new run's search starts (`evo.init`), as the scorer defines it; checked against `length`."""
    centre = scorer_factory(cfg).initial_centre(cfg, init, margin)
    if tuple(centre.shape) != (length,):
        raise ValueError(f"scorer {_target(cfg)}: its initial centre has shape {tuple(centre.shape)}, not ({length},)")
    return centre
