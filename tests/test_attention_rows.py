"""Recomputed attention rows (and their column sums) equal eager softmax attention, on the dense (every slot
live) and the masked path, in one query block or many, for all rows or a subset, in one store or per head;
rows handed over in chunks of (row, head) pairs equal the whole tensor and stay bounded at long contexts."""

from __future__ import annotations

import pytest
import torch

from namm import attention
from namm.attention import attention_column_sums, attention_rows, chunked_attention_rows, row_chunk_plan
from namm.attention_variant import AttentionVariant
from namm.cache import ChunkInfo, MemoryCacheLayer, StorageSizing
from namm.memory_meter import MemoryMeter

Q_HEADS, KV_HEADS, HEAD_DIM, WINDOW = 6, 2, 8, 16


def filled_layer(rows: int, slots: int, real: torch.Tensor | None = None, per_head: bool = False) -> MemoryCacheLayer:
    """A layer holding `slots` tokens at positions 0.. (False in `real`: padding) and the newest queries."""
    generator = torch.Generator().manual_seed(slots)
    layer = MemoryCacheLayer(
        StorageSizing(16, slots), MemoryMeter(), per_head, record_queries=True, query_window=WINDOW
    )
    keys = torch.randn(rows, KV_HEADS, slots, HEAD_DIM, generator=generator)
    real = torch.ones(rows, slots, dtype=torch.bool) if real is None else real
    positions = (real.long().cumsum(dim=1) - 1).clamp(min=0)
    layer.append(keys, keys.clone(), ChunkInfo(positions, real, bool(real.all())))
    layer.record(torch.randn(rows, Q_HEADS, WINDOW, HEAD_DIM, generator=generator) * 2)
    layer.variant = AttentionVariant(scaling=HEAD_DIM**-0.5)
    return layer


def eager_rows(layer: MemoryCacheLayer, rows: torch.Tensor, count: int) -> torch.Tensor:
    """Independent reference: repeat K per GQA group, softcap, mask by positions (window included), softmax
    with the sink as one more column that is then dropped, mean per group."""
    variant = layer.variant
    slots = layer.slots(rows, every_row=False)
    group = Q_HEADS // KV_HEADS
    keys, valid, positions = (t.repeat_interleave(group, dim=1) for t in (slots.keys, slots.valid, slots.positions))
    queries = layer.query_buffer[rows, :, layer.query_count - count : layer.query_count]
    newest = positions.masked_fill(~valid, -1).amax(dim=(1, 2))
    query_positions = (newest[:, None] - count + 1 + torch.arange(count))[:, None, :, None]
    logits = queries @ keys.transpose(-1, -2) * variant.scaling
    if variant.softcap is not None:
        logits = variant.softcap * torch.tanh(logits / variant.softcap)
    visible = valid[:, :, None, :] & (positions[:, :, None, :] <= query_positions)
    if variant.sliding_window is not None:
        visible &= positions[:, :, None, :] > query_positions - variant.sliding_window
    logits = logits.masked_fill(~visible, float("-inf"))
    if variant.sinks is not None:
        sink = variant.sinks.view(1, -1, 1, 1).expand(*logits.shape[:3], 1)
        probs = torch.softmax(torch.cat([logits, sink], dim=-1), dim=-1)[..., :-1]
    else:
        probs = torch.softmax(logits, dim=-1)
    return probs.nan_to_num().view(len(rows), KV_HEADS, group, count, layer.length).mean(dim=2)


@pytest.mark.parametrize("block_elements", [1 << 19, 2 * Q_HEADS * 40 * 3])  # one block / blocks of 3 queries
@pytest.mark.parametrize("count", [WINDOW, 5])
def test_dense_rows_equal_eager_attention(monkeypatch, block_elements, count):
    monkeypatch.setattr(attention, "ROW_ELEMENTS_PER_BLOCK_CPU", block_elements)
    layer = filled_layer(rows=2, slots=40)
    assert layer.all_valid
    rows = torch.arange(2)
    got = attention_rows(layer, rows, torch.tensor([40, 40]), count)
    torch.testing.assert_close(got, eager_rows(layer, rows, count), rtol=1e-5, atol=1e-6)
    assert torch.all(got[:, :, -1, :].sum(dim=-1).sub(1).abs() < 1e-5)  # rows are distributions
    assert torch.all(got[:, :, 0, 40 - count + 1 :] == 0)  # the oldest query sees no newer key


