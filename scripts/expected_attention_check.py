"""Why does Expected Attention answer no prompt (results/baselines/table.md)? Two measurements on SmolLM2.

1. Does it predict what it claims? At the first update (after `--interval` tokens) its expected attention
   (`use_value_norm=false`) is compared, per layer and KV head, with the attention the rest of the prompt's
   queries really pay each of those keys under the full cache (GQA-group mean), by Spearman correlation; and the
   share of that attention which falls on the tokens it evicts is set beside random's, for all later queries and
   for the question's (the prompt's last 32 tokens).
2. What does it evict? At the prompt's last update, the share of (layer, KV head) pairs that keep each
   gold-answer token against the share of all tokens kept, the answer tokens kept in the heads that retrieve the
   answer, the sinks, and the tokens most layer-heads drop, for Expected Attention and for random (the control),
   with what each then answers.

    python scripts/expected_attention_check.py --task passkey --context-length 1024 --prompts 3 --ratio 0.9
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from typing import Self

import torch
from transformers import PreTrainedModel

from namm.engine import EngineConfig, GenerationResult, GenerationSettings, MemoryEngine
from namm.models import ModelConfig, load_model
from namm.plain_generation import padding_token_id
from namm.policies.base import BudgetPolicy, LayerView, Selection
from namm.policies.registry import PolicyConfig, build_policy
from tasks.evaluation.rank_correlation import spearman
from tasks.preparation import prepare_tasks
from tasks.task_config import TaskConfig
from tasks.task_spec import Sample

QUESTION_TOKENS = 32  # the prompt's last tokens: the question and the answer's prefix
RETRIEVAL_HEADS = 8  # the query heads that attend to the answer most, whose copies of it are checked


@dataclass
class UpdateRecord:
    """One layer's cache at an update, copied (the engine reuses its buffers once the update is done)."""

    positions: torch.Tensor  # (H, S)
    value_norms: torch.Tensor  # (H, S)
    scores: torch.Tensor  # (H, S)
    keep: torch.Tensor  # (H, S)


class SelectionRecorder:
    """Wraps BudgetPolicy.select to copy each layer's cache and selection at the updates where `tokens_seen` is
    one of `updates`: records[update][layer]."""

    def __init__(self, updates: set[int]) -> None:
        self.records: dict[int, dict[int, UpdateRecord]] = {update: {} for update in updates}
        self.original = BudgetPolicy.select

    def __enter__(self) -> Self:
        def select(policy: BudgetPolicy, view: LayerView) -> Selection:
            selection = self.original(policy, view)
            update = int(view.tokens_seen[0])
            if update in self.records:
                self.records[update][view.layer_idx] = UpdateRecord(
                    view.positions[0].clone(),
                    view.values[0].float().norm(dim=-1),
                    selection.scores[0].clone(),
                    selection.keep[0].clone(),
                )
            return selection

        BudgetPolicy.select = select
        return self

    def __exit__(self, *exc: object) -> None:
        BudgetPolicy.select = self.original


def evicted_mass(record: UpdateRecord, received: torch.Tensor) -> torch.Tensor:
    """(H,) the attention `received` (H, positions) that falls on the tokens the update evicted."""
    evicted = ~record.keep & (record.positions >= 0)
    return torch.stack([received[h, record.positions[h][evicted[h]]].sum() for h in range(received.shape[0])])


def run(
    model: PreTrainedModel, policy: PolicyConfig, sample: Sample, interval: int, updates: set[int], pad: int
) -> tuple[dict[int, dict[int, UpdateRecord]], GenerationResult]:
    """`sample` under `policy` as the baselines grid runs it (per-KV-head storage, an update every `interval`
    tokens), the updates at `updates` tokens recorded (records[update][layer]), 10 tokens generated."""
    config = EngineConfig(update_interval=interval, eviction_mode="per_head")
    engine = MemoryEngine(model, build_policy(policy), config)
    with SelectionRecorder(updates) as recorder:
        result = engine.generate([list(sample.prompt_ids)], GenerationSettings(max_new_tokens=10, pad_token_id=pad))
    return recorder.records, result[0]


def layer_head_share(records: dict[int, UpdateRecord], tokens: int) -> torch.Tensor:
    """(tokens,) the share of (layer, KV head) pairs that keep each position."""
    kept = torch.zeros(tokens)
    for record in records.values():
        for positions, keep in zip(record.positions, record.keep):
            kept[positions[keep]] += 1
    return kept / sum(record.positions.shape[0] for record in records.values())


