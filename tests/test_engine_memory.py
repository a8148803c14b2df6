"""Memory the engine reports, against hand counts: live KV bytes, allocated storage (which shrinks after an
eviction, and follows each head's own count in per_head mode), engine overhead, bounded temporaries."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from engine_helpers import EvictFixedPositions, physically_removed_generate, random_prompts

from namm import attention
from namm import engine as engine_module
from namm.attention import masked_block_bytes, row_block_bytes, row_blocking
from namm.engine import EngineConfig, GenerationSettings, MemoryEngine
from namm.models import ModelConfig, load_model
from namm.policies import PolicyConfig, build_policy

# tiny models: 2 layers, 2 KV heads, head_dim 16, float32 -> a token costs 2 x 16 x 4 = 128 bytes per head
HEAD_BYTES = 128
TOKEN_BYTES = 2 * 2 * HEAD_BYTES  # all layers and KV heads
SLOT_METADATA = 1 + 8  # valid flag + int64 position, per slot, head and layer


@pytest.fixture(scope="module")
def llama():
    return load_model(ModelConfig(name="tiny-llama", attn_implementation="sdpa")).model


def test_streaming_memory_matches_hand_count(llama):
    # interval 16, 10 tokens kept, prompt 40 + 5 new (44 seen, 45 slots in all). Storage starts at 16 slots
    # (an update follows the chunk: no headroom); the chunk 16..32 grows it to 10 kept + 16 = 26; after the
    # update at 32 it shrinks to 10 + the 13 slots still to come = 23. Live: 16, then 10 + 16 = 26 before
    # the second update, 10 + 8 + 4 = 22 at the end.
    engine = MemoryEngine(llama, build_policy(PolicyConfig(name="streaming", budget_tokens=10)), EngineConfig(16))
    prompt = random_prompts([40], llama.config.vocab_size, seed=4)[0]
    memory = engine.generate([prompt], GenerationSettings(max_new_tokens=5, stop_on_eos=False))[0].memory
    assert (memory.live_kv_bytes.peak, memory.live_kv_bytes.final) == (26 * TOKEN_BYTES, 22 * TOKEN_BYTES)
    assert memory.batch_live_kv_bytes == memory.live_kv_bytes
    assert (memory.batch_storage_bytes.peak, memory.batch_storage_bytes.final) == (26 * TOKEN_BYTES, 23 * TOKEN_BYTES)
    assert memory.batch_overhead_bytes.final == 23 * 2 * 2 * SLOT_METADATA  # no query buffer, no policy state
    assert memory.batch_overhead_bytes.peak > memory.batch_overhead_bytes.final  # compaction's gathered copies


@pytest.mark.parametrize("at_prefill_end", [False, True])
def test_end_of_prompt_ratio_matches_hand_count_and_ignores_the_answer(llama, at_prefill_end):
    # interval 16, 10 tokens kept per head: a 40-token prompt is updated at 16 and 32 and keeps 10 + its 8-token
    # tail once it is in (18 / 40); a 37-token one 10 + 5 (15 / 37). Updating at the prefill's end leaves 10.
    # Generated tokens then raise the end-of-generation ratio, never the end-of-prompt one.
    engine = MemoryEngine(
        llama,
        build_policy(PolicyConfig(name="streaming", budget_tokens=10)),
        EngineConfig(16, update_at_prefill_end=at_prefill_end),
    )
    prompts = random_prompts([40, 37], llama.config.vocab_size, seed=4)
    settings = GenerationSettings(max_new_tokens=12, stop_on_eos=False)
    together = engine.generate(prompts, settings)
    expected = [10 / 40, 10 / 37] if at_prefill_end else [18 / 40, 15 / 37]
    assert [result.prompt_retained_ratio for result in together] == pytest.approx(expected, rel=1e-12)
    for prompt, result in zip(prompts, together):
        assert engine.generate([prompt], settings)[0].prompt_retained_ratio == result.prompt_retained_ratio
        assert result.retained_ratio != result.prompt_retained_ratio  # the answer's tokens moved the final ratio
    full = MemoryEngine(llama, build_policy(PolicyConfig(name="full")), EngineConfig(16))
    assert [r.prompt_retained_ratio for r in full.generate(prompts, settings)] == [1.0, 1.0]


def test_full_cache_allocates_the_whole_run_once(llama):
    engine = MemoryEngine(llama, build_policy(PolicyConfig(name="full")), EngineConfig(16))
    prompts = random_prompts([40, 25], llama.config.vocab_size, seed=5)
    results = engine.generate(prompts, GenerationSettings(max_new_tokens=5, stop_on_eos=False))
    for result, seen in zip(results, (44, 29)):
        assert result.memory.live_kv_bytes.peak == result.memory.live_kv_bytes.final == seen * TOKEN_BYTES
        assert result.memory.batch_live_kv_bytes.final == (44 + 29) * TOKEN_BYTES
        assert result.memory.batch_storage_bytes.peak == result.memory.batch_storage_bytes.final == 2 * 45 * TOKEN_BYTES


def test_h2o_reports_its_query_buffer_and_state_and_never_builds_full_rows(llama, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("H2O must accumulate column sums per block, not build (n x S) rows")

    monkeypatch.setattr(engine_module, "attention_rows", refuse)
    engine = MemoryEngine(llama, build_policy(PolicyConfig(name="h2o", budget_ratio=0.5)), EngineConfig(16))
    prompt = random_prompts([40], llama.config.vocab_size, seed=6)[0]
    memory = engine.generate([prompt], GenerationSettings(max_new_tokens=5, stop_on_eos=False))[0].memory
    # queries since the last update: 2 layers x 4 query heads x 16 x 16 dims x 4 bytes
    query_buffer = 2 * 4 * 16 * 16 * 4
    storage_slots = memory.batch_storage_bytes.final // TOKEN_BYTES
    assert memory.batch_overhead_bytes.final >= query_buffer + storage_slots * 2 * 2 * SLOT_METADATA
    assert memory.live_kv_bytes.final < memory.batch_storage_bytes.final


def test_per_head_storage_follows_each_heads_count_and_stays_exact(llama):
    # prompt 45, update at 32 keeps 27 (head 0) and 30 (head 1) of 32; 13 prompt + 11 fed-back tokens follow.
    prompt = random_prompts([45], llama.config.vocab_size, seed=2)[0]
    evicted = [[1, 4, 9, 20, 30], [2, 3]]
    settings = GenerationSettings(max_new_tokens=12, stop_on_eos=False)
    results = {
        mode: MemoryEngine(llama, EvictFixedPositions(evicted), EngineConfig(32, mode)).generate([prompt], settings)[0]
        for mode in ("per_head", "per_layer_max")
    }
    per_head, per_layer_max = results["per_head"].memory, results["per_layer_max"].memory
    assert per_head.live_kv_bytes.final == 2 * (27 + 30 + 2 * 24) * HEAD_BYTES
    assert per_layer_max.live_kv_bytes.final == 2 * (30 + 30 + 2 * 24) * HEAD_BYTES  # head 0 topped up to 30
    # storage after the update: kept + the 25 slots still to come, per head (per_head) or for the longest head
    assert per_head.batch_storage_bytes.final == 2 * ((27 + 25) + (30 + 25)) * HEAD_BYTES
    assert per_layer_max.batch_storage_bytes.final == 2 * 2 * (30 + 25) * HEAD_BYTES
    reference, _ = physically_removed_generate(llama, prompt, 32, evicted, 12)
    assert results["per_head"].token_ids == reference


def test_masked_attention_temporaries_stay_under_a_gib_at_32k_batch_8_llama3_8b_shapes():
    """Computed from the shapes: Llama-3-8B (32 query heads, 8 KV heads, head_dim 128), a 512-token chunk
    over 32k slots at batch 8, and one update's attention rows / column sums (accelerator block budget)."""
    batch, q_heads, kv_heads, head_dim, chunk, slots = 8, 32, 8, 128, 512, 32768
    assert masked_block_bytes(batch, q_heads, kv_heads, chunk, slots) <= 2**30
    pairs, group = batch * kv_heads, q_heads // kv_heads
    for queries in (None, attention.SUM_QUERIES_PER_BLOCK):
        step, pair_step = row_blocking(pairs, group, slots, chunk, attention.ROW_ELEMENTS_PER_BLOCK, queries)
        sums = pairs * slots * 4
        assert row_block_bytes(pairs, group, slots, chunk, head_dim, step, pair_step) + sums <= 2**30
    # without blocks: the chunk's boolean mask alone, once per KV head and once expanded per query head
    assert batch * (kv_heads + q_heads) * chunk * slots == 5 * 2**30


