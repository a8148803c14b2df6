"""Expected Attention (Devoto et al. 2025, kvpress' ExpectedAttentionPress): keep the keys that future queries
are expected to attend to most, weighted by the value norm; query-agnostic, so it runs during prefill.

Future queries are modelled from the recent ones. Each recorded query is turned back by its own position's
rotation (pre-RoPE), and their mean mu and covariance Sigma (per query head) describe the query distribution.
A query at a future position t is R(t) q; averaged over the next `future_positions` positions that is
Rbar q, Rbar = mean_t R(t) (per frequency, the mean cosine and sine), so a future query is Gaussian with mean
Rbar mu and covariance Rbar Sigma Rbar^T. For q ~ N(m, C) the expected unnormalised attention to a key k is
E[exp(q.k / sqrt(D))] = exp(k.m / sqrt(D) + k^T C k / (2 D)); normalised over the head's live keys (a
softmax), averaged over the GQA group and multiplied by ||v||, it is the score. The first `sink_tokens`
tokens are kept (attention sinks) and left out of the statistics.

Defaults are kvpress's: 512 future positions, 4 sinks, covariance and value norm on. kvpress takes the
statistics of the whole prompt at once; here they are the queries since the last update (the engine's query
window: at most update_interval, the prompt's last interval under schedule=post_prefill).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from namm.policies.base import BudgetPolicy, LayerView
from namm.policies.registry import register_policy


def rotate_half(vectors: torch.Tensor) -> torch.Tensor:
    """The rotary embedding's quarter turn of every frequency pair (dims i and i + D/2), as transformers pairs them."""
    first, second = vectors.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def rotary_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., D) float32 cosines and sines of the rotation at `positions` (...,), angles taken in float64."""
    angles = positions.double()[..., None] * inv_freq.double()
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def future_query_statistics(
    queries: torch.Tensor,
    positions: torch.Tensor,
    weights: torch.Tensor,
    future: torch.Tensor,
    inv_freq: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (R, Hq, D) and covariance (R, Hq, D, D) of a query at a position of `future` (R, F), from the
    post-RoPE `queries` (R, Hq, n, D) at `positions` (R, n), each weighted by `weights` (R, n) summing to 1."""
    cos, sin = rotary_cos_sin(positions, inv_freq)
    plain = queries * cos[:, None] - rotate_half(queries) * sin[:, None]  # R(-p) q: the pre-RoPE query
    mean = torch.einsum("rn,rhnd->rhd", weights, plain)
    centred = plain - mean[:, :, None]
    covariance = torch.einsum("rn,rhnd,rhne->rhde", weights, centred, centred)
    future_cos, future_sin = rotary_cos_sin(future, inv_freq)
    mean_cos, mean_sin = future_cos.mean(dim=1)[:, None], future_sin.mean(dim=1)[:, None]  # (R, 1, D)
    eye = torch.eye(queries.shape[-1], device=queries.device)
    averaged_t = eye * mean_cos + rotate_half(eye) * mean_sin  # (R, D, D): row j is Rbar e_j, so Rbar^T
    future_mean = mean * mean_cos + rotate_half(mean) * mean_sin
    future_covariance = averaged_t.transpose(1, 2)[:, None] @ covariance @ averaged_t[:, None]
    return future_mean, future_covariance


@register_policy
@dataclass(eq=False)
class ExpectedAttentionPolicy(BudgetPolicy):
    name: ClassVar[str] = "expected_attention"
    needs_queries: ClassVar[bool] = True

    future_positions: int = 512  # the future queries averaged over: the next this many positions
    sink_tokens: int = 4  # the first tokens, always kept and left out of the query statistics
    use_covariance: bool = True  # the k^T Sigma k / (2 D) term
    use_value_norm: bool = True  # scores times ||v||

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.future_positions < 1 or self.sink_tokens < 0:
            raise ValueError(
                "expected_attention needs policy.options.future_positions >= 1 and sink_tokens >= 0, got "
                f"{self.future_positions}, {self.sink_tokens}."
            )
        sinks = self.sink_tokens
        self.require_budget_for(sinks + 1, f"{sinks} attention sinks and the newest token", "sink_tokens")

    def protected(self, view: LayerView) -> torch.Tensor:
        return view.positions < self.sink_tokens

    def score(self, view: LayerView) -> torch.Tensor:
        keys = view.keys.float()
        rows, heads, slots, dim = keys.shape
        if view.rotary_inv_freq is None or view.rotary_inv_freq.numel() * 2 != dim:
            raise ValueError(
                "expected_attention models future queries through the rotary embedding, over the whole head "
                "dimension; this model has none (or a partial one): use another policy."
            )
        count = view.num_new_tokens
        queries = view.queries(count).float()
        group = queries.shape[1] // heads
        arange = torch.arange(count, device=keys.device)
        positions = view.tokens_seen[:, None] - count + arange
        weights = (positions >= self.sink_tokens).float()
        weights = torch.where(weights.sum(dim=1, keepdim=True) > 0, weights, torch.ones_like(weights))
        weights = weights / weights.sum(dim=1, keepdim=True)
        future = view.tokens_seen[:, None] + torch.arange(self.future_positions, device=keys.device)
        mean, covariance = future_query_statistics(queries, positions, weights, future, view.rotary_inv_freq)
        per_query_head = keys.repeat_interleave(group, dim=1)  # (R, Hq, S, D)
        logits = (per_query_head @ mean[..., None])[..., 0] / dim**0.5
        if self.use_covariance:
            logits = logits + ((per_query_head @ covariance) * per_query_head).sum(dim=-1) / (2 * dim)
        visible = view.valid.repeat_interleave(group, dim=1)
        expected = torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1)
        scores = expected.view(rows, heads, group, slots).mean(dim=2)
        if self.use_value_norm:
            scores = scores * view.values.float().norm(dim=-1)
        return scores
