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

from namm.evolution.checkpoint import BEST, FORMAT_VERSION, LATEST, library_versions, save_checkpoint, save_latest
from namm.evolution.config import ConfigError, EvoConfig, TrainConfig, validate_train_config
from namm.evolution.fitness import FitnessRule
from namm.evolution.metrics import centre_movement, generation_line, generation_metrics, validation_metrics
from namm.evolution.problem import EvolutionProblem
from namm.evolution.progress import METRICS_FILE, PLOT_FILE, MetricsLog, plot_progress
from namm.evolution.resume import StartPoint, find_start_point
from namm.evolution.rng_state import capture_rng_state, restore_rng_state
from namm.evolution.scoring import check_scorer_targets, initial_centre, scorer_param_count
from namm.evolution.searchers import (
    build_searcher,
    load_searcher_state,
    search_spread,
    searcher_centre,
    searcher_sigma,
    searcher_state,
    start_from_distribution,
    step_size,
)
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


def _checkpoint_state(
    generation: int,
    searcher: Any,
    config: TrainConfig,
    resolved: dict[str, Any],
    problem: EvolutionProblem,
    best: BestCentre,
    wandb_run_id: str | None,
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "generation": generation,
        "center": searcher_centre(searcher),
        "sigma": searcher_sigma(searcher),
        "best_params": best.params.clone(),
        "best_validation_fitness": best.validation_fitness,
        "best_generation": best.generation,
        "best_validation_retained_ratio": best.validation_retained_ratio,
        "best_validation_score_vs_full_cache": best.validation_score_vs_full_cache,
        "param_count": problem.solution_length,
        "config": resolved,
        "searcher_state": searcher_state(searcher, config.evo.searcher),
        "rng_state": capture_rng_state(problem.generator),
        "normalisation_state": problem.normalisation_state(),
        "wandb_run_id": wandb_run_id,
        "versions": library_versions(),
    }


def _initial_centre(start: StartPoint, param_count: int, cfg: DictConfig, config: TrainConfig) -> torch.Tensor:
    if start.init_state is None:
        return initial_centre(cfg, param_count, config.evo.init.value, config.evo.init_margin)
    centre = start.init_state["best_params"]
    if centre.shape != (param_count,):
        raise ConfigError(
            f"init_from={start.init_path}: its centre has {centre.shape[0]} parameters, this run's scorer needs "
            f"{param_count}; use a checkpoint trained with the same `namm` config"
        )
    return centre


def start_sigma(evo: EvoConfig, centre: torch.Tensor) -> float:
    """The initial step size: evo.sigma, or evo.sigma_relative x the RMS of the start's parameters."""
    if evo.sigma_relative is None:
        return evo.sigma
    rms = float(centre.double().pow(2).mean().sqrt())
    if rms == 0:
        raise ConfigError(
            "evo.sigma_relative scales the step size to the start's parameters, but they are all zero "
            "(evo.init=zeros): set evo.sigma instead, or start from a trained centre (init_from)"
        )
    return evo.sigma_relative * rms


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