def test_masked_attention_builds_masks_one_query_block_at_a_time(llama, monkeypatch):
    """Small shapes, a small budget: every mask SDPA gets fits it, and the output equals one unblocked call.
    (Left padding makes the masked path run; compacted stores of one row are all live and skip it.)"""
    prompts = random_prompts([45, 30], llama.config.vocab_size, seed=2)
    settings = GenerationSettings(max_new_tokens=6, stop_on_eos=False, return_logits=True)

    def run(budget: int) -> tuple[list[torch.Tensor], list[int]]:
        sizes: list[int] = []

        def recording(*args, attn_mask=None, **kwargs):
            if isinstance(attn_mask, torch.Tensor) and attn_mask.dtype == torch.bool:
                sizes.append(attn_mask.numel())
            return torch.nn.functional.scaled_dot_product_attention(*args, attn_mask=attn_mask, **kwargs)

        monkeypatch.setattr(attention, "MASK_ELEMENTS_PER_BLOCK", budget)
        monkeypatch.setattr(attention, "F", SimpleNamespace(scaled_dot_product_attention=recording))
        engine = MemoryEngine(llama, build_policy(PolicyConfig(name="full")), EngineConfig(32))
        results = engine.generate(prompts, settings)
        monkeypatch.undo()
        return [result.logits for result in results], sizes

    unblocked, one_block = run(1 << 26)
    budget = 2 * 4 * 60  # batch 2 x 4 query heads x ~60 slots: one query per block
    blocked, block_sizes = run(budget)
    assert max(block_sizes) <= budget < max(one_block)
    for got, expected in zip(blocked, unblocked):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
