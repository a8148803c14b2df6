"""LongBench records from unzipped jsonl files, or from the hub's `data.zip` downloaded once and cached.

The sample index is the jsonl line order (reference scores are keyed by it), so every line must parse:
a malformed line, a blank line or a missing field is an error naming the file and line, never skipped.
The checked lines become a `datasets.Dataset` (`longbench_dataset`): parsed once into datasets' Arrow
cache, fingerprinted by the file's path, size and modification time (an edited file is read again),
memory-mapped on every later read, or streamed without a cache (`streaming=True`). `datasets`' own json
loader is not used because its errors name neither the file nor the line.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from namm.errors import CorruptFileError

if TYPE_CHECKING:
    from datasets import Dataset, Features, IterableDataset

HUB_REPO = "THUDM/LongBench"
HUB_ARCHIVE = "data.zip"
RECORD_FIELDS = ("input", "context", "answers", "length", "dataset", "language", "all_classes", "_id")


class LongBenchLineError(CorruptFileError):
    """A LongBench file is there but one of its lines is not a record; the message names the file and line."""


@dataclass(frozen=True)
class LongBenchRecord:
    """One jsonl line, all 8 fields."""

    input: str
    context: str
    answers: tuple[str, ...]
    length: int
    dataset: str
    language: str
    all_classes: tuple[str, ...] | None
    id: str


def default_cache_dir() -> Path:
    """Where the unzipped hub data lives: $NAMM_DATA_CACHE, else ~/.cache/namm/longbench."""
    return Path(os.environ.get("NAMM_DATA_CACHE", Path.home() / ".cache" / "namm" / "longbench"))


def download_longbench(cache_dir: str | Path | None = None, revision: str = "main") -> Path:
    """Fetch THUDM/LongBench's data.zip through the hub client (as `datasets` does) and unzip it once.

    Returns the folder holding `<task>.jsonl` / `<task>_e.jsonl`, named by the dataset commit.
    """
    from huggingface_hub import hf_hub_download  # imported here: only this path needs the network
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:  # a copy already in the hub cache needs no network
        archive = hf_hub_download(HUB_REPO, HUB_ARCHIVE, repo_type="dataset", revision=revision, local_files_only=True)
    except LocalEntryNotFoundError:
        _check_hub_reachable()
        archive = hf_hub_download(HUB_REPO, HUB_ARCHIVE, repo_type="dataset", revision=revision)
    archive = Path(archive)
    commit = archive.parent.name  # hub cache layout: .../snapshots/<commit>/data.zip
    target = Path(cache_dir or default_cache_dir()) / commit
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent))
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(staging)
        inner = staging / "data" if (staging / "data").is_dir() else staging
        inner.rename(target)  # atomic: a half-extracted folder is never seen as complete
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _check_hub_reachable() -> None:
    """Fail at once when the hub's host does not resolve: the hub client would retry for ~40 s first.

    Skipped behind a proxy, where the name may resolve only there."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return
    host = urlparse(constants.ENDPOINT).hostname or ""
    try:
        socket.getaddrinfo(host, 443)
    except OSError as error:
        raise ConnectionError(f"cannot reach the Hugging Face hub ({host}: {error})") from None


def task_file(task: str, data_dir: str | Path) -> Path:
    path = Path(data_dir) / f"{task}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"LongBench file {path} not found. Point data_dir at the folder of unzipped jsonl files from "
            f"{HUB_REPO}'s {HUB_ARCHIVE}, or set data_dir=null to download it from the hub."
        )
    return path


def _record(raw: object, where: str) -> LongBenchRecord:
    if not isinstance(raw, dict):
        raise LongBenchLineError(f"{where}: expected a JSON object, got {type(raw).__name__}.")
    missing = [name for name in RECORD_FIELDS if name not in raw]
    if missing:
        raise LongBenchLineError(f"{where}: missing field(s) {missing}; a LongBench record has {list(RECORD_FIELDS)}.")
    answers, classes = raw["answers"], raw["all_classes"]
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise LongBenchLineError(f"{where}: 'answers' must be a non-empty list of strings, got {answers!r}.")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise LongBenchLineError(f"{where}: 'all_classes' must be null or a list of strings, got {classes!r}.")
    for name in ("input", "context", "dataset", "language", "_id"):
        if not isinstance(raw[name], str):
            raise LongBenchLineError(f"{where}: field {name!r} must be a string, got {type(raw[name]).__name__}.")
    if not isinstance(raw["length"], int):
        raise LongBenchLineError(f"{where}: field 'length' must be an integer, got {raw['length']!r}.")
    return LongBenchRecord(
        input=raw["input"],
        context=raw["context"],
        answers=tuple(answers),
        length=raw["length"],
        dataset=raw["dataset"],
        language=raw["language"],
        all_classes=None if classes is None else tuple(classes),
        id=raw["_id"],
    )


