"""The memory-policy interface: at each update a policy scores one layer's cached tokens per KV head.

The engine owns storage, scheduling and compaction; a policy only says which slots are worth keeping.
That split keeps every baseline a page of code and lets the NAMM plug into the same schedule.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import torch

from namm.allocation import adakv_keep, check_allocation, pyramid_budgets
from namm.attention_row_chunks import ChunkedRows
from namm.budget import PROTECTED_SCORE, Budget, top_k_keep


@dataclass
class LayerView:
    """One layer's cache as a policy sees it at an update, restricted to the batch rows being updated.

    Shapes use R = rows updated now, H = KV heads, S = cache slots, D = head dim, n = queries since the
    previous update of these rows (the update interval).
    """

    layer_idx: int
    rows: torch.Tensor  # (R,) int64 batch-row indices into the engine's batch
    keys: torch.Tensor  # (R, H, S, D) post-RoPE keys
    values: torch.Tensor  # (R, H, S, D)
    valid: torch.Tensor  # (R, H, S) bool: the slot holds a live token
    positions: torch.Tensor  # (R, H, S) int64 absolute token positions, -1 where invalid
    tokens_seen: torch.Tensor  # (R,) int64 real tokens processed so far by each row
    num_new_tokens: int  # n
    attention_fn: Callable[[int], torch.Tensor] | None = None
    attention_sums_fn: Callable[[int], torch.Tensor] | None = None
    attention_chunks_fn: Callable[[int], ChunkedRows] | None = None
    num_layers: int = 1  # the model's decoder layers (per-layer budget allocations)
    queries_fn: Callable[[int], torch.Tensor] | None = None
    #: (D/2,) the rotary frequencies (radians per position) of the layer's keys and queries; None without RoPE
    rotary_inv_freq: torch.Tensor | None = None

    @cached_property
    def attention(self) -> torch.Tensor:
        """(R, H, n, S) float32 softmax rows of the n newest queries, averaged over each GQA group.

        Zero for slots a query could not see (invalid or newer keys). Computed on first access only.
        """
        return self.recent_attention(self.num_new_tokens)

    def recent_attention(self, count: int) -> torch.Tensor:
        """(R, H, count, S): the rows of only the newest `count` queries (cheaper when that is all a policy needs)."""
        if self.attention_fn is None:
            raise RuntimeError(
                "attention rows were not recorded; set `needs_attention = True` on the policy class that reads them."
            )
        if "attention" in self.__dict__:
            return self.__dict__["attention"][:, :, self.num_new_tokens - count :]
        return self.attention_fn(count)

    def chunked_attention(self) -> ChunkedRows:
        """The rows of `attention` in chunks of (row, KV head) pairs, each computed when its consumer asks,
        so a consumer that goes pair by pair never holds the (R, H, n, S) tensor (GiBs at long contexts)."""
        if "attention" in self.__dict__ or self.attention_chunks_fn is None:
            return ChunkedRows.whole(self.attention)
        return self.attention_chunks_fn(self.num_new_tokens)

    def attention_received(self, count: int | None = None) -> torch.Tensor:
        """(R, H, S) float32: the attention each slot received from the newest `count` queries (default n),
        summed over queries; accumulated block by block, so the (n x S) rows are never held at once."""
        count = self.num_new_tokens if count is None else count
        if "attention" in self.__dict__ or self.attention_sums_fn is None:
            return self.recent_attention(count).sum(dim=2)
        return self.attention_sums_fn(count)

    def queries(self, count: int) -> torch.Tensor:
        """(R, q_heads, count, D) the post-RoPE queries of the newest `count` tokens (positions
        tokens_seen - count .. tokens_seen - 1); recorded for a policy with `needs_queries` or `needs_attention`."""
        if self.queries_fn is None:
            raise RuntimeError(
                "queries were not recorded; set `needs_queries = True` on the policy class that reads them."
            )
        return self.queries_fn(count)

    @property
    def newest_mask(self) -> torch.Tensor:
        """(R, H, S) bool: the slot holding each row's newest token."""
        newest = (self.tokens_seen - 1).view(-1, 1, 1)
        return self.positions == newest


@dataclass
class Selection:
    """A policy's decision for one layer: per-slot scores and the slots it wants kept.

    `scores` also ranks slots when the engine's `per_layer_max` mode tops every head up to the layer's
    largest keep count.
    """

    scores: torch.Tensor  # (R, H, S) float, higher = more worth keeping, -inf on invalid slots
    keep: torch.Tensor  # (R, H, S) bool, never True on invalid slots


