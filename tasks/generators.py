"""Generators for the runner seam (tasks/runner.py): the NAMM engine, and plain transformers greedy decoding.

The transformers one is an independent full-cache baseline: the engine with the full-cache policy must
produce the same greedy tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from transformers import PreTrainedModel

from namm.engine import EngineConfig, GenerationSettings, MemoryEngine
from namm.policies import PolicyConfig, build_policy
from tasks.runner import Generator


def engine_generator(engine: MemoryEngine) -> Generator:
    """`engine.generate` behind the seam; its results keep the engine's retained ratios and cache sizes."""
    return engine.generate


@dataclass
class GeneratedTokens:
    token_ids: list[int]


def transformers_generator(model: PreTrainedModel) -> Generator:
    """Greedy `model.generate` on a left-padded batch; each row's ids end at its first stop token."""

    @torch.inference_mode()
    def generate(prompts: list[list[int]], settings: GenerationSettings) -> list[GeneratedTokens]:
        width = max(len(prompt) for prompt in prompts)
        ids = torch.full((len(prompts), width), settings.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        stops = list(settings.eos_token_ids if settings.stop_on_eos else ())
        stops += list(settings.newline_token_ids if settings.stop_on_newline else ())
        device = next(model.parameters()).device
        # Keyword arguments, not a GenerationConfig: transformers fills a config's unset eos_token_id from the
        # model's own, which would stop at EOS even with stop_on_eos=False.
        output = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=settings.max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=stops or None,
            pad_token_id=settings.pad_token_id,
        )
        results = []
        for row in output[:, width:].tolist():
            end = next((i + 1 for i, token in enumerate(row) if token in stops), len(row))
            results.append(GeneratedTokens(row[:end]))
        return results

    return generate


def full_cache_generator(
    model: PreTrainedModel,
    backend: Literal["engine", "transformers"] = "engine",
    engine_config: EngineConfig | None = None,
) -> Generator:
    """Full-cache greedy generation: through the engine (the pipeline evolution scores with) or transformers."""
    if backend == "engine":
        policy = build_policy(PolicyConfig(name="full"))
        return engine_generator(MemoryEngine(model, policy, engine_config or EngineConfig()))
    if backend == "transformers":
        return transformers_generator(model)
    raise ValueError(f"backend must be 'engine' or 'transformers', got {backend!r}.")
