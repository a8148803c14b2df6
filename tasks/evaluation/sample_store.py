"""Per-sample results of one (policy, task, settings) as append-only JSON lines: the resume point.

Each finished batch is appended and fsynced, so a killed evaluation loses at most the batch in flight. On
reopening, a line cut by the kill is dropped (and the file truncated to the last complete line, so the next
append starts a fresh line), a record whose prompt no longer matches is discarded, and an index already
seen is ignored: a sample is never counted twice.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tasks.fingerprints import settings_digest

log = logging.getLogger(__name__)


def prompt_digest(prompt_ids: Sequence[int]) -> str:
    return settings_digest(list(prompt_ids), 16)  # a list: sorting keys changes nothing


class SampleStore:
    """`<run dir>/samples/<policy label>/<task>-<key>.jsonl`; records are dicts with at least `index` and `prompt_sha`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[int, dict[str, Any]] = {}

    def open(self, prompt_digests: dict[int, str]) -> SampleStore:
        """Load what a previous run wrote for these samples (index -> prompt digest)."""
        self.records = {}
        if not self.path.exists():
            return self
        raw = self.path.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1]
        if len(complete) != len(raw):
            log.warning("%s: dropping a line cut by an interrupted run", self.path)
            with self.path.open("r+b") as file:
                file.truncate(len(complete))
        stale = 0
        for line in complete.decode("utf-8").splitlines():
            record = json.loads(line)
            index = record["index"]
            if prompt_digests.get(index) != record["prompt_sha"]:
                stale += 1
            elif index not in self.records:
                self.records[index] = record
        if stale:
            log.warning("%s: ignoring %d record(s) whose prompt differs from this run's", self.path, stale)
        return self

    def missing(self, indices: Iterable[int]) -> list[int]:
        return [index for index in indices if index not in self.records]

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        fresh = [record for record in records if record["index"] not in self.records]
        if not fresh:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as file:
            file.write("".join(json.dumps(record, sort_keys=True) + "\n" for record in fresh))
            file.flush()
            os.fsync(file.fileno())
        self.records.update({record["index"]: record for record in fresh})

    def ordered(self, indices: Iterable[int]) -> list[dict[str, Any]]:
        """The stored records of `indices`, in that order (every index must be present)."""
        return [self.records[index] for index in indices]