@dataclass(eq=False)
class MemoryPolicy(ABC):
    """Base class of every memory policy.

    A policy is a dataclass (`eq=False`: policies compare by identity) whose init fields are its options, the
    keys of `policy.options`, checked in `__post_init__`; per-sequence state is `field(init=False)`.
    Subclasses implement `select`. Policies with per-token state keep it in slot order and re-gather it
    in `reindex`, which the engine calls after it compacts a layer.
    """

    # Capabilities the engine reads (class attributes, overridden by a policy that differs):
    #: whether it ever drops a token; the engine skips updates and query recording for one that never does
    evicts: ClassVar[bool] = True
    #: whether the engine must buffer queries so `LayerView.attention` can be computed
    needs_attention: ClassVar[bool] = False
    #: registry name used in configs and result files
    name: ClassVar[str] = "policy"
    #: whether the engine must buffer the post-RoPE queries since the last update (`LayerView.queries`)
    needs_queries: ClassVar[bool] = False
    #: False: the policy compresses once the whole prompt is in (schedule=post_prefill only; refused in
    #: schedule=prefill before the model loads)
    runs_during_prefill: ClassVar[bool] = True
    #: whether the engine must run the context-reconstruction forwards (`reconstruction_inputs`) once the
    #: prompt is in, letting the policy observe their attention (`observe_reconstruction`) before it selects
    needs_reconstruction: ClassVar[bool] = False
    #: every update must bring a multiple of this many queries (the NAMM's STFT hop); checked before a run
    update_query_multiple: ClassVar[int] = 1

    def reset(self, batch_size: int, num_layers: int, num_kv_heads: int, device: torch.device) -> None:
        """Forget all per-sequence state before a new batch."""

    @abstractmethod
    def select(self, view: LayerView) -> Selection:
        """Score the view's slots and say which to keep."""

    def reindex(self, layer_idx: int, rows: torch.Tensor, index: torch.Tensor, valid: torch.Tensor) -> None:
        """Re-gather per-token state after compaction.

        `index` (R, H, K) gives, for each new slot, the pre-eviction slot it came from; `valid` (R, H, K)
        marks the new slots that hold a live token (the others are padding of the compacted storage).
        """

    def state_bytes(self) -> int:
        """Bytes of the per-token state the policy holds now (counted as engine overhead)."""
        return 0

    def use_tokenizer(self, encode: Callable[[str], list[int]]) -> None:
        """Tokenize the text the policy feeds the model (kvzip's repeat prompt); called once the model's
        tokenizer is loaded, before the first run."""

    def reconstruction_inputs(self, prompt: Sequence[int]) -> list[list[int]]:
        """With `needs_reconstruction`: the token ids of the forwards the engine runs after `prompt` (each one
        continues the prompt's positions; its tokens are dropped from the cache after it)."""
        raise NotImplementedError(f"policy '{self.name}' does not reconstruct its context.")

    def observe_reconstruction(self, view: LayerView) -> None:
        """With `needs_reconstruction`: one layer after one reconstruction forward; its `num_new_tokens`
        newest queries are the forward's, the slots at positions >= tokens_seen - num_new_tokens its tokens."""
        raise NotImplementedError(f"policy '{self.name}' does not reconstruct its context.")

    def set_row_parameters(self, parameters: torch.Tensor | None) -> None:
        """Give each batch row its own parameter vector (B, P); only learned policies use it."""
        if parameters is not None:
            raise ValueError(f"Policy '{self.name}' has no parameters; row_parameters must be None.")


@dataclass(eq=False)
class BudgetPolicy(MemoryPolicy):
    """A policy that keeps a fixed budget per head: the newest token first, then the policy's protected
    tokens (oldest first), then the best scores (ties: the older token).

    A token budget too small for what the policy always keeps is refused when the policy is built; a ratio
    budget that is too small at some update keeps the newest token and as many protected ones as fit.
    """

    budget: Budget
    #: how the budget is shared out (namm/allocation.py): none | adakv (across a layer's KV heads; needs
    #: engine.eviction_mode=per_head) | pyramid (across layers); `policy.allocation`, not a policy option
    allocation: str = "none"

    def __post_init__(self) -> None:
        check_allocation(self.allocation)

    @abstractmethod
    def score(self, view: LayerView) -> torch.Tensor:
        """(R, H, S) float: higher means more worth keeping (any value on protected or invalid slots)."""

    def protected(self, view: LayerView) -> torch.Tensor | None:
        """(R, H, S) bool: slots kept before any scored one (sinks, a window); None when there are none."""
        return None

    def require_budget_for(self, tokens: int, what: str, option: str) -> None:
        """Refuse a token budget smaller than the `tokens` the policy always keeps, naming `option` to lower."""
        if self.budget.tokens is not None and self.budget.tokens < tokens:
            raise ValueError(
                f"{self.name} always keeps {what} ({tokens} tokens), more than policy.budget_tokens="
                f"{self.budget.tokens}: raise the budget or lower policy.options.{option}."
            )

    def select(self, view: LayerView) -> Selection:
        scores = self.score(view).float()
        protected = self.protected(view)
        if protected is not None:
            scores = scores.masked_fill(protected, PROTECTED_SCORE)
        scores = scores.masked_fill(view.newest_mask, float("inf")).masked_fill(~view.valid, float("-inf"))
        counts = self.budget.keep_counts(view.tokens_seen)
        if self.allocation == "adakv":
            return Selection(scores=scores, keep=adakv_keep(scores, view.valid, counts))
        if self.allocation == "pyramid":
            counts = pyramid_budgets(counts, view.tokens_seen, view.num_layers)[:, view.layer_idx]
        return Selection(scores=scores, keep=top_k_keep(scores, view.valid, counts))
