"""Sliding windows, logit softcapping and attention sinks against transformers' own eager attention, and
refusal of the attention features the engine does not implement."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from test_engine import plain_generate, random_prompts
from transformers import AutoModelForCausalLM, Gemma2Config, GptOssConfig, MistralConfig, Qwen2MoeConfig

from namm.attention import memory_attention
from namm.attention_variant import unsupported_attention_features
from namm.engine import EngineConfig, GenerationSettings, MemoryEngine
from namm.models import UnsupportedModelError
from namm.policies import LayerView, MemoryPolicy, PolicyConfig, Selection, build_policy

WINDOW = 16
SHAPE = {
    "vocab_size": 96,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 512,
    "initializer_range": 0.2,  # peaked attention, so every feature changes the tokens
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "bos_token_id": None,
    "eos_token_id": None,
}


@dataclass(frozen=True)
class Variant:
    """A tiny decoder using one feature, and the same weights with the feature switched off."""

    config: Callable[[], object]
    without_feature: Callable[[torch.nn.Module], None]


def _drop_config_window(model):
    model.config.sliding_window = None


def _drop_softcap(model):
    for layer in model.model.layers:
        layer.self_attn.attn_logit_softcapping = None


def _drop_sinks(model):
    for layer in model.model.layers:
        layer.self_attn.sinks.data.fill_(float("-inf"))  # a sink that takes no share: plain softmax


def _drop_moe_window(model):
    model.config.sliding_window = 10**6  # wider than any prompt: the mask then hides nothing


VARIANTS = {
    # every layer slides
    "mistral-window": Variant(lambda: MistralConfig(**SHAPE, sliding_window=WINDOW), _drop_config_window),
    # softcapped logits; sliding and full layers alternate
    "gemma2-softcap": Variant(
        lambda: Gemma2Config(**SHAPE, sliding_window=WINDOW, attn_logit_softcapping=2.0, query_pre_attn_scalar=16),
        _drop_softcap,
    ),
    # attention sinks; sliding and full layers alternate
    "gpt-oss-sinks": Variant(
        lambda: GptOssConfig(**SHAPE, sliding_window=WINDOW, num_local_experts=4, num_experts_per_tok=2),
        _drop_sinks,
    ),
    # the window lives in the mask only: the module passes no sliding_window keyword
    "qwen2-moe-window": Variant(
        lambda: Qwen2MoeConfig(
            **SHAPE,
            use_sliding_window=True,
            sliding_window=WINDOW,
            max_window_layers=2,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=32,
        ),
        _drop_moe_window,
    ),
}


def build(config) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request):
    spec = VARIANTS[request.param]
    return SimpleNamespace(name=request.param, model=build(spec.config()), spec=spec)


def test_engine_equals_transformers_generate(variant):
    """Prompts several windows long, prefill chunks and updates every 32 tokens, left-padded batch."""
    prompts = random_prompts([70, 45, 100], SHAPE["vocab_size"])
    engine = MemoryEngine(variant.model, build_policy(PolicyConfig(name="full")), EngineConfig(update_interval=32))
    settings = GenerationSettings(max_new_tokens=30, stop_on_eos=False, return_logits=True)
    results = engine.generate(prompts, settings)
    sequences, logits = plain_generate(variant.model, prompts, 30)
    for row, result in enumerate(results):
        assert result.token_ids == sequences[row].tolist()
        torch.testing.assert_close(result.logits, logits[row].float(), atol=1e-4, rtol=1e-4)


def test_each_feature_changes_the_reference(variant):
    """Without its feature the same weights generate otherwise, so the test above can fail."""
    prompts = random_prompts([70, 100], SHAPE["vocab_size"])
    _, with_feature = plain_generate(variant.model, prompts, 10)
    plain = copy.deepcopy(variant.model)
    variant.spec.without_feature(plain)
    _, without = plain_generate(plain, prompts, 10)
    assert (with_feature - without).abs().max() > 0.1


@pytest.mark.parametrize("mode", ["per_head", "per_layer_max"])
def test_evicting_only_what_the_window_hides_changes_nothing(mode):
    """Mistral slides on every layer: keeping the 20 newest tokens at each update (slot i no longer holds
    token i) gives transformers' full-cache generation; keeping 10 (inside the window) does not."""
    model = build(VARIANTS["mistral-window"].config())
    prompts = random_prompts([70, 45, 100], SHAPE["vocab_size"], seed=1)
    sequences, logits = plain_generate(model, prompts, 30)
    settings = GenerationSettings(max_new_tokens=30, stop_on_eos=False, return_logits=True)
    for budget, equal in ((20, True), (10, False)):
        policy = build_policy(PolicyConfig(name="streaming", budget_tokens=budget, options={"sink_tokens": 0}))
        results = MemoryEngine(model, policy, EngineConfig(update_interval=32, eviction_mode=mode)).generate(
            prompts, settings
        )
        for row, result in enumerate(results):
            assert result.retained_ratio < 0.5
            gap = (result.logits - logits[row]).abs().max()
            if equal:
                assert result.token_ids == sequences[row].tolist()
                assert gap < 1e-4
            else:
                assert gap > 0.1


