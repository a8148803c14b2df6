"""The EvoTorch Problem: scores a population through the scorer, locally or on Ray actors.

Works around EvoTorch 0.6.1's traps: actors call `problem.seed(...)` (missing on Problem, so
`Problem(seed=...)` crashes them); `num_actors=1` silently means "no Ray"; the model must be loaded in
each actor (`_prepare`), never pickled. Actor creation draws from the search RNG, which would make a
resumed run sample differently, so it runs with that RNG's state saved and restored.
"""

from __future__ import annotations

import logging
from typing import Any

import ray
import torch
from evotorch import Problem, SolutionBatch
from omegaconf import DictConfig

from namm.errors import ConfigError
from namm.evolution.distillation import DistillConfig, DistillFit
from namm.evolution.fitness import FitnessRule, PopulationFitness, population_fitness
from namm.evolution.scorer_protocol import (
    TRAIN_SPLIT,
    VALIDATION_SPLIT,
    CandidateScorer,
    DistilsCentre,
    PromptId,
    RecordsPromptProvenance,
    ReportsFullCacheAccuracy,
    ScoringOutcome,
    build_scorer,
    score_guarded,
)
from namm.evolution.subspace import SearchedSubspace

log = logging.getLogger(__name__)


def _split(items: list[PromptId], parts: int) -> list[list[PromptId]]:
    """Consecutive, near-equal shards (the first ones one longer), like torch.tensor_split."""
    size, extra = divmod(len(items), parts)
    bounds = [0]
    for part in range(parts):
        bounds.append(bounds[-1] + size + (part < extra))
    return [items[bounds[i] : bounds[i + 1]] for i in range(parts)]


