"""The evolution loop: sample a population, score it on shared prompts, update, validate, checkpoint.

Read top to bottom: `train` checks the config and the start point (cheap), builds the problem and the
searcher, loads the model(s), restores state, then runs `generations` steps. Each generation ends with
`metrics.jsonl`, the progress plot, `latest.pt` (and `best.pt` when validation improves), W&B and one
log line, in that order, so a kill at any point resumes to the same numbers.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from namm.evolution.checkpoint import (
    BEST,
    LATEST,
    CheckpointError,
    TrainingCheckpoint,
    library_versions,
    read_provenance,
    save_checkpoint,
    save_latest,
    with_provenance,
)
from namm.evolution.config import ConfigError, EvoConfig, InitialCentre, TrainConfig, validate_train_config
from namm.evolution.distillation import distill_record
from namm.evolution.fitness import FitnessRule
from namm.evolution.metrics import centre_movement, generation_line, generation_metrics, validation_metrics
from namm.evolution.problem import EvolutionProblem
from namm.evolution.progress import METRICS_FILE, PLOT_FILE, MetricsLog, plot_progress
from namm.evolution.resume import StartPoint, find_start_point
from namm.evolution.rng_state import capture_rng_state, restore_rng_state
from namm.evolution.scorer_protocol import check_scorer, scorer_factory, scorer_initial_centre, scorer_solution_length
from namm.evolution.searchers import build_searcher
from namm.evolution.searchers.base import Searcher
from namm.evolution.subspace import searched_subspace
from namm.evolution.wandb_run import WandbRun

log = logging.getLogger(__name__)

FULL_CACHE_ACCURACY_WARNING = 0.8  # below this the full cache is often wrong: such prompts teach little


@dataclass
class BestCentre:
    """The centre with the best validation fitness so far (the parameters to evaluate and export); an equal
    fitness with a smaller retained ratio is better (it keeps less memory for the same score)."""

    params: torch.Tensor
    validation_fitness: float | None = None
    generation: int = 0
    validation_retained_ratio: float | None = None
    validation_score_vs_full_cache: float | None = None  # its plain score over the full cache's, same prompts

    def beaten_by(self, fitness: float, retained_ratio: float) -> bool:
        if self.validation_fitness is None or fitness > self.validation_fitness:
            return True
        tie = fitness == self.validation_fitness and self.validation_retained_ratio is not None
        return tie and retained_ratio < self.validation_retained_ratio


@dataclass
class RunSummary:
    run_dir: Path
    generation: int
    best_validation_fitness: float | None


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _checkpoint(
    generation: int,
    searcher: Searcher,
    resolved: dict[str, Any],
    problem: EvolutionProblem,
    best: BestCentre,
    wandb_run_id: str | None,
) -> TrainingCheckpoint:
    return TrainingCheckpoint(
        generation=generation,
        center=_full_centre(problem, searcher),
        sigma=searcher.sigma(),
        best_params=best.params.clone(),
        best_validation_fitness=best.validation_fitness,
        best_generation=best.generation,
        best_validation_retained_ratio=best.validation_retained_ratio,
        best_validation_score_vs_full_cache=best.validation_score_vs_full_cache,
        param_count=problem.subspace.length,
        config=resolved,
        searcher_state=searcher.state_dict(),
        rng_state=capture_rng_state(problem.generator),
        normalisation_state=problem.normalisation_state(),
        wandb_run_id=wandb_run_id,
        versions=library_versions(),
    )


def _provenance(problem: EvolutionProblem, start: StartPoint) -> dict[str, Any] | None:
    """The prompts this run trains and validates on: a resumed run keeps its record; a run started from
    another's centre keeps that run's record under `init_from` (None: it had none)."""
    if start.resume_state is not None and read_provenance(start.resume_state) is not None:
        return read_provenance(start.resume_state)
    record = problem.prompt_provenance()
    if record is None or start.init_state is None:
        return record
    return {**record, "init_from": read_provenance(start.init_state)}


def _initial_centre(start: StartPoint, param_count: int, cfg: DictConfig, config: TrainConfig) -> torch.Tensor:
    if start.init_state is None:
        return scorer_initial_centre(cfg, param_count, config.evo.init.value, config.evo.init_margin)
    centre = start.init_state.best_params
    if centre.shape != (param_count,):
        raise ConfigError(
            f"init_from={start.init_path}: its centre has {centre.shape[0]} parameters, this run's scorer needs "
            f"{param_count}; use a checkpoint trained with the same `namm` config"
        )
    return centre


def start_sigma(evo: EvoConfig, centre: torch.Tensor) -> float:
    """The initial step size: evo.sigma, or evo.sigma_relative x the RMS of the start's searched parameters
    (`centre`: those `evo.evolve` names, by default all)."""
    if evo.sigma_relative is None:
        return evo.sigma
    rms = float(centre.double().pow(2).mean().sqrt())
    if rms == 0:
        raise ConfigError(
            f"evo.sigma_relative scales the step size to the start's searched parameters ({_searched(evo.evolve)}), "
            "but they are all zero: set evo.sigma instead, or start from a centre where they are not (init_from, "
            "evo.init=distill)"
        )
    return evo.sigma_relative * rms


def _start_parameters(start: StartPoint, param_count: int, cfg: DictConfig, config: TrainConfig) -> torch.Tensor:
    """The full vector the search starts from: a resumed run's centre, else `_initial_centre`."""
    if start.resume_state is not None:
        return start.resume_state.center
    return _initial_centre(start, param_count, cfg, config)


