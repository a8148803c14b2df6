"""Why does Expected Attention answer no prompt (results/baselines/table.md)? Two measurements on SmolLM2.

1. Does it predict what it claims? At the first update (after `--interval` tokens) its scores are compared, per
   layer and KV head, with the attention the rest of the prompt's queries really pay each of those keys under
   the full cache (GQA-group mean, times the value norm, as its score is), by Spearman correlation; and the
   share of that attention which falls on the tokens it evicts is set beside random's, for all later queries and
   for the question's (the prompt's last 32 tokens).
2. What does it evict? At the prompt's end, the share of (layer, KV head) pairs that keep each gold-answer token,
   against the share of all tokens kept, for Expected Attention and for random (the control).

    python scripts/expected_attention_check.py --task passkey --context-length 1024 --prompts 3 --ratio 0.9
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Self

import torch

from namm.engine import EngineConfig, GenerationSettings, MemoryEngine
from namm.models import ModelConfig, load_model
from namm.plain_generation import padding_token_id
from namm.policies.base import BudgetPolicy, LayerView, Selection
from namm.policies.registry import PolicyConfig, build_policy
from tasks.preparation import prepare_tasks
from tasks.task_config import TaskConfig
from tasks.task_spec import Sample


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rank correlation along the last dimension (ties broken by position)."""
    ra, rb = (x.argsort(-1).argsort(-1).double() for x in (a, b))
    ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
    return (ra * rb).sum(-1) / (ra.norm(dim=-1) * rb.norm(dim=-1))


QUESTION_TOKENS = 32  # the prompt's last tokens: the question and the answer's prefix


@dataclass
class UpdateRecord:
    """One layer's cache at an update, copied (the engine reuses its buffers once the update is done)."""

    positions: torch.Tensor  # (H, S)
    value_norms: torch.Tensor  # (H, S)
    scores: torch.Tensor  # (H, S)
    keep: torch.Tensor  # (H, S)


class SelectionRecorder:
    """Wraps BudgetPolicy.select to copy each layer's cache and selection at the update where `tokens_seen == at`."""

    def __init__(self, at: int) -> None:
        self.at, self.records = at, {}
        self.original = BudgetPolicy.select

    def __enter__(self) -> Self:
        def select(policy: BudgetPolicy, view: LayerView) -> Selection:
            selection = self.original(policy, view)
            if int(view.tokens_seen[0]) == self.at:
                self.records[view.layer_idx] = UpdateRecord(
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


def run(model, policy_config: PolicyConfig, sample: Sample, interval: int, at: int, pad: int):
    engine = MemoryEngine(model, build_policy(policy_config), EngineConfig(update_interval=interval))
    with SelectionRecorder(at) as recorder:
        result = engine.generate([list(sample.prompt_ids)], GenerationSettings(max_new_tokens=10, pad_token_id=pad))
    return recorder.records, result[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="passkey")
    parser.add_argument("--context-length", type=int, default=1024)
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--ratio", type=float, default=0.9)
    parser.add_argument("--interval", type=int, default=512)
    parser.add_argument("--seed", type=int, default=4243)
    args = parser.parse_args()
    loaded = load_model(ModelConfig(name="smollm2-135m"))
    config = TaskConfig(
        name=args.task, tasks=[args.task], context_length=args.context_length, num_samples=args.prompts, seed=args.seed
    )
    (task,) = prepare_tasks(config, loaded)
    pad, tokenizer, model = padding_token_id(loaded.tokenizer), loaded.tokenizer, loaded.model
    for sample in task.samples:
        length, first = len(sample.prompt_ids), args.interval
        records, _ = run(
            model, PolicyConfig(name="expected_attention", budget_ratio=args.ratio), sample, args.interval, first, pad
        )
        previous = model.config._attn_implementation
        model.set_attn_implementation("eager")
        with torch.inference_mode():
            attentions = model(input_ids=torch.tensor([list(sample.prompt_ids)]), output_attentions=True).attentions
        model.set_attn_implementation(previous)
        random_records, _ = run(
            model, PolicyConfig(name="random", budget_ratio=args.ratio), sample, args.interval, first, pad
        )
        correlations, mass_lost, question_lost = [], [], []
        for layer, attention in enumerate(attentions):
            record = records[layer]
            order = record.positions[0].argsort()  # slots -> positions 0 .. first - 1 (every head holds them all)
            predicted = record.scores[:, order]
            heads = predicted.shape[0]
            real = attention[0, :, first:, :first].float().mean(dim=1)
            real = real.view(heads, -1, first).mean(dim=1) * record.value_norms[:, order]
            correlations.append(spearman(predicted[:, 4:], real[:, 4:]))  # the 4 sinks are kept, not ranked
            for queries, lost in ((slice(first, None), mass_lost), (slice(-QUESTION_TOKENS, None), question_lost)):
                received = attention[0, :, queries, :first].float().mean(dim=1).view(heads, -1, first).mean(dim=1)
                lost.append(torch.stack([evicted_mass(r[layer], received) for r in (records, random_records)]))
        rho = torch.stack(correlations)
        print(f"prompt {sample.index} ({length} tokens, answer {sample.answers[0]!r}, tokens {sample.answer_spans})")
        print(
            f"  predicted vs real attention of the later queries at the first update: Spearman mean "
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
        for name in ("expected_attention", "random"):
            records, result = run(
                model, PolicyConfig(name=name, budget_ratio=args.ratio), sample, args.interval, length, pad
            )
            kept_answer, kept_all = [], []
            for record in records.values():
                kept = record.positions.masked_fill(~record.keep, -1)  # (H, S) positions kept
                kept_answer.append(torch.stack([(kept == p).any(dim=-1) for p in answer], dim=-1).float())
                kept_all.append(record.keep.sum(dim=-1).float() / length)
            share = torch.cat(kept_answer).mean(dim=0)
            text = tokenizer.decode(result.token_ids).strip().splitlines()[0] if result.token_ids else ""
            print(
                f"  {name:18s} at {args.ratio}: keeps {torch.cat(kept_all).mean():.2f} of all tokens and "
                f"{share.mean():.2f} of the answer's per layer-head (per token: "
                f"{' '.join(f'{x:.2f}' for x in share.tolist())}); answers {text!r}"
            )


if __name__ == "__main__":
    main()
