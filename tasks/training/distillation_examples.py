"""`evo.init=distill` on real prompts: the all-keep run's features and the full cache's per-token targets.

Each training prompt runs once through the engine with an all-keep NAMM (the run's config and frozen
normalisation statistics, no budget) whose observer records, at every update and layer, the scorer's input, the
attention each cached token has received so far (the `h2o` target) and each key's novelty (the `keydiff` target).
The `oracle` target is measured apart, with plain transformers: the prompt goes into a cache, then its last
`question_tokens` tokens and the gold answer are fed again (teacher-forced) with eager attention, and each prompt
token's target is the attention those queries pay it (summed over queries, averaged over the query heads of each
KV head).
"""

from __future__ import annotations

import inspect
import logging
import random
from dataclasses import dataclass, replace

import torch
from transformers import DynamicCache, PreTrainedModel

from namm.engine import EngineConfig, GenerationSettings, MemoryEngine
from namm.errors import ConfigError
from namm.evolution.distillation import (
    DistillConfig,
    DistillFit,
    DistillTarget,
    RankingExample,
    fit_ranking,
    readout_bias_index,
)
from namm.key_novelty import key_novelty
from namm.network.config import NAMMConfig
from namm.network.namm import NAMMOutput
from namm.policies.base import LayerView
from namm.policies.namm_policy import NAMMPolicy
from tasks.prompts import Tokenizer
from tasks.runner import PreparedTask
from tasks.task_config import TaskConfig
from tasks.task_spec import Sample, TaskSpec
from tasks.training.gold_answers import check_gold_answers, gold_continuation

log = logging.getLogger(__name__)


def check_distill_target(target: DistillTarget, tasks: TaskConfig, namm: NAMMConfig) -> None:
    """Before the model loads: `oracle` teacher-forces each prompt's gold answer, so every task must have one;
    without the key-novelty input, `keydiff` fits a score the scorer cannot see (allowed, but said) and
    `keydiff_exact` has nothing to write it on (refused)."""
    if target == DistillTarget.oracle:
        check_gold_answers(tasks, "evo.distill.target=oracle", "use evo.distill.target=h2o (or keydiff, or recency)")
    if target == DistillTarget.keydiff_exact and not namm.key_novelty:
        raise ConfigError(
            "evo.distill.target=keydiff_exact makes the start's score the NAMM's key-novelty input, which this NAMM "
            "does not have: set namm.key_novelty=true (or use evo.distill.target=keydiff to fit an approximation)"
        )
    if target == DistillTarget.keydiff and not namm.key_novelty:
        log.warning(
            "evo.distill.target=keydiff fits KeyDiff's key novelty, but this NAMM does not see it "
            "(namm.key_novelty=false), so the start can only approximate it from attention; set "
            "namm.key_novelty=true to let the fit copy the score"
        )


def suffix_attention(model: PreTrainedModel, prompt: list[int], continuation: list[int], queries: int) -> torch.Tensor:
    """(layers, KV heads, len(prompt)) float32: the attention the prompt's last `queries` tokens and the
    continuation (teacher-forced) pay to each prompt token, summed over those queries, averaged over the query
    heads that share a KV head. Only the suffix runs with eager attention (its rows are small)."""
    split = max(0, len(prompt) - queries)
    ids = torch.tensor([prompt + continuation], device=model.device)
    config = model.config.get_text_config()
    groups = config.num_attention_heads // (getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    previous = model.config._attn_implementation
    keyword = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.inference_mode():
        cache = DynamicCache()
        if split:
            model(input_ids=ids[:, :split], use_cache=True, **{keyword: cache})
        model.set_attn_implementation("eager")
        try:
            output = model(input_ids=ids[:, split:], use_cache=True, output_attentions=True, **{keyword: cache})
        finally:
            model.set_attn_implementation(previous)
    per_layer = []
    for attention in output.attentions:  # (1, heads, suffix, total)
        received = attention[0, :, :, : len(prompt)].float().sum(dim=1)  # (heads, prompt)
        per_layer.append(received.view(-1, groups, len(prompt)).mean(dim=1))
    return torch.stack(per_layer).cpu()


@dataclass
class _UpdateRecord:
    layer: int
    features: torch.Tensor  # (H, S, F)
    positions: torch.Tensor  # (H, S)
    valid: torch.Tensor  # (H, S)
    received: torch.Tensor  # (H, S) attention received from every query so far
    novelty: torch.Tensor  # (H, S) KeyDiff's score of each live key among the cached ones


