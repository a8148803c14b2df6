"""Short digests of settings: the sha256 of their canonical JSON (sorted keys), cut to a few hex digits.

Cache files, sample stores and dataset views are named by such digests, so each call site keeps the
length and JSON options its files on disk were written with: changing either would orphan them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any


def canonical_json(value: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """`value` as JSON with sorted keys (`default` turns what JSON cannot hold into something it can)."""
    return json.dumps(value, sort_keys=True, default=default).encode()


def settings_digest(value: Any, length: int, default: Callable[[Any], Any] | None = None) -> str:
    """The first `length` hex digits of the sha256 of `canonical_json(value, default)`."""
    return hashlib.sha256(canonical_json(value, default)).hexdigest()[:length]


def prompt_digest(prompt_ids: Sequence[int]) -> str:
    """A prompt token for token: the first 16 hex digits of sha256(json(token ids)) (sample records'
    `prompt_sha`, a checkpoint's provenance)."""
    return settings_digest(list(prompt_ids), 16)  # a list: sorting keys changes nothing
