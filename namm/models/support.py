"""Which models the memory engine can run: attention through transformers' interface, no feature it lacks."""

from __future__ import annotations

from transformers import PretrainedConfig, PreTrainedModel

from namm.attention_variant import unsupported_attention_features


class UnsupportedModelError(ValueError):
    """The architecture does not route attention through transformers' attention interface."""


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
