"""transformers' own greedy generation on a left-padded batch, with no memory management: the independent
reference the engine is checked against (tests, the GPU device check) and the runner's plain baseline.

Kept to torch and transformers so the device check imports it on the GPU image; the padding-token rule lives
here for the same reason (every caller, tasks and the device check included, picks its padding through it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import PreTrainedModel


class HasPadToken(Protocol):
    pad_token_id: int | None


def padding_token_id(tokenizer: HasPadToken, eos_token_ids: Sequence[int] = ()) -> int:
    """The id that fills left padding and the rows that finished: the tokenizer's pad token, else the first
    EOS id, else 0.

    Padded slots are masked out of attention and never decoded, so the choice cannot change a score; the
    tokenizer's own pad token keeps a padded batch what the tokenizer would build. Models loaded through
    `namm.models` always have one (a tokenizer without it gets its EOS), so the fallbacks only serve
    hand-built tokenizers.
    """
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return next(iter(eos_token_ids), 0)


@dataclass(frozen=True)
class PlainGreedy:
    """What `greedy_generate` returns: the new tokens of every row and, when asked, each step's logits."""

    tokens: torch.Tensor  # (B, steps) int64; a row that stopped early is padded after its stop token
    logits: torch.Tensor | None  # (B, steps, vocab) in the model's dtype, with `return_logits`


def left_padded(prompts: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of a left-padded batch on the CPU."""
    width = max(len(prompt) for prompt in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


@torch.inference_mode()
def greedy_generate(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    pad_token_id: int,
    stop_token_ids: Sequence[int] = (),
    return_logits: bool = False,
) -> PlainGreedy:
    """Greedy `model.generate` over the left-padded `prompts`, stopping a row at any of `stop_token_ids`
    (none: it never stops early).

    The settings go in as keywords, not as a GenerationConfig: transformers fills a config's unset
    `eos_token_id` from the model's own, which would stop at EOS when no stop token was asked for.
    """
    ids, mask = left_padded(prompts, pad_token_id)
    device = next(model.parameters()).device
    output = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=list(stop_token_ids) or None,
        pad_token_id=pad_token_id,
        output_logits=return_logits,
        return_dict_in_generate=True,
    )
    logits = torch.stack(output.logits, dim=1) if return_logits else None
    return PlainGreedy(tokens=output.sequences[:, ids.shape[1] :], logits=logits)
