"""An evictable KV cache: per-layer slot stores that a memory policy compacts, and that shrink after eviction.

A slot store holds the keys and values of a group of KV heads as (batch, heads, capacity, head_dim), with
a per-slot `valid` flag and absolute position. Chunks are written after the used slots without
re-concatenating the cache (transformers' DynamicCache does that every chunk, which doubles chunked-prefill
time at 32k). Eviction gathers each head's kept slots to the front; storage then shrinks to the used
slots plus the slots still to come before the next update (at most one interval), so allocated memory
follows what is kept instead of the largest size the cache ever reached.

Layout per layer: one store for all KV heads (`per_layer_max`, where every head keeps the same count), or
one store per KV head (`per_head`, so each head's storage follows its own kept count; the rows of a batch
are still padded to the row that keeps most, as in every layout).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from namm.attention_variant import AttentionVariant
from namm.memory_meter import MemoryMeter


@dataclass(frozen=True)
class StorageSizing:
    """How stores size themselves: headroom beyond the used slots, bounded by what the run can ever need."""

    headroom: int  # slots appended between two updates of a row (the update interval; the run's total: no eviction)
    max_slots: int  # slots the whole run appends (padded prompt width + new tokens)


@dataclass
class ChunkInfo:
    """Per-forward facts every layer needs: absolute positions and which inputs are real tokens."""

    positions: torch.Tensor  # (B, L) int64
    real: torch.Tensor  # (B, L) bool (False for left padding and finished rows)
    all_real: bool  # known on the host, so appending never waits on the device
    compacted_next: bool = False  # every row is updated right after this forward: no headroom needed


@dataclass
class Slots:
    """One layer's slots for some rows, every KV head padded to the longest store: (R, H, S[, D])."""

    keys: torch.Tensor
    values: torch.Tensor
    valid: torch.Tensor
    positions: torch.Tensor


