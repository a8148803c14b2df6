"""KVzip (Kim et al. 2025): keep the tokens the model needs to reconstruct its context; query-agnostic.

Once the prompt is in, the engine feeds the model a repeat instruction followed by the prompt itself (the
paper's context reconstruction), in chunks of `chunk_tokens` so the extra cache and attention rows stay
bounded; each cached token's score is the largest attention any reconstruction query pays it. The
reconstruction's tokens leave the cache after each chunk, so the decision sees the whole prompt, question
included, at the price of a second prefill (reported per sample as `reconstruction_*`).

Post-prefill only (schedule=post_prefill; refused in schedule=prefill before the model loads). Tokens that
arrive after the reconstruction (generated ones) are kept before any scored one, as a recent window.
Differences from the paper: the attention is the GQA group's mean (the engine's rows), where the paper takes
the maximum over the group's heads; budgets are per head (uniform), where the paper ranks all heads of all
layers together (allocation=adakv shares each layer's budget across its heads).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from namm.policies.base import BudgetPolicy, LayerView
from namm.policies.registry import register_policy


@register_policy
@dataclass(eq=False)
class KVzipPolicy(BudgetPolicy):
    name: ClassVar[str] = "kvzip"
    needs_attention: ClassVar[bool] = True
    runs_during_prefill: ClassVar[bool] = False
    needs_reconstruction: ClassVar[bool] = True

    repeat_prompt: str = "\n\nRepeat the previous context exactly.\n"  # put before each chunk of the prompt
    chunk_tokens: int = 2048  # prompt tokens per reconstruction forward (the paper's chunked scoring: 2k)
    repeat_prompt_ids: list[int] | None = field(init=False, default=None)
    scores: dict[int, torch.Tensor] = field(init=False, default_factory=dict, repr=False)  # per layer (B, H, S)
    context_end: torch.Tensor | None = field(init=False, default=None)  # (B,) tokens the reconstruction scored
    batch_size: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.chunk_tokens < 1:
            raise ValueError(f"kvzip policy.options.chunk_tokens must be >= 1, got {self.chunk_tokens}.")

    def use_tokenizer(self, encode: Callable[[str], list[int]]) -> None:
        self.repeat_prompt_ids = list(encode(self.repeat_prompt))

    def reset(self, batch_size: int, num_layers: int, num_kv_heads: int, device: torch.device) -> None:
        self.scores = {}
        self.context_end = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.batch_size = batch_size

    def reconstruction_inputs(self, prompt: Sequence[int]) -> list[list[int]]:
        if self.repeat_prompt_ids is None:
            raise RuntimeError(
                "kvzip feeds the model its repeat prompt: call policy.use_tokenizer(tokenizer.encode) once before "
                "generating (the evaluation does)."
            )
        return [
            [*self.repeat_prompt_ids, *prompt[start : start + self.chunk_tokens]]
            for start in range(0, len(prompt), self.chunk_tokens)
        ]

    def observe_reconstruction(self, view: LayerView) -> None:
        """Fold the forward's largest attention per cached token into the layer's scores."""
        context = view.tokens_seen - view.num_new_tokens  # (R,) the prompt's length
        received = torch.zeros(view.valid.shape, dtype=torch.float32, device=view.valid.device)
        flat = received.view(-1, received.shape[-1])
        for pairs, compute in view.chunked_attention().chunks:
            flat[pairs] = compute().amax(dim=1)
        received = received.masked_fill(view.positions >= context.view(-1, 1, 1), 0.0)
        state = self.layer_state(view)
        slots = received.shape[-1]
        state[view.rows, :, :slots] = torch.maximum(state[view.rows, :, :slots], received)
        self.context_end[view.rows] = context

    def layer_state(self, view: LayerView) -> torch.Tensor:
        """(B, H, >= S) the layer's scores, grown (with zeros) to the view's slots."""
        heads, slots = view.valid.shape[1:]
        state = self.scores.get(view.layer_idx)
        if state is None:
            state = torch.zeros(self.batch_size, heads, slots, device=view.valid.device)
        elif state.shape[-1] < slots:
            state = torch.nn.functional.pad(state, (0, slots - state.shape[-1]))
        self.scores[view.layer_idx] = state
        return state

    def score(self, view: LayerView) -> torch.Tensor:
        if view.layer_idx not in self.scores:
            raise RuntimeError("kvzip selects from its reconstruction scores: run it with schedule=post_prefill.")
        return self.layer_state(view)[view.rows, :, : view.valid.shape[-1]]

    def protected(self, view: LayerView) -> torch.Tensor:
        """The tokens that arrived after the reconstruction (generated ones)."""
        return view.positions >= self.context_end[view.rows].view(-1, 1, 1)

    def state_bytes(self) -> int:
        return sum(state.numel() * state.element_size() for state in self.scores.values())

    def reindex(self, layer_idx: int, rows: torch.Tensor, index: torch.Tensor, valid: torch.Tensor) -> None:
        state = self.scores.get(layer_idx)
        if state is None:
            return
        moved = state[rows].gather(2, index).masked_fill(~valid, 0.0)
        block = torch.zeros_like(state[rows])
        block[:, :, : moved.shape[-1]] = moved
        state[rows] = block
