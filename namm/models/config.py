"""The `model` config group's schema, what loading returns, and the device and dtype a setting names."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from namm.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelConfig:
    """Hydra structured config of the `model` group."""

    name: str = "smollm2-135m"  # registry name, hub id (org/name) or local directory
    dtype: str = "float32"  # float32 | bfloat16 | float16 | auto (bfloat16 on CUDA, float32 on CPU)
    device: str = "cpu"  # cpu | cuda | cuda:<index> | auto
    attn_implementation: str = "sdpa"  # backend for plain (non-engine) runs
    chat_template: bool | None = None  # None: the model's default
    max_context: int | None = None  # None: the model config's max_position_embeddings
    seed: int = 0  # seeds the weights of the tiny random models


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    max_context: int
    chat_template: bool  # whether prompts go through the tokenizer's chat template by default
    weights_id: str = "unknown"  # which weights: the GGUF file's digest, the hub commit, a tiny model's seed


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as error:
        raise ConfigError(f"model.device={spec!r} is not a device; use cpu, cuda, cuda:<index> or auto") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"model.device={spec!r} but no CUDA GPU is visible; use model.device=cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"model.device={spec!r} but only {torch.cuda.device_count()} GPU(s) are visible")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    if spec == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if spec not in DTYPES:
        raise ConfigError(f"model.dtype={spec!r} is not one of {', '.join([*DTYPES, 'auto'])}")
    return DTYPES[spec]
