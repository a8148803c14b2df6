"""The token budget and the keep rules that spend it, shared by the engine, the policies and the NAMM network
(a leaf: torch only).

A budget says how many tokens a head keeps, `top_k_keep` picks them, and the per-layer-max rule tops every
head up to the layer's largest keep count. That rule comes in two scopes: per row (the engine's, so which
rows share a batch cannot change a row's result) and over the whole batch (the reference's, which keeps
the compacted cache one dense tensor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: the rank of a protected slot (sinks, windows, recent tokens): above every score, below the newest (+inf)
PROTECTED_SCORE = torch.finfo(torch.float32).max


@dataclass(frozen=True)
class Budget:
    """How many tokens a budgeted policy keeps per head: a ratio of tokens seen or a fixed count.

    Every config spells it with the same two keys, `budget_ratio` and `budget_tokens` (policies, the NAMM,
    evaluation's baselines), and reads them through `Budget.from_keys`, the one rule: at most one of them.
    """

    ratio: float | None = None
    tokens: int | None = None

    def __post_init__(self) -> None:
        if (self.ratio is None) == (self.tokens is None):
            raise ValueError("Budget: give exactly one of `ratio` (0 < ratio <= 1) or `tokens` (> 0).")
        problem = _value_problem(self.ratio, self.tokens, "budget_ratio", "budget_tokens")
        if problem:
            raise ValueError(problem)

    @classmethod
    def from_keys(cls, budget_ratio: object, budget_tokens: object, owner: str) -> Budget | None:
        """The budget a config's `<owner>.budget_ratio` / `<owner>.budget_tokens` give: None when neither is
        set, an error naming both keys when both are (a count silently winning over a ratio would hide a typo),
        and an error naming the full key (`baselines.h2o.budget_ratio`) and the fix for a value of the wrong
        type or out of range, whatever the config layer let through."""
        if budget_ratio is not None and budget_tokens is not None:
            raise ValueError(
                f"{owner}.budget_ratio={budget_ratio} and {owner}.budget_tokens={budget_tokens} are both set; give "
                f"one: a ratio of the tokens seen or a token count (e.g. {owner}.budget_ratio=null "
                f"{owner}.budget_tokens={budget_tokens})."
            )
        if budget_ratio is None and budget_tokens is None:
            return None
        problem = _value_problem(budget_ratio, budget_tokens, f"{owner}.budget_ratio", f"{owner}.budget_tokens")
        if problem:
            raise ValueError(problem)
        return cls(ratio=budget_ratio, tokens=budget_tokens)  # type: ignore[arg-type]  # checked just above

    def keep_counts(self, tokens_seen: torch.Tensor) -> torch.Tensor:
        """(R,) int64 number of tokens each row may keep per head."""
        if self.tokens is not None:
            return torch.full_like(tokens_seen, self.tokens)
        return torch.ceil(tokens_seen.double() * self.ratio).long().clamp(min=1)


def _value_problem(ratio: object, tokens: object, ratio_key: str, tokens_key: str) -> str | None:
    """Why a ratio or token count is not a budget (None: it is one), naming the key as the config spells it.
    A bool is refused although Python counts it as a number: `true` is a typo, not a ratio of 1."""
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, int | float):
            return f"{ratio_key}={ratio!r} is not a number; give a ratio of the tokens seen, e.g. {ratio_key}=0.5."
        if math.isnan(ratio) or not 0.0 < ratio <= 1.0:
            return (
                f"{ratio_key}={ratio} is not a ratio in (0, 1]; give the share of the tokens seen each KV head keeps "
                f"(e.g. {ratio_key}=0.5), or a token count ({ratio_key}=null {tokens_key}=64)."
            )
    if tokens is not None:
        if isinstance(tokens, bool) or not isinstance(tokens, int):
            return f"{tokens_key}={tokens!r} is not a whole number of tokens; e.g. {tokens_key}=64."
        if tokens <= 0:
            return f"{tokens_key}={tokens} is not a positive token count; e.g. {tokens_key}=64."
    return None


def top_k_keep(scores: torch.Tensor, valid: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(R, H, S) bool keeping the `counts[r]` best-scoring valid slots of every head.

    Ties go to the older token: a stable sort keeps slot order, and live slots are in position order (the
    cache appends tokens in order and compacts stably). Each row and head is ranked on its own, so which
    rows share the batch cannot change the result.
    """
    masked = scores.masked_fill(~valid, float("-inf"))
    order = masked.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return (rank < counts.view(-1, 1, 1)) & valid


def per_layer_max_keep_per_row(scores: torch.Tensor, keep: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The engine's `per_layer_max` rule: every head of a row keeps its own top-K by `scores`, K = the
    row's largest keep count over its heads (batch-invariant: rows never see each other's counts)."""
    return top_k_keep(scores, valid, keep.sum(dim=-1).amax(dim=-1))


def per_layer_max_keep_whole_batch(scores: torch.Tensor, keep: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The reference's layer rule: every head keeps its own top-K, K = the largest keep count of any head
    of any row, so the kept cache stays one dense tensor."""
    count = keep.sum(dim=-1).amax()
    return top_k_keep(scores, valid, count.expand(scores.shape[0]))
