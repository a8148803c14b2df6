"""LongBench and synthetic long-context tasks: prompts, metrics, scoring and full-cache references.

Typical use:
    tasks = prepare_tasks(task_config(cfg.task), loaded_model)
    run = run_task(tasks[0], engine_generator(engine), loaded_model.tokenizer)   # tasks.generators
"""

from tasks.preparation import ModelInfo, prepare_tasks
from tasks.references import ReferenceCache, ReferenceScores, default_reference_dir, fill_references
from tasks.runner import Generator, PreparedTask, TaskRun, run_task
from tasks.task_config import TaskConfig, task_config
from tasks.task_scores import category_means, length_buckets, longbench_en_mean, task_score
from tasks.task_settings import TaskSettings

__all__ = [
    "Generator",
    "ModelInfo",
    "PreparedTask",
    "ReferenceCache",
    "ReferenceScores",
    "TaskConfig",
    "TaskRun",
    "TaskSettings",
    "category_means",
    "default_reference_dir",
    "fill_references",
    "length_buckets",
    "longbench_en_mean",
    "prepare_tasks",
    "run_task",
    "task_config",
    "task_score",
]