class FeatureCollector:
    """The all-keep NAMM's observer: per update and layer, the scorer's input, the attention received so far and
    each key's novelty."""

    def __init__(self) -> None:
        self.records: list[_UpdateRecord] = []
        self.received: dict[int, torch.Tensor] = {}  # layer -> (H, positions) accumulated attention

    def __call__(self, view: LayerView, output: NAMMOutput) -> None:
        positions, valid = view.positions[0], view.valid[0]
        index = positions.clamp(min=0)
        heads = positions.shape[0]
        total = self.received.get(view.layer_idx, torch.zeros(heads, 0, device=positions.device))
        width = int(index.max()) + 1
        if total.shape[1] < width:
            total = torch.cat([total, total.new_zeros(heads, width - total.shape[1])], dim=1)
        total.scatter_add_(1, index, view.attention_received()[0] * valid)
        self.received[view.layer_idx] = total
        novelty = key_novelty(view.keys[:1], view.valid[:1])[0] * valid
        self.records.append(
            _UpdateRecord(view.layer_idx, output.features[0], positions, valid, total.gather(1, index) * valid, novelty)
        )

    def examples(self, target: DistillTarget, oracle: torch.Tensor | None) -> list[RankingExample]:
        """The records grouped by update (every layer holds the same tokens under all-keep), as plain tensors
        (not inference-mode ones, so the fit can differentiate through the scorer)."""
        by_update: list[list[_UpdateRecord]] = []
        for record in self.records:
            if record.layer == 0:
                by_update.append([])
            by_update[-1].append(record)
        examples = []
        for records in by_update:
            positions = torch.stack([r.positions for r in records]).cpu().clone()
            valid = torch.stack([r.valid for r in records]).cpu().clone()
            if target == DistillTarget.h2o:
                values = torch.stack([r.received for r in records]).cpu()
            elif target == DistillTarget.recency:
                values = positions.float()
            elif target in (DistillTarget.keydiff, DistillTarget.keydiff_exact):
                values = torch.stack([r.novelty for r in records]).cpu()
            else:
                values = oracle.gather(2, positions.clamp(min=0)) * valid
            examples.append(
                RankingExample(
                    torch.stack([r.features for r in records]).cpu().clone(), positions, valid, values.clone()
                )
            )
        return examples


def collection_engine(policy: NAMMPolicy, model: PreTrainedModel, engine_config: EngineConfig) -> MemoryEngine:
    """An engine with an all-keep NAMM of `policy`'s config (no budget, nothing protected), sharing its frozen
    normalisation statistics: it sees exactly the features the trained NAMM will see while nothing is evicted."""
    config = replace(policy.namm.config, budget_ratio=None, budget_tokens=None)
    collector_policy = NAMMPolicy(config)
    collector_policy.namm.normaliser = policy.namm.normaliser
    keep_all = torch.zeros(collector_policy.param_count)
    keep_all[readout_bias_index(config)] = config.threshold + 1.0
    collector_policy.namm.set_parameters(keep_all)
    return MemoryEngine(model, collector_policy, engine_config)


@dataclass
class PromptRun:
    """One prompt's all-keep run: the recorded updates, and the oracle attention when it was measured."""

    collector: FeatureCollector
    oracle: torch.Tensor | None  # (layers, KV heads, prompt tokens)

    def examples(self, target: DistillTarget) -> list[RankingExample]:
        if target == DistillTarget.oracle and self.oracle is None:
            raise ValueError("this prompt was run without the oracle target")
        return self.collector.examples(target, self.oracle)


def run_prompt(
    engine: MemoryEngine,
    sample: Sample,
    spec: TaskSpec,
    tokenizer: Tokenizer,
    question_tokens: int | None,
    pad_token_id: int,
) -> PromptRun:
    """A prompt under the all-keep engine (every target but the oracle), plus the oracle unless
    `question_tokens` is None."""
    collector = FeatureCollector()
    engine.policy.observer = collector
    try:
        engine.generate([list(sample.prompt_ids)], GenerationSettings(max_new_tokens=1, pad_token_id=pad_token_id))
    finally:
        engine.policy.observer = None
    oracle = None
    if question_tokens is not None:
        continuation = gold_continuation(sample, spec, tokenizer)
        oracle = suffix_attention(engine.model, list(sample.prompt_ids), continuation, question_tokens)
    return PromptRun(collector, oracle)


def collect_examples(
    engine: MemoryEngine,
    task: PreparedTask,
    index: int,
    tokenizer: Tokenizer,
    settings: DistillConfig,
    pad_token_id: int,
) -> list[RankingExample]:
    """Every update of one prompt under the all-keep engine, with `settings.target`'s per-token target."""
    oracle = settings.question_tokens if settings.target == DistillTarget.oracle else None
    return run_prompt(engine, task.samples[index], task.spec, tokenizer, oracle, pad_token_id).examples(settings.target)


def distillation_prompts(train_pool: dict[str, list[int]], settings: DistillConfig, seed: int) -> dict[str, list[int]]:
    """A seeded draw of `settings.prompts_per_task` training prompts per task (never validation prompts; a pool
    smaller than that is refused with the config, `check_split_sizes`)."""
    return {
        name: sorted(random.Random(f"{seed}-{name}-distill").sample(pool, settings.prompts_per_task))
        for name, pool in train_pool.items()
    }


def distil(
    policy: NAMMPolicy,
    model: PreTrainedModel,
    engine_config: EngineConfig,
    tasks: list[PreparedTask],
    prompts: dict[str, list[int]],
    tokenizer: Tokenizer,
    settings: DistillConfig,
    pad_token_id: int,
) -> DistillFit:
    """Collect every chosen prompt's updates and fit the NAMM to rank tokens like the target."""
    engine = collection_engine(policy, model, engine_config)
    examples = []
    for task in tasks:
        for index in prompts.get(task.spec.name, []):
            examples += collect_examples(engine, task, index, tokenizer, settings, pad_token_id)
    fit = fit_ranking(examples, policy.namm.config, settings)
    log.info(
        "distilled a start from %d updates (target %s): ranking loss %.4f -> %.4f, keeps %.3f of the fitting tokens",
        len(examples),
        settings.target.value,
        fit.loss_before,
        fit.loss_after,
        fit.retained_ratio,
    )
    return fit
