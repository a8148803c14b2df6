"""Shared by the engine tests: prompts, and the independent references (transformers' own generation,
physical removal of evicted tokens per head)."""

from __future__ import annotations

import inspect

import torch
from transformers import AttentionInterface, DynamicCache

from namm import plain_generation
from namm.plain_generation import greedy_generate
from namm.policies import LayerView, MemoryPolicy, Selection


def random_prompts(lengths, vocab, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in lengths]


def left_padded(prompts):
    """(ids, attention mask) of a left-padded batch (pad id 0)."""
    return plain_generation.left_padded(prompts, pad_token_id=0)


def plain_generate(model, prompts, max_new_tokens):
    """transformers' own greedy generation on a left-padded batch: the independent reference."""
    output = greedy_generate(model, prompts, max_new_tokens, pad_token_id=0, return_logits=True)
    return output.tokens, output.logits


class EvictFixedPositions(MemoryPolicy):
    """Hand-built policy: at the first update drop given positions per KV head, keep everything else."""

    name = "evict-fixed"

    def __init__(self, evicted_per_head: list[list[int]]) -> None:
        self.evicted_per_head = evicted_per_head

    def select(self, view: LayerView) -> Selection:
        keep = view.valid.clone()
        for head, positions in enumerate(self.evicted_per_head):
            for position in positions:
                keep[:, head] &= view.positions[:, head] != position
        scores = keep.float().masked_fill(~view.valid, float("-inf"))
        return Selection(scores=scores, keep=keep)


def physically_removed_generate(model, prompt, update_at, evicted_per_head, max_new_tokens, absolute_positions=True):
    """Reference: plain forwards on a DynamicCache; after `update_at` tokens each head's evicted tokens are
    cut out of its own key/value list (per-head lengths differ) and attention runs on what remains."""
    kept_per_layer: dict[int, list[torch.Tensor]] = {}

    def removed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        group = query.shape[1] // key.shape[1]
        outputs = []
        for q_head in range(query.shape[1]):
            head = q_head // group
            keep = kept_per_layer.get(module.layer_idx)
            index = (
                torch.arange(key.shape[2])
                if keep is None
                else torch.cat([keep[head], torch.arange(update_at, key.shape[2])])
            )
            k, v = key[0, head, index], value[0, head, index]
            logits = query[0, q_head] @ k.T * scaling
            q_len = query.shape[2]
            causal = torch.arange(k.shape[0])[None, :] <= (k.shape[0] - q_len + torch.arange(q_len))[:, None]
            logits = logits.masked_fill(~causal, float("-inf"))
            outputs.append(torch.softmax(logits, dim=-1) @ v)
        return torch.stack(outputs)[None].transpose(1, 2), None

    AttentionInterface.register("test_removed", removed_attention)
    previous = model.config._attn_implementation
    model.set_attn_implementation("test_removed")
    try:
        cache = DynamicCache(config=model.config)
        keyword = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        ids = torch.tensor([prompt])
        with torch.no_grad():
            model(input_ids=ids[:, :update_at], position_ids=torch.arange(update_at)[None], **{keyword: cache})
            for layer in range(model.config.num_hidden_layers):
                kept_per_layer[layer] = [
                    torch.tensor([p for p in range(update_at) if p not in evicted]) for evicted in evicted_per_head
                ]
            removed = min(len(e) for e in evicted_per_head)
            offset = 0 if absolute_positions else removed
            rest = ids[:, update_at:]
            positions = torch.arange(update_at, len(prompt))[None] - offset
            logits = model(input_ids=rest, position_ids=positions, **{keyword: cache}).logits[:, -1]
            generated, step_logits = [], []
            for step in range(max_new_tokens):
                token = int(logits.argmax())
                generated.append(token)
                step_logits.append(logits[0])
                position = torch.tensor([[len(prompt) + step - offset]])
                logits = model(input_ids=torch.tensor([[token]]), position_ids=position, **{keyword: cache}).logits[
                    :, -1
                ]
        return generated, torch.stack(step_logits)
    finally:
        model.set_attn_implementation(previous)
