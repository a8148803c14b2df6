"""The post_prefill schedule, kvzip's reconstruction forwards and the new policies and allocations in the
engine: update positions, peak memory, refusals, kvzip's scores against plain transformers' attention, and
batched runs equal to the rows run one by one."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import random_prompts

from namm.engine import EngineConfig, GenerationSettings, MemoryEngine
from namm.models import ModelConfig, load_model
from namm.policies import PolicyConfig, build_policy
from namm.policies.namm_policy import NAMMPolicy

REPEAT_IDS = [7, 8, 9]


@pytest.fixture(scope="module")
def llama():
    return load_model(ModelConfig(name="tiny-llama", attn_implementation="sdpa")).model


def policy(name: str, **config):
    built = build_policy(PolicyConfig(name=name, **config))
    built.use_tokenizer(lambda text: REPEAT_IDS)
    return built


def test_post_prefill_updates_once_the_prompt_is_in_then_every_interval_of_generated_tokens(llama):
    prompts = random_prompts([70, 45], llama.config.vocab_size, seed=3)
    settings = GenerationSettings(max_new_tokens=40, stop_on_eos=False)
    streaming = policy("streaming", budget_tokens=10)
    post = MemoryEngine(llama, streaming, EngineConfig(32, schedule="post_prefill")).generate(prompts, settings)
    prefill = MemoryEngine(llama, streaming, EngineConfig(32)).generate(prompts, settings)
    assert [r.update_positions for r in post] == [[70, 102], [45, 77]]  # prompt end, then +32 generated
    assert [r.update_positions for r in prefill] == [[32, 64, 96], [32, 64]]  # tokens seen 109 and 84
    assert [[entry["cache_sizes"] for entry in r.cache_sizes] for r in post] == [[[10.0] * 2] * 2] * 2


def test_post_prefill_peak_live_bytes_are_the_full_caches_and_prefill_bounds_them(llama):
    prompts = random_prompts([200, 150], llama.config.vocab_size, seed=4)
    settings = GenerationSettings(max_new_tokens=1)
    full = MemoryEngine(llama, policy("full"), EngineConfig(32)).generate(prompts, settings)
    h2o = policy("h2o", budget_ratio=0.25)
    post = MemoryEngine(llama, h2o, EngineConfig(32, schedule="post_prefill")).generate(prompts, settings)
    prefill = MemoryEngine(llama, h2o, EngineConfig(32)).generate(prompts, settings)
    bytes_per_token = 2 * 2 * 16 * 4 * 2  # layers x KV heads x head dim x float32 x (key, value)
    for row, length in enumerate([200, 150]):
        assert post[row].memory.live_kv_bytes.peak == full[row].memory.live_kv_bytes.peak == length * bytes_per_token
        # prefill-time eviction: at most a quarter of what was seen plus one interval
        assert prefill[row].memory.live_kv_bytes.peak <= (length // 4 + 1 + 32) * bytes_per_token
        assert post[row].memory.live_kv_bytes.final == -(-length // 4) * bytes_per_token  # once, to ceil(25%)


def test_a_post_prefill_policy_and_adakv_without_per_head_storage_are_refused(llama):
    with pytest.raises(ValueError, match="kvzip.*post-prefill only.*set schedule=post_prefill"):
        MemoryEngine(llama, policy("kvzip", budget_ratio=0.5), EngineConfig(32))
    with pytest.raises(ValueError, match="allocation=adakv.*set engine.eviction_mode=per_head"):
        MemoryEngine(
            llama, policy("h2o", budget_ratio=0.5, allocation="adakv"), EngineConfig(32, schedule="post_prefill")
        )
    with pytest.raises(ValueError, match="schedule must be one of"):
        EngineConfig(schedule="during")
    MemoryEngine(llama, policy("h2o", budget_ratio=0.5, allocation="adakv"), EngineConfig(32, "per_head"))


def test_kvzip_reports_its_reconstruction_forwards_and_leaves_no_trace_in_the_cache(llama):
    prompts = random_prompts([50, 90], llama.config.vocab_size, seed=5)
    kvzip = policy("kvzip", budget_ratio=0.5, options={"chunk_tokens": 40})
    engine = MemoryEngine(llama, kvzip, EngineConfig(32, schedule="post_prefill"))
    results = engine.generate(prompts, GenerationSettings(max_new_tokens=4, stop_on_eos=False))
    # chunks: 40 + 10 for the first prompt, 40 + 40 + 10 for the second, each after the 3 repeat ids
    assert [r.reconstruction.tokens for r in results] == [50 + 2 * 3, 90 + 3 * 3]
    assert {r.reconstruction.forwards for r in results} == {3} and results[0].reconstruction.seconds > 0
    assert [r.tokens_seen for r in results] == [53, 93]
    assert [r.update_positions for r in results] == [[50], [90]]
    # prompt end: ceil(0.5 x length) kept; then 3 fed-back tokens each
    assert [r.retained_ratio for r in results] == [pytest.approx((25 + 3) / 53), pytest.approx((45 + 3) / 93)]


def test_kvzip_scores_are_the_largest_attention_of_the_reconstruction_in_plain_transformers(llama):
    eager = load_model(ModelConfig(name="tiny-llama", attn_implementation="eager")).model
    prompt = random_prompts([30], llama.config.vocab_size, seed=6)[0]
    kvzip = policy("kvzip", budget_ratio=1.0)  # keeps everything: the scores stay in position order
    MemoryEngine(llama, kvzip, EngineConfig(32, schedule="post_prefill")).generate([prompt], GenerationSettings(1))
    sequence = torch.tensor([prompt + REPEAT_IDS + prompt])
    with torch.no_grad():
        attentions = eager(sequence, output_attentions=True).attentions  # per layer (1, q heads, L, L)
    for layer, rows in enumerate(attentions):
        grouped = rows[0, :, 30:, :30].reshape(2, 2, 33, 30).mean(dim=1)  # GQA group means, (KV heads, queries, keys)
        torch.testing.assert_close(kvzip.scores[layer][0, :, :30], grouped.amax(dim=1), rtol=1e-4, atol=1e-6)


def namm_policy() -> NAMMPolicy:
    theta = torch.randn(4172, generator=torch.Generator().manual_seed(16)) * 0.5
    theta[-1] = 1.0
    return NAMMPolicy(parameters=theta)


RUNS = {
    "tova": (lambda: policy("tova", budget_ratio=0.5), "per_layer_max", "prefill"),
    "expected_attention": (lambda: policy("expected_attention", budget_ratio=0.5), "per_head", "prefill"),
    "keydiff": (lambda: policy("keydiff", budget_ratio=0.5), "per_layer_max", "prefill"),
    "kvzip": (lambda: policy("kvzip", budget_ratio=0.5, options={"chunk_tokens": 40}), "per_head", "post_prefill"),
    "h2o+adakv": (lambda: policy("h2o", budget_ratio=0.5, allocation="adakv"), "per_head", "prefill"),
    "snapkv+pyramid": (
        lambda: policy("snapkv", budget_ratio=0.5, allocation="pyramid"),
        "per_layer_max",
        "post_prefill",
    ),
    "expected_attention/post": (
        lambda: policy("expected_attention", budget_ratio=0.5),
        "per_layer_max",
        "post_prefill",
    ),
    "namm/post": (namm_policy, "per_layer_max", "post_prefill"),
}


@pytest.mark.parametrize("name", RUNS)
def test_new_policies_and_schedules_batched_equal_one_by_one(llama, name):
    make_policy, mode, schedule = RUNS[name]
    prompts = random_prompts([80, 48, 112], llama.config.vocab_size, seed=9)
    engine = MemoryEngine(llama, make_policy(), EngineConfig(32, mode, schedule=schedule))
    settings = GenerationSettings(max_new_tokens=40, stop_on_eos=False)
    batched = engine.generate(prompts, settings)
    for prompt, result in zip(prompts, batched):
        alone = engine.generate([prompt], settings)[0]
        assert result.token_ids == alone.token_ids
        assert result.update_positions == alone.update_positions
        assert result.retained_ratio == alone.retained_ratio
        assert result.memory.live_kv_bytes == alone.memory.live_kv_bytes
    assert min(result.retained_ratio for result in batched) < 0.9
