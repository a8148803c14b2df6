"""`load_model`: one name to a frozen model and its tokenizer, whichever kind of source the name is."""

from __future__ import annotations

import logging

from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from namm.errors import ConfigError
from namm.models.byte_tokenizer import build_byte_tokenizer
from namm.models.config import LoadedModel, ModelConfig, resolve_device, resolve_dtype
from namm.models.hub import load_pretrained, resolve_source, weights_id
from namm.models.packaged_gguf import PACKAGED_MODELS, load_packaged_gguf, locate_packaged_gguf
from namm.models.support import check_supported
from namm.models.tiny import TINY_MAX_CONTEXT, TINY_MODELS, build_tiny_model

logger = logging.getLogger(__name__)

KNOWN_MODEL_NAMES = (*PACKAGED_MODELS, *TINY_MODELS)


def check_model_config(config: ModelConfig) -> None:
    """Every check that needs no weights (device, dtype, max_context, a name that can be found), so entry
    points can fail on a bad model setting before anything expensive starts; raises ConfigError."""
    resolve_dtype(config.dtype, resolve_device(config.device))
    if config.max_context is not None and config.max_context <= 0:
        raise ConfigError(f"model.max_context must be positive, got {config.max_context}")
    if config.name not in KNOWN_MODEL_NAMES:
        resolve_source(config.name, KNOWN_MODEL_NAMES)


def load_model(config: ModelConfig) -> LoadedModel:
    """Load the model and tokenizer `config` names, on its device and dtype, in eval mode, frozen."""
    check_model_config(config)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)

    if config.name in PACKAGED_MODELS:
        packaged = PACKAGED_MODELS[config.name]
        model, tokenizer = load_packaged_gguf(config.name, packaged, config, dtype, device)
        default_chat_template = packaged.chat_template
        weights = f"gguf-sha256:{locate_packaged_gguf(packaged)[1][:16]}"
    elif config.name in TINY_MODELS:
        tokenizer = build_byte_tokenizer(TINY_MAX_CONTEXT)
        model = build_tiny_model(TINY_MODELS[config.name], tokenizer, config, dtype, device)
        default_chat_template = False  # random weights: raw prompts are the natural test input
        weights = f"tiny-random-seed{config.seed}"
    else:
        source = resolve_source(config.name, KNOWN_MODEL_NAMES)
        model, tokenizer = load_pretrained(source, config, dtype, device)
        default_chat_template = bool(tokenizer.chat_template)
        weights = weights_id(source, model)

    check_supported(model)
    model.eval().requires_grad_(False)
    _prepare_tokenizer(tokenizer, model)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=config.name,
        max_context=_resolve_max_context(config, getattr(model.config, "max_position_embeddings", None)),
        chat_template=_resolve_chat_template(config, tokenizer, default_chat_template),
        weights_id=weights,
    )


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> None:
    """Left padding (batched generation appends on the right) and a pad token for it."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("The tokenizer has neither a pad nor an eos token; cannot pad batches")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def max_context_without_weights(config: ModelConfig) -> int | None:
    """The `max_context` loading will give the model, read from small files only (the setting; the packaged
    and tiny models' known lengths; a hub or local model's config.json), so prompt lengths are checked before
    it loads. None when it cannot be read here (the hub unreachable): loading checks it then."""
    if config.max_context is not None:
        return config.max_context
    if config.name in PACKAGED_MODELS:
        return PACKAGED_MODELS[config.name].max_context
    if config.name in TINY_MODELS:
        return TINY_MAX_CONTEXT
    try:
        hf_config = AutoConfig.from_pretrained(resolve_source(config.name, KNOWN_MODEL_NAMES))
    except (OSError, ValueError) as error:
        logger.info(
            "could not read %s's config.json before loading (%s); its prompt lengths are checked later",
            config.name,
            error,
        )
        return None
    return getattr(hf_config, "max_position_embeddings", None)


def _resolve_max_context(config: ModelConfig, model_limit: int | None) -> int:
    if config.max_context is None:
        if model_limit is None:
            raise ValueError(f"{config.name} does not state its context length; set model.max_context")
        return model_limit
    if model_limit is not None and config.max_context > model_limit:
        logger.warning(
            "model.max_context=%d exceeds the %d positions %s was trained for",
            config.max_context,
            model_limit,
            config.name,
        )
    return config.max_context


def _resolve_chat_template(config: ModelConfig, tokenizer: PreTrainedTokenizerBase, default: bool) -> bool:
    use_template = default if config.chat_template is None else config.chat_template
    if use_template and not tokenizer.chat_template:
        raise ValueError(f"model.chat_template=true, but the tokenizer of {config.name} has no chat template")
    return use_template
