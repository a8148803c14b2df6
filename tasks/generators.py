"""Generators for the runner seam (tasks/runner.py): the NAMM engine, and plain transformers greedy decoding.

The transformers one is an independent full-cache baseline: the engine with the full-cache policy must
produce the same greedy tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from transformers import PreTrainedModel

from namm.engine import EngineConfig, GenerationSettings, MemoryEngine
from namm.plain_generation import greedy_generate
from namm.policies import PolicyConfig, build_policy
from tasks.runner import Generator


def engine_generator(engine: MemoryEngine) -> Generator:
    """`engine.generate` behind the seam; its results keep the engine's retained ratios and cache sizes."""
    return engine.generate


@dataclass
class GeneratedTokens:
    token_ids: list[int]


def transformers_generator(model: PreTrainedModel) -> Generator:
    """Greedy `model.generate` on a left-padded batch (`namm.plain_generation`); each row's ids end at its
    first stop token."""

    def generate(prompts: list[list[int]], settings: GenerationSettings) -> list[GeneratedTokens]:
        stops = list(settings.eos_token_ids if settings.stop_on_eos else ())
        stops += list(settings.newline_token_ids if settings.stop_on_newline else ())
        output = greedy_generate(model, prompts, settings.max_new_tokens, settings.pad_token_id, stops)
        results = []
        for row in output.tokens.tolist():
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
