"""A task's prompts and an evaluation's per-sample outputs as `datasets` tables, for analysis with the usual
tools (filtering, pandas, the hub).

`prompts_dataset` gives a prepared task's samples a fingerprint made from its settings record, so datasets'
caches of anything mapped over them follow the settings (a new seed or context length is a new table).
`evaluation_samples` reads the jsonl files an evaluation wrote with datasets' json loader, one table with
`policy` and `task` columns. The engine and the evaluation keep their own lists and files: resuming needs
per-batch appends with fsync and dropping a line cut by a kill, which an Arrow table does not do.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, DatasetInfo, Features, Sequence, Value, concatenate_datasets, load_dataset

from tasks.evaluation.policy_runs import SAMPLES_DIR
from tasks.fingerprints import settings_digest
from tasks.runner import PreparedTask

PROMPT_FEATURES = Features(
    {
        "index": Value("int64"),
        "prompt_ids": Sequence(Value("int64")),
        "answers": Sequence(Value("string")),
        "all_classes": Sequence(Value("string")),
        "length": Value("int64"),
        "truncated": Value("bool"),
    }
)


def settings_fingerprint(task: PreparedTask) -> str:
    """Hash of the task's whole settings record (its data source included)."""
    return settings_digest(task.settings.to_dict(), 16)


def prompts_dataset(task: PreparedTask) -> Dataset:
    """The task's samples in index order (token ids, answers, ...), fingerprinted by its settings."""
    columns = {name: [getattr(sample, name) for sample in task.samples] for name in PROMPT_FEATURES}
    table = Dataset.from_dict(columns, features=PROMPT_FEATURES).data
    info = DatasetInfo(description=f"{task.spec.name} prompts", features=PROMPT_FEATURES)
    return Dataset(table, info=info, fingerprint=settings_fingerprint(task))


def evaluation_samples(run_dir: str | Path, cache_dir: str | Path | None = None) -> Dataset:
    """Every record under `<run_dir>/samples/<policy>/<task>-<key>.jsonl` (read after the evaluation ended:
    an interrupted one may leave a cut last line, which rerunning it repairs)."""
    files = sorted(Path(run_dir, SAMPLES_DIR).glob("*/*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{Path(run_dir, SAMPLES_DIR)} holds no per-sample files; run evaluate.py first.")
    tables = []
    for path in files:
        table = load_dataset("json", data_files=str(path), split="train", cache_dir=cache_dir and str(cache_dir))
        table = table.add_column("policy", [path.parent.name] * len(table))
        tables.append(table.add_column("task", [path.stem.rsplit("-", 1)[0]] * len(table)))
    return concatenate_datasets(tables)
