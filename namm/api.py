"""One-call construction of a NAMM-managed transformer: a model, a NAMM policy and the engine together.

It sits above the engine, the model loader and the policies, so that the policies need import neither of
the first two: building a policy by name never loads the engine or the models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from namm.engine import EngineConfig, MemoryEngine
from namm.models import ModelConfig, load_model
from namm.network.config import NAMMConfig
from namm.network.namm import NAMM
from namm.policies.namm_policy import NAMMPolicy


@dataclass
class NAMMTransformer:
    """A causal LM whose KV cache a NAMM manages: `engine.generate(...)`; `tokenizer` is None for a
    model built from a bare config."""

    engine: MemoryEngine
    tokenizer: PreTrainedTokenizerBase | None

    @property
    def policy(self) -> NAMMPolicy:
        return self.engine.policy  # type: ignore[return-value]


def namm_transformer(
    model: str | ModelConfig | PretrainedConfig | PreTrainedModel = "smollm2-135m",
    namm: NAMM | NAMMConfig | None = None,
    parameters: torch.Tensor | None = None,
    engine_config: EngineConfig | None = None,
) -> NAMMTransformer:
    """One call from a model name (or ModelConfig), a fresh transformers config (random weights) or a
    loaded model to a NAMM-managed transformer. Zero parameters (the default) keep every token."""
    tokenizer = None
    if isinstance(model, (str, ModelConfig)):
        loaded = load_model(model if isinstance(model, ModelConfig) else ModelConfig(name=model))
        model, tokenizer = loaded.model, loaded.tokenizer
    elif isinstance(model, PretrainedConfig):
        model = AutoModelForCausalLM.from_config(model).eval()
    policy = NAMMPolicy(namm, parameters)
    return NAMMTransformer(MemoryEngine(model, policy, engine_config), tokenizer)
