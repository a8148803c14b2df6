"""`evo.init=distill`: a start that already ranks tokens, fitted to a target ranking by gradient descent.

The scorer is plain torch, so its parameters can be fitted directly: the features every update of the all-keep
run fed the NAMM (recency code and normalised spectrogram, every layer and KV head) are paired with a per-token
importance target measured under the full cache, and the parameters minimise a pairwise ranking loss (RankNet,
each pair weighted by how far apart the two tokens' target ranks are, so the order that decides a retained
ratio matters more than near-ties). The loss sees only score differences, so the read-out bias is left to
`bias_for_retained`, which sets it so that a given share of the fitting tokens scores at or above the threshold.
One target needs no fit: `keydiff_exact` writes KeyDiff's score in closed form on the NAMM's key-novelty input
(`key_novelty_parameters`). Nothing here loads a model; `tasks/training/distillation_examples.py` collects the examples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum

import torch
import torch.nn.functional as F

from namm.errors import ConfigError
from namm.network.config import NAMMConfig
from namm.network.keep_rule import keep_mask, newest_positions, ranking_scores
from namm.network.parameters import parameter_layout
from namm.network.scorer import token_scores


class DistillTarget(Enum):
    """The per-token importance the start learns to rank by (`evo.distill.target`)."""

    oracle = "oracle"  # attention the question's last tokens and the gold answer pay to each token (teacher-forced)
    h2o = "h2o"  # attention each token received from every query so far (Heavy-Hitter Oracle's score)
    recency = "recency"  # newer tokens first
    keydiff = "keydiff"  # each key's novelty, 1 - cosine to its head's mean key (KeyDiff's score; no query needed)
    keydiff_exact = "keydiff_exact"  # the same score written in closed form on the key-novelty input: no fit


@dataclass
class DistillConfig:
    """`evo.distill`: what the start is fitted to and how."""

    target: DistillTarget = DistillTarget.oracle
    retained: float = 0.75  # the share of the fitting tokens the start keeps (sets the read-out bias)
    prompts_per_task: int = 4  # training prompts per task the features and targets are collected on
    steps: int = 300  # gradient steps (one collected update, every layer, per step)
    learning_rate: float = 0.01  # Adam
    pairs_per_head: int = 256  # token pairs sampled per layer and KV head at each step
    question_tokens: int = 64  # oracle: the prompt's last tokens counted as the question (besides the answer)
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if not (math.isfinite(self.retained) and 0 < self.retained <= 1):
            problems.append(
                f"evo.distill.retained is the share of tokens the start keeps and must be in (0, 1], got "
                f"{self.retained} (e.g. evo.distill.retained=0.75)"
            )
        for name in ("prompts_per_task", "steps", "pairs_per_head", "question_tokens"):
            if getattr(self, name) < 1:
                problems.append(f"evo.distill.{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            problems.append(f"evo.distill.learning_rate must be a finite number > 0, got {self.learning_rate}")
        if problems:
            raise ConfigError("Invalid evo.distill config: " + "; ".join(problems) + ".")


@dataclass
class RankingExample:
    """One update of one prompt, every layer as a row: what the scorer saw, and the target ranking."""

    features: torch.Tensor  # (L, H, S, F) scorer input
    positions: torch.Tensor  # (L, H, S) int64, -1 where invalid
    valid: torch.Tensor  # (L, H, S) bool
    target: torch.Tensor  # (L, H, S) float: higher = more worth keeping

    @property
    def ranked_tokens(self) -> torch.Tensor:
        """(L, H, S) bool: the tokens whose rank is the scorer's to decide (valid, not the always-kept newest)."""
        return self.valid & (self.positions != newest_positions(self.positions, self.valid))


@dataclass
class DistillFit:
    """The fitted parameters (read-out bias set) and what the fit achieved on the fitting data."""

    parameters: torch.Tensor
    loss_before: float  # ranking loss on fixed evaluation pairs, at the start vector
    loss_after: float
    retained_ratio: float  # share of the fitting tokens kept by the fitted parameters


