"""The attention function the engine registers with transformers, and attention-row recomputation.

Registering a function through `AttentionInterface` (instead of patching model classes) lets every
decoder that uses the standard attention interface run on the evictable cache. When every cached slot
is live the fast path is one SDPA call (flash-eligible: bottom-right causal alignment for chunks);
otherwise a boolean mask built from slot validity and absolute positions hides evicted or padded slots.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right
from transformers import AttentionInterface

from namm.cache import MemoryCache, MemoryCacheLayer

ATTENTION_NAME = "namm_memory"
MASK_ELEMENTS_PER_BLOCK = 1 << 26  # bounds the boolean mask of the masked path (64M elements)
ROW_ELEMENTS_PER_BLOCK = 1 << 25  # bounds the fp32 logits when recomputing attention rows (accelerators)
ROW_ELEMENTS_PER_BLOCK_CPU = 1 << 19  # on CPU: a block of logits that stays in cache (2 MiB)


def visible_mask(layer: MemoryCacheLayer, query_positions: torch.Tensor, rows: torch.Tensor | None = None):
    """(B, H, L, S) bool: which cached slots each query may attend to (live and not in its future)."""
    valid = layer.valid[:, :, : layer.length]
    positions = layer.positions[:, :, : layer.length]
    if rows is not None:
        valid, positions = valid[rows], positions[rows]
    return valid[:, :, None, :] & (positions[:, :, None, :] <= query_positions[:, None, :, None])


def memory_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    memory_cache: MemoryCache | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention over the evictable cache; returns (batch, q_len, q_heads, head_dim) like transformers'."""
    if memory_cache is None:
        raise RuntimeError(
            f"attention '{ATTENTION_NAME}' needs the engine's cache; run the model through namm.MemoryEngine."
        )
    layer = memory_cache.layers[module.layer_idx]
    layer.scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    layer.record(query)
    batch, q_heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    group = q_heads // kv_heads
    if layer.all_valid:
        mask = None if q_len == 1 else causal_lower_right(q_len, key.shape[2])
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling, enable_gqa=group > 1)
        return out.transpose(1, 2), None

    # Masked path: fold each GQA group into the query axis so the per-KV-head mask needs no repeat of K/V.
    visible = visible_mask(layer, memory_cache.chunk.positions)  # (B, H, L, S)
    visible = visible | ~visible.any(dim=-1, keepdim=True)  # padding queries: avoid all-masked rows (NaN)
    grouped = query.reshape(batch, kv_heads, group, q_len, head_dim)
    step = max(1, MASK_ELEMENTS_PER_BLOCK // max(1, batch * kv_heads * group * key.shape[2]))
    outputs = []
    for start in range(0, q_len, step):
        stop = min(q_len, start + step)
        block_mask = visible[:, :, None, start:stop].expand(-1, -1, group, -1, -1)
        block_query = grouped[:, :, :, start:stop]
        block_out = F.scaled_dot_product_attention(
            block_query.reshape(batch, kv_heads, group * (stop - start), head_dim),
            key,
            value,
            attn_mask=block_mask.reshape(batch, kv_heads, group * (stop - start), -1),
            scale=scaling,
        )
        outputs.append(block_out.view(batch, kv_heads, group, stop - start, -1))
    out = torch.cat(outputs, dim=3).reshape(batch, q_heads, q_len, -1)
    return out.transpose(1, 2), None


def register_memory_attention() -> str:
    """Register the function once under ATTENTION_NAME and return the name."""
    if ATTENTION_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION_NAME, memory_attention)
    return ATTENTION_NAME


def attention_rows(layer: MemoryCacheLayer, rows: torch.Tensor, tokens_seen: torch.Tensor, count: int) -> torch.Tensor:
    """(R, H, count, S) float32 softmax rows of the newest `count` queries, averaged over each GQA group.

    Recomputed from the recorded queries against the current cache, so they equal the probabilities
    eager attention produced (no eviction happens between updates), with zeros for invisible slots.
    Work goes in blocks of (row, KV head) pairs and queries small enough for the CPU's caches (large
    ones on accelerators, where launches cost more than memory traffic); a block takes whole pairs when
    it can, so many-row batches still make large matmuls. When every slot is live, only the newest
    `count` slots need the causal mask and each block's matmul stops at its last visible slot.
    """
    queries = layer.recent_queries(rows, count)  # (R, Hq, n, D)
    every_row = rows.numel() == layer.keys.shape[0]
    keys = (layer.keys[:, :, : layer.length] if every_row else layer.keys[rows, :, : layer.length]).float()
    num_rows, q_heads, _, head_dim = queries.shape
    kv_heads, slots = keys.shape[1], keys.shape[2]
    group, pairs = q_heads // kv_heads, num_rows * kv_heads
    grouped = queries.reshape(pairs, group, count, head_dim)
    keys = keys.reshape(pairs, slots, head_dim)
    out = torch.empty(pairs, count, slots, dtype=torch.float32, device=keys.device)
    budget = ROW_ELEMENTS_PER_BLOCK_CPU if keys.device.type == "cpu" else ROW_ELEMENTS_PER_BLOCK
    step = max(1, min(count, budget // max(1, group * slots)))  # queries per block
    pair_step = max(1, budget // max(1, group * slots * step))  # (row, KV head) pairs per block
    dense = layer.all_valid and slots >= count  # the newest `count` slots hold the queries' own tokens, in order
    if dense:
        older = slots - count
        future = torch.full((count, count), float("-inf"), device=keys.device).triu_(1)  # added: faster than a fill
        out[..., older:].zero_()  # the future keys each block's softmax leaves out
    else:
        query_positions = tokens_seen[:, None] - count + torch.arange(count, device=tokens_seen.device)
        query_positions = query_positions.repeat_interleave(kv_heads, dim=0)  # (pairs, n)
        valid = layer.valid[:, :, : layer.length] if every_row else layer.valid[rows, :, : layer.length]
        positions = layer.positions[:, :, : layer.length] if every_row else layer.positions[rows, :, : layer.length]
        # an invalid slot gets a position no query reaches: one comparison then hides it and every future key
        key_positions = positions.masked_fill(~valid, torch.iinfo(positions.dtype).max).reshape(pairs, slots)
    for first in range(0, pairs, pair_step):
        last = min(pairs, first + pair_step)
        for start in range(0, count, step):
            stop = min(count, start + step)
            width = older + stop if dense else slots
            block_queries = grouped[first:last, :, start:stop].reshape(last - first, group * (stop - start), head_dim)
            logits = torch.matmul(block_queries.float(), keys[first:last, :width].transpose(-1, -2))
            logits = logits.view(last - first, group, stop - start, width).mul_(layer.scaling)
            if dense:
                logits[..., older:].add_(future[start:stop, :stop])
            else:
                hidden = key_positions[first:last, None, :] > query_positions[first:last, start:stop, None]
                logits.add_(torch.where(hidden, float("-inf"), 0.0)[:, None])  # a broadcast add beats masked_fill_
            torch.mean(torch.softmax(logits, dim=-1), dim=1, out=out[first:last, start:stop, :width])
    return out.view(num_rows, kv_heads, count, slots)
