"""Typed schema of `conf/evaluate.yaml`: which NAMM, which policies, how budgets are matched, where results go.

Registered in Hydra's ConfigStore as `evaluate_schema`, so a wrongly typed value fails while the config is
composed; `validate_evaluate_config` runs the value checks before anything is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from namm.budget import Budget
from namm.config_resolvers import register_resolvers
from namm.errors import ConfigError
from namm.evolution.config import LoggerConfig, WandbMode
from namm.pretrained import PARAMS_KINDS
from namm.typed_config import typed_config

#: `checkpoint=auto`: the newest checkpoint under `train_dir`, else the zero-parameter NAMM
AUTO_CHECKPOINT = "auto"
#: `checkpoint=zero`: the zero-parameter NAMM (keeps every token), whatever checkpoints exist
ZERO_CHECKPOINT = "zero"
NAMM_POLICY = "namm"
#: what a matched baseline's retained ratio is matched on (tasks.evaluation.budget_matching.MATCH_TARGETS)
MATCH_ON = ("prompt_end", "generation_end")
#: what to do with evaluation prompts a NAMM was trained or validated on (tasks.evaluation.held_out)
TRAINED_PROMPTS = ("refuse", "skip", "allow")
MAX_DEPTH_BINS = 20  # the depth table's columns: more would hold a prompt or two each


@dataclass
class StatisticsConfig:
    """How intervals and paired tests are computed (tasks.evaluation.intervals); recorded in results.json."""

    seed: int = 0  # bootstrap seed: the same seed and prompts give the same intervals
    resamples: int = 2000  # bootstrap resamples
    level: float = 0.95  # interval level; a paired difference is claimed at p < 1 - level
    weak_full_score: float = 50.0  # tasks where the full cache scores below this are flagged in the table

    def problems(self) -> list[str]:
        found = []
        if self.resamples < 100:
            found.append(f"statistics.resamples must be >= 100, got {self.resamples}")
        if not 0.5 <= self.level < 1:
            found.append(f"statistics.level must be in [0.5, 1), got {self.level}")
        if not 0 <= self.weak_full_score <= 100:
            found.append(f"statistics.weak_full_score is a score in [0, 100], got {self.weak_full_score}")
        return found


def _disabled_logger() -> LoggerConfig:
    return LoggerConfig(mode=WandbMode.disabled, project="namm-evaluation", log_checkpoints=False)


@dataclass
class EvaluateConfig:
    """Root of `conf/evaluate.yaml`; `model`, `task`, `namm`, `policy` and `baselines` are owned by their groups."""

    name: str = "default"  # names the output directory
    out_dir: str = "runs/eval/${name}"  # results, per-sample predictions and plots; rerunning resumes here
    checkpoint: str = AUTO_CHECKPOINT  # auto | zero | <checkpoint .pt, training run directory or exported NAMM folder>
    checkpoints: list[str] | None = None  # several NAMMs side by side (each a checkpoint, run or sweep directory);
    # replaces `checkpoint`
    checkpoint_params: str = "best"  # best: the best validated centre (best_params); center: the search mean
    train_dir: str = "runs/default"  # where checkpoint=auto looks for training runs (<train_dir>/seed*/)
    compare: list[str] | None = (
        None  # policies run on the same samples; null: `policy`, else full, namm and every registered policy
    )
    match_budget: bool | None = None  # budgeted baselines at the NAMM's ratio; null: when a trained NAMM runs
    budget_tolerance: float = 0.02  # accepted relative gap between a matched baseline's and the NAMM's ratio
    budget_attempts: int = 3  # runs per baseline and task to land within the tolerance
    match_on: str = "prompt_end"  # prompt_end: the NAMM's retained ratio once the prompt is in | generation_end
    trained_prompts: str = "refuse"  # a NAMM's training/validation prompt among the evaluated ones: refuse | skip
    # (drop it from every policy's run) | allow (run it anyway: warned and recorded in results.json)
    statistics: StatisticsConfig = field(default_factory=StatisticsConfig)
    front: bool = False  # score-memory front: every budgeted baseline at each of `front_budgets` as well
    front_budgets: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5, 0.75])
    batch_size: int = 4  # prompts per engine call (rows are left-padded)
    #: namm.engine.EngineConfig fields; a null one takes the checkpoints' training setting, else the engine default
    engine: Any = None
    schedule: str | None = None  # prefill | post_prefill (namm.engine.SCHEDULES), read as engine.schedule
    plots: bool = True
    eviction_maps: int = 0  # N > 0: for the first N prompts of each task, one PNG per policy of the tokens kept
    answer_depth_bins: int = 4  # synthetic tasks: scores by the answer's haystack depth, in this many bins (0: none)
    progress: bool = True
    logger: LoggerConfig = field(default_factory=_disabled_logger)
    model: Any = None
    task: Any = None
    namm: Any = None  # null: the checkpoint's own NAMM config (the reference BAM for the zero NAMM)
    policy: Any = None  # one policy's settings (`policy=h2o policy.budget_ratio=0.3`)
    baselines: Any = None  # every baseline's settings from conf/policy/, used by `compare`

    def __post_init__(self) -> None:
        problems = []
        if not self.name.strip():
            problems.append("name must be a non-empty string (it names the output directory)")
        if self.checkpoint_params not in PARAMS_KINDS:
            problems.append(f"checkpoint_params must be one of {PARAMS_KINDS}, got {self.checkpoint_params!r}")
        if not (math.isfinite(self.budget_tolerance) and 0 < self.budget_tolerance < 1):
            problems.append(f"budget_tolerance is a relative gap in (0, 1), got {self.budget_tolerance}")
        if self.budget_attempts < 1:
            problems.append(f"budget_attempts must be >= 1, got {self.budget_attempts}")
        if self.eviction_maps < 0:
            problems.append(f"eviction_maps is a prompt count per task (0: none), got {self.eviction_maps}")
        if not 0 <= self.answer_depth_bins <= MAX_DEPTH_BINS:
            problems.append(
                f"answer_depth_bins is a number of depth bins in [0, {MAX_DEPTH_BINS}] (0: no table), got "
                f"{self.answer_depth_bins}"
            )
        if self.match_on not in MATCH_ON:
            problems.append(f"match_on must be one of {MATCH_ON}, got {self.match_on!r}")
        if self.trained_prompts not in TRAINED_PROMPTS:
            problems.append(f"trained_prompts must be one of {TRAINED_PROMPTS}, got {self.trained_prompts!r}")
        problems += self.statistics.problems()
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.compare is not None:
            if not self.compare:
                problems.append("compare is empty; name at least one policy, e.g. compare=[full,namm,h2o]")
            duplicates = sorted({name for name in self.compare if self.compare.count(name) > 1})
            if duplicates:
                problems.append(f"compare names {duplicates} more than once")
        if not self.front_budgets or not all(map(_is_budget_ratio, self.front_budgets)):
            problems.append(f"front_budgets must be budget ratios in (0, 1], got {list(self.front_budgets)}")
        elif len(set(self.front_budgets)) != len(self.front_budgets):
            problems.append(f"front_budgets repeats a budget: {list(self.front_budgets)}")
        if self.checkpoints is not None and not self.checkpoints:
            problems.append("checkpoints is empty; give at least one checkpoint, run or sweep directory")
        if problems:
            raise ConfigError("Invalid evaluate config: " + "; ".join(problems) + ".")


def _is_budget_ratio(value: float) -> bool:
    """Whether `value` is a budget ratio by the one rule, `namm.budget.Budget`'s."""
    try:
        Budget(ratio=value)
    except ValueError:
        return False
    return True


def register_configs() -> None:
    """Make the schema and resolvers available to `conf/evaluate.yaml` (`defaults: [evaluate_schema, ...]`)."""
    register_resolvers()
    ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)


def validate_evaluate_config(cfg: DictConfig) -> EvaluateConfig:
    """Every type and value check of the schema; raises ConfigError naming the key and the fix."""
    return typed_config(EvaluateConfig, cfg)