class SlotStore:
    """Keys, values, validity and absolute positions of a group of KV heads that share one slot axis."""

    def __init__(self, heads: slice, sizing: StorageSizing, meter: MemoryMeter) -> None:
        self.heads = heads
        self.sizing = sizing
        self.meter = meter
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.valid: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.length = 0  # used slots (the longest row's)
        self.appended = 0  # slots appended over the run, evicted ones included
        self.all_valid = True

    @property
    def capacity(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    @property
    def num_heads(self) -> int:
        return self.heads.stop - self.heads.start

    def _bytes(self) -> tuple[int, int]:
        """(key/value storage, slot metadata) bytes allocated now."""
        if self.keys is None:
            return 0, 0
        storage = sum(t.numel() * t.element_size() for t in (self.keys, self.values))
        return storage, sum(t.numel() * t.element_size() for t in (self.valid, self.positions))

    def _resize(self, capacity: int) -> None:
        """Reallocate to `capacity` slots, keeping the used ones (one copy; old and new coexist during it)."""
        before = self._bytes()

        def resized(tensor: torch.Tensor, fill) -> torch.Tensor:
            fresh = tensor.new_full((*tensor.shape[:2], capacity, *tensor.shape[3:]), fill)
            fresh[:, :, : self.length] = tensor[:, :, : self.length]
            return fresh

        self.keys, self.values = resized(self.keys, 0), resized(self.values, 0)
        self.valid, self.positions = resized(self.valid, False), resized(self.positions, -1)
        after = self._bytes()
        self.meter.temporary(min(sum(before), sum(after)))
        self.meter.allocated(after[0] - before[0], after[1] - before[1])

    def _headroom(self) -> int:
        return min(self.sizing.headroom, self.sizing.max_slots - self.appended)

    def append(self, keys: torch.Tensor, values: torch.Tensor, chunk: ChunkInfo) -> None:
        """Write a chunk (B, heads, L, D) after the used slots, growing storage by one copy when needed
        (with headroom for what comes before the next compaction, unless that follows this chunk)."""
        batch, heads, size, _ = keys.shape
        self.appended += size
        headroom = 0 if chunk.compacted_next else self._headroom()
        if self.keys is None:
            capacity = size + headroom
            self.keys = keys.new_zeros(batch, heads, capacity, keys.shape[-1])
            self.values = values.new_zeros(batch, heads, capacity, values.shape[-1])
            self.valid = torch.zeros(batch, heads, capacity, dtype=torch.bool, device=keys.device)
            self.positions = torch.full((batch, heads, capacity), -1, dtype=torch.long, device=keys.device)
            self.meter.allocated(*self._bytes())
        start, end = self.length, self.length + size
        if end > self.capacity:
            self._resize(end + headroom)
        self.keys[:, :, start:end] = keys
        self.values[:, :, start:end] = values
        self.valid[:, :, start:end] = chunk.real[:, None, :]
        self.positions[:, :, start:end] = chunk.positions.masked_fill(~chunk.real, -1)[:, None, :]
        self.length = end
        self.all_valid = self.all_valid and chunk.all_real

    def used(self, rows: torch.Tensor | slice | None = None) -> Slots:
        """Views (every row, or a slice of rows) or copies (an index tensor of rows) of the used slots."""
        stores = (self.keys, self.values, self.valid, self.positions)
        if rows is None:
            return Slots(*(store[:, :, : self.length] for store in stores))
        return Slots(*(store[rows, :, : self.length] for store in stores))

    def compact(self, rows: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Move each head's kept slots (in slot order) to the front for `rows`; returns (index, valid).

        `keep` is (R, heads, length) bool. The returned index (R, heads, K) maps each new slot to its old
        slot. Storage then shrinks to the used slots plus the headroom still needed.
        """
        counts = keep.sum(dim=-1)
        new_len = int(counts.max()) if counts.numel() else 0
        order = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)[..., :new_len]
        new_valid = torch.arange(new_len, device=keep.device) < counts[..., None]
        every_row = rows.numel() == self.keys.shape[0]
        gathered = 0

        def gather(store: torch.Tensor, fill) -> None:
            nonlocal gathered
            source = store[:, :, : self.length] if every_row else store[rows, :, : self.length]
            index = order if store.dim() == 3 else order[..., None].expand(-1, -1, -1, store.shape[-1])
            moved = source.gather(2, index)
            gathered += moved.numel() * moved.element_size() * (1 if every_row else 2)
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
        self.meter.temporary(gathered)

        extent = self.valid[:, :, : self.length].any(dim=1)
        used = torch.arange(1, self.length + 1, device=extent.device) * extent
        self.length = int(used.max()) if used.numel() else 0
        self.all_valid = bool(self.valid[:, :, : self.length].all())
        target = self.length + self._headroom()
        if self.capacity > target:
            self._resize(target)
        return order, new_valid

    def kept_per_head(self) -> torch.Tensor:
        """(B, heads) int64 live slots of every row and head."""
        return self.valid[:, :, : self.length].sum(dim=-1)


class MemoryCacheLayer(CacheLayerMixin):
    """Storage of one decoder layer (the transformers layer interface plus eviction bookkeeping)."""

    is_sliding = False
    is_compileable = False

    def __init__(
        self,
        sizing: StorageSizing,
        meter: MemoryMeter,
        per_head_storage: bool = False,
        record_queries: bool = False,
        query_window: int = 0,
    ) -> None:
        super().__init__()
        self.sizing = sizing
        self.meter = meter
        self.per_head_storage = per_head_storage
        self.record_queries = record_queries
        self.query_window = query_window
        self.stores: list[SlotStore] = []
        self.query_buffer: torch.Tensor | None = None
        self.query_count = 0
        self.variant = AttentionVariant()  # set by the attention function: the model's scale, window, cap, sinks
        self.token_bytes = 0  # key + value bytes of one token in one KV head
        self.num_kv_heads = 0

    # -- transformers layer interface -------------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        heads = self.num_kv_heads = key_states.shape[1]
        groups = [slice(h, h + 1) for h in range(heads)] if self.per_head_storage else [slice(0, heads)]
        self.stores = [SlotStore(group, self.sizing, self.meter) for group in groups]
        self.dtype, self.device = key_states.dtype, key_states.device
        self.token_bytes = (key_states.shape[-1] + value_states.shape[-1]) * key_states.element_size()
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
    def length(self) -> int:
        """Slots of the longest store (the slot axis policies see)."""
        return max((store.length for store in self.stores), default=0)

    @property
    def all_valid(self) -> bool:
        return all(store.all_valid for store in self.stores)

    def append(self, keys: torch.Tensor, values: torch.Tensor, chunk: ChunkInfo) -> None:
        if not self.is_initialized:
            self.lazy_initialization(keys, values)
        for store in self.stores:
            store.append(keys[:, store.heads], values[:, store.heads], chunk)

    def slots(self, rows: torch.Tensor, every_row: bool) -> Slots:
        """The used slots of `rows` as (R, H, S[, D]); views for one store, a padded copy per head otherwise."""
        if len(self.stores) == 1:
            return self.stores[0].used(None if every_row else rows)
        length = self.length
        parts = [store.used(None if every_row else rows) for store in self.stores]

        def padded(name: str, fill) -> torch.Tensor:
            tensors = [getattr(part, name) for part in parts]
            shape = (tensors[0].shape[0], len(tensors), length, *tensors[0].shape[3:])
            out = tensors[0].new_full(shape, fill)
            for head, tensor in enumerate(tensors):
                out[:, head : head + 1, : tensor.shape[2]] = tensor
            return out

        slots = Slots(padded("keys", 0), padded("values", 0), padded("valid", False), padded("positions", -1))
        self.meter.hold(sum(t.numel() * t.element_size() for t in vars(slots).values()))
        return slots

    def compact(self, rows: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Compact every store for `rows` with `keep` (R, H, S); (index, valid) padded over heads to one K."""
        results = [store.compact(rows, keep[:, store.heads, : store.length]) for store in self.stores]
        if len(results) == 1:
            return results[0]
        width = max(order.shape[-1] for order, _ in results)
        index = torch.cat([torch.nn.functional.pad(order, (0, width - order.shape[-1])) for order, _ in results], 1)
        valid = torch.cat([torch.nn.functional.pad(v, (0, width - v.shape[-1])) for _, v in results], 1)
        return index, valid

    def discount_appended(self, slots: int) -> None:
        """`slots` appended slots have left again before their time (a reconstruction forward's): they do
        not count against what the run may still append, which sizes the stores' headroom."""
        for store in self.stores:
            store.appended -= slots

    def kept_per_head(self) -> torch.Tensor:
        """(B, H) int64 live tokens of every row and KV head."""
        return torch.cat([store.kept_per_head() for store in self.stores], dim=1)

    # -- queries since the last update ------------------------------------------------------------
    def record(self, queries: torch.Tensor) -> None:
        """Keep the newest `query_window` post-RoPE queries (batch, q_heads, window, head_dim)."""
        if not self.record_queries:
            return
        chunk = queries.shape[2]
        if self.query_buffer is None:
            batch, heads, _, dim = queries.shape
            self._set_query_buffer(queries.new_zeros(batch, heads, max(self.query_window, chunk), dim))
        if self.query_count + chunk > self.query_buffer.shape[2]:
            keep = min(self.query_count, self.query_window)
            tail = self.query_buffer[:, :, self.query_count - keep : self.query_count].clone()
            if keep + chunk > self.query_buffer.shape[2]:
                self._set_query_buffer(
                    queries.new_zeros(
                        *self.query_buffer.shape[:2], self.query_window + chunk, self.query_buffer.shape[3]
                    )
                )
            self.query_buffer[:, :, :keep] = tail
            self.query_count = keep
        self.query_buffer[:, :, self.query_count : self.query_count + chunk] = queries
        self.query_count += chunk

    def forget_queries(self) -> None:
        """Every row was just updated, so no row needs the queries before: the buffer never has to shift."""
        self.query_count = 0

    def _set_query_buffer(self, buffer: torch.Tensor) -> None:
        old = 0 if self.query_buffer is None else self.query_buffer.numel() * self.query_buffer.element_size()
        self.query_buffer = buffer
        self.meter.allocated(overhead=buffer.numel() * buffer.element_size() - old)

    def recent_queries(self, rows: torch.Tensor, count: int) -> torch.Tensor:
        """(R, q_heads, count, head_dim): the newest `count` recorded queries of the given rows."""
        return self.query_buffer[rows, :, self.query_count - count : self.query_count]


class MemoryCache(Cache):
    """A transformers Cache whose layers a memory policy can compact.

    The engine sets `chunk` before each forward; the registered attention function reads the cache
    through the `memory_cache` keyword that the engine passes to the model.
    """

    def __init__(
        self,
        num_layers: int,
        sizing: StorageSizing,
        per_head_storage: bool = False,
        record_queries: bool = False,
        query_window: int = 0,
    ) -> None:
        self.meter = MemoryMeter()
        super().__init__(
            layers=[
                MemoryCacheLayer(sizing, self.meter, per_head_storage, record_queries, query_window)
                for _ in range(num_layers)
            ]
        )
        self.chunk: ChunkInfo | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Store the chunk; attention reads the stores itself, so the chunk is what goes back to the model."""
        if self.chunk is None:
            raise RuntimeError("MemoryCache is driven by MemoryEngine; call the model through the engine.")
        self.layers[layer_idx].append(key_states, value_states, self.chunk)
        return key_states, value_states

    def live_bytes(self) -> torch.Tensor:
        """(B,) int64 live key/value bytes of every row, summed over layers and KV heads."""
        return sum(layer.kept_per_head().sum(dim=-1) * layer.token_bytes for layer in self.layers)