def evict_gap(layer: MemoryCacheLayer, row: int, head: int, gap: range) -> None:
    """Evict `gap` slots of one (row, head) through the layer's own compaction (per-head layouts shrink)."""
    rows = torch.arange(layer.stores[0].keys.shape[0])
    keep = layer.slots(rows, every_row=True).valid.clone()
    keep[row, head, list(gap)] = False
    layer.compact(rows, keep)


@pytest.mark.parametrize("per_head", [False, True])
def test_masked_rows_equal_eager_attention_with_padding_and_gaps(monkeypatch, per_head):
    monkeypatch.setattr(attention, "ROW_ELEMENTS_PER_BLOCK_CPU", 2 * Q_HEADS * 40 * 4)
    real = torch.ones(3, 40, dtype=torch.bool)
    real[1, :7] = False  # left padding of a shorter prompt
    layer = filled_layer(rows=3, slots=40, real=real, per_head=per_head)
    evict_gap(layer, row=0, head=1, gap=range(3, 11))  # a head's evicted gap
    assert not layer.all_valid
    if per_head:
        assert [store.length for store in layer.stores] == [40, 40]  # row 1's padding keeps head 1 at 40 slots
    seen = torch.tensor([40, 33, 40])
    for rows in (torch.arange(3), torch.tensor([0, 1])):
        got = attention_rows(layer, rows, seen[rows], WINDOW)
        reference = eager_rows(layer, rows, WINDOW)
        torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-6)
        assert torch.all(got[0, 1, :, 32:] == 0)  # compacted head: its last 8 slots hold nothing
        sums = attention_column_sums(layer, rows, seen[rows], WINDOW)
        torch.testing.assert_close(sums, reference.sum(dim=2), rtol=1e-5, atol=1e-5)


SINKS = torch.linspace(-1.0, 2.0, Q_HEADS)


@pytest.mark.parametrize(
    "variant",
    [
        AttentionVariant(HEAD_DIM**-0.5, sliding_window=9),
        AttentionVariant(HEAD_DIM**-0.5, softcap=1.5),
        AttentionVariant(HEAD_DIM**-0.5, sinks=SINKS),
        AttentionVariant(HEAD_DIM**-0.5, sliding_window=9, softcap=1.5, sinks=SINKS),
    ],
    ids=["window", "softcap", "sinks", "all"],
)
@pytest.mark.parametrize("evicted", [False, True])
def test_rows_honour_window_softcap_and_sinks(monkeypatch, variant, evicted):
    """Dense and masked paths; after an eviction slot i no longer holds token i, and the window follows
    positions. Rows with sinks are no distributions: the sink keeps its share."""
    monkeypatch.setattr(attention, "ROW_ELEMENTS_PER_BLOCK_CPU", 2 * Q_HEADS * 40 * 4)
    real = torch.ones(2, 40, dtype=torch.bool)
    if evicted:
        real[1, :7] = False  # a shorter, left-padded prompt
    layer = filled_layer(rows=2, slots=40, real=real)
    layer.variant = variant
    if evicted:  # row 0 drops tokens 3..12 in every head: 30 slots hold positions 0-2, 13-39
        keep = layer.slots(torch.arange(2), every_row=True).valid.clone()
        keep[0, :, 3:13] = False
        layer.compact(torch.arange(2), keep)
    assert layer.all_valid != evicted  # the dense path (unless windowed) and the masked one
    seen = torch.tensor([40, 33 if evicted else 40])
    got = attention_rows(layer, torch.arange(2), seen, WINDOW)
    torch.testing.assert_close(got, eager_rows(layer, torch.arange(2), WINDOW), rtol=1e-5, atol=1e-6)
    if variant.sinks is not None:
        assert torch.all(got.sum(dim=-1) < 1 - 1e-3)


