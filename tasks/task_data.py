"""Is every task's data there? Checked before the model loads (training and evaluation), with the way to get
what is missing."""

from __future__ import annotations

from namm.errors import ConfigError
from tasks.longbench_data import HUB_ARCHIVE, HUB_REPO, LongBenchLineError, load_longbench
from tasks.synthetic import SYNTHETIC_TASKS
from tasks.task_config import TaskConfig


class TaskDataError(FileNotFoundError, ConfigError):
    """A task's records are not on disk and could not be fetched: a setting to fix (`task.data_dir`), so
    entry points print its message alone."""


def check_task_data(config: TaskConfig) -> dict[str, int]:
    """Read every LongBench task's records (downloading the hub archive once when `data_dir` is null);
    returns how many samples each task will have (`num_samples` caps the records)."""
    counts = {}
    for name in config.tasks:
        if name in SYNTHETIC_TASKS:  # generated locally from the seed
            counts[name] = int(config.num_samples)
            continue
        try:
            records, _ = load_longbench(name, config.data_dir, config.cache_dir)
        except LongBenchLineError as error:  # the data is there, one line is bad: that line is the whole story
            raise LongBenchLineError(
                f"task {name!r}: {error} Fix or remove that line (sample indices follow the line order)."
            ) from None
        except Exception as error:  # a missing file, a bad record or no network: same remedy, cause chained
            where = f"task.data_dir={config.data_dir}" if config.data_dir else "the hub (task.data_dir=null)"
            raise TaskDataError(
                f"task {name!r} has no data from {where}: {error}\n"
                f"Get LongBench once: download {HUB_ARCHIVE} from the {HUB_REPO} dataset on the Hugging Face hub "
                f'(python -c "from tasks.longbench_data import download_longbench; print(download_longbench())" '
                f"prints the folder), then pass task.data_dir=<folder with {name}.jsonl>. Synthetic tasks "
                f"({', '.join(sorted(SYNTHETIC_TASKS))}) need no data."
            ) from error
        counts[name] = len(records) if config.num_samples is None else min(len(records), config.num_samples)
    return counts
