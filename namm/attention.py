"""The attention function the engine registers with transformers, and attention-row recomputation.

Registering a function through `AttentionInterface` (instead of patching model classes) lets every
decoder that uses the standard attention interface run on the evictable cache. Attention runs once per
slot store (one per layer, or one per KV head in `per_head` storage). When every slot of a store is live
the fast path is one SDPA call (bottom-right causal alignment for chunks); otherwise a boolean mask from
slot validity and absolute positions hides evicted or padded slots, built one block of queries at a time
so its size stays bounded however long the context. Sliding windows, logit softcapping and attention sinks
(`AttentionVariant`) are reproduced exactly, in the forward and in the recomputed rows; any other keyword a
model passes is refused, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right
from transformers import AttentionInterface

from namm.attention_row_chunks import ChunkedRows
from namm.attention_variant import AttentionVariant, configured_sliding_window
from namm.cache import MemoryCache, MemoryCacheLayer, SlotStore
from namm.models import UnsupportedModelError

ATTENTION_NAME = "namm_memory"
MASK_ELEMENTS_PER_BLOCK = 1 << 26  # bounds a masked-attention block: its (heads x queries x slots) mask (64M)
ROW_ELEMENTS_PER_BLOCK = 1 << 25  # bounds the fp32 logits when recomputing attention rows (accelerators)
ROW_ELEMENTS_PER_BLOCK_CPU = 1 << 19  # on CPU: a block of logits that stays in cache (2 MiB)
ROW_CHUNK_BYTES = 1 << 28  # bounds the float32 rows handed to the NAMM at once: a chunk of (row, KV head) pairs
SUM_QUERIES_PER_BLOCK = 64  # query block of column sums: fixed, so sums add up in the same order at any batch
#: keywords that change nothing here: positions come from the engine's chunk, the cache is always on, and
#: router statistics are a mixture-of-experts concern outside attention
IGNORED_KEYWORDS = frozenset({"position_ids", "use_cache", "output_router_logits"})
#: keywords accepted only with the values that mean plain causal inference
PLAIN_VALUES = {"is_causal": (True, None), "output_attentions": (False, None)}
#: a module that passes no `sliding_window` keyword leaves the window to the mask, which the config defines
WINDOW_FROM_CONFIG = object()


def masked_block_queries(batch: int, q_heads: int, slots: int) -> int:
    """Queries per block of the masked path: the block's mask (batch x q_heads x queries x slots) fits the budget."""
    return max(1, MASK_ELEMENTS_PER_BLOCK // max(1, batch * q_heads * slots))


def masked_block_bytes(batch: int, q_heads: int, kv_heads: int, queries: int, slots: int) -> int:
    """Bytes of the temporaries one masked-path block builds: the per-KV-head mask and its GQA expansion."""
    block = min(queries, masked_block_queries(batch, q_heads, slots))
    return batch * (kv_heads + q_heads) * block * slots  # torch.bool: one byte per element


def row_blocking(pairs: int, group: int, slots: int, count: int, budget: int, queries: int | None) -> tuple[int, int]:
    """(queries, pairs) per block of attention-row recomputation: the block's logits fit `budget` elements."""
    step = queries or max(1, min(count, budget // max(1, group * slots)))
    return step, max(1, budget // max(1, group * slots * step))


def row_block_bytes(pairs: int, group: int, slots: int, count: int, head_dim: int, step: int, pair_step: int) -> int:
    """Bytes of one row-recomputation block's temporaries: float32 keys of its pairs, logits and softmax."""
    return min(pairs, pair_step) * slots * 4 * (head_dim + 2 * group * min(step, count))


@dataclass(frozen=True)
class RowChunkPlan:
    """How one store's attention rows reach the NAMM: pairs per chunk and the bytes alive at once."""

    pairs_per_chunk: int
    chunk_bytes: int  # one chunk's (pairs, count, width) float32 rows
    block_bytes: int  # the recomputation block's temporaries while the chunk is filled

    @property
    def peak_bytes(self) -> int:
        return self.chunk_bytes + self.block_bytes


def row_chunk_plan(
    pairs: int, group: int, count: int, slots: int, head_dim: int, on_cpu: bool, width: int | None = None
) -> RowChunkPlan:
    """Chunks of whole recomputation pair blocks (so every block's matmul stays as it was) within
    ROW_CHUNK_BYTES; `slots` is the store's, `width` the layer's slot axis the rows are padded to."""
    width = width or slots
    budget = ROW_ELEMENTS_PER_BLOCK_CPU if on_cpu else ROW_ELEMENTS_PER_BLOCK
    step, pair_step = row_blocking(pairs, group, slots, count, budget, None)
    chunk = min(pairs, pair_step * max(1, ROW_CHUNK_BYTES // (pair_step * count * width * 4)))
    block = row_block_bytes(pairs, group, slots, count, head_dim, step, pair_step)
    return RowChunkPlan(chunk, chunk * count * width * 4, block)


def visible_mask(
    slots_valid: torch.Tensor, slot_positions: torch.Tensor, query_positions: torch.Tensor, variant: AttentionVariant
) -> torch.Tensor:
    """(B, H, L, S) bool: which cached slots each query may attend to (live, not in its future, in its window)."""
    return slots_valid[:, :, None, :] & variant.visible(
        slot_positions[:, :, None, :], query_positions[:, None, :, None]
    )


def check_keywords(module: torch.nn.Module, dropout: float, kwargs: dict) -> None:
    """Refuse what the engine does not compute, naming the keyword, instead of dropping it silently."""
    refused = [
        f"{name}={value!r}" if name in PLAIN_VALUES else repr(name)
        for name, value in kwargs.items()
        if name not in IGNORED_KEYWORDS and not (name in PLAIN_VALUES and value in PLAIN_VALUES[name])
    ]
    if dropout:
        refused.append(f"dropout={dropout} (put the model in eval mode)")
    if refused:
        raise UnsupportedModelError(
            f"{type(module).__name__} asks its attention for {', '.join(refused)}, which the memory engine does not "
            "implement (it reproduces causal attention with sliding_window, softcap and s_aux sinks); running it "
            "would silently compute another attention. Use a model without this feature."
        )


def store_sinks(variant: AttentionVariant, store: SlotStore, group: int) -> torch.Tensor | None:
    """(store KV heads, group) sink logits of the store's query heads, or None."""
    if variant.sinks is None:
        return None
    return variant.sinks.detach()[store.heads.start * group : store.heads.stop * group].view(store.num_heads, group)


def store_attention(
    store: SlotStore, layer: MemoryCacheLayer, query: torch.Tensor, chunk_positions: torch.Tensor
) -> torch.Tensor:
    """(B, q_heads, L, D) attention of `query` (this store's query heads) over one store's used slots."""
    used = store.used()
    batch, q_heads, q_len, head_dim = query.shape
    kv_heads, slots = store.num_heads, store.length
    group = q_heads // kv_heads
    variant, scaling = layer.variant, layer.variant.scaling
    if store.all_valid and variant.sliding_window is None and not variant.needs_explicit_softmax:
        mask = None if q_len == 1 else causal_lower_right(q_len, slots)
        return F.scaled_dot_product_attention(
            query, used.keys, used.values, attn_mask=mask, scale=scaling, enable_gqa=group > 1
        )
    # Masked path: fold each GQA group into the query axis so the per-KV-head mask needs no repeat of K/V.
    grouped = query.reshape(batch, kv_heads, group, q_len, head_dim)
    step = masked_block_queries(batch, q_heads, slots)
    layer.meter.temporary(masked_block_bytes(batch, q_heads, kv_heads, q_len, slots))
    outputs = []
    for start in range(0, q_len, step):
        stop = min(q_len, start + step)
        visible = visible_mask(used.valid, used.positions, chunk_positions[:, start:stop], variant)
        visible |= ~visible.any(dim=-1, keepdim=True)  # padding queries: avoid all-masked rows (NaN)
        block_mask = visible[:, :, None].expand(-1, -1, group, -1, -1).reshape(batch, kv_heads, -1, slots)
        block_query = grouped[:, :, :, start:stop].reshape(batch, kv_heads, group * (stop - start), head_dim)
        if variant.needs_explicit_softmax:
            sinks = store_sinks(variant, store, group)
            if sinks is not None:
                sinks = sinks[:, :, None].expand(-1, -1, stop - start).reshape(1, kv_heads, group * (stop - start), 1)
            block_out = explicit_attention(block_query, used.keys, used.values, block_mask, variant, sinks)
        else:
            block_out = F.scaled_dot_product_attention(
                block_query, used.keys, used.values, attn_mask=block_mask, scale=scaling
            )
        outputs.append(block_out.view(batch, kv_heads, group, stop - start, -1))
    return torch.cat(outputs, dim=3).reshape(batch, q_heads, q_len, -1)


def memory_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    memory_cache: MemoryCache | None = None,
    sliding_window: int | None | object = WINDOW_FROM_CONFIG,
    softcap: float | None = None,
    s_aux: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention over the evictable cache; returns (batch, q_len, q_heads, head_dim) like transformers'."""
    check_keywords(module, dropout, kwargs)
    if memory_cache is None:
        raise RuntimeError(
            f"attention '{ATTENTION_NAME}' needs the engine's cache; run the model through namm.MemoryEngine."
        )
    layer = memory_cache.layers[module.layer_idx]
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    if sliding_window is WINDOW_FROM_CONFIG:
        sliding_window = configured_sliding_window(getattr(module, "config", None), module.layer_idx)
    layer.variant = AttentionVariant(scaling, sliding_window, softcap, s_aux)
    layer.record(query)
    group = query.shape[1] // key.shape[1]
    positions = memory_cache.chunk.positions
    outputs = [
        store_attention(store, layer, query[:, store.heads.start * group : store.heads.stop * group], positions)
        for store in layer.stores
    ]
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
    return out.transpose(1, 2), None


def explicit_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    visible: torch.Tensor,
    variant: AttentionVariant,
    sinks: torch.Tensor | None,
) -> torch.Tensor:
    """Attention with logits in hand, for what SDPA cannot express (softcapping, sinks): matmul in the model's
    dtype as eager attention does, softmax in float32."""
    logits = variant.capped(torch.matmul(query, key.transpose(-1, -2)).float().mul_(variant.scaling))
    probs = variant.probabilities(logits.masked_fill_(~visible, float("-inf")), sinks)
    return torch.matmul(probs.to(value.dtype), value)


def register_memory_attention() -> str:
    """Register the function once under ATTENTION_NAME and return the name."""
    if ATTENTION_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION_NAME, memory_attention)
    return ATTENTION_NAME


@dataclass
class ProbabilityBlock:
    """Softmax rows of some (row, KV head) pairs and queries over the first `width` slots of a store."""

    pairs: slice
    queries: slice
    width: int
    probabilities: torch.Tensor  # (pairs, group, queries, width) float32


def probability_blocks(
    store: SlotStore,
    layer: MemoryCacheLayer,
    rows: torch.Tensor,
    every_row: bool,
    tokens_seen: torch.Tensor,
    count: int,
    queries_per_block: int | None = None,
    pair_range: slice | None = None,
) -> Iterator[ProbabilityBlock]:
    """The softmax rows of the newest `count` queries against one store, block by block.

    Recomputed from the recorded queries, so they equal the probabilities eager attention produced (no
    eviction happens between updates); invisible slots get zero. Blocks take (row, KV head) pairs and
    queries small enough for the CPU's caches (large ones on accelerators, where launches cost more than
    memory traffic); a block takes whole pairs when it can, so many-row batches still make large matmuls.
    Keys are upcast to float32 per block of pairs, never the whole cache at once. When every slot is live,
    only the newest `count` slots need the causal mask and each block's matmul stops at its last visible
    slot. `queries_per_block` fixes the query blocking (for sums that must not depend on the batch).
    `pair_range` restricts the blocks to a range of the store's (row, KV head) pairs (block pairs then count
    from its start; only its rows are read). The layer's sliding window, softcap and sinks apply as in its
    forward (rows then sum to less than 1 with sinks).
    """
    variant = layer.variant
    group = layer.query_buffer.shape[1] // layer.num_kv_heads
    kv_heads, slots = store.num_heads, store.length
    span = slice(0, rows.numel() * kv_heads) if pair_range is None else pair_range
    first_row, last_row = span.start // kv_heads, -(-span.stop // kv_heads)  # only the rows the pairs need
    offset = first_row * kv_heads
    span = slice(span.start - offset, span.stop - offset)
    rows, tokens_seen = rows[first_row:last_row], tokens_seen[first_row:last_row]
    queries = layer.recent_queries(rows, count)[:, store.heads.start * group : store.heads.stop * group]
    used = store.used(slice(first_row, last_row) if every_row else rows)
    num_rows, _, _, head_dim = queries.shape
    grouped = queries.reshape(num_rows * kv_heads, group, count, head_dim)[span]
    keys = used.keys.reshape(num_rows * kv_heads, slots, head_dim)[span]
    pairs = keys.shape[0]
    budget = ROW_ELEMENTS_PER_BLOCK_CPU if keys.device.type == "cpu" else ROW_ELEMENTS_PER_BLOCK
    step, pair_step = row_blocking(pairs, group, slots, count, budget, queries_per_block)
    layer.meter.temporary(row_block_bytes(pairs, group, slots, count, head_dim, step, pair_step))
    # the newest `count` slots hold the queries' own tokens, in order (a window needs the positions of the rest)
    dense = store.all_valid and slots >= count and variant.sliding_window is None
    sinks = store_sinks(variant, store, group)
    sinks = None if sinks is None else sinks.repeat(num_rows, 1)[span]  # (pairs, group)
    if dense:
        older = slots - count
        future = torch.full((count, count), float("-inf"), device=keys.device).triu_(1)  # added: faster than a fill
    else:
        query_positions = tokens_seen[:, None] - count + torch.arange(count, device=tokens_seen.device)
        query_positions = query_positions.repeat_interleave(kv_heads, dim=0)[span]  # (pairs, n)
        # an invalid slot gets a position no query reaches: the causal comparison hides it with the future keys
        key_positions = used.positions.masked_fill(~used.valid, torch.iinfo(used.positions.dtype).max)
        key_positions = key_positions.reshape(num_rows * kv_heads, slots)[span]
    for first in range(0, pairs, pair_step):
        last = min(pairs, first + pair_step)
        block_keys = keys[first:last].float()
        for start in range(0, count, step):
            stop = min(count, start + step)
            width = older + stop if dense else slots
            block_queries = grouped[first:last, :, start:stop].reshape(last - first, group * (stop - start), head_dim)
            logits = torch.matmul(block_queries.float(), block_keys[:, :width].transpose(-1, -2))
            logits = variant.capped(logits.view(last - first, group, stop - start, width).mul_(variant.scaling))
            if dense:
                logits[..., older:].add_(future[start:stop, :stop])
            else:
                visible = variant.visible(
                    key_positions[first:last, None, :], query_positions[first:last, start:stop, None]
                )
                logits.add_(torch.where(visible, 0.0, float("-inf"))[:, None])  # a broadcast add beats masked_fill_
            block_sinks = None if sinks is None else sinks[first:last, :, None, None]
            probabilities = variant.probabilities(logits, block_sinks)
            yield ProbabilityBlock(slice(first, last), slice(start, stop), width, probabilities)


def attention_rows(layer: MemoryCacheLayer, rows: torch.Tensor, tokens_seen: torch.Tensor, count: int) -> torch.Tensor:
    """(R, H, count, S) float32 softmax rows of the newest `count` queries, averaged over each GQA group.

    S is the layer's slot axis (the longest store); slots past a shorter store's end get zero.
    """
    every_row = rows.numel() == layer.stores[0].keys.shape[0]
    out = torch.zeros(rows.numel(), layer.num_kv_heads, count, layer.length, dtype=torch.float32, device=rows.device)
    layer.meter.hold(out.numel() * out.element_size())
    for store in layer.stores:
        target = out[:, store.heads].flatten(0, 1)  # (pairs, count, S): a view, also for one head of many
        write_group_means(target, probability_blocks(store, layer, rows, every_row, tokens_seen, count))
    return out


def write_group_means(target: torch.Tensor, blocks: Iterator[ProbabilityBlock]) -> None:
    """Each block's GQA-group mean into `target` (pairs, count, S); slots past a block's width stay as they are."""
    for block in blocks:
        torch.mean(block.probabilities, dim=1, out=target[block.pairs, block.queries, : block.width])


def layer_pairs(store: SlotStore, kv_heads: int, span: slice) -> slice:
    """The layer's flattened (row, KV head) pairs (r * H + h) of a range of the store's own pairs; a store
    holds every KV head of the layer or one of them (per_head storage)."""
    if store.num_heads == kv_heads:
        return span
    if store.num_heads != 1:
        raise ValueError(f"a store of {store.num_heads} of {kv_heads} KV heads: stores hold one head or all.")
    head = store.heads.start
    return slice(span.start * kv_heads + head, (span.stop - 1) * kv_heads + head + 1, kv_heads)


def chunked_attention_rows(
    layer: MemoryCacheLayer, rows: torch.Tensor, tokens_seen: torch.Tensor, count: int
) -> ChunkedRows:
    """The rows of `attention_rows`, each chunk of (row, KV head) pairs computed only when its consumer asks
    (`row_chunk_plan` bounds a chunk), with the same blocks, so the same values."""
    every_row = rows.numel() == layer.stores[0].keys.shape[0]
    kv_heads, width = layer.num_kv_heads, layer.length
    group, head_dim = layer.query_buffer.shape[1] // kv_heads, layer.query_buffer.shape[3]

    def compute(store: SlotStore, span: slice) -> torch.Tensor:
        out = torch.zeros(span.stop - span.start, count, width, dtype=torch.float32, device=rows.device)
        write_group_means(out, probability_blocks(store, layer, rows, every_row, tokens_seen, count, pair_range=span))
        return out

    chunks, chunk_bytes = [], 0
    for store in layer.stores:
        pairs = rows.numel() * store.num_heads
        plan = row_chunk_plan(pairs, group, count, store.length, head_dim, rows.device.type == "cpu", width)
        chunk_bytes = max(chunk_bytes, plan.chunk_bytes)
        for first in range(0, pairs, plan.pairs_per_chunk):
            span = slice(first, min(pairs, first + plan.pairs_per_chunk))
            chunks.append((layer_pairs(store, kv_heads, span), partial(compute, store, span)))
    layer.meter.hold(chunk_bytes)  # one chunk at a time: its consumer drops it before asking for the next
    return ChunkedRows((rows.numel(), kv_heads, count, width), tuple(chunks))


def attention_column_sums(
    layer: MemoryCacheLayer, rows: torch.Tensor, tokens_seen: torch.Tensor, count: int
) -> torch.Tensor:
    """(R, H, S) float32: the attention each slot received from the newest `count` queries (GQA-averaged),
    accumulated block by block so the (count x S) rows are never held at once."""
    every_row = rows.numel() == layer.stores[0].keys.shape[0]
    sums = torch.zeros(rows.numel(), layer.num_kv_heads, layer.length, dtype=torch.float32, device=rows.device)
    layer.meter.hold(sums.numel() * sums.element_size())
    for store in layer.stores:
        target = sums[:, store.heads].flatten(0, 1)
        queries_per_block = min(count, SUM_QUERIES_PER_BLOCK)
        for block in probability_blocks(store, layer, rows, every_row, tokens_seen, count, queries_per_block):
            target[block.pairs, : block.width] += block.probabilities.mean(dim=1).sum(dim=1)
    return sums
