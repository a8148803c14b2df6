"""Per-sample results of one (policy, task, settings) as append-only JSON lines: the resume point.

Each finished batch is appended and fsynced, so a killed evaluation loses at most the batch in flight. On
reopening, a line cut by the kill is dropped (and the file truncated to the last complete line, so the next
append starts a fresh line), a record whose prompt no longer matches is discarded, and an index already
seen is ignored: a sample is never counted twice. A line that is not a valid record (garbled, a field missing
or of the wrong type, a NaN score) makes the file corrupt: it is set aside (renamed, kept), the valid records
are written back, and the samples of the bad lines are run again.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from namm.atomic_io import atomic_write_text
from namm.read_back import set_aside
from tasks.evaluation.schema import SAMPLE_RECORD_SCHEMA

log = logging.getLogger(__name__)


_JSON_TYPES = {"integer": int, "number": (int, float), "string": str, "array": list}


def _value_problem(value: Any, schema: dict[str, Any], field: str) -> str | None:
    """What is wrong with `value` under the subset of JSON Schema SAMPLE_RECORD_SCHEMA uses (None: nothing);
    unlike JSON Schema, NaN and infinities are refused."""
    kind = schema.get("type")
    if kind is not None and (isinstance(value, bool) or not isinstance(value, _JSON_TYPES[kind])):
        return f"field {field} must be of type {kind}, got {value!r}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"field {field} is {value}, not a finite number"
    if ("minimum" in schema and value < schema["minimum"]) or ("maximum" in schema and value > schema["maximum"]):
        return f"field {field} is {value}, outside [{schema.get('minimum')}, {schema.get('maximum')}]"
    if kind == "array":
        return next(
            filter(None, (_value_problem(item, schema["items"], f"{field}[{i}]") for i, item in enumerate(value))),
            None,
        )
    return None


def record_problem(line: str) -> str | None:
    """What makes one stored line unusable as a sample record (None: it is a valid record)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        return f"not valid JSON ({error.msg})"
    if not isinstance(record, dict):
        return f"not a JSON object ({type(record).__name__})"
    missing = [name for name in SAMPLE_RECORD_SCHEMA["required"] if name not in record]
    if missing:
        return f"field(s) {missing} missing"
    properties = SAMPLE_RECORD_SCHEMA["properties"]
    return next(filter(None, (_value_problem(record[name], properties[name], name) for name in properties)), None)


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
        lines = self._valid_lines(complete)
        stale = 0
        for line in lines:
            record = json.loads(line)
            index = record["index"]
            if prompt_digests.get(index) != record["prompt_sha"]:
                stale += 1
            elif index not in self.records:
                self.records[index] = record
        if stale:
            log.warning("%s: ignoring %d record(s) whose prompt differs from this run's", self.path, stale)
        return self

    def _valid_lines(self, complete: bytes) -> list[str]:
        """The lines that are valid records; if any is not, the file is set aside and those are written back."""
        text = complete.decode("utf-8", errors="replace")
        lines = text.splitlines()
        problems = [(number, problem) for number, line in enumerate(lines, 1) if (problem := record_problem(line))]
        if not problems:
            return lines
        number, problem = problems[0]
        reason = f"{self.path}: {len(problems)} corrupt line(s), the first line {number}: {problem}"
        set_aside(self.path, reason)
        bad = {number for number, _ in problems}
        valid = [line for number, line in enumerate(lines, 1) if number not in bad]
        atomic_write_text(self.path, "".join(line + "\n" for line in valid))
        return valid

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