class EvolutionProblem(Problem):
    """Maximise fitness over NAMM parameter vectors; every candidate of a generation sees the same prompts.

    The searcher's solutions are the `subspace`'s coordinates (all of them by default); the scorer always gets
    full vectors (`full_parameters`)."""

    def __init__(
        self,
        cfg: DictConfig,
        solution_length: int,
        seed: int,
        rule: FitnessRule,
        num_actors: int = 0,
        num_gpus_per_actor: float | None = None,
        subspace: SearchedSubspace | None = None,
    ) -> None:
        subspace = subspace or SearchedSubspace.everything(solution_length)
        if subspace.length != solution_length:
            raise ValueError(f"the subspace is of a {subspace.length}-vector, the candidates have {solution_length}")
        if num_gpus_per_actor is None and num_actors >= 2:
            num_gpus_per_actor = 1 if torch.cuda.is_available() else None
        super().__init__(
            "max",
            solution_length=subspace.size,
            dtype=torch.float32,
            num_actors=num_actors if num_actors >= 2 else None,
            num_gpus_per_actor=num_gpus_per_actor,
            store_solution_stats=False,
        )
        self.manual_seed(seed)
        self.subspace = subspace
        self._cfg = cfg  # plain config: what each actor needs to build its own scorer
        self.rule = rule  # validation's fitness (the run's objective)
        self.train_rule = rule  # the training fitness of the current generation (a curriculum changes it)
        self._scorer: CandidateScorer | None = None
        self.generation = 0  # set by the trainer before each step; selects the prompts
        self.last_outcome: ScoringOutcome | None = None
        self.last_fitness: PopulationFitness | None = None

    # -- EvoTorch hooks --------------------------------------------------------------------------

    @property
    def _nonserialized_attribs(self) -> list[str]:
        return ["_scorer", "last_outcome", "last_fitness"]

    def seed(self, seed: int) -> None:
        """Called by EvoTorch's actors to seed their copy."""
        self.manual_seed(seed)

    def _prepare(self) -> None:
        self.local_scorer()

    def _fill(self, values: torch.Tensor) -> None:
        # Placeholder for the population buffer the searchers allocate; every step overwrites it with
        # samples. Zeros keep construction from drawing random numbers.
        values.zero_()

    def _parallelize(self) -> None:
        saved = self.generator.get_state() if self.generator is not None else None
        super()._parallelize()
        if saved is not None:
            self.generator.set_state(saved)

    def _evaluate_all(self, batch: SolutionBatch) -> None:
        parameters = self.full_parameters(batch.values.as_subclass(torch.Tensor))  # a plain copy, not EvoTorch's view
        outcome = self.score(parameters, TRAIN_SPLIT, self.generation)
        fitness = population_fitness(outcome, self.train_rule, self.generation)
        self.last_outcome, self.last_fitness = outcome, fitness
        batch.set_evals(fitness.ranks.to(batch.values.dtype))  # ranks: ties decided by memory, not sort order

    # -- the searched coordinates and the full vector -------------------------------------------------

    def search_from(self, start: torch.Tensor) -> torch.Tensor:
        """Fix the coordinates the search does not move at `start` (a full vector); returns its searched part."""
        self.subspace = self.subspace.with_base(start)
        return self.subspace.project(start)

    def full_parameters(self, searched: torch.Tensor) -> torch.Tensor:
        """(..., searched) -> (..., full) candidate vectors, a copy."""
        return self.subspace.embed(searched)

    # -- scoring, here or on the actors ---------------------------------------------------------

    def local_scorer(self) -> CandidateScorer:
        """The scorer of this process, built (model loaded) on first use."""
        if self._scorer is None:
            self._scorer = build_scorer(self._cfg)
        return self._scorer

    def score_here(
        self, parameters: torch.Tensor, split: str, generation: int, prompts: list[PromptId] | None = None
    ) -> ScoringOutcome:
        return score_guarded(self.local_scorer(), parameters, split, generation, prompts)

    def prepare_here(self) -> None:
        """Load the model in this process."""
        self.local_scorer()

    def provenance_here(self) -> dict[str, Any] | None:
        """The scorer's record of its training and validation prompts (optional scorer method)."""
        scorer = self.local_scorer()
        return scorer.prompt_provenance() if isinstance(scorer, RecordsPromptProvenance) else None

    def full_cache_accuracy_here(self, generations: list[int]) -> dict[str, dict[str, tuple[float, int]]]:
        """{"training"|"validation": task -> (full-cache mean score in [0, 1], prompts)} from the references
        already computed; empty for a scorer without `full_cache_accuracy` (it is optional)."""
        scorer = self.local_scorer()
        if not isinstance(scorer, ReportsFullCacheAccuracy):
            return {}
        training = sorted({prompt for generation in generations for prompt in scorer.prompts(TRAIN_SPLIT, generation)})
        return {
            "training": scorer.full_cache_accuracy(training),
            "validation": scorer.full_cache_accuracy(scorer.prompts(VALIDATION_SPLIT, 0)),
        }

    def scorer_call_here(self, method: str, *args: Any) -> Any:
        return getattr(self.local_scorer(), method)(*args)

    def _on_first_worker(self, method: str, *args: Any) -> Any:
        """Problem method `method(*args)` on the first actor, or here when there are none."""
        return self._on_each_worker(method, [list(args)])[0]

    def _on_each_worker(self, method: str, arguments: list[list[Any]]) -> list[Any]:
        """Problem method `method` with `arguments[i]` on worker i (here when there are no actors)."""
        if self.actors is None:
            return [getattr(self, method)(*args) for args in arguments]
        calls = [actor.call.remote(method, list(args), {}) for actor, args in zip(self.actors, arguments)]
        return ray.get(calls)

    def _on_workers_after_first(self, method: str, *args: Any) -> None:
        """Problem method `method(*args)` on every actor but the first (nothing without actors)."""
        if self.actors is not None and len(self.actors) > 1:
            ray.get([actor.call.remote(method, list(args), {}) for actor in self.actors[1:]])

    @property
    def num_workers(self) -> int:
        return 1 if self.actors is None else len(self.actors)

    def start_workers(self) -> None:
        """Create the actors (if any) and load the model in each, before the first generation."""
        if self._num_actors >= 2 and not ray.is_initialized():
            ray.init(include_dashboard=False)
        self._parallelize()
        self._on_each_worker("prepare_here", [[] for _ in range(self.num_workers)])
        self._prepared = True

    def score(self, parameters: torch.Tensor, split: str, generation: int) -> ScoringOutcome:
        """Score (P, d) candidates; with actors, the population is split into one chunk per actor."""
        chunks = [chunk for chunk in torch.tensor_split(parameters, self.num_workers) if len(chunk)]
        parts = self._on_each_worker("score_here", [[chunk, split, generation] for chunk in chunks])
        return ScoringOutcome.merge(parts)

    def validate(self, centre: torch.Tensor, generation: int) -> ScoringOutcome:
        """Score the centre on the validation prompts, which are spread over the actors."""
        prompts = self._on_first_worker("scorer_call_here", "prompts", VALIDATION_SPLIT, generation)
        shards = [shard for shard in _split(prompts, self.num_workers) if shard]
        arguments = [[centre[None], VALIDATION_SPLIT, generation, shard] for shard in shards]
        return ScoringOutcome.join_prompt_shards(self._on_each_worker("score_here", arguments))

    def prepare_references(self, generations: list[int]) -> int:
        """Compute the missing full-cache references of a run once, before its first generation.

        The scorer groups them into its own batches; whole batches go to the workers, one each per round, so
        the batching (and so every reference) is the same for any number of actors. The first worker writes
        each round to the shared cache (one writer; an interrupted run keeps the finished rounds), and every
        worker uses them all. Returns how many were computed."""
        batches = self._on_first_worker("scorer_call_here", "reference_batches", generations)
        if not batches:
            return 0
        log.info("computing %d full-cache reference scores before the first generation", sum(map(len, batches)))
        references: dict[PromptId, Any] = {}
        for start in range(0, len(batches), self.num_workers):
            work = batches[start : start + self.num_workers]
            parts = self._on_each_worker("scorer_call_here", [["compute_references", batch] for batch in work])
            computed = {prompt: score for part in parts for prompt, score in part.items()}
            self._on_first_worker("scorer_call_here", "add_references", computed, True)
            references.update(computed)
        self._on_workers_after_first("scorer_call_here", "add_references", references, False)
        return len(references)

    def full_cache_accuracy(self, generations: list[int]) -> dict[str, dict[str, tuple[float, int]]]:
        return self._on_first_worker("full_cache_accuracy_here", generations)

    def prompt_provenance(self) -> dict[str, Any] | None:
        """Which prompts this run trains and validates on (None: the scorer does not say)."""
        return self._on_first_worker("provenance_here")

    def distilled_centre_here(self, settings: DistillConfig) -> DistillFit:
        scorer = self.local_scorer()
        if not isinstance(scorer, DistilsCentre):
            raise ConfigError(
                f"evo.init=distill needs a scorer with distilled_centre(); {type(scorer).__name__} has none: "
                "use evo.init=keep_all"
            )
        return scorer.distilled_centre(settings)

    def distil(self, settings: DistillConfig) -> DistillFit:
        """evo.init=distill: the start fitted by the first worker's scorer (it holds the model)."""
        return self._on_first_worker("distilled_centre_here", settings)

    def share_normalisation(self) -> None:
        """Calibrate once, on the first worker, and give its statistics to the others."""
        self._on_workers_after_first("scorer_call_here", "load_normalisation_state", self.normalisation_state())

    def normalisation_state(self) -> dict[str, Any]:
        return self._on_first_worker("scorer_call_here", "normalisation_state")

    def load_normalisation_state(self, state: dict[str, Any]) -> None:
        self._on_each_worker("scorer_call_here", [["load_normalisation_state", state]] * self.num_workers)

    def kill_workers(self) -> None:
        """Stop the actors (end of a run; the next job of a multirun starts its own)."""
        for actor in self.actors or []:
            ray.kill(actor)
        self._actors = None
        self._actor_pool = None
