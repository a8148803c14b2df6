"""What a layer's attention computes beyond causal softmax(q k^T * scaling), reproduced exactly by the engine.

Decoders pass these features to the attention function as keywords (`sliding_window`, `softcap`, `s_aux`).
The engine's forward attention and its recomputed attention rows (which policies score) both read them
from here, so the two cannot disagree. Masks use absolute token positions, never slot indices: after an
eviction slot i no longer holds token i.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionVariant:
    """One layer's attention features, as its module passed them on the latest forward."""

    scaling: float = 1.0  # the model's softmax scale
    #: keys at absolute position <= query position - sliding_window are not attended (Mistral, Gemma2, GPT-OSS)
    sliding_window: int | None = None
    #: logits become softcap * tanh(logits / softcap) before masking (Gemma2's attn_logit_softcapping)
    softcap: float | None = None
    #: (q_heads,) one logit per query head that joins the softmax denominator only (GPT-OSS attention sinks)
    sinks: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be a positive token count, got {self.sliding_window}.")
        if self.softcap is not None and not self.softcap > 0:
            raise ValueError(f"softcap must be positive, got {self.softcap}.")

    @property
    def needs_explicit_softmax(self) -> bool:
        """SDPA cannot softcap logits or add a sink to its denominator: those layers compute logits."""
        return self.softcap is not None or self.sinks is not None

    def visible(self, key_positions: torch.Tensor, query_positions: torch.Tensor) -> torch.Tensor:
        """Which keys each query attends to, from broadcastable absolute positions: not in the query's
        future and, with a sliding window, not older than the window."""
        visible = key_positions <= query_positions
        if self.sliding_window is not None:
            visible &= key_positions > query_positions - self.sliding_window
        return visible

    def capped(self, logits: torch.Tensor) -> torch.Tensor:
        """Scaled logits after softcapping (in place when there is a cap)."""
        if self.softcap is None:
            return logits
        return logits.div_(self.softcap).tanh_().mul_(self.softcap)

    def probabilities(self, logits: torch.Tensor, sinks: torch.Tensor | None) -> torch.Tensor:
        """Softmax over the last axis of masked float32 logits; with sinks (broadcastable to logits' leading
        axes plus a trailing 1), the sink's share of the mass is dropped, as eager attention drops it."""
        if sinks is None:
            return torch.softmax(logits, dim=-1)
        normaliser = torch.logaddexp(torch.logsumexp(logits, dim=-1, keepdim=True), sinks.float())
        return (logits - normaliser).exp_()


#: what `config.layer_types` may name: plain causal layers and sliding-window ones
SUPPORTED_LAYER_TYPES = ("full_attention", "sliding_attention")


def configured_sliding_window(config: object, layer_idx: int) -> int | None:
    """The window transformers' mask gives a layer, for modules that leave it to the mask and pass no
    `sliding_window` keyword (Qwen2-MoE, PhiMoE): `config.sliding_window` on every layer, or only on the
    `sliding_attention` entries of `config.layer_types`."""
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None or layer_types[layer_idx] == "sliding_attention":
        return window
    return None


def unsupported_attention_features(config: object) -> list[str]:
    """Config settings whose attention the engine does not reproduce, each named with its config key."""
    problems = []
    if getattr(config, "use_bidirectional_attention", False):
        problems.append("bidirectional attention (config key `use_bidirectional_attention`)")
    if getattr(config, "attention_chunk_size", None) is not None:
        problems.append("chunked local attention (config key `attention_chunk_size`)")
    others = sorted(set(getattr(config, "layer_types", None) or ()) - set(SUPPORTED_LAYER_TYPES))
    if others:
        problems.append(f"layer types {', '.join(map(repr, others))} (config key `layer_types`)")
    return problems
