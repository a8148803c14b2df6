"""What a generate call's memory cost: live KV bytes, the storage holding them, and the engine's overhead.

Three figures kept apart because they answer different questions. Live bytes (kept tokens x bytes per
token, summed over layers and KV heads) are what a policy saves: what the accelerator gets back with a
layout that stores exactly the kept tokens. Storage bytes are what the cache has allocated for keys and
values (live tokens plus headroom and per-head padding). Overhead bytes are everything else the engine
holds for the policy: the query buffer, slot metadata, policy state, and the temporaries it builds
(attention rows, masks, gathered copies). Temporaries inside library kernels (SDPA's own workspace)
are not counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PeakAndFinal:
    """The largest value a figure reached during the call and its value when the call returned."""

    peak: int
    final: int


@dataclass(frozen=True)
class MemoryUsage:
    """One row's memory figures; storage and overhead belong to the whole batch the row ran in."""

    live_kv_bytes: PeakAndFinal  # this row's kept tokens x bytes per token, summed over layers and KV heads
    batch_live_kv_bytes: PeakAndFinal  # the same summed over the batch's rows at the same moment
    batch_storage_bytes: PeakAndFinal  # key/value storage the cache allocated for the batch
    batch_overhead_bytes: PeakAndFinal  # query buffer, slot metadata, policy state and temporaries


class MemoryMeter:
    """Running totals and peaks, updated by the cache on every allocation change (no scan, no host sync).

    Live bytes change only when tokens are appended (growing) or evicted; the engine observes them just
    before every eviction and at the end, which are exactly the moments a row's live bytes can peak.
    """

    def __init__(self) -> None:
        self.storage = self.peak_storage = 0
        self.persistent_overhead = self.peak_overhead = 0
        self.held = 0  # temporaries alive until the end of the current scope (attention rows of one layer)
        self.row_live_peak: torch.Tensor | None = None
        self.batch_live_peak: torch.Tensor | None = None

    def allocated(self, storage: int = 0, overhead: int = 0) -> None:
        """Record a change (positive or negative) of allocated storage or persistent overhead bytes."""
        self.storage += storage
        self.persistent_overhead += overhead
        self.peak_storage = max(self.peak_storage, self.storage)
        self.peak_overhead = max(self.peak_overhead, self.persistent_overhead)

    def temporary(self, nbytes: int) -> None:
        """Record a short-lived temporary (freed by the caller before anything else is built)."""
        self.peak_overhead = max(self.peak_overhead, self.persistent_overhead + self.held + nbytes)

    def hold(self, nbytes: int) -> None:
        """Record a temporary that stays alive until the enclosing `scope` ends."""
        self.held += nbytes
        self.temporary(0)

    @contextmanager
    def scope(self) -> Iterator[None]:
        """Temporaries held inside the block are freed when it ends (one layer's update)."""
        held = self.held
        try:
            yield
        finally:
            self.held = held

    def observe_live(self, row_bytes: torch.Tensor) -> None:
        """(B,) int64 live bytes of every row now; kept on the device to avoid a sync."""
        total = row_bytes.sum()
        if self.row_live_peak is None:
            self.row_live_peak, self.batch_live_peak = row_bytes.clone(), total
        else:
            self.row_live_peak = torch.maximum(self.row_live_peak, row_bytes)
            self.batch_live_peak = torch.maximum(self.batch_live_peak, total)

    def usage(self, final_row_bytes: torch.Tensor) -> list[MemoryUsage]:
        """Per-row figures at the end of a call (`final_row_bytes` is also observed as a live moment)."""
        self.observe_live(final_row_bytes)
        row_peaks, finals = self.row_live_peak.tolist(), final_row_bytes.tolist()
        batch = PeakAndFinal(int(self.batch_live_peak), sum(finals))
        storage = PeakAndFinal(self.peak_storage, self.storage)
        overhead = PeakAndFinal(self.peak_overhead, self.persistent_overhead)
        return [
            MemoryUsage(PeakAndFinal(peak, final), batch, storage, overhead) for peak, final in zip(row_peaks, finals)
        ]
