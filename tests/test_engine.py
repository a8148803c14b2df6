"""The engine against independent references: plain transformers generation and physical removal."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import EvictFixedPositions, physically_removed_generate, plain_generate, random_prompts

from namm.engine import EngineConfig, GenerationSettings, MemoryEngine
from namm.models import ModelConfig, load_model
from namm.policies import Budget, PolicyConfig, available_policies, build_policy, policy_class

TINY_MODELS = ["tiny-llama", "tiny-qwen2", "tiny-mistral"]


@pytest.fixture(scope="module", params=TINY_MODELS)
def tiny(request):
    return load_model(ModelConfig(name=request.param, attn_implementation="sdpa"))


def test_full_cache_matches_plain_generate(tiny):
    model = tiny.model
    prompts = random_prompts([70, 45, 100], model.config.vocab_size)
    engine = MemoryEngine(model, build_policy(PolicyConfig(name="full")), EngineConfig(update_interval=32))
    results = engine.generate(prompts, GenerationSettings(max_new_tokens=40, stop_on_eos=False, return_logits=True))
    sequences, logits = plain_generate(model, prompts, 40)
    for row, result in enumerate(results):
        assert result.token_ids == sequences[row].tolist()
        torch.testing.assert_close(result.logits, logits[row].float(), atol=1e-4, rtol=1e-4)
        assert result.retained_ratio == 1.0


@pytest.mark.parametrize("mode", ["per_head", "per_layer_max"])
def test_every_baseline_runs_batched_equal_to_one_by_one(tiny, mode):
    """Each row follows its own schedule and every policy ranks each row on its own, so a batched run equals
    the rows run alone: mixed lengths, runs of one repeated token (exact score ties: identical keys at
    layer 0, identical hidden states after it) and a row that stops early at EOS."""
    model = tiny.model
    prompts = [*random_prompts([70, 45], model.config.vocab_size, seed=1), [7] * 70, [9, 9, 9, 5] * 25]
    free = GenerationSettings(max_new_tokens=12, stop_on_eos=False)
    # the NAMM has its own test (test_namm_policy); a post-prefill-only policy (kvzip) is refused here and has its
    # batched test under schedule=post_prefill (test_engine_post_prefill)
    names = [name for name in available_policies() if name != "namm" and policy_class(name).runs_during_prefill]
    for name in names:
        engine = MemoryEngine(model, build_policy(PolicyConfig(name=name, budget_ratio=0.5)), EngineConfig(32, mode))
        stop = engine.generate(prompts[:1], free)[0].token_ids[3]
        settings = GenerationSettings(max_new_tokens=12, eos_token_ids=(stop,))
        batched = engine.generate(prompts, settings)
        assert len(batched[0].token_ids) <= 4, name  # the first row stops early, the batch goes on
        for prompt, result in zip(prompts, batched):
            alone = engine.generate([prompt], settings)[0]
            assert result.token_ids == alone.token_ids, name
            assert result.cache_sizes == alone.cache_sizes, name
            assert result.retained_ratio == pytest.approx(alone.retained_ratio), name
            assert result.update_positions == alone.update_positions
            assert (result.retained_ratio < 1.0) == (name != "full"), name


def test_per_head_eviction_equals_physical_removal(tiny):
    model = tiny.model
    prompt = random_prompts([45], model.config.vocab_size, seed=2)[0]
    evicted = [[1, 4, 9, 20, 30], [2, 3]]  # unequal per head: storage keeps masked gaps
    engine = MemoryEngine(
        model, EvictFixedPositions(evicted), EngineConfig(update_interval=32, eviction_mode="per_head")
    )
    result = engine.generate([prompt], GenerationSettings(max_new_tokens=12, stop_on_eos=False))[0]
    reference, _ = physically_removed_generate(model, prompt, 32, evicted, 12)
    assert result.token_ids == reference
    assert result.update_positions == [32]


def test_positions_stay_absolute_after_eviction(tiny):
    """Through RoPE: the engine matches removal with absolute positions and not with compacted ones."""
    model = tiny.model
    prompt = random_prompts([40], model.config.vocab_size, seed=3)[0]
    evicted = [list(range(24)), list(range(24))]
    engine = MemoryEngine(model, EvictFixedPositions(evicted), EngineConfig(update_interval=32))
    settings = GenerationSettings(max_new_tokens=8, stop_on_eos=False, return_logits=True)
    result = engine.generate([prompt], settings)[0]
    absolute_ids, absolute = physically_removed_generate(model, prompt, 32, evicted, 8)
    _, shifted = physically_removed_generate(model, prompt, 32, evicted, 8, absolute_positions=False)
    assert result.token_ids == absolute_ids
    torch.testing.assert_close(result.logits[0], absolute[0], atol=1e-4, rtol=1e-4)
    assert (result.logits[0] - shifted[0]).abs().max() > 1e-3  # 10x the agreement tolerance


def test_retained_ratio_matches_hand_count(tiny):
    # interval 16, budget 10 tokens, prompt 40, 5 new tokens (4 fed back):
    # update at 16: keep 10; at 32: 10 + 16 -> keep 10; then 8 prompt + 4 generated appended -> 22 of 44.
    model = tiny.model
    prompt = random_prompts([40], model.config.vocab_size, seed=4)[0]
    policy = build_policy(PolicyConfig(name="streaming", budget_tokens=10))
    engine = MemoryEngine(model, policy, EngineConfig(update_interval=16))
    result = engine.generate([prompt], GenerationSettings(max_new_tokens=5, stop_on_eos=False))[0]
    assert result.tokens_seen == 44
    assert result.update_positions == [16, 32]
    assert [entry["cache_sizes"] for entry in result.cache_sizes] == [[10.0] * 2, [10.0] * 2]
    assert result.retained_ratio == pytest.approx(22 / 44)
    assert result.retained_ratio_per_layer == pytest.approx([0.5, 0.5])


def test_decoding_updates_fire_on_schedule(tiny):
    model = tiny.model
    prompt = random_prompts([20], model.config.vocab_size, seed=5)[0]
    engine = MemoryEngine(
        model, build_policy(PolicyConfig(name="knorm", budget_ratio=0.5)), EngineConfig(update_interval=16)
    )
    result = engine.generate([prompt], GenerationSettings(max_new_tokens=30, stop_on_eos=False))[0]
    assert result.update_positions == [16, 32, 48]  # 20 prompt + 29 fed back = 49 tokens seen


def test_eos_stops_each_row(tiny):
    model = tiny.model
    prompts = random_prompts([30, 50], model.config.vocab_size, seed=6)
    engine = MemoryEngine(model, build_policy(PolicyConfig(name="full")), EngineConfig(update_interval=16))
    free = engine.generate(prompts, GenerationSettings(max_new_tokens=10, stop_on_eos=False))
    stop = free[0].token_ids[3]
    stopped = engine.generate(prompts, GenerationSettings(max_new_tokens=10, eos_token_ids=(stop,)))
    first = free[0].token_ids.index(stop)
    assert stopped[0].token_ids == free[0].token_ids[: first + 1]
    if stop in free[1].token_ids:
        assert stopped[1].token_ids == free[1].token_ids[: free[1].token_ids.index(stop) + 1]
    else:
        assert stopped[1].token_ids == free[1].token_ids


def test_bad_input_is_rejected_with_clear_errors(tiny):
    engine = MemoryEngine(tiny.model, build_policy(PolicyConfig(name="full")))
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[]], GenerationSettings())
    too_long = [1] * tiny.model.config.max_position_embeddings
    with pytest.raises(ValueError, match="maximum"):
        engine.generate([too_long], GenerationSettings(max_new_tokens=4))
    for ratio in (0.0, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="ratio"):
            build_policy(PolicyConfig(name="h2o", budget_ratio=ratio))
    with pytest.raises(ValueError, match="positive"):
        Budget(ratio=None, tokens=0)
    with pytest.raises(ValueError, match="unknown policy"):
        build_policy(PolicyConfig(name="nope"))


@pytest.mark.slow
def test_full_cache_matches_plain_generate_on_smollm2():
    """The shipped model on one real prompt, across several update boundaries (interval 64)."""
    lm = load_model(ModelConfig(name="smollm2-135m"))
    text = "Summarise the following notes.\n" + "The meeting moved to Tuesday; the budget was approved. " * 30
    chat = lm.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    prompt = list(chat["input_ids"])
    engine = MemoryEngine(lm.model, build_policy(PolicyConfig(name="full")), EngineConfig(update_interval=64))
    result = engine.generate([prompt], GenerationSettings(max_new_tokens=24, stop_on_eos=False, return_logits=True))[0]
    sequences, logits = plain_generate(lm.model, [prompt], 24)
    assert len(prompt) > 5 * 64
    assert result.token_ids == sequences[0].tolist()
    torch.testing.assert_close(result.logits, logits[0].float(), atol=1e-3, rtol=1e-3)