def example_scores(parameters: torch.Tensor, example: RankingExample, config: NAMMConfig) -> torch.Tensor:
    """(L, H, S) scores of one (P,) vector on every layer of an example (differentiable in `parameters`)."""
    layers = example.features.shape[0]
    weights = parameter_layout(config).unflatten(parameters.expand(layers, -1))
    return token_scores(example.features, example.positions, example.valid, weights, config)


def normalised_ranks(target: torch.Tensor, ranked: torch.Tensor) -> torch.Tensor:
    """(L, H, S) each ranked token's rank by target within its head, scaled to [0, 1]; 0 elsewhere."""
    keyed = target.float().masked_fill(~ranked, float("-inf"))
    ranks = keyed.argsort(dim=-1, stable=True).argsort(dim=-1).float()  # unranked tokens take the lowest ranks
    unranked = (~ranked).sum(dim=-1, keepdim=True)
    count = ranked.sum(dim=-1, keepdim=True)
    return ((ranks - unranked) / (count - 1).clamp(min=1)).clamp(min=0) * ranked


@dataclass
class PairSample:
    """Token pairs per (layer, head): slot indices and a weight (0 for a pair that teaches nothing)."""

    first: torch.Tensor  # (L, H, K) int64
    second: torch.Tensor  # (L, H, K) int64
    sign: torch.Tensor  # (L, H, K) +1 where the first token ranks above the second, -1 below
    weight: torch.Tensor  # (L, H, K) |rank difference|, 0 for invalid tokens


def sample_pairs(example: RankingExample, count: int, generator: torch.Generator) -> PairSample:
    """`count` uniformly drawn slot pairs per layer and head, weighted by their target-rank distance."""
    layers, heads, slots = example.valid.shape
    ranked = example.ranked_tokens
    ranks = normalised_ranks(example.target, ranked)
    first = torch.randint(slots, (layers, heads, count), generator=generator)
    second = torch.randint(slots, (layers, heads, count), generator=generator)
    difference = ranks.gather(2, first) - ranks.gather(2, second)
    usable = ranked.gather(2, first) & ranked.gather(2, second)
    return PairSample(first, second, torch.sign(difference), difference.abs() * usable)


def pair_loss(scores: torch.Tensor, pairs: PairSample) -> torch.Tensor:
    """Weighted logistic (RankNet) loss: softplus(-(s_first - s_second) * sign), weighted mean."""
    margin = (scores.gather(2, pairs.first) - scores.gather(2, pairs.second)) * pairs.sign
    return (F.softplus(-margin) * pairs.weight).sum() / pairs.weight.sum().clamp(min=1e-12)


def ranking_loss(
    parameters: torch.Tensor, examples: list[RankingExample], pairs: list[PairSample], config: NAMMConfig
) -> float:
    """The mean pair loss over examples (no gradient): the figure the fit must lower."""
    with torch.no_grad():
        losses = [float(pair_loss(example_scores(parameters, e, config), p)) for e, p in zip(examples, pairs)]
    return sum(losses) / len(losses)


def readout_bias_index(config: NAMMConfig) -> int:
    (block,) = [block for block in parameter_layout(config).blocks if block.name == "readout_bias"]
    return block.offset


def bias_for_retained(
    parameters: torch.Tensor, examples: list[RankingExample], config: NAMMConfig, retained: float
) -> torch.Tensor:
    """`parameters` with the read-out bias set so that a `retained` share of the examples' ranked tokens scores
    at or above the threshold (the bias shifts every score alike)."""
    index = readout_bias_index(config)
    unbiased = parameters.detach().clone()
    unbiased[index] = 0.0
    with torch.no_grad():
        scores = torch.cat([example_scores(unbiased, e, config)[e.ranked_tokens] for e in examples])
    ordered = scores.sort().values
    cut = min(len(ordered) - 1, math.floor((1.0 - retained) * len(ordered)))
    unbiased[index] = config.threshold - float(ordered[cut])
    return unbiased