def iter_records(path: str | Path) -> Iterator[LongBenchRecord]:
    """Every line of a LongBench jsonl file, in order, checked; an empty file is an error."""
    count = 0
    with Path(path).open(encoding="utf-8") as lines:
        for count, line in enumerate(lines, start=1):
            where = f"{path}, line {count}"
            if not line.strip():
                raise LongBenchLineError(f"{where}: blank line (sample indices follow line order; remove it).")
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as error:
                raise LongBenchLineError(f"{where}: malformed JSON ({error.msg} at column {error.colno}).") from None
            yield _record(raw, where)
    if count == 0:
        raise LongBenchLineError(f"{path} holds no records.")


def read_records(path: str | Path) -> list[LongBenchRecord]:
    """Every line of a LongBench jsonl file, in order (no `datasets` cache: for small files and checks)."""
    return list(iter_records(path))


def longbench_features() -> Features:
    """The 8 LongBench fields as datasets features (datasets is imported here: the engine, the scorer and
    the GPU device check import this module where datasets is not installed)."""
    from datasets import Features, Sequence, Value

    return Features(
        {
            "input": Value("string"),
            "context": Value("string"),
            "answers": Sequence(Value("string")),
            "length": Value("int64"),
            "dataset": Value("string"),
            "language": Value("string"),
            "all_classes": Sequence(Value("string")),
            "_id": Value("string"),
        }
    )


def _rows(path: str, size: int, modified_ns: int) -> Iterator[dict]:
    """datasets' generator: `size` and `modified_ns` are only there to key the cache to the file's state."""
    for record in iter_records(path):
        row = asdict(record)
        row["_id"] = row.pop("id")
        yield row


def longbench_dataset(
    task: str,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    streaming: bool = False,
) -> Dataset | IterableDataset:
    """One task's records as a `datasets` table in line order (columns: the 8 LongBench fields).

    `data_dir`: a folder of unzipped jsonl files (null: the hub's data.zip, cached under `cache_dir`). The
    Arrow cache lives in `<cache_dir>/datasets`; `streaming=True` reads the file lazily instead.
    """
    from datasets import Dataset, IterableDataset
    from datasets.exceptions import DatasetGenerationError

    path = task_file(task, download_longbench(cache_dir) if data_dir is None else data_dir).resolve()
    stat = path.stat()
    arguments = {"path": str(path), "size": stat.st_size, "modified_ns": stat.st_mtime_ns}
    if streaming:
        return IterableDataset.from_generator(_rows, features=longbench_features(), gen_kwargs=arguments)
    try:
        return Dataset.from_generator(
            _rows,
            features=longbench_features(),
            gen_kwargs=arguments,
            cache_dir=str(Path(cache_dir or default_cache_dir()) / "datasets"),
        )
    except DatasetGenerationError as error:  # datasets wraps the generator's error; ours names file and line
        raise (error.__cause__ or error) from None


def record_of(row: dict) -> LongBenchRecord:
    """A dataset row back as a LongBenchRecord."""
    classes = row["all_classes"]
    return LongBenchRecord(
        input=row["input"],
        context=row["context"],
        answers=tuple(row["answers"]),
        length=row["length"],
        dataset=row["dataset"],
        language=row["language"],
        all_classes=None if classes is None else tuple(classes),
        id=row["_id"],
    )


def load_longbench(
    task: str, data_dir: str | Path | None = None, cache_dir: str | Path | None = None
) -> tuple[list[LongBenchRecord], str]:
    """The records of `task` (e.g. "qasper", "qasper_e") and a description of where they came from."""
    if data_dir is None:
        data_dir = download_longbench(cache_dir)
        source = f"hub:{HUB_REPO}@{Path(data_dir).name}"
    else:
        source = str(Path(data_dir).resolve())
    return [record_of(row) for row in longbench_dataset(task, data_dir, cache_dir)], source
