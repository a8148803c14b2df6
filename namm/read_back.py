"""Reading back what a run wrote: parse a JSON file, check its fields, set a corrupt cache file aside.

Nothing read from disk is trusted unchecked: a truncated, garbled or hand-edited file raises
`CorruptFileError` naming the file and the field. A cache (reference scores, per-sample results) can be
recomputed, so its reader moves the bad file aside (kept for inspection, never deleted) and starts afresh.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from namm.errors import CorruptFileError

log = logging.getLogger(__name__)

CORRUPT_SUFFIX = ".corrupt"


def read_json(path: Path, fix: str) -> Any:
    """The JSON document in `path`; an unreadable, non-UTF-8 or invalid file raises CorruptFileError with `fix`."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise CorruptFileError(f"{path} is not a text file (byte {error.start} is not UTF-8); {fix}") from None
    except json.JSONDecodeError as error:
        raise CorruptFileError(
            f"{path} is not valid JSON ({error.msg} at line {error.lineno} column {error.colno}; truncated?); {fix}"
        ) from None


def finite_number(value: Any, path: Path, field: str, fix: str) -> float:
    """`value` as a float; a string, a bool, null, NaN or an infinity raises CorruptFileError naming `field`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CorruptFileError(f"{path}: field {field} must be a number, got {value!r}; {fix}")
    if not math.isfinite(value):
        raise CorruptFileError(f"{path}: field {field} is {value}, not a finite number; {fix}")
    return float(value)


def set_aside(path: Path, reason: str) -> Path:
    """Rename a corrupt file to `<name>.corrupt-<UTC time>` beside it (kept, not deleted) and say so."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}{CORRUPT_SUFFIX}-{stamp}-{os.getpid()}")
    os.replace(path, aside)
    log.warning("%s; set it aside as %s and recomputing what it held", reason, aside)
    return aside