def retained_share(parameters: torch.Tensor, examples: list[RankingExample], config: NAMMConfig) -> float:
    """The share of the examples' valid tokens the NAMM's own keep rule keeps with `parameters` (threshold or
    budget, newest and protected tokens included), each update judged on the all-keep features."""
    kept = total = 0
    with torch.no_grad():
        for example in examples:
            ranked = ranking_scores(
                example_scores(parameters, example, config), example.positions, example.valid, config
            )
            kept += int(keep_mask(ranked, example.positions, example.valid, config).sum())
            total += int(example.valid.sum())
    return kept / total


def key_novelty_parameters(examples: list[RankingExample], config: NAMMConfig) -> torch.Tensor:
    """The vector whose score is the key-novelty input alone (the last feature: namm.py appends it), divided by its standard deviation
    over the examples' ranked tokens, every other weight zero: KeyDiff's ranking exactly, in closed form. Unit
    spread puts it on the scale of the bounded z-scores beside it, so the search's draws mix those in around it."""
    if not config.key_novelty:
        raise ValueError("the closed-form KeyDiff start needs the key-novelty input (namm.key_novelty=true)")
    novelty = torch.cat([e.features[..., -1][e.ranked_tokens] for e in examples])
    spread = float(novelty.std()) if novelty.numel() > 1 else 0.0
    scale = 1.0 / spread if spread > 0 else 1.0
    layout = parameter_layout(config)
    weights = layout.unflatten(torch.zeros(layout.size))
    if config.scorer == "bam":  # out_weight zero: residual = x, score = readout . x + bias
        weights["readout_weight"][0, -1, 0] = scale
    else:  # relu(novelty x scale) is itself: novelty is never negative
        weights["hidden_weight"][0, -1, 0] = scale
        weights["readout_weight"][0, 0, 0] = 1.0
    return layout.flatten(weights)[0]


def fit_ranking(
    examples: list[RankingExample], config: NAMMConfig, settings: DistillConfig, start: torch.Tensor | None = None
) -> DistillFit:
    """Fit a parameter vector (from `start`, default zeros: the all-keep shape) to rank every example's tokens
    like its target (for `keydiff_exact`, write KeyDiff's score in closed form instead: `start` is then only where
    the loss is first measured), then set the read-out bias for `settings.retained`. Deterministic for a seed."""
    if not examples:
        raise ValueError("distillation needs at least one collected update to fit")
    config = replace(config, budget_ratio=None, budget_tokens=None)  # the threshold rule sets the retained share
    generator = torch.Generator().manual_seed(settings.seed)
    evaluation = [sample_pairs(e, settings.pairs_per_head, generator) for e in examples]
    theta = (torch.zeros(parameter_layout(config).size) if start is None else start.detach().clone()).float()
    loss_before = ranking_loss(theta, examples, evaluation, config)
    if settings.target == DistillTarget.keydiff_exact:
        fitted = key_novelty_parameters(examples, config)
    else:
        theta.requires_grad_(True)
        optimiser = torch.optim.Adam([theta], lr=settings.learning_rate)
        with torch.inference_mode(False), torch.enable_grad():
            for step in range(settings.steps):
                example = examples[step % len(examples)]
                loss = pair_loss(
                    example_scores(theta, example, config), sample_pairs(example, settings.pairs_per_head, generator)
                )
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        fitted = theta.detach()
    loss_after = ranking_loss(fitted, examples, evaluation, config)
    fitted = bias_for_retained(fitted, examples, config, settings.retained)
    return DistillFit(fitted, loss_before, loss_after, retained_share(fitted, examples, config))


def distill_record(fit: DistillFit) -> dict[str, float]:
    """The generation-0 metrics of a distilled start (beside its validation score and retained ratio)."""
    return {
        "distill/loss_before": fit.loss_before,
        "distill/loss_after": fit.loss_after,
        "distill/retained_on_fitting": fit.retained_ratio,
    }
