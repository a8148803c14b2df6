"""Short digests of settings: the sha256 of their canonical JSON (sorted keys), cut to a few hex digits.

Cache files, sample stores and dataset views are named by such digests, so each call site keeps the
length and JSON options its files on disk were written with: changing either would orphan them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any


def canonical_json(value: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """`value` as JSON with sorted keys (`default` turns what JSON cannot hold into something it can)."""
    return json.dumps(value, sort_keys=True, default=default).encode()


def settings_digest(value: Any, length: int, default: Callable[[Any], Any] | None = None) -> str:
    """The first `length` hex digits of the sha256 of `canonical_json(value, default)`."""
    return hashlib.sha256(canonical_json(value, default)).hexdigest()[:length]
