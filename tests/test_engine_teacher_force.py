"""Teacher forcing: a continuation's log-probabilities under a pruned cache, checked against plain transformers
(full cache) and against the engine's own decoding path (an evicting policy, token by token)."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import EvictFixedPositions, left_padded, random_prompts

from namm.engine import EngineConfig, GenerationSettings, MemoryEngine
from namm.models import ModelConfig, load_model
from namm.policies import PolicyConfig, build_policy


@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelConfig(name="tiny-llama", attn_implementation="sdpa"))


def plain_continuation_logprobs(model, prompt: list[int], continuation: list[int]) -> list[float]:
    """log p(continuation | prompt) from one plain transformers forward over prompt + continuation."""
    ids = torch.tensor([prompt + continuation])
    with torch.no_grad():
        logprobs = model(ids).logits[0].float().log_softmax(dim=-1)
    return [float(logprobs[len(prompt) - 1 + i, token]) for i, token in enumerate(continuation)]


def test_full_cache_logprobs_match_plain_transformers(tiny):
    """Left-padded rows of different lengths; the continuation crosses an update boundary (chunked there)."""
    model = tiny.model
    prompts = random_prompts([70, 45, 60], model.config.vocab_size, seed=4)
    continuation = random_prompts([9], model.config.vocab_size, seed=5)[0]
    engine = MemoryEngine(model, build_policy(PolicyConfig(name="full")), EngineConfig(update_interval=32))
    results = engine.teacher_force(prompts, continuation)
    for prompt, result in zip(prompts, results):
        expected = plain_continuation_logprobs(model, prompt, continuation)
        assert result.token_logprobs == pytest.approx(expected, abs=1e-4)
        assert result.token_ids == continuation
        assert result.tokens_seen == len(prompt) + len(continuation) - 1
        assert result.retained_ratio == 1.0
    assert left_padded(prompts)[0].shape == (3, 70)


@pytest.mark.parametrize("interval", [32, 64])
def test_evicted_cache_logprobs_equal_greedy_decoding_of_the_same_tokens(tiny, interval):
    """Feeding the greedy continuation at once gives the log-probs the engine's decode loop saw step by step,
    with the same evictions (interval 32: a decode-time update falls inside the continuation)."""
    model = tiny.model
    prompt = random_prompts([60], model.config.vocab_size, seed=6)[0]
    engine = MemoryEngine(model, EvictFixedPositions([[1, 4, 9, 20], [2, 3, 30]]), EngineConfig(interval))
    settings = GenerationSettings(max_new_tokens=10, stop_on_eos=False, return_logits=True)
    decoded = engine.generate([prompt], settings)[0]
    forced = engine.teacher_force([prompt], decoded.token_ids)[0]
    expected = decoded.logits.log_softmax(dim=-1).gather(-1, torch.tensor(decoded.token_ids)[:, None])[:, 0]
    assert forced.token_logprobs == pytest.approx(expected.tolist(), abs=1e-4)
    assert forced.retained_ratio == pytest.approx(decoded.retained_ratio)
    assert forced.update_positions == decoded.update_positions
    full = MemoryEngine(model, build_policy(PolicyConfig(name="full")), EngineConfig(interval))
    unpruned = full.teacher_force([prompt], decoded.token_ids)[0].token_logprobs
    assert max(abs(a - b) for a, b in zip(unpruned, forced.token_logprobs)) > 1e-3  # eviction moved them


def test_rows_are_batch_invariant_and_a_one_token_continuation_needs_no_forward(tiny):
    model = tiny.model
    prompt = random_prompts([50], model.config.vocab_size, seed=7)[0]
    engine = MemoryEngine(model, build_policy(PolicyConfig(name="h2o", budget_ratio=0.5)), EngineConfig(16))
    batched = engine.teacher_force([prompt] * 3, [5, 6, 7])
    alone = engine.teacher_force([prompt], [5, 6, 7])[0]
    # a batch's matmuls may differ from one row's in the last bits: the scorer teacher-forces each candidate alone
    assert all(result.token_logprobs == pytest.approx(alone.token_logprobs, abs=1e-5) for result in batched)
    single = engine.teacher_force([prompt], [5])[0]
    assert single.token_logprobs == [alone.token_logprobs[0]]
    with pytest.raises(ValueError, match="at least one continuation token"):
        engine.teacher_force([prompt], [])
