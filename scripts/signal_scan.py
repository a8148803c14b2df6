"""At which step size do a search's candidates differ by more than the prompts they happen to draw?

Draws `--candidates` candidates around a checkpoint's best centre (the one `init_from` starts from; the centre
itself first), at each step size of `--sigmas`, isotropic in the coordinates the run searched (`evo.evolve`),
and scores them with the run's own training signal on one draw of `--prompts` training prompts (the same prompts
for every step size; never validation prompts, though a run's generations may draw some of them too). For each
step size it prints the centre's mean score, the best and mean candidate's, their spread, and the split-half
reliability of their ranking with its permutation p (tasks/evaluation/rank_correlation.py;
scripts/signal_reliability.py reads the same figure off a run's metrics.jsonl). A search can only follow
differences that repeat on other prompts: where the reliability is near 0, CMA-ES at that step size walks at
random.

    python scripts/signal_scan.py results/efficacy-readout/checkpoint.pt --sigmas 0.5,2 --prompts 8
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf, open_dict

from namm.evolution.checkpoint import load_checkpoint
from namm.evolution.subspace import searched_subspace
from tasks.evaluation.rank_correlation import RankingReliability
from tasks.training.task_scorer import TRAIN_SPLIT, TaskScorer

#: the training draw scored: far past any run's generations, so it is a draw no generation of a run made
SCAN_GENERATION = 100_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--sigmas", default="0.5,2", help="comma-separated step sizes")
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=8, help="training prompts per task")
    parser.add_argument("--num-samples", type=int, default=200, help="task.num_samples: the pool drawn from")
    parser.add_argument(
        "--validation-prompts", type=int, default=16, help="evo.validation_prompts of the run being planned"
    )
    parser.add_argument("--out", type=Path, default=None, help="a JSON file for every candidate's per-prompt scores")
    parser.add_argument("--seed", type=int, default=0, help="the candidates' draw")
    parser.add_argument(
        "--split-seed",
        type=int,
        default=None,
        help="the run's `seed` (its validation split and draws); default: the checkpoint's",
    )
    args = parser.parse_args()
    checkpoint = load_checkpoint(args.checkpoint)
    cfg = OmegaConf.create(checkpoint.config)
    with open_dict(cfg):
        cfg.task.num_samples = args.num_samples
        cfg.evo.prompts_per_task = args.prompts
        cfg.evo.validation_prompts = args.validation_prompts
        if args.split_seed is not None:
            cfg.seed = args.split_seed
    TaskScorer.check_config(cfg)
    scorer = TaskScorer(cfg)
    scorer.load_normalisation_state(checkpoint.normalisation_state)
    centre = checkpoint.best_params.float()  # the centre init_from starts a run from
    subspace = searched_subspace(TaskScorer, cfg, list(cfg.evo.evolve), centre.numel())
    prompts = scorer.prompts(TRAIN_SPLIT, SCAN_GENERATION)
    print(f"{args.checkpoint}: {subspace.size} searched coordinates, {len(prompts)} prompts {prompts}", flush=True)
    print(
        "| sigma | centre | best | mean | spread (max - min) | split-half Spearman | p | projected: same size | x2 | x4 | seconds |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    saved = {}
    for index, sigma in enumerate(float(value) for value in args.sigmas.split(",")):
        generator = torch.Generator().manual_seed(args.seed + index)  # each step size its own directions
        steps = torch.randn(args.candidates, subspace.size, generator=generator) * sigma
        steps[0] = 0.0  # the centre itself
        candidates = centre.expand(args.candidates, -1).clone()
        candidates[:, subspace.indices] += steps
        started = time.perf_counter()
        scores = scorer.score(candidates, TRAIN_SPLIT, SCAN_GENERATION, prompts)
        per_prompt = torch.tensor([record.scores for record in scores.prompts], dtype=torch.float64)
        saved[str(sigma)] = {f"{record.task}:{record.index}": record.scores for record in scores.prompts}
        means = per_prompt[:, ~per_prompt.isnan().any(dim=0)].mean(dim=0)  # a failed candidate is left out
        cells = [f"{sigma:g}", f"{means[0]:.2f}", f"{means.max():.2f}", f"{means.mean():.2f}"]
        cells += [f"{means.max() - means.min():.2f}", *RankingReliability.of(per_prompt, seed=args.seed).cells()]
        print("| " + " | ".join([*cells, f"{time.perf_counter() - started:.0f}"]) + " |", flush=True)
        if args.out is not None:
            args.out.write_text(json.dumps(saved, indent=1))


if __name__ == "__main__":
    main()