def _centred_searcher(problem: EvolutionProblem, evo: EvoConfig, centre: torch.Tensor) -> Searcher:
    """The searcher centred on the full vector `centre` (its searched coordinates; the others stay fixed there),
    its initial step size scaled to them where evo.sigma_relative asks."""
    searched = problem.search_from(centre)
    return build_searcher(problem, replace(evo, sigma=start_sigma(evo, searched)), searched)


def _report_full_cache_accuracy(problem: EvolutionProblem, generations: list[int]) -> None:
    """Log the full cache's score on the run's training and validation prompts (the references computed
    above); warn where it is below FULL_CACHE_ACCURACY_WARNING."""
    for split, by_task in problem.full_cache_accuracy(generations).items():
        if not by_task:
            continue
        parts = [f"{task} {accuracy:.3f} ({count} prompts)" for task, (accuracy, count) in sorted(by_task.items())]
        log.info("full-cache accuracy on the %s prompts: %s", split, ", ".join(parts))
        low = {task: accuracy for task, (accuracy, _) in by_task.items() if accuracy < FULL_CACHE_ACCURACY_WARNING}
        if low:
            log.warning(
                "the full cache scores below %.1f on the %s prompts of %s: prompts the model gets wrong with its "
                "whole memory cannot teach which tokens matter; choose a task or context length it can do",
                FULL_CACHE_ACCURACY_WARNING,
                split,
                ", ".join(f"{task} ({accuracy:.3f})" for task, accuracy in sorted(low.items())),
            )


def _load_normalisation(problem: EvolutionProblem, record: TrainingCheckpoint, path: Path | None) -> None:
    """Hand a checkpoint's statistics to the scorer, which checks them (a refusal names the file)."""
    try:
        problem.load_normalisation_state(record.normalisation_state)
    except ValueError as error:
        raise CheckpointError(f"{path}: field 'normalisation_state': {error}") from error


def _restore(
    start: StartPoint, searcher: Searcher, problem: EvolutionProblem, config: TrainConfig
) -> tuple[int, BestCentre, str | None]:
    """Apply the start point to a freshly built searcher; returns (generation, best, W&B run id)."""
    if start.resume_state is not None:
        record = start.resume_state
        searcher.load_state_dict(record.searcher_state)
        restore_rng_state(record.rng_state, problem.generator)
        _load_normalisation(problem, record, start.resume_path)
        best = BestCentre(
            record.best_params,
            record.best_validation_fitness,
            record.best_generation or 0,
            record.best_validation_retained_ratio,
            record.best_validation_score_vs_full_cache,
        )
        log.info("resumed from %s at generation %d", start.resume_path, record.generation)
        return record.generation, best, record.wandb_run_id
    if start.init_state is not None:
        record = start.init_state
        saved_searcher = record.searcher_state["searcher"]
        saved_blocks = list(record.config.get("evo", {}).get("evolve", []))
        if saved_searcher != config.evo.searcher:
            how = f"its best centre only (it used {saved_searcher}, this run {config.evo.searcher})"
        elif sorted(saved_blocks) != sorted(config.evo.evolve):  # another set of coordinates: its distribution
            how = (  # would be read onto the wrong ones
                f"its best centre only (it searched {_searched(saved_blocks)}, this run {_searched(config.evo.evolve)})"
            )
        else:
            searcher.start_from(record.searcher_state, searcher.centre())
            how = "its search distribution (step size, covariance, paths) and best centre"
        _load_normalisation(problem, record, start.init_path)
        log.info("init_from %s: starting from %s", start.init_path, how)
    return 0, BestCentre(_full_centre(problem, searcher)), None


