"""An evictable KV cache: preallocated per-layer storage that a memory policy compacts in place.

Each layer stores keys and values as (batch, kv_heads, capacity, head_dim) with a per-slot `valid` flag
and absolute position. Chunks are appended without re-concatenating the cache (transformers'
DynamicCache does that every chunk, which doubles chunked-prefill time at 32k). Eviction gathers the
kept slots of each head to the front; heads that keep fewer tokens than the longest one leave invalid
slots that attention masks out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from namm.attention_variant import AttentionVariant


class MemoryCacheLayer(CacheLayerMixin):
    """Storage of one decoder layer (the transformers layer interface plus eviction bookkeeping)."""

    is_sliding = False
    is_compileable = False

    def __init__(
        self, initial_capacity: int, growth: int, record_queries: bool, query_window: int, max_capacity: int
    ) -> None:
        super().__init__()
        self.initial_capacity = initial_capacity
        self.max_capacity = max_capacity  # slots a run can ever need (prompt + new tokens): growth stops there
        self.growth = growth
        self.record_queries = record_queries
        self.query_window = query_window
        self.length = 0
        self.all_valid = True
        self.valid: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.query_buffer: torch.Tensor | None = None
        self.query_count = 0
        self.variant = AttentionVariant()  # set by the attention function: the model's scale, window, cap, sinks

    # -- transformers layer interface -------------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, head_dim = key_states.shape
        self.dtype, self.device = key_states.dtype, key_states.device
        slots = self.initial_capacity
        self.keys = key_states.new_zeros(batch, heads, slots, head_dim)
        self.values = value_states.new_zeros(batch, heads, slots, value_states.shape[-1])
        self.valid = torch.zeros(batch, heads, slots, dtype=torch.bool, device=self.device)
        self.positions = torch.full((batch, heads, slots), -1, dtype=torch.long, device=self.device)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        raise RuntimeError("MemoryCacheLayer.update is driven by MemoryCache.update")

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def get_mask_sizes(self, *args, **kwargs) -> tuple[int, int]:
        query_length = args[0] if args else kwargs.get("query_length", 0)
        if isinstance(query_length, torch.Tensor):
            query_length = int(query_length.shape[0])
        return self.length + int(query_length), 0

    # -- storage ----------------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def nbytes(self) -> int:
        if self.keys is None:
            return 0
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()

    def reserve(self, needed: int) -> None:
        """Grow storage to hold `needed` slots (plus `growth` headroom) by one copy."""
        if needed <= self.capacity:
            return
        new_capacity = max(needed, min(needed + self.growth, self.max_capacity))
        grow = new_capacity - self.capacity

        def extend(tensor: torch.Tensor, fill) -> torch.Tensor:
            pad = tensor.new_full((*tensor.shape[:2], grow, *tensor.shape[3:]), fill)
            return torch.cat([tensor, pad], dim=2)

        self.keys, self.values = extend(self.keys, 0), extend(self.values, 0)
        self.valid, self.positions = extend(self.valid, False), extend(self.positions, -1)

    def append(self, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, real: torch.Tensor):
        """Write a chunk after the used slots; returns views of every used slot."""
        if not self.is_initialized:
            self.lazy_initialization(keys, values)
        chunk = keys.shape[2]
        start, end = self.length, self.length + chunk
        self.reserve(end)
        self.keys[:, :, start:end] = keys
        self.values[:, :, start:end] = values
        self.valid[:, :, start:end] = real[:, None, :]
        self.positions[:, :, start:end] = positions.masked_fill(~real, -1)[:, None, :]
        self.length = end
        self.all_valid = self.all_valid and bool(real.all())
        return self.keys[:, :, :end], self.values[:, :, :end]

    def record(self, queries: torch.Tensor) -> None:
        """Keep the newest `query_window` post-RoPE queries (batch, q_heads, window, head_dim)."""
        if not self.record_queries:
            return
        chunk = queries.shape[2]
        if self.query_buffer is None:
            batch, heads, _, dim = queries.shape
            self.query_buffer = queries.new_zeros(batch, heads, self.query_window + max(chunk, self.query_window), dim)
        if self.query_count + chunk > self.query_buffer.shape[2]:
            keep = min(self.query_count, self.query_window)
            tail = self.query_buffer[:, :, self.query_count - keep : self.query_count].clone()
            if keep + chunk > self.query_buffer.shape[2]:
                self.query_buffer = queries.new_zeros(
                    *self.query_buffer.shape[:2], self.query_window + chunk, self.query_buffer.shape[3]
                )
            self.query_buffer[:, :, :keep] = tail
            self.query_count = keep
        self.query_buffer[:, :, self.query_count : self.query_count + chunk] = queries
        self.query_count += chunk

    def recent_queries(self, rows: torch.Tensor, count: int) -> torch.Tensor:
        """(R, q_heads, count, head_dim): the newest `count` recorded queries of the given rows."""
        return self.query_buffer[rows, :, self.query_count - count : self.query_count]

    def compact(self, rows: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Move each head's kept slots (in slot order) to the front for `rows`; returns (index, valid).

        `keep` is (R, H, length) bool. The returned index (R, H, K) maps each new slot to its old slot.
        """
        counts = keep.sum(dim=-1)
        new_len = int(counts.max()) if counts.numel() else 0
        order = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)[..., :new_len]
        new_valid = torch.arange(new_len, device=keep.device) < counts[..., None]
        every_row = rows.numel() == self.keys.shape[0]

        def gather(store: torch.Tensor, fill) -> None:
            source = store[:, :, : self.length] if every_row else store[rows, :, : self.length]
            index = order if store.dim() == 3 else order[..., None].expand(-1, -1, -1, store.shape[-1])
            moved = source.gather(2, index)
            if store.dim() == 3:
                moved = moved.masked_fill(~new_valid, fill)
            if every_row:
                store[:, :, :new_len] = moved
                store[:, :, new_len : self.length] = fill
            else:
                block = store[rows]
                block[:, :, :new_len] = moved
                block[:, :, new_len : self.length] = fill
                store[rows] = block

        for store, fill in ((self.keys, 0), (self.values, 0), (self.valid, False), (self.positions, -1)):
            gather(store, fill)

        extent = self.valid[:, :, : self.length].any(dim=1)
        used = torch.arange(1, self.length + 1, device=extent.device) * extent
        self.length = int(used.max()) if used.numel() else 0
        self.all_valid = bool(self.valid[:, :, : self.length].all())
        return order, new_valid


@dataclass
class ChunkInfo:
    """Per-forward facts every layer needs: absolute positions and which inputs are real tokens."""

    positions: torch.Tensor  # (B, L) int64
    real: torch.Tensor  # (B, L) bool (False for left padding)


class MemoryCache(Cache):
    """A transformers Cache whose layers a memory policy can compact.

    The engine sets `chunk` before each forward; the registered attention function reads the cache
    through the `memory_cache` keyword that the engine passes to the model.
    """

    def __init__(
        self,
        num_layers: int,
        initial_capacity: int,
        growth: int,
        record_queries: bool,
        query_window: int,
        max_capacity: int,
    ) -> None:
        super().__init__(
            layers=[
                MemoryCacheLayer(initial_capacity, growth, record_queries, query_window, max_capacity)
                for _ in range(num_layers)
            ]
        )
        self.chunk: ChunkInfo | None = None
        self.peak_bytes = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        if self.chunk is None:
            raise RuntimeError("MemoryCache is driven by MemoryEngine; call the model through the engine.")
        layer = self.layers[layer_idx]
        keys, values = layer.append(key_states, value_states, self.chunk.positions, self.chunk.real)
        self.peak_bytes = max(self.peak_bytes, self.nbytes())
        return keys, values

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)
