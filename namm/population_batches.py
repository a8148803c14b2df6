"""A population's rows (one candidate each) run in micro-batches that fit the device, halving the size when
memory runs out.

A population of 32 candidates on a 32k prompt is ~137 GB of KV cache for Llama-3-8B near full retention:
it has to be split. Rows are independent (the engine gives each row the result it would get alone), so
the split changes only speed, never a row's result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch

log = logging.getLogger(__name__)

Result = TypeVar("Result")


class PopulationBatches:
    """Splits `rows` into consecutive micro-batches of at most `max_rows` (None: all at once).

    On an out-of-memory error the micro-batch size is halved and the failed batch retried; the smaller
    size is kept for the rest of the run (memory use repeats from prompt to prompt), and said once.
    """

    def __init__(self, max_rows: int | None = None) -> None:
        if max_rows is not None and max_rows < 1:
            raise ValueError(f"max_rows must be >= 1 or None, got {max_rows}")
        self.max_rows = max_rows
        self._said_halved = False

    def run(self, rows: int, run_batch: Callable[[int, int], list[Result]]) -> list[Result]:
        """`run_batch(start, stop)` returns the results of rows [start, stop); returns all in row order."""
        results: list[Result] = []
        start = 0
        while start < rows:
            stop = min(rows, start + (self.max_rows or rows))
            try:
                results.extend(run_batch(start, stop))
                start = stop
                continue
            except torch.OutOfMemoryError:
                if stop - start == 1:
                    raise  # one row does not fit: that candidate fails (worst fitness), the run goes on
            self._halve(stop - start)  # outside the except: the failed batch's tensors are released first
        return results

    def _halve(self, size: int) -> None:
        self.max_rows = max(1, size // 2)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # hand back what the failed batch held before the retry
        if not self._said_halved:
            log.warning(
                "out of memory at %d rows per batch; retrying with %d (set evo.max_batch_rows to skip this)",
                size,
                self.max_rows,
            )
            self._said_halved = True
