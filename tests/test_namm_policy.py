"""The NAMM as an engine policy: golden parity through LayerView, state re-indexing with invalid gaps,
per-row candidates in one batch, and zero parameters inside the engine."""

from __future__ import annotations

import pytest
import torch

from namm.budget import top_k_keep
from namm.network import NAMMConfig
from namm.policies.base import LayerView
from namm.policies.namm_policy import NAMMPolicy


def causal_attention(rows: int, heads: int, queries: int, slots: int, seed: int) -> torch.Tensor:
    """Random softmax rows of the `queries` newest tokens, zero on keys newer than the query."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, heads, queries, slots, generator=generator) * 2
    visible = torch.arange(slots)[None, :] <= (slots - queries + torch.arange(queries))[:, None]
    return torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1)


def layer_view(attention, positions, valid, rows=None, layer_idx=0) -> LayerView:
    rows = torch.arange(positions.shape[0]) if rows is None else rows
    tokens_seen = positions.masked_fill(~valid, -1).amax(dim=(1, 2)) + 1
    keys = torch.zeros(*positions.shape, 4)
    return LayerView(
        layer_idx=layer_idx,
        rows=rows,
        keys=keys,
        values=keys,
        valid=valid,
        positions=positions,
        tokens_seen=tokens_seen,
        num_new_tokens=attention.shape[2],
        attention_fn=lambda count: attention[:, :, attention.shape[2] - count :],
    )


def compact(keep: torch.Tensor):
    """The engine's compaction: each head's kept slots to the front, in slot order, padded invalid."""
    counts = keep.sum(dim=-1)
    order = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)[..., : int(counts.max())]
    return order, torch.arange(order.shape[-1]) < counts[..., None]


def test_state_is_reindexed_and_invalid_gaps_change_nothing():
    """Second update on the same tokens laid out two ways: densely, and per-head padded with invalid
    slots before the new tokens (the engine's per_head layout). Valid scores must agree."""
    theta = torch.randn(4172, generator=torch.Generator().manual_seed(11)) * 0.5
    first_attention = causal_attention(1, 2, 64, 64, seed=12)
    positions = torch.arange(64).view(1, 1, -1).expand(1, 2, -1).clone()
    valid = torch.ones(1, 2, 64, dtype=torch.bool)

    def second_call(gap: int):
        policy = NAMMPolicy(NAMMConfig(), theta)
        policy.reset(1, 1, 2, torch.device("cpu"))
        selection = policy.select(layer_view(first_attention, positions, valid))
        keep = top_k_keep(selection.scores, valid, torch.tensor([40]))
        index, new_valid = compact(keep)
        if gap:  # pad every head with `gap` invalid slots after its kept tokens
            index = torch.cat([index, torch.zeros(1, 2, gap, dtype=torch.long)], dim=-1)
            new_valid = torch.cat([new_valid, torch.zeros(1, 2, gap, dtype=torch.bool)], dim=-1)
        policy.reindex(0, torch.arange(1), index, new_valid)
        assert torch.equal(policy.states[0].ema[..., 40:, :], torch.zeros(1, 2, gap, 17))
        kept_positions = positions.gather(2, index).masked_fill(~new_valid, -1)
        new_positions = torch.arange(64, 128).view(1, 1, -1).expand(1, 2, -1)
        all_positions = torch.cat([kept_positions, new_positions], dim=-1)
        all_valid = all_positions >= 0
        dense_attention = causal_attention(1, 2, 64, 104, seed=13)
        attention = torch.zeros(1, 2, 64, all_positions.shape[-1])
        attention[..., all_valid[0, 0]] = dense_attention
        selection = policy.select(layer_view(attention, all_positions, all_valid))
        return selection.scores[all_valid.expand_as(selection.scores)], selection.keep, all_valid

    dense_scores, dense_keep, _ = second_call(gap=0)
    gapped_scores, gapped_keep, gapped_valid = second_call(gap=5)
    torch.testing.assert_close(gapped_scores, dense_scores, atol=1e-5, rtol=1e-5)
    assert torch.equal(gapped_keep[gapped_valid], dense_keep.flatten())
    assert not gapped_keep[~gapped_valid].any()


def test_row_subsets_keep_their_own_state():
    """Updating rows one at a time (as the engine does for rows on different schedules) equals updating
    them together."""
    theta = torch.randn(2, 4172, generator=torch.Generator().manual_seed(14)) * 0.5
    attention = causal_attention(2, 2, 32, 32, seed=15)
    positions = torch.arange(32).view(1, 1, -1).expand(2, 2, -1).clone()
    valid = torch.ones(2, 2, 32, dtype=torch.bool)
    together = NAMMPolicy(NAMMConfig(), theta)
    together.reset(2, 1, 2, torch.device("cpu"))
    both = together.select(layer_view(attention, positions, valid))
    apart = NAMMPolicy(NAMMConfig())
    apart.reset(2, 1, 2, torch.device("cpu"))
    apart.set_row_parameters(theta)
    for row in (1, 0):
        rows = torch.tensor([row])
        one = apart.select(layer_view(attention[rows], positions[rows], valid[rows], rows=rows))
        torch.testing.assert_close(one.scores[0], both.scores[row], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(apart.states[0].ema, together.states[0].ema)


# -- inside the engine -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).eval()


def random_prompts(lengths, vocab, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in lengths]


@pytest.mark.parametrize("mode", ["per_head", "per_layer_max"])
def test_engine_candidates_batched_equal_one_by_one(tiny_llama, mode):
    from namm.engine import EngineConfig, GenerationSettings, MemoryEngine

    prompts = random_prompts([110, 64, 90], tiny_llama.config.vocab_size)
    theta = torch.randn(3, 4172, generator=torch.Generator().manual_seed(16)) * 0.5
    theta[:, -1] = 1.0  # read-out bias: keep a good share, evict the rest
    engine = MemoryEngine(tiny_llama, NAMMPolicy(), EngineConfig(update_interval=32, eviction_mode=mode))
    settings = GenerationSettings(max_new_tokens=24, stop_on_eos=False)
    batched = engine.generate(prompts, settings, row_parameters=theta)
    for row, prompt in enumerate(prompts):
        alone = engine.generate([prompt], settings, row_parameters=theta[row : row + 1])[0]
        assert batched[row].token_ids == alone.token_ids
        assert batched[row].retained_ratio == pytest.approx(alone.retained_ratio)
        assert batched[row].retained_ratio < 1.0
    # without row parameters the policy falls back to its own vector (zeros: keep everything)
    assert engine.generate(prompts[:1], settings)[0].retained_ratio == 1.0


def test_engine_zero_parameters_evict_nothing(tiny_llama):
    from namm.engine import EngineConfig, GenerationSettings, MemoryEngine
    from namm.policies import PolicyConfig, build_policy

    prompts = random_prompts([150, 90], tiny_llama.config.vocab_size, seed=1)
    settings = GenerationSettings(max_new_tokens=40, stop_on_eos=False)
    namm = MemoryEngine(tiny_llama, build_policy(PolicyConfig(name="namm")), EngineConfig(32, "per_head"))
    full = MemoryEngine(tiny_llama, build_policy(PolicyConfig(name="full")), EngineConfig(32, "per_head"))
    for kept, reference in zip(namm.generate(prompts, settings), full.generate(prompts, settings)):
        assert kept.retained_ratio == 1.0
        assert len(kept.update_positions) > 0
        assert kept.token_ids == reference.token_ids


def test_namm_transformer_from_a_name_or_a_fresh_config(tiny_llama):
    from transformers import LlamaConfig

    from namm.api import namm_transformer
    from namm.engine import EngineConfig, GenerationSettings

    theta = torch.randn(4172, generator=torch.Generator().manual_seed(17)) * 0.5
    named = namm_transformer("tiny-llama", parameters=theta)
    prompt = named.tokenizer("a fox jumps over the dog; " * 24).input_ids
    result = named.engine.generate([prompt], GenerationSettings(max_new_tokens=4, stop_on_eos=False))[0]
    assert len(prompt) > 512 and result.update_positions == [512]
    assert result.retained_ratio < 1.0 and torch.equal(named.policy.namm.parameters, theta)

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    fresh = namm_transformer(config, engine_config=EngineConfig(update_interval=32))
    assert fresh.tokenizer is None
    out = fresh.engine.generate([list(range(1, 60))], GenerationSettings(max_new_tokens=8, stop_on_eos=False))[0]
    assert out.retained_ratio == 1.0 and len(out.token_ids) == 8  # zero parameters keep everything


@pytest.mark.parametrize("mode", ["per_head", "per_layer_max"])
def test_engine_rows_in_chunks_change_nothing(tiny_llama, monkeypatch, mode):
    """One (row, head) pair per chunk of attention rows vs the whole layer at once: every update's scores and
    spectrogram state are bit-identical, and so are the generations."""
    import namm.engine
    from namm import attention
    from namm.engine import EngineConfig, GenerationSettings, MemoryEngine

    prompts = random_prompts([110, 110, 90], tiny_llama.config.vocab_size, seed=2)  # rows 0, 1 update together
    theta = torch.randn(3, 4172, generator=torch.Generator().manual_seed(17)) * 0.5
    theta[:, -1] = 1.0
    settings = GenerationSettings(max_new_tokens=24, stop_on_eos=False)

    monkeypatch.setattr(attention, "ROW_ELEMENTS_PER_BLOCK_CPU", 1 << 12)  # recomputation blocks of 1-2 pairs
    chunk_counts = []

    def counted(*args):
        rows = attention.chunked_attention_rows(*args)
        chunk_counts.append(len(rows.chunks))
        return rows

    monkeypatch.setattr(namm.engine, "chunked_attention_rows", counted)

    def run(chunk_bytes: int):
        monkeypatch.setattr(attention, "ROW_CHUNK_BYTES", chunk_bytes)
        seen = []
        policy = NAMMPolicy(observer=lambda view, output: seen.append((output.scores, output.state.ema)))
        engine = MemoryEngine(tiny_llama, policy, EngineConfig(update_interval=32, eviction_mode=mode))
        return engine.generate(prompts, settings, row_parameters=theta), seen

    (whole, whole_seen), whole_chunks = run(1 << 28), sum(chunk_counts)
    (chunked, chunked_seen), chunked_chunks = run(1), sum(chunk_counts) - whole_chunks
    assert chunked_chunks > whole_chunks  # the second run did split its rows into more chunks
    assert len(whole_seen) == len(chunked_seen) > 0
    for (scores, ema), (chunked_scores, chunked_ema) in zip(whole_seen, chunked_seen):
        assert torch.equal(scores, chunked_scores) and torch.equal(ema, chunked_ema)
    assert [r.token_ids for r in whole] == [r.token_ids for r in chunked]
    assert [r.cache_sizes for r in whole] == [r.cache_sizes for r in chunked]
    assert min(r.retained_ratio for r in whole) < 1.0
