"""Tiny random decoders for tests: seeded weights, the byte tokenizer, nothing downloaded."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from namm.models.config import ModelConfig


@dataclass(frozen=True)
class TinyShape:
    """A tiny random decoder: 2 layers, hidden 64, head_dim 16, GQA with 2 KV heads."""

    config_class: type[PretrainedConfig]
    num_attention_heads: int
    extra: dict = field(default_factory=dict)


TINY_MODELS = {
    "tiny-llama": TinyShape(LlamaConfig, num_attention_heads=4),
    "tiny-qwen2": TinyShape(Qwen2Config, num_attention_heads=4, extra={"use_sliding_window": False}),
    # 8 query heads over 2 KV heads, so tests also see a GQA group larger than 2.
    "tiny-mistral": TinyShape(MistralConfig, num_attention_heads=8, extra={"sliding_window": None}),
}

TINY_MAX_CONTEXT = 4096
# At the usual 0.02 random attention is uniform (normalised entropy ~1.0) and evicting any token changes
# nothing; at 0.2 it is peaked (~0.4-0.7), so eviction tests can fail.
TINY_INIT_STD = 0.2


def build_tiny_model(
    shape: TinyShape, tokenizer: PreTrainedTokenizerFast, config: ModelConfig, dtype: torch.dtype, device: torch.device
) -> PreTrainedModel:
    hf_config = shape.config_class(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=TINY_MAX_CONTEXT,
        initializer_range=TINY_INIT_STD,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shape.extra,
    )
    # Initialise in float32 on the CPU under a private RNG state: the weights depend on `seed` alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = AutoModelForCausalLM.from_config(
            hf_config, dtype=torch.float32, attn_implementation=config.attn_implementation
        )
    return model.to(device=device, dtype=dtype)
