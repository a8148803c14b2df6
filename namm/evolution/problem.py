"""The EvoTorch Problem: scores a population through the scorer, locally or on Ray actors.

Works around EvoTorch 0.6.1's traps: actors call `problem.seed(...)` (missing on Problem, so
`Problem(seed=...)` crashes them); `num_actors=1` silently means "no Ray"; the model must be loaded in
each actor (`_prepare`), never pickled. Actor creation draws from the search RNG, which would make a
resumed run sample differently, so it runs with that RNG's state saved and restored.
"""

from __future__ import annotations

from typing import Any

import ray
import torch
from evotorch import Problem, SolutionBatch
from omegaconf import DictConfig

from namm.evolution.config import ConfigError
from namm.evolution.fitness import PopulationFitness, population_fitness
from namm.evolution.scoring import (
    TRAIN_SPLIT,
    CandidateScorer,
    ScoringOutcome,
    build_scorer,
    score_guarded,
)


class EvolutionProblem(Problem):
    """Maximise fitness over NAMM parameter vectors; every candidate of a generation sees the same prompts."""

    def __init__(
        self,
        cfg: DictConfig,
        solution_length: int,
        seed: int,
        num_actors: int = 0,
        num_gpus_per_actor: float | None = None,
    ) -> None:
        if num_gpus_per_actor is None and num_actors >= 2:
            num_gpus_per_actor = 1 if torch.cuda.is_available() else None
        super().__init__(
            "max",
            solution_length=solution_length,
            dtype=torch.float32,
            num_actors=num_actors if num_actors >= 2 else None,
            num_gpus_per_actor=num_gpus_per_actor,
            store_solution_stats=False,
        )
        self.manual_seed(seed)
        self._cfg = cfg  # plain config: what each actor needs to build its own scorer
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
        parameters = batch.values.clone().as_subclass(torch.Tensor)  # a plain tensor, not EvoTorch's read-only view
        outcome = self.score(parameters, TRAIN_SPLIT, self.generation)
        fitness = population_fitness(outcome, float(self._cfg.evo.reference_floor), self.generation)
        self.last_outcome, self.last_fitness = outcome, fitness
        batch.set_evals(fitness.values.to(batch.values.dtype))

    # -- scoring, here or on the actors ---------------------------------------------------------

    def local_scorer(self) -> CandidateScorer:
        """The scorer of this process, built (model loaded) on first use."""
        if self._scorer is None:
            scorer = build_scorer(self._cfg)
            if int(scorer.param_count) != self.solution_length:
                raise ConfigError(
                    f"the scorer expects {scorer.param_count} parameters but scorer.param_count_target gave "
                    f"{self.solution_length}; make both read the same `namm` config"
                )
            self._scorer = scorer
        return self._scorer

    def score_here(self, parameters: torch.Tensor, split: str, generation: int) -> ScoringOutcome:
        return score_guarded(self.local_scorer(), parameters, split, generation)

    def prepare_here(self) -> int:
        """Load the model in this process; returns the scorer's parameter count."""
        return int(self.local_scorer().param_count)

    def normalisation_state_here(self) -> dict[str, Any]:
        return self.local_scorer().normalisation_state()

    def load_normalisation_state_here(self, state: dict[str, Any]) -> None:
        self.local_scorer().load_normalisation_state(state)

    def _on_workers(self, method: str, *args: Any) -> list[Any]:
        """Run `method(*args)` on every actor, or here when there are none."""
        if self.actors is None:
            return [getattr(self, method)(*args)]
        return ray.get([actor.call.remote(method, list(args), {}) for actor in self.actors])

    def start_workers(self) -> None:
        """Create the actors (if any) and load the model in each, before the first generation."""
        if self._num_actors >= 2 and not ray.is_initialized():
            ray.init(include_dashboard=False)
        self._parallelize()
        self._on_workers("prepare_here")
        self._prepared = True

    def score(self, parameters: torch.Tensor, split: str, generation: int) -> ScoringOutcome:
        """Score (P, d) candidates; with actors, the population is split into one chunk per actor."""
        if self.actors is None:
            return self.score_here(parameters, split, generation)
        chunks = [chunk for chunk in torch.tensor_split(parameters, len(self.actors)) if len(chunk)]
        pending = [
            actor.call.remote("score_here", [chunk, split, generation], {}) for actor, chunk in zip(self.actors, chunks)
        ]
        return ScoringOutcome.merge(ray.get(pending))

    def normalisation_state(self) -> dict[str, Any]:
        return self._on_workers("normalisation_state_here")[0]

    def load_normalisation_state(self, state: dict[str, Any]) -> None:
        self._on_workers("load_normalisation_state_here", state)

    def kill_workers(self) -> None:
        """Stop the actors (end of a run; the next job of a multirun starts its own)."""
        for actor in self.actors or []:
            ray.kill(actor)
        self._actors = None
        self._actor_pool = None