def _full_centre(problem: EvolutionProblem, searcher: Searcher) -> torch.Tensor:
    """The search mean as a full parameter vector (what validation, checkpoints and the metrics read)."""
    return problem.full_parameters(searcher.centre())


def _searched(blocks: list[str]) -> str:
    return f"evo.evolve={list(blocks)}" if blocks else "every parameter"


def _validate(
    problem: EvolutionProblem, centre: torch.Tensor, generation: int, best: BestCentre, record: dict
) -> BestCentre:
    """Score the centre on the validation prompts, add the result to `record`; returns the new best."""
    outcome = problem.validate(centre, generation)
    validation = validation_metrics(outcome, problem.rule)
    if validation is None:
        reason = next(iter(outcome.errors.values()), "non-finite validation fitness")
        log.warning("generation %d: validating the centre failed (%s); best.pt is unchanged", generation, reason)
        return best
    fitness, retained = validation["validation/fitness"], validation["validation/retained_ratio"]
    improved = best.beaten_by(fitness, retained)
    if improved:
        best = BestCentre(centre, fitness, generation, retained, validation["validation/score_vs_full_cache"])
    record.update(validation)
    record.update({"validation/is_best": improved, "validation/best_fitness": best.validation_fitness})
    return best


def _print_summary(run_dir: Path, best: BestCentre, generation: int) -> None:
    if best.validation_fitness is None:
        learned = "no validation yet"
    else:
        learned = f"best validation fitness {best.validation_fitness:.4f} at generation {best.generation}"
        if best.validation_retained_ratio is not None and best.validation_score_vs_full_cache is not None:
            learned += (
                f": on the validation prompts it keeps {best.validation_retained_ratio:.1%} of the KV cache and "
                f"scores {best.validation_score_vs_full_cache:.1%} of the full cache's score"
            )
    print(
        f"\nTraining finished at generation {generation} ({learned}).\n"
        f"  checkpoints: {run_dir / LATEST}, {run_dir / BEST}\n"
        f"  metrics:     {run_dir / METRICS_FILE}\n"
        f"  plot:        {run_dir / PLOT_FILE}\n"
        f"Evaluate it with:\n  python evaluate.py checkpoint={run_dir}\n",
        flush=True,
    )


