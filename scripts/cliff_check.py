"""How often does a small random step from the keep_all start evict the attention sink? (issue 21, "no cliff")

Synthetic attention with a sink (token 0 draws a large share of every query's attention, as in real LMs), the
frozen normalisation statistics of a real training run, and `--draws` candidates centre + sigma * N(0, I) around
the keep_all start (every token scores `margin` above the threshold). For each NAMM variant it prints the share
of (draw, head) pairs that evict the sink, the share of draws that evict it in any head, and the mean retained
ratio of the draws (so a variant that only "keeps more of everything" shows it).

    python scripts/cliff_check.py --checkpoint results/cpu-memory/latest.pt
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from namm.evolution.checkpoint import load_checkpoint
from namm.network import NAMM, NAMMConfig
from namm.network.keep_rule import keep_mask, ranking_scores
from namm.network.parameters import keep_all_centre
from namm.network.scorer import token_scores

VARIANTS: dict[str, dict] = {
    "reference (raw z-scores)": {},
    "feature_bound=1 (tanh)": {"feature_bound": 1.0},
    "feature_bound=3 (tanh)": {"feature_bound": 3.0},
    "feature_bound=5 (tanh)": {"feature_bound": 5.0},
    "feature_bound=10 (tanh)": {"feature_bound": 10.0},
    "feature_bound=5 (clip)": {"feature_bound": 5.0, "feature_squash": "clip"},
    "feature_bound=5 (softsign)": {"feature_bound": 5.0, "feature_squash": "softsign"},
    "protect_first=4": {"protect_first": 4},
    "feature_bound=5 + protect_first=4": {"feature_bound": 5.0, "protect_first": 4},
}


def sink_attention(heads: int, tokens: int, sink_logit: float, seed: int) -> torch.Tensor:
    """(1, H, n, n) causal softmax rows (one update over the first n tokens) with token 0 as a sink."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, heads, tokens, tokens, generator=generator) * 1.5
    logits[..., 0] += sink_logit
    causal = torch.ones(tokens, tokens, dtype=torch.bool).tril()
    return torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="results/cpu-memory/latest.pt", help="its normalisation statistics")
    parser.add_argument("--draws", type=int, default=256)
    parser.add_argument("--sigma", type=float, default=0.065)
    parser.add_argument("--margin", type=float, default=0.2, help="evo.init_margin of the keep_all start")
    parser.add_argument("--tokens", type=int, default=512, help="one update interval")
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--sink-logit", type=float, default=6.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    record = load_checkpoint(Path(args.checkpoint))
    stats = record.normalisation_state
    base = NAMMConfig.from_dict(record.config["namm"])
    attention = sink_attention(args.heads, args.tokens, args.sink_logit, args.seed)
    positions = torch.arange(args.tokens).view(1, 1, -1).expand(1, args.heads, -1)
    sink_share = float(attention[0, :, :, 0].mean())
    print(
        f"statistics of {args.checkpoint} (bin 0: mean {float(stats['mean'][0]):.4f}, sd "
        f"{float(stats['var'][0]) ** 0.5:.3f}); synthetic sink takes {sink_share:.0%} of each query's attention; "
        f"{args.draws} draws of sigma {args.sigma} around keep_all (margin {args.margin})\n"
    )
    print(
        "| variant | sink z (bin 0) | (draw, head) pairs evicting the sink | draws evicting it in any head "
        "| mean retained ratio of the draws |"
    )
    print("|---|---|---|---|---|")
    for label, options in VARIANTS.items():
        config = replace(base, **options)
        namm = NAMM(config)
        namm.normaliser.set_stats(stats["mean"], stats["var"], float(stats["count"]))
        centre = keep_all_centre(config, args.margin)
        generator = torch.Generator().manual_seed(args.seed + 1)
        draws = centre + args.sigma * torch.randn(args.draws, centre.numel(), generator=generator)
        features = namm(attention, positions).features  # the same features for every draw: computed once
        rows = (args.draws, args.heads, args.tokens)
        valid = torch.ones(rows, dtype=torch.bool)
        weights = namm.row_weights(None, args.draws, features.device, draws)
        scores = token_scores(features.expand(args.draws, -1, -1, -1), positions.expand(rows), valid, weights, config)
        keep = keep_mask(
            ranking_scores(scores, positions.expand(rows), valid, config), positions.expand(rows), valid, config
        )
        evicted = ~keep[:, :, 0]  # (draws, heads)
        sink_z = float(features[0, :, 0, config.recency_dims].max())
        print(
            f"| {label} | {sink_z:.1f} | {float(evicted.float().mean()):.1%} | {float(evicted.any(dim=1).float().mean()):.1%} "
            f"| {float(keep.float().mean()):.3f} |"
        )


if __name__ == "__main__":
    main()
