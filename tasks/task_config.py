"""The `task` config group's schema: which tasks, where their data is, and every prompt/decoding setting.

The yaml files in conf/task/ are validated against `TaskConfig` by `task_config(cfg)`: an unknown key or a
wrongly typed value is an error before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from namm.typed_config import typed_config
from tasks.longbench import LONGBENCH_TASKS
from tasks.metrics import CODE_SIM_BACKENDS
from tasks.synthetic import SYNTHETIC_TASKS, SyntheticParams
from tasks.synthetic.niah import HAYSTACKS

if TYPE_CHECKING:
    from omegaconf import DictConfig


@dataclass
class TaskConfig:
    name: str = "passkey"  # the config's own name (a task or a suite)
    tasks: list[str] = field(default_factory=lambda: ["passkey"])
    #: LongBench: first N lines (null: all); synthetic: how many samples to generate
    num_samples: int | None = 20
    # -- LongBench data
    data_dir: str | None = None  # folder of unzipped <task>.jsonl; null: download data.zip from the hub once
    cache_dir: str | None = None  # where the hub data is unzipped (null: $NAMM_DATA_CACHE or ~/.cache/namm)
    # -- prompt pipeline (null: the model's default)
    max_prompt_tokens: int | None = None  # middle-truncation budget; null: model max_context - max_new_tokens
    use_chat_template: bool | None = None
    add_bos: bool | None = None  # null: whatever the tokenizer adds by default
    code_sim_backend: str = "difflib"  # "difflib" (official requirements, NAMM reference) or "lcs" (SnapKV et al.)
    # -- synthetic tasks
    context_length: int = 2048  # prompt tokens, chat wrapper included
    needle_depth: float | None = None  # 0..1; null: random per needle
    seed: int = 42
    haystack: str | None = None  # niah_*: "noise" or "needle"; null: the task's default

    def __post_init__(self) -> None:
        unknown = [name for name in self.tasks if name not in LONGBENCH_TASKS and name not in SYNTHETIC_TASKS]
        if unknown:
            raise ValueError(
                f"Unknown task(s) {unknown}. LongBench: {sorted(LONGBENCH_TASKS)}; "
                f"synthetic: {sorted(SYNTHETIC_TASKS)}."
            )
        if not self.tasks:
            raise ValueError("task.tasks is empty; name at least one task.")
        if self.code_sim_backend not in CODE_SIM_BACKENDS:
            raise ValueError(f"code_sim_backend must be one of {CODE_SIM_BACKENDS}, got {self.code_sim_backend!r}.")
        if self.num_samples is not None and self.num_samples < 1:
            raise ValueError(f"num_samples must be positive or null, got {self.num_samples}.")
        if self.num_samples is None and any(name in SYNTHETIC_TASKS for name in self.tasks):
            raise ValueError("Synthetic tasks need num_samples (how many prompts to generate).")
        if self.haystack is not None and self.haystack not in HAYSTACKS:
            raise ValueError(f"haystack must be one of {HAYSTACKS} or null, got {self.haystack!r}.")
        SyntheticParams(self.context_length, self.needle_depth, self.seed, self.haystack)  # range checks
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 2:
            raise ValueError(f"max_prompt_tokens must be at least 2 or null, got {self.max_prompt_tokens}.")


def task_config(cfg: DictConfig | dict) -> TaskConfig:
    """Validate a composed `task` config against the schema and return it as a dataclass (or raise ConfigError)."""
    return typed_config(TaskConfig, cfg, "task")