def train(cfg: DictConfig) -> RunSummary:
    """Run (or continue) one training run described by the composed `conf/train.yaml`."""
    config = validate_train_config(cfg)  # value checks before anything expensive
    check_scorer(cfg)
    param_count = scorer_solution_length(cfg)
    subspace = searched_subspace(scorer_factory(cfg), cfg, config.evo.evolve, param_count)  # refuses unknown blocks
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    start = find_start_point(config, resolved)
    run_dir = Path(config.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    evo = config.evo

    logging.getLogger("evotorch").setLevel(logging.WARNING)  # its per-object INFO lines drown the log
    _seed_everything(config.seed)
    problem = EvolutionProblem(
        cfg, param_count, config.seed, FitnessRule.of(evo), evo.num_actors, evo.num_gpus_per_actor, subspace
    )
    distilling = start.resume_state is None and start.init_state is None and evo.init == InitialCentre.distill
    searcher = (
        None if distilling else _centred_searcher(problem, evo, _start_parameters(start, param_count, cfg, config))
    )
    if not subspace.is_everything:
        log.info("searching %d of the %d parameters (evo.evolve=%s)", subspace.size, param_count, list(evo.evolve))
    wandb_run = None
    finished = False
    distilled: dict[str, Any] = {}
    try:
        log.info("loading the model in %s", f"{evo.num_actors} Ray actors" if evo.num_actors >= 2 else "this process")
        problem.start_workers()
        if distilling:  # the start needs the model: fitted now, then the searcher is centred on it
            fit = problem.distil(evo.distill)
            searcher = _centred_searcher(problem, evo, fit.parameters)
            distilled = distill_record(fit)
        generation, best, wandb_run_id = _restore(start, searcher, problem, config)
        provenance = _provenance(problem, start)
        if start.resume_state is None and not (start.init_state and start.init_state.normalisation_state):
            problem.share_normalisation()  # calibrated once, on the first worker
        computed = problem.prepare_references(list(range(generation + 1, evo.generations + 1)))
        if computed:
            log.info("computed %d full-cache reference scores; every worker uses them", computed)
        _report_full_cache_accuracy(problem, list(range(generation + 1, evo.generations + 1)))
        metrics_log = MetricsLog(run_dir)
        metrics_log.keep_up_to(generation if start.resume_state is not None else -1)
        wandb_run = WandbRun(config.logger, run_dir, f"{config.name}-seed{config.seed}", wandb_run_id, resolved)
        if start.resume_state is None:  # where the search starts, scored like every later centre
            record: dict[str, Any] = {
                "generation": 0,
                "objective": evo.objective.value,
                **distilled,
                "search/dimensions": problem.solution_length,
                **searcher.spread(),
            }
            best = _validate(problem, _full_centre(problem, searcher), 0, best, record)
            checkpoint = with_provenance(
                _checkpoint(0, searcher, resolved, problem, best, wandb_run.run_id), provenance
            )
            _record_generation(record, checkpoint, run_dir, metrics_log, wandb_run)
            if "validation/fitness" in record:
                log.info("gen 0 (start): validation %.4f", record["validation/fitness"])
        with (
            logging_redirect_tqdm(),
            tqdm(total=evo.generations, initial=generation, desc="generations", unit="gen") as bar,
        ):
            while generation < evo.generations:
                generation += 1
                record = _run_generation(problem, searcher, generation, evo)
                centre = _full_centre(problem, searcher)
                if generation % evo.eval_interval == 0 or generation == evo.generations:
                    best = _validate(problem, centre, generation, best, record)
                if best.validation_fitness is None:
                    best = BestCentre(centre, None, generation)  # the current centre stands in until validated
                checkpoint = _checkpoint(generation, searcher, resolved, problem, best, wandb_run.run_id)
                checkpoint = with_provenance(checkpoint, provenance)
                _record_generation(record, checkpoint, run_dir, metrics_log, wandb_run)
                log.info(generation_line(record, evo.generations))
                bar.set_postfix(fitness=f"{record['fitness/mean']:.3f}", step=f"{record['search/step_size']:.3g}")
                bar.update(1)
        if (run_dir / LATEST).exists():
            wandb_run.save_checkpoint(run_dir / LATEST, "latest", generation)
        _print_summary(run_dir, best, generation)
        finished = True
        return RunSummary(run_dir, generation, best.validation_fitness)
    finally:
        if wandb_run is not None:
            wandb_run.finish(exit_code=0 if finished else 1)
        problem.kill_workers()


def _record_generation(
    record: dict[str, Any], checkpoint: TrainingCheckpoint, run_dir: Path, metrics_log: MetricsLog, wandb_run: WandbRun
) -> None:
    """metrics.jsonl, the plot, best.pt (when validation improved), latest.pt, W&B: in that order, so a kill
    at any point resumes to the same numbers (a resumed generation rewrites what latest.pt did not cover)."""
    metrics_log.append(record)
    plot_progress(metrics_log.read(), run_dir / PLOT_FILE)
    if record.get("validation/is_best"):  # before latest.pt: a kill in between must not lose the best centre
        save_checkpoint(checkpoint, run_dir / BEST)
    save_latest(checkpoint, run_dir)
    if record.get("validation/is_best"):
        wandb_run.save_checkpoint(run_dir / BEST, "best", checkpoint.generation)
    wandb_run.log(record)


def _run_generation(problem: EvolutionProblem, searcher: Searcher, generation: int, evo: EvoConfig) -> dict[str, Any]:
    """One searcher step on this generation's prompts (fitness with the curriculum's memory weight); returns
    its metrics, with how far the centre moved and the searcher's step size after the step."""
    problem.generation = generation
    problem.train_rule = replace(problem.rule, memory_weight=evo.memory_weight_at(generation))
    before = _full_centre(problem, searcher)
    started = time.perf_counter()
    searcher.step()
    seconds = time.perf_counter() - started
    record = generation_metrics(
        generation, problem.last_outcome, problem.last_fitness, searcher.step_size(), seconds, problem.train_rule
    )
    record.update(centre_movement(before, _full_centre(problem, searcher)))
    record.update(searcher.spread())
    return record
