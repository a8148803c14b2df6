"""Can the NAMM's inputs express the oracle? (issue 21, `evo.init=distill`)

Fits a start to each target on some niah_single prompts, then, on held-out prompts, counts how many of the gold
answer's (the needle value's) tokens each ranking keeps at the last update of the prompt when every layer and KV
head keeps its top 75%, 50% or 25% of the cached tokens: the fitted NAMMs against the targets themselves (the
oracle, H2O's accumulated attention, KeyDiff's key novelty, recency). All-keep history: each update is judged on
the features of a run that evicted nothing, as the fit sees them.

    python scripts/distill_check.py --context-length 1024 --fit-prompts 4 --heldout 8
    python scripts/distill_check.py --task niah_prose --context-length 2048 --targets keydiff,oracle \
        --stats results/efficacy-keydiff/start.pt --namm key_novelty=true,protect_first=4,feature_bound=3
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from namm.engine import EngineConfig, GenerationSettings
from namm.evolution.checkpoint import load_checkpoint
from namm.evolution.distillation import DistillConfig, DistillTarget, RankingExample, example_scores, fit_ranking
from namm.models import ModelConfig, load_model
from namm.network.config import NAMMConfig
from namm.plain_generation import padding_token_id
from namm.policies.namm_policy import NAMMPolicy
from tasks.preparation import prepare_tasks
from tasks.task_config import TaskConfig
from tasks.training.distillation_examples import collection_engine, run_prompt

RATIOS = (0.75, 0.5, 0.25)


def answer_kept(ranking: torch.Tensor, example: RankingExample, spans: tuple[tuple[int, int], ...], ratio: float):
    """Share of the cached answer tokens kept, over layers and heads, when each head keeps its top `ratio`."""
    positions, valid = example.positions, example.valid
    keyed = ranking.float().masked_fill(~valid, float("-inf"))
    count = max(1, round(ratio * int(valid[0, 0].sum())))
    top = keyed.topk(count, dim=-1).indices
    kept = torch.zeros_like(valid).scatter_(-1, top, True)
    answer = torch.zeros_like(valid)
    for first, end in spans:
        answer |= (positions >= first) & (positions < end)
    answer &= valid
    if not answer.any():
        return None
    return float((kept & answer).sum() / answer.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="niah_single")
    parser.add_argument("--context-length", type=int, default=1024)
    parser.add_argument("--fit-prompts", type=int, default=4)
    parser.add_argument("--heldout", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--update-interval", type=int, default=512)
    parser.add_argument("--stats", default="results/cpu-memory/latest.pt", help="frozen statistics ('': calibrate)")
    parser.add_argument("--namm", default="", help="NAMMConfig overrides as key=value,key=value (e.g. feature_bound=5)")
    parser.add_argument("--targets", default="oracle,h2o", help="the targets fitted, comma-separated")
    args = parser.parse_args()

    overrides = dict(item.split("=") for item in args.namm.split(",") if item)
    typed = {k: _typed(v) for k, v in overrides.items()}
    targets = [DistillTarget(name) for name in args.targets.split(",")]
    loaded = load_model(ModelConfig(name=args.model))
    count = args.fit_prompts + args.heldout
    config = TaskConfig(name=args.task, tasks=[args.task], context_length=args.context_length, num_samples=count)
    (task,) = prepare_tasks(config, loaded)
    print(f"prepared {count} prompts", flush=True)
    engine_config = EngineConfig(update_interval=args.update_interval)
    policy = NAMMPolicy(NAMMConfig(**typed))
    pad = padding_token_id(loaded.tokenizer)
    started = time.perf_counter()
    if args.stats:  # the frozen statistics of a real run (same model and NAMM): no calibration pass
        stats = load_checkpoint(Path(args.stats)).normalisation_state
        policy.namm.normaliser.set_stats(stats["mean"], stats["var"], float(stats["count"]))
    else:
        with policy.namm.calibration():  # frozen statistics from the fitting prompts, as training calibrates
            calibrating = collection_engine(policy, loaded.model, engine_config)
            for index in range(args.fit_prompts):
                calibrating.generate([list(task.samples[index].prompt_ids)], GenerationSettings(max_new_tokens=1))
    print(f"statistics ready ({time.perf_counter() - started:.0f} s)", flush=True)
    engine = collection_engine(policy, loaded.model, engine_config)
    question = DistillConfig().question_tokens
    runs = []
    for index in range(count):
        runs.append(run_prompt(engine, task.samples[index], task.spec, loaded.tokenizer, question, pad))
        print(f"prompt {index} collected ({time.perf_counter() - started:.0f} s)", flush=True)
    fits = {}
    for target in targets:
        settings = DistillConfig(target=target, steps=args.steps)
        examples = [example for run in runs[: args.fit_prompts] for example in run.examples(target)]
        fits[target] = fit_ranking(examples, policy.namm.config, settings)
        fit = fits[target]
        print(
            f"fit to {target.value}: loss {fit.loss_before:.4f} -> {fit.loss_after:.4f} on {len(examples)} updates "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    rankings: dict[str, list[list[float]]] = {}
    for index in range(args.fit_prompts, count):
        sample = task.samples[index]
        # keydiff_exact ranks by the same values as keydiff: one row for the target is enough
        last = {t: runs[index].examples(t)[-1] for t in DistillTarget if t is not DistillTarget.keydiff_exact}
        oracle_last = last[DistillTarget.oracle]
        sources = {f"{target.value} (target)": example.target for target, example in last.items()}
        for target, fit in fits.items():
            sources[f"NAMM fitted to {target.value}"] = example_scores(fit.parameters, oracle_last, policy.namm.config)
        for name, ranking in sources.items():
            shares = [answer_kept(ranking.detach(), oracle_last, sample.answer_spans or (), r) for r in RATIOS]
            if shares[0] is not None:
                rankings.setdefault(name, []).append(shares)
    print(
        f"\n{args.model} {args.task} at ~{args.context_length} tokens, {args.fit_prompts} fitting and {args.heldout} "
        f"held-out prompts (those whose answer is cached at the last update: {len(next(iter(rankings.values()), []))}), "
        f"NAMM {typed or 'reference'}; {time.perf_counter() - started:.0f} s\n"
    )
    print("| ranking | " + " | ".join(f"answer tokens kept at {r}" for r in RATIOS) + " |")
    print("|---|" + "---|" * len(RATIOS))
    for name, rows in rankings.items():
        means = [sum(row[i] for row in rows) / len(rows) for i in range(len(RATIOS))]
        print(f"| {name} | " + " | ".join(f"{m:.2f}" for m in means) + " |")


def _typed(value: str) -> bool | int | float | str:
    """A command-line NAMMConfig value: true/false, a number, else the string."""
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value


if __name__ == "__main__":
    main()
