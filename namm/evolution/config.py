"""Typed training configuration: the `evo` and `logger` groups and the root of `conf/train.yaml`.

The dataclasses are registered in Hydra's ConfigStore so a wrong type (`evo.popsize=abc`) fails while
the config is composed, and `validate_train_config` runs the value checks (`evo.sigma=-1`) before any
model is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from namm.config_resolvers import register_resolvers
from namm.errors import ConfigError
from namm.evolution.distillation import DistillConfig
from namm.evolution.scorer_protocol import Objective, Signal
from namm.evolution.searchers import available_searchers, searcher_class


class InitialCentre(Enum):
    """Where a new run's search starts (init_from, when given, replaces it)."""

    zeros = "zeros"  # the reference: every token scores exactly the threshold, so the first draws evict at random
    keep_all = "keep_all"  # the read-out bias puts every token evo.init_margin above the threshold
    distill = "distill"  # fitted to rank tokens like evo.distill.target, keeping evo.distill.retained of them


class WandbMode(Enum):
    online = "online"
    offline = "offline"
    disabled = "disabled"


RESUME_MODES = ("never", "auto")


@dataclass
class EvoConfig:
    """Search algorithm and per-generation sampling. Defaults are the CPU demo run of `python train.py`."""

    searcher: str = "cmaes_separable"  # a registered searcher (namm/evolution/searchers/, conf/evo/<name>.yaml)
    objective: Objective = Objective.memory_penalty
    memory_weight: float = 0.5  # memory_penalty only: fitness points one retained ratio of 1.0 costs
    #: memory_penalty only: [[generation, weight], ...], the training fitness's memory weight from that
    #: generation on (evo.memory_weight before the first entry); validation and best.pt use evo.memory_weight
    memory_weight_curriculum: list[Any] = field(default_factory=list)
    signal: Signal = Signal.task_metric
    init: InitialCentre = InitialCentre.keep_all
    init_margin: float = 0.2  # keep_all: the centre's score margin above the threshold (the read-out bias)
    distill: DistillConfig = field(default_factory=DistillConfig)  # init=distill: target, retained share, fit
    #: the NAMM weight blocks the search moves, e.g. [readout_weight, readout_bias]; the others keep the start's
    #: values. [] (default): every parameter. A short vector is what a small population can steer.
    evolve: list[str] = field(default_factory=list)
    popsize: int = 4
    sigma: float = 0.065  # initial step size (CMA-ES sigma; initial stdev of SNES/XNES/PGPE)
    sigma_relative: float | None = None  # set: the initial step size is this x the RMS of the searched start
    generations: int = 4
    center_learning_rate: float | None = None  # SNES/XNES (default 1.0) and PGPE (required)
    stdev_learning_rate: float | None = None  # SNES/XNES (scales EvoTorch's default) and PGPE (required)
    prompts_per_task: int = 2  # training prompts sampled per task each generation, shared by all candidates
    validation_prompts: int = 2  # held-out prompts per task, disjoint from training, scored at each validation
    eval_interval: int = 10  # validate the centre every this many generations (and after the last one)
    reference_floor: float = 1.0  # absolute lower bound of the full-cache denominator, in the task's score units
    reference_floor_share: float = 0.5  # and a relative one: this share of the task's validation full-cache score
    num_actors: int = 0  # >= 2: Ray actors, each loading the model once; 0 or 1: score in this process
    num_gpus_per_actor: float | None = None  # None: 1 when CUDA is available, else 0
    max_batch_rows: int | None = None  # most candidate rows per engine batch (None: the whole population chunk)

    def __post_init__(self) -> None:
        problems = []
        if self.popsize < 2:
            problems.append(f"evo.popsize must be >= 2, got {self.popsize}")
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            problems.append(f"evo.sigma is the initial step size and must be a finite number > 0, got {self.sigma}")
        for name in ("generations", "prompts_per_task", "validation_prompts", "eval_interval"):
            if getattr(self, name) < 1:
                problems.append(f"evo.{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.reference_floor) and self.reference_floor > 0):
            problems.append(f"evo.reference_floor must be a finite number > 0, got {self.reference_floor}")
        if not (math.isfinite(self.reference_floor_share) and 0 <= self.reference_floor_share <= 1):
            problems.append(f"evo.reference_floor_share must be in [0, 1], got {self.reference_floor_share}")
        if not (math.isfinite(self.memory_weight) and self.memory_weight >= 0):
            problems.append(f"evo.memory_weight must be a finite number >= 0, got {self.memory_weight}")
        if self.objective == Objective.memory_penalty and self.memory_weight == 0:
            problems.append("evo.objective=memory_penalty needs evo.memory_weight > 0 (or use evo.objective=score)")
        if self.sigma_relative is not None and not (math.isfinite(self.sigma_relative) and self.sigma_relative > 0):
            problems.append(f"evo.sigma_relative must be a finite number > 0 or null, got {self.sigma_relative}")
        problems += self._curriculum_problems()
        if not (math.isfinite(self.init_margin) and self.init_margin > 0):
            problems.append(f"evo.init_margin must be a finite number > 0, got {self.init_margin}")
        for name in ("center_learning_rate", "stdev_learning_rate"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                problems.append(f"evo.{name} must be a finite number > 0 or null, got {value}")
        try:
            problems += searcher_class(self.searcher).config_problems(self)
        except KeyError:
            problems.append(
                f"evo.searcher={self.searcher!r} is not a searcher; choose evo=<name> with one of "
                f"{', '.join(available_searchers())}"
            )
        if self.num_actors < 0:
            problems.append(f"evo.num_actors must be >= 0, got {self.num_actors}")
        elif self.num_actors > self.popsize:
            problems.append(f"evo.num_actors ({self.num_actors}) must not exceed evo.popsize ({self.popsize})")
        if self.max_batch_rows is not None and self.max_batch_rows < 1:
            problems.append(f"evo.max_batch_rows must be >= 1 or null (all rows at once), got {self.max_batch_rows}")
        if self.num_gpus_per_actor is not None and self.num_gpus_per_actor < 0:
            problems.append(f"evo.num_gpus_per_actor must be >= 0 or null, got {self.num_gpus_per_actor}")
        if problems:
            raise ConfigError("Invalid evo config: " + "; ".join(problems) + ".")

    def _curriculum_problems(self) -> list[str]:
        curriculum = self.memory_weight_curriculum
        if not curriculum:
            return []
        example = "e.g. evo.memory_weight_curriculum=[[1,0.2],[4,0.5]]"
        if self.objective != Objective.memory_penalty:
            return [f"evo.memory_weight_curriculum needs evo.objective=memory_penalty (got {self.objective.value})"]
        if any(not isinstance(entry, list | tuple) or len(entry) != 2 for entry in curriculum):
            return [f"evo.memory_weight_curriculum entries must be [generation, weight] pairs ({example})"]
        generations = [entry[0] for entry in curriculum]
        problems = []
        if any(not isinstance(g, int) or g < 1 for g in generations) or generations != sorted(set(generations)):
            problems.append(f"evo.memory_weight_curriculum generations must be increasing integers >= 1 ({example})")
        if any(not (isinstance(w, int | float) and math.isfinite(w) and w >= 0) for _, w in curriculum):
            problems.append("evo.memory_weight_curriculum weights must be finite numbers >= 0")
        return problems

    def memory_weight_at(self, generation: int) -> float:
        """The training fitness's memory weight at `generation` (the curriculum's, else evo.memory_weight)."""
        weight = self.memory_weight
        for start, value in self.memory_weight_curriculum:
            if generation >= start:
                weight = float(value)
        return weight


@dataclass
class LoggerConfig:
    """Weights & Biases; `online` falls back to `offline` when no credentials are found."""

    mode: WandbMode = WandbMode.online
    project: str = "namm-evolution"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    log_checkpoints: bool = True  # upload best.pt (and the final latest.pt) as artifacts when online


@dataclass
class TrainConfig:
    """Root of `conf/train.yaml`. `model`, `task`, `namm` and `engine` (EngineConfig fields) are owned by
    their modules and left untyped here; the scorer reads them."""

    name: str = "default"  # experiment name; with the seed it fixes the run directory
    seed: int = 0
    resume: str = "never"  # never | auto | <checkpoint file or run directory>
    init_from: str | None = None  # checkpoint (file or run directory) whose centre starts the search
    init_from_any_model: bool = False  # allow init_from a checkpoint of another model (a transfer experiment)
    out_dir: str = "runs/${name}/seed${seed}"
    evo: EvoConfig = field(default_factory=EvoConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    scorer: Any = None  # {_target_: <a scorer class>, ...its options}: conf/train.yaml names the default
    model: Any = None
    task: Any = None
    namm: Any = None
    engine: Any = None
    schedule: str = "prefill"  # prefill | post_prefill (namm.engine.SCHEDULES), read as engine.schedule

    def __post_init__(self) -> None:
        problems = []
        if self.resume not in RESUME_MODES and not Path(self.resume).exists():
            problems.append(
                f"resume must be 'never', 'auto' or an existing checkpoint file or run directory, got {self.resume!r}"
            )
        if self.init_from is not None and not Path(self.init_from).exists():
            problems.append(
                f"init_from={self.init_from!r} does not exist (give a best.pt/latest.pt or its run directory)"
            )
        if self.init_from is not None and self.resume not in ("never", "auto"):
            problems.append("give at most one of init_from (start a new run from a centre) and resume=<path>")
        if not isinstance(self.scorer, dict) or not self.scorer.get("_target_"):
            problems.append(
                "scorer must hold `_target_`, the scorer class (namm.evolution.scorer_protocol.ScorerFactory)"
            )
        if not self.name.strip():
            problems.append("name must be a non-empty string (it names the run directory)")
        if problems:
            raise ConfigError("Invalid train config: " + "; ".join(problems) + ".")


def register_configs() -> None:
    """Make the schemas and resolvers available to `conf/train.yaml` (`defaults: [train_schema, ...]`)."""
    register_resolvers()
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)


def validate_train_config(cfg: DictConfig) -> TrainConfig:
    """Run every value check of the schema; raises ConfigError naming the bad key and its fix. The groups the
    scorer reads (`model`, `task`, `namm`, `engine`, and whether `evo.objective` fits the NAMM's budget) are
    checked by the scorer's own `check_config`, which the trainer runs next."""
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]