def test_per_head_storage_shrinks_to_each_heads_count():
    """One row, head 1 evicts 8 tokens: head 1's own store shrinks, head 0 keeps its 40 slots."""
    layer = filled_layer(rows=1, slots=40, per_head=True)
    evict_gap(layer, row=0, head=1, gap=range(3, 11))
    assert [store.length for store in layer.stores] == [40, 32]
    assert layer.kept_per_head().tolist() == [[40, 32]]
    got = attention_rows(layer, torch.arange(1), torch.tensor([40]), WINDOW)
    torch.testing.assert_close(got, eager_rows(layer, torch.arange(1), WINDOW), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("count", [WINDOW, 5])
def test_column_sums_do_not_depend_on_the_row_block(monkeypatch, count):
    """Batch invariance by construction: a row's sums are bit-identical alone and within a batch."""
    monkeypatch.setattr(attention, "ROW_ELEMENTS_PER_BLOCK_CPU", 2 * Q_HEADS * 40 * 4)
    layer = filled_layer(rows=3, slots=40)
    batched = attention_column_sums(layer, torch.arange(3), torch.tensor([40] * 3), count)
    for row in range(3):
        alone = attention_column_sums(layer, torch.tensor([row]), torch.tensor([40]), count)
        assert torch.equal(alone[0], batched[row])


@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("chunk_bytes", [1, 3 * WINDOW * 40 * 4, 1 << 28])  # a pair / 3 pairs / everything
def test_chunked_rows_equal_the_whole_tensor_exactly(monkeypatch, per_head, chunk_bytes):
    """Every chunk holds exactly its pairs' rows of `attention_rows` (bit for bit), and the chunks cover every
    (row, head) pair once: with padding, a per-head gap, all rows or a subset, and several recomputation blocks."""
    monkeypatch.setattr(attention, "ROW_ELEMENTS_PER_BLOCK_CPU", 2 * Q_HEADS * 40 * 4)
    monkeypatch.setattr(attention, "ROW_CHUNK_BYTES", chunk_bytes)
    real = torch.ones(3, 40, dtype=torch.bool)
    real[1, :7] = False
    layer = filled_layer(rows=3, slots=40, real=real, per_head=per_head)
    evict_gap(layer, row=0, head=1, gap=range(3, 11))
    seen = torch.tensor([40, 33, 40])
    for rows in (torch.arange(3), torch.tensor([2, 0])):
        whole = attention_rows(layer, rows, seen[rows], WINDOW).flatten(0, 1)
        chunked = chunked_attention_rows(layer, rows, seen[rows], WINDOW)
        assert chunked.shape == (rows.numel(), KV_HEADS, WINDOW, layer.length)
        covered = torch.zeros(whole.shape[0], dtype=torch.long)
        for pairs, compute in chunked.chunks:
            assert torch.equal(compute(), whole[pairs])
            covered[pairs] += 1
        assert covered.tolist() == [1] * whole.shape[0]
        if chunk_bytes == 1:
            assert len(chunked.chunks) == whole.shape[0]  # one pair per chunk


def test_row_chunks_bound_memory_at_llama3_8b_32k():
    """Shapes only: 8 rows x 8 KV heads (group 4, head_dim 128), 512 queries on 32k slots. The whole tensor
    would be 4 GiB; one chunk and its recomputation block stay under 1 GiB (accelerator and CPU budgets)."""
    pairs, group, count, slots, head_dim = 8 * 8, 4, 512, 32768, 128
    assert pairs * count * slots * 4 == 4 << 30
    for on_cpu in (False, True):
        plan = row_chunk_plan(pairs, group, count, slots, head_dim, on_cpu)
        assert plan.peak_bytes <= 1 << 30
        assert plan.chunk_bytes == plan.pairs_per_chunk * count * slots * 4 <= attention.ROW_CHUNK_BYTES
    small = row_chunk_plan(pairs=6, group=3, count=16, slots=40, head_dim=8, on_cpu=True)
    assert small.pairs_per_chunk == 6  # short contexts: one chunk, as before