def _restore(
    start: StartPoint, searcher: Any, problem: EvolutionProblem, config: TrainConfig
) -> tuple[int, BestCentre, str | None]:
    """Apply the start point to a freshly built searcher; returns (generation, best, W&B run id)."""
    if start.resume_state is not None:
        state = start.resume_state
        load_searcher_state(searcher, state["searcher_state"], config.evo.searcher)
        restore_rng_state(state["rng_state"], problem.generator)
        problem.load_normalisation_state(state["normalisation_state"])
        best = BestCentre(
            state["best_params"],
            state["best_validation_fitness"],
            state.get("best_generation", 0),
            state.get("best_validation_retained_ratio"),
            state.get("best_validation_score_vs_full_cache"),
        )
        log.info("resumed from %s at generation %d", start.resume_path, state["generation"])
        return int(state["generation"]), best, state["wandb_run_id"]
    centre = searcher_centre(searcher)
    if start.init_state is not None:
        state = start.init_state
        if state["searcher_state"]["searcher"] == config.evo.searcher.value:
            start_from_distribution(searcher, state["searcher_state"], config.evo.searcher, centre)
            how = "its search distribution (step size, covariance, paths) and best centre"
        else:
            how = f"its best centre only (it used {state['searcher_state']['searcher']}, this run {config.evo.searcher.value})"
        problem.load_normalisation_state(state["normalisation_state"])
        log.info("init_from %s: starting from %s", start.init_path, how)
    return 0, BestCentre(centre), None


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
    check_scorer_targets(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    start = find_start_point(config, resolved)
    run_dir = Path(config.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    evo = config.evo
    param_count = scorer_param_count(cfg)

    logging.getLogger("evotorch").setLevel(logging.WARNING)  # its per-object INFO lines drown the log
    _seed_everything(config.seed)
    problem = EvolutionProblem(
        cfg, param_count, config.seed, FitnessRule.of(evo), evo.num_actors, evo.num_gpus_per_actor
    )
    centre = _initial_centre(start, param_count, cfg, config)
    searcher = build_searcher(problem, replace(evo, sigma=start_sigma(evo, centre)), centre)
    wandb_run = None
    finished = False
    try:
        log.info("loading the model in %s", f"{evo.num_actors} Ray actors" if evo.num_actors >= 2 else "this process")
        problem.start_workers()
        generation, best, wandb_run_id = _restore(start, searcher, problem, config)
        if start.resume_state is None and not (start.init_state or {}).get("normalisation_state"):
            problem.share_normalisation()  # calibrated once, on the first worker
        computed = problem.prepare_references(list(range(generation + 1, evo.generations + 1)))
        if computed:
            log.info("computed %d full-cache reference scores; every worker uses them", computed)
        _report_full_cache_accuracy(problem, list(range(generation + 1, evo.generations + 1)))
        metrics_log = MetricsLog(run_dir)
        metrics_log.keep_up_to(generation if start.resume_state is not None else -1)
        wandb_run = WandbRun(config.logger, run_dir, f"{config.name}-seed{config.seed}", wandb_run_id, resolved)
        if start.resume_state is None:  # where the search starts, scored like every later centre
            record: dict[str, Any] = {"generation": 0, "objective": evo.objective.value, **search_spread(searcher)}
            best = _validate(problem, searcher_centre(searcher), 0, best, record)
            state = _checkpoint_state(0, searcher, config, resolved, problem, best, wandb_run.run_id)
            _record_generation(record, state, run_dir, metrics_log, wandb_run)
            if "validation/fitness" in record:
                log.info("gen 0 (start): validation %.4f", record["validation/fitness"])
        with (
            logging_redirect_tqdm(),
            tqdm(total=evo.generations, initial=generation, desc="generations", unit="gen") as bar,
        ):
            while generation < evo.generations:
                generation += 1
                record = _run_generation(problem, searcher, generation, evo)
                centre = searcher_centre(searcher)
                if generation % evo.eval_interval == 0 or generation == evo.generations:
                    best = _validate(problem, centre, generation, best, record)
                if best.validation_fitness is None:
                    best = BestCentre(centre, None, generation)  # the current centre stands in until validated
                state = _checkpoint_state(generation, searcher, config, resolved, problem, best, wandb_run.run_id)
                _record_generation(record, state, run_dir, metrics_log, wandb_run)
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
    record: dict[str, Any], state: dict[str, Any], run_dir: Path, metrics_log: MetricsLog, wandb_run: WandbRun
) -> None:
    """metrics.jsonl, the plot, best.pt (when validation improved), latest.pt, W&B: in that order, so a kill
    at any point resumes to the same numbers (a resumed generation rewrites what latest.pt did not cover)."""
    metrics_log.append(record)
    plot_progress(metrics_log.read(), run_dir / PLOT_FILE)
    if record.get("validation/is_best"):  # before latest.pt: a kill in between must not lose the best centre
        save_checkpoint(state, run_dir / BEST)
    save_latest(state, run_dir)
    if record.get("validation/is_best"):
        wandb_run.save_checkpoint(run_dir / BEST, "best", state["generation"])
    wandb_run.log(record)


def _run_generation(problem: EvolutionProblem, searcher: Any, generation: int, evo: EvoConfig) -> dict[str, Any]:
    """One searcher step on this generation's prompts (fitness with the curriculum's memory weight); returns
    its metrics, with how far the centre moved and the searcher's step size after the step."""
    problem.generation = generation
    problem.train_rule = replace(problem.rule, memory_weight=evo.memory_weight_at(generation))
    before = searcher_centre(searcher)
    started = time.perf_counter()
    searcher.step()
    seconds = time.perf_counter() - started
    record = generation_metrics(
        generation, problem.last_outcome, problem.last_fitness, step_size(searcher), seconds, problem.train_rule
    )
    record.update(centre_movement(before, searcher_centre(searcher)))
    record.update(search_spread(searcher))
    return record
