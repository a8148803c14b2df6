"""Recomputed attention rows equal eager softmax attention, on the dense (every slot live) and the masked
path, in one query block or many, for all rows or a subset."""

from __future__ import annotations

import pytest
import torch

from namm import attention
from namm.attention import attention_rows
from namm.attention_variant import AttentionVariant
from namm.cache import MemoryCacheLayer

Q_HEADS, KV_HEADS, HEAD_DIM, WINDOW = 6, 2, 8, 16


def filled_layer(rows: int, slots: int, real: torch.Tensor | None = None) -> MemoryCacheLayer:
    """A layer holding `slots` tokens at positions 0.. (False in `real`: padding) and the newest queries."""
    generator = torch.Generator().manual_seed(slots)
    layer = MemoryCacheLayer(slots, 16, record_queries=True, query_window=WINDOW, max_capacity=slots)
    keys = torch.randn(rows, KV_HEADS, slots, HEAD_DIM, generator=generator)
    real = torch.ones(rows, slots, dtype=torch.bool) if real is None else real
    positions = (real.long().cumsum(dim=1) - 1).clamp(min=0)
    layer.append(keys, keys.clone(), positions, real)
    layer.record(torch.randn(rows, Q_HEADS, WINDOW, HEAD_DIM, generator=generator) * 2)
    layer.variant = AttentionVariant(scaling=HEAD_DIM**-0.5)
    return layer


def eager_rows(layer: MemoryCacheLayer, rows: torch.Tensor, count: int) -> torch.Tensor:
    """Independent reference: repeat K per GQA group, softcap, mask by positions (window included), softmax
    with the sink as one more column that is then dropped, mean per group."""
    variant = layer.variant
    keys = layer.keys[rows, :, : layer.length].repeat_interleave(Q_HEADS // KV_HEADS, dim=1)
    valid = layer.valid[rows, :, : layer.length].repeat_interleave(Q_HEADS // KV_HEADS, dim=1)
    positions = layer.positions[rows, :, : layer.length].repeat_interleave(Q_HEADS // KV_HEADS, dim=1)
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
    return probs.view(len(rows), KV_HEADS, -1, count, layer.length).mean(dim=2)


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


def test_masked_rows_equal_eager_attention_with_padding_and_gaps(monkeypatch):
    monkeypatch.setattr(attention, "ROW_ELEMENTS_PER_BLOCK_CPU", 2 * Q_HEADS * 40 * 4)
    real = torch.ones(3, 40, dtype=torch.bool)
    real[1, :7] = False  # left padding of a shorter prompt
    layer = filled_layer(rows=3, slots=40, real=real)
    layer.valid[0, 1, 3:11] = False  # a head's evicted gap (per_head layout)
    layer.positions[0, 1, 3:11] = -1
    layer.all_valid = False
    seen = torch.tensor([40, 33, 40])
    for rows in (torch.arange(3), torch.tensor([0, 1])):
        got = attention_rows(layer, rows, seen[rows], WINDOW)
        torch.testing.assert_close(got, eager_rows(layer, rows, WINDOW), rtol=1e-5, atol=1e-6)
        assert torch.all(got[0, 1, :, 3:11] == 0)  # invalid slots get no attention


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
        keep = layer.valid[:, :, :40].clone()
        keep[0, :, 3:13] = False
        layer.compact(torch.arange(2), keep)
    assert layer.all_valid != evicted  # the dense path (unless windowed) and the masked one
    seen = torch.tensor([40, 33 if evicted else 40])
    got = attention_rows(layer, torch.arange(2), seen, WINDOW)
    torch.testing.assert_close(got, eager_rows(layer, torch.arange(2), WINDOW), rtol=1e-5, atol=1e-6)
    if variant.sinks is not None:
        assert torch.all(got.sum(dim=-1) < 1 - 1e-3)
