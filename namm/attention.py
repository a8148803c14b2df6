"""The attention function the engine registers with transformers, and attention-row recomputation.

Registering a function through `AttentionInterface` (instead of patching model classes) lets every
decoder that uses the standard attention interface run on the evictable cache. When every cached slot
is live the fast path is one SDPA call (flash-eligible: bottom-right causal alignment for chunks);
otherwise a boolean mask built from slot validity and absolute positions hides evicted or padded slots.
Sliding windows, logit softcapping and attention sinks (`AttentionVariant`) are reproduced exactly, in the
forward and in the recomputed rows; any other keyword a model passes is refused, never silently dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right
from transformers import AttentionInterface

from namm.attention_variant import AttentionVariant, configured_sliding_window
from namm.cache import MemoryCache, MemoryCacheLayer
from namm.models import UnsupportedModelError

ATTENTION_NAME = "namm_memory"
MASK_ELEMENTS_PER_BLOCK = 1 << 26  # bounds the boolean mask of the masked path (64M elements)
ROW_ELEMENTS_PER_BLOCK = 1 << 25  # bounds the fp32 logits when recomputing attention rows (accelerators)
ROW_ELEMENTS_PER_BLOCK_CPU = 1 << 19  # on CPU: a block of logits that stays in cache (2 MiB)
#: keywords that change nothing here: positions come from the engine's chunk, the cache is always on, and
#: router statistics are a mixture-of-experts concern outside attention
IGNORED_KEYWORDS = frozenset({"position_ids", "use_cache", "output_router_logits"})
#: keywords accepted only with the values that mean plain causal inference
PLAIN_VALUES = {"is_causal": (True, None), "output_attentions": (False, None)}
#: a module that passes no `sliding_window` keyword leaves the window to the mask, which the config defines
WINDOW_FROM_CONFIG = object()


def visible_mask(layer: MemoryCacheLayer, query_positions: torch.Tensor, rows: torch.Tensor | None = None):
    """(B, H, L, S) bool: which cached slots each query may attend to (live and not in its future)."""
    valid = layer.valid[:, :, : layer.length]
    positions = layer.positions[:, :, : layer.length]
    if rows is not None:
        valid, positions = valid[rows], positions[rows]
    return valid[:, :, None, :] & layer.variant.visible(positions[:, :, None, :], query_positions[:, None, :, None])


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
    variant = AttentionVariant(scaling, sliding_window, softcap, s_aux)
    layer.variant = variant
    layer.record(query)
    batch, q_heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    group = q_heads // kv_heads
    if layer.all_valid and sliding_window is None and not variant.needs_explicit_softmax:
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
        block_mask = block_mask.reshape(batch, kv_heads, group * (stop - start), -1)
        block_query = grouped[:, :, :, start:stop].reshape(batch, kv_heads, group * (stop - start), head_dim)
        if variant.needs_explicit_softmax:
            sinks = None if s_aux is None else s_aux.view(kv_heads, group, 1).expand(-1, -1, stop - start)
            sinks = None if sinks is None else sinks.reshape(1, kv_heads, group * (stop - start), 1)
            block_out = explicit_attention(block_query, key, value, block_mask, variant, sinks)
        else:
            block_out = F.scaled_dot_product_attention(block_query, key, value, attn_mask=block_mask, scale=scaling)
        outputs.append(block_out.view(batch, kv_heads, group, stop - start, -1))
    out = torch.cat(outputs, dim=3).reshape(batch, q_heads, q_len, -1)
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


def attention_rows(layer: MemoryCacheLayer, rows: torch.Tensor, tokens_seen: torch.Tensor, count: int) -> torch.Tensor:
    """(R, H, count, S) float32 softmax rows of the newest `count` queries, averaged over each GQA group.

    Recomputed from the recorded queries against the current cache, so they equal the probabilities
    eager attention produced (no eviction happens between updates), with zeros for invisible slots.
    Work goes in blocks of (row, KV head) pairs and queries small enough for the CPU's caches (large
    ones on accelerators, where launches cost more than memory traffic); a block takes whole pairs when
    it can, so many-row batches still make large matmuls. When every slot is live, only the newest
    `count` slots need the causal mask and each block's matmul stops at its last visible slot. The layer's
    sliding window, softcap and sinks apply as in its forward (rows then sum to less than 1 with sinks).
    """
    variant = layer.variant
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
    # the newest `count` slots hold the queries' own tokens, in order (a window needs the positions of the rest)
    dense = layer.all_valid and slots >= count and variant.sliding_window is None
    sinks = None if variant.sinks is None else variant.sinks.detach().view(kv_heads, group).repeat(num_rows, 1)
    if dense:
        older = slots - count
        future = torch.full((count, count), float("-inf"), device=keys.device).triu_(1)  # added: faster than a fill
        out[..., older:].zero_()  # the future keys each block's softmax leaves out
    else:
        query_positions = tokens_seen[:, None] - count + torch.arange(count, device=tokens_seen.device)
        query_positions = query_positions.repeat_interleave(kv_heads, dim=0)  # (pairs, n)
        valid = layer.valid[:, :, : layer.length] if every_row else layer.valid[rows, :, : layer.length]
        positions = layer.positions[:, :, : layer.length] if every_row else layer.positions[rows, :, : layer.length]
        # an invalid slot gets a position no query reaches: the causal comparison hides it with the future keys
        key_positions = positions.masked_fill(~valid, torch.iinfo(positions.dtype).max).reshape(pairs, slots)
    for first in range(0, pairs, pair_step):
        last = min(pairs, first + pair_step)
        for start in range(0, count, step):
            stop = min(count, start + step)
            width = older + stop if dense else slots
            block_queries = grouped[first:last, :, start:stop].reshape(last - first, group * (stop - start), head_dim)
            logits = torch.matmul(block_queries.float(), keys[first:last, :width].transpose(-1, -2))
            logits = variant.capped(logits.view(last - first, group, stop - start, width).mul_(variant.scaling))
            if dense:
                logits[..., older:].add_(future[start:stop, :stop])
            else:
                visible = variant.visible(
                    key_positions[first:last, None, :], query_positions[first:last, start:stop, None]
                )
                logits.add_(torch.where(visible, 0.0, float("-inf"))[:, None])  # a broadcast add beats masked_fill_
            block_sinks = None if sinks is None else sinks[first:last, :, None, None]
            probs = variant.probabilities(logits, block_sinks)
            torch.mean(probs, dim=1, out=out[first:last, start:stop, :width])
    return out.view(num_rows, kv_heads, count, slots)
