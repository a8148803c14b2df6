"""Hugging Face hub ids and local model directories."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
from transformers import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from namm.errors import ConfigError
from namm.models.config import ModelConfig
from namm.models.support import UnsupportedModelError, check_supported

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_source(name: str, known_names: tuple[str, ...]) -> str:
    """The directory or hub id `name` stands for; `known_names` (the other sources) are named in the error."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if name.startswith(("/", ".", "~")) or path.exists():
        raise ConfigError(f"model.name={name!r} looks like a local path, but no model directory is there")
    if HUB_ID.match(name):
        return name
    raise ConfigError(
        f"Unknown model {name!r}. Known names: {', '.join(known_names)}; "
        "or give a Hugging Face hub id (org/name) or a local model directory."
    )


def load_pretrained(
    source: str, config: ModelConfig, dtype: torch.dtype, device: torch.device
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    # The architecture is checked from config.json alone, before any weights are fetched.
    hf_config = AutoConfig.from_pretrained(source)
    check_supported(_causal_lm_class(hf_config, source), hf_config)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=dtype, attn_implementation=config.attn_implementation, device_map=str(device)
    )
    return model, tokenizer


def weights_id(source: str, model: PreTrainedModel) -> str:
    """A hub model's commit; a local directory's weight files by name, size and modification time (cheap,
    and it changes when the weights are rewritten)."""
    directory = Path(source)
    if not directory.is_dir():
        return f"{source}@{getattr(model.config, '_commit_hash', None) or 'unknown'}"
    files = sorted(path for pattern in ("*.safetensors", "*.bin") for path in directory.glob(pattern))
    stamp = ";".join(f"{path.name}:{path.stat().st_size}:{path.stat().st_mtime_ns}" for path in files)
    return f"{directory.resolve()}@{hashlib.sha256(stamp.encode()).hexdigest()[:16]}"


def _causal_lm_class(hf_config: PretrainedConfig, source: str) -> type[PreTrainedModel]:
    if type(hf_config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise UnsupportedModelError(
            f"{source} (model_type {hf_config.model_type!r}) has no causal-LM class in transformers"
        )
    return MODEL_FOR_CAUSAL_LM_MAPPING[type(hf_config)]