class RecordRows(MemoryPolicy):
    """Keeps everything and records the attention rows the engine hands to policies."""

    name = "record-rows"
    needs_attention = True

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, torch.Tensor]] = []

    def select(self, view: LayerView) -> Selection:
        self.rows.append((view.layer_idx, int(view.tokens_seen[0]), view.attention.clone()))
        return Selection(scores=torch.zeros(view.valid.shape), keep=view.valid.clone())


def test_attention_rows_equal_eager_attention_weights(variant):
    """Recomputed rows (what H2O, SnapKV and the NAMM read) equal transformers' eager attention weights,
    averaged over each GQA group: window, softcap and sinks included (rows with sinks sum to < 1)."""
    model = variant.model
    prompt = random_prompts([64], SHAPE["vocab_size"], seed=2)[0]
    policy = RecordRows()
    MemoryEngine(model, policy, EngineConfig(update_interval=32)).generate(
        [prompt], GenerationSettings(max_new_tokens=1, stop_on_eos=False)
    )
    with torch.no_grad():
        eager = model(torch.tensor([prompt]), output_attentions=True).attentions
    group = SHAPE["num_attention_heads"] // SHAPE["num_key_value_heads"]
    assert [(layer, seen) for layer, seen, _ in policy.rows] == [(0, 32), (1, 32), (0, 64), (1, 64)]
    for layer, seen, rows in policy.rows:
        expected = eager[layer][:, :, seen - 32 : seen, :seen].unflatten(1, (-1, group)).mean(dim=2)
        torch.testing.assert_close(rows, expected, atol=1e-5, rtol=1e-4)
    assert policy.rows[-2][2][0, :, -1, : 64 - WINDOW].abs().max() == 0  # layer 0 slides: old keys unseen


def test_config_features_the_engine_lacks_are_refused_at_build():
    config = Gemma2Config(**SHAPE, use_bidirectional_attention=True)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with pytest.raises(UnsupportedModelError, match="use_bidirectional_attention"):
        MemoryEngine(model, build_policy(PolicyConfig(name="full")))
    chunked = SimpleNamespace(attention_chunk_size=8192, layer_types=["full_attention", "chunked_attention"])
    problems = unsupported_attention_features(chunked)
    assert any("`attention_chunk_size`" in problem for problem in problems)
    assert any("'chunked_attention'" in problem and "`layer_types`" in problem for problem in problems)
    assert unsupported_attention_features(VARIANTS["gemma2-softcap"].config()) == []


def test_unknown_attention_keywords_are_refused_not_dropped():
    module = SimpleNamespace(layer_idx=0)
    tensors = torch.zeros(3, 1, 2, 1, 4)
    for keywords, named in (
        ({"position_bias": torch.zeros(1)}, "'position_bias'"),
        ({"is_causal": False}, "is_causal=False"),
        ({"dropout": 0.1}, "dropout=0.1"),
    ):
        with pytest.raises(UnsupportedModelError, match=named):
            memory_attention(module, *tensors, None, **keywords)