def answer_heads(attentions: tuple[torch.Tensor, ...], answer: list[int], count: int) -> list[tuple[int, int]]:
    """(layer, query head) of the `count` query heads whose last prompt query pays the answer's tokens the most
    attention under the full cache: the heads that retrieve it."""
    mass = torch.stack([attention[0, :, -1, answer].sum(dim=-1) for attention in attentions])  # (layers, q heads)
    query_heads = mass.shape[1]
    return [(int(i) // query_heads, int(i) % query_heads) for i in mass.flatten().topk(count).indices]


def full_cache_attentions(model: PreTrainedModel, prompt: list[int]) -> tuple[torch.Tensor, ...]:
    """Every layer's (1, heads, T, T) attention rows over the whole prompt, under the full cache."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            return model(input_ids=torch.tensor([prompt]), output_attentions=True).attentions
    finally:
        model.set_attn_implementation(previous)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="passkey")
    parser.add_argument("--context-length", type=int, default=1024)
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--ratio", type=float, default=0.9)
    parser.add_argument("--interval", type=int, default=512)
    parser.add_argument("--seed", type=int, default=4243, help="the task seed of the baselines grid's prompts")
    args = parser.parse_args()
    loaded = load_model(ModelConfig(name="smollm2-135m"))
    config = TaskConfig(
        name=args.task, tasks=[args.task], context_length=args.context_length, num_samples=args.prompts, seed=args.seed
    )
    (task,) = prepare_tasks(config, loaded)
    pad, tokenizer, model = padding_token_id(loaded.tokenizer), loaded.tokenizer, loaded.model
    for sample in task.samples:
        length, first = len(sample.prompt_ids), args.interval
        last = length // args.interval * args.interval  # the prompt's last update
        # without the value norm on either side: the correlation is between predicted and real attention alone
        plain = PolicyConfig(name="expected_attention", budget_ratio=args.ratio, options={"use_value_norm": False})
        predictions = run(model, plain, sample, args.interval, {first}, pad)[0][first]
        runs = {  # each policy once: its first update and its last, and what it then answers
            name: run(
                model, PolicyConfig(name=name, budget_ratio=args.ratio), sample, args.interval, {first, last}, pad
            )
            for name in ("expected_attention", "random")
        }
        records, random_records = (runs[name][0][first] for name in ("expected_attention", "random"))
        attentions = full_cache_attentions(model, list(sample.prompt_ids))
        correlations, mass_lost, question_lost = [], [], []
        for layer, attention in enumerate(attentions):
            prediction = predictions[layer]
            order = prediction.positions[0].argsort()  # slots -> positions 0 .. first - 1 (every head holds them all)
            predicted = prediction.scores[:, order]
            heads = predicted.shape[0]
            real = attention[0, :, first:, :first].float().mean(dim=1).view(heads, -1, first).mean(dim=1)
            correlations.append(spearman(predicted[:, 4:-1], real[:, 4:-1]))  # sinks and the newest token: kept
            for queries, lost in ((slice(first, None), mass_lost), (slice(-QUESTION_TOKENS, None), question_lost)):
                received = attention[0, :, queries, :first].float().mean(dim=1).view(heads, -1, first).mean(dim=1)
                lost.append(torch.stack([evicted_mass(r[layer], received) for r in (records, random_records)]))
        rho = torch.stack(correlations)
        print(f"prompt {sample.index} ({length} tokens, answer {sample.answers[0]!r}, tokens {sample.answer_spans})")
        print(
            f"  predicted vs real attention of the later queries at the first update (no value norm): Spearman mean "
            f"{rho.mean():.2f}, median {rho.median():.2f}, min {rho.min():.2f} over {rho.numel()} layer-heads"
        )
        for what, lost in (
            ("all later queries", mass_lost),
            (f"the last {QUESTION_TOKENS} (the question)", question_lost),
        ):
            lost = torch.cat(lost, dim=1)  # (2, layer-heads): expected_attention, random
            print(
                f"  attention of {what} on the tokens evicted at the first update (mean / max over layer-heads): "
                f"expected_attention {lost[0].mean():.3f} / {lost[0].max():.3f}, random {lost[1].mean():.3f} / "
                f"{lost[1].max():.3f}"
            )
        answer = [p for start, end in sample.answer_spans for p in range(start, end)]
        retrieval_heads = answer_heads(attentions, answer, RETRIEVAL_HEADS)
        for name, (updates, result) in runs.items():
            records = updates[last]
            kept_answer, kept_all = {}, []
            for layer, record in records.items():
                kept = record.positions.masked_fill(~record.keep, -1)  # (H, S) positions kept
                kept_answer[layer] = torch.stack([(kept == p).any(dim=-1) for p in answer], dim=-1).float()
                kept_all.append(record.keep.sum(dim=-1).float() / last)
            share = torch.cat(list(kept_answer.values())).mean(dim=0)
            text = tokenizer.decode(result.token_ids).strip().splitlines()[0] if result.token_ids else ""
            print(
                f"  {name:18s} at {args.ratio}: keeps {torch.cat(kept_all).mean():.2f} of all tokens and "
                f"{share.mean():.2f} of the answer's per layer-head (per token: "
                f"{' '.join(f'{x:.2f}' for x in share.tolist())}); answers {text!r}"
            )
            kept_by = layer_head_share(records, last)
            group = attentions[0].shape[1] // records[0].positions.shape[0]
            retrieval = [int(kept_answer[layer][head // group].sum()) for layer, head in retrieval_heads]
            dropped = (kept_by < 0.5).nonzero().flatten().tolist()
            words = Counter(tokenizer.decode([sample.prompt_ids[p]]) for p in dropped)
            print(
                f"    the 4 sinks kept by {kept_by[:4].mean():.2f} of the layer-heads; answer tokens kept in the "
                f"{len(retrieval)} heads whose last query attends to the answer most: {retrieval} of {len(answer)}; "
                f"{len(dropped)} tokens dropped by over half of the layer-heads: {dict(words.most_common(5))}"
            )


if __name__ == "__main__":
    main()
