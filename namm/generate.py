"""Memory policies inside transformers' own `model.generate()`: sampling, streamers, stopping criteria, batches.

`MemoryManagedCache(model, policy)` is a transformers Cache; pass it to `generate()` as `past_key_values`.
Two forward hooks on the model (PyTorch's public hook API, registered once per model, inert for every
other cache) drive it with the engine's own code: before a forward they cut its input at every row's
update boundary (`namm.schedule.chunk_ends`, whatever chunks `generate()` sends, with or without
`prefill_chunk_size`) and run all but the last piece through the engine; after it they count the tokens
and let the policy evict where a row reached a boundary. Under greedy decoding the tokens and retained
ratios are the engine's.

What `generate()` does beyond one left-padded batch per cache is refused with an error naming it: beam
search (it reorders the cache), assisted or speculative decoding (they crop it), a second `generate()`
call on the same cache, `inputs_embeds`, and returning hidden states or attentions (the prefill runs in
pieces, so they would be incomplete).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from namm.cache import MemoryCache
from namm.engine import EngineConfig, EngineRun, MemoryEngine
from namm.memory_meter import MemoryUsage
from namm.policies.base import MemoryPolicy
from namm.schedule import chunk_ends, chunk_positions

_CACHE_KEYWORDS = ("cache", "past_key_values")  # transformers 5.24 and 5.17 spellings
_UNSUPPORTED_OUTPUTS = ("output_hidden_states", "output_attentions")
_HOOKED_MODELS: weakref.WeakSet[PreTrainedModel] = weakref.WeakSet()


class UnsupportedGenerationError(ValueError):
    """A part of `generate()` that a memory-managed cache cannot serve; the message names it."""


@dataclass(frozen=True)
class RowMemory:
    """One batch row's memory after `generate()`: the engine's GenerationResult without the tokens."""

    retained_ratio: float  # kept / seen, averaged over layers and KV heads
    retained_ratio_per_layer: list[float]
    tokens_seen: int
    update_positions: list[int]
    cache_sizes: list[dict]
    memory: MemoryUsage  # live KV bytes of the row; storage and overhead of the batch (peak and final)


class MemoryManagedCache(MemoryCache):
    """A transformers Cache that `policy` prunes on the engine's schedule during `model.generate()`.

    One cache serves one `generate()` call (one batch, left-padded). `stop_token_ids` (default: the model's
    `generation_config.eos_token_id`) tell the cache when a row has finished, so that, as in the engine,
    the padding `generate()` feeds finished rows is not counted; pass the ids `generate()` stops on.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        policy: MemoryPolicy,
        config: EngineConfig | None = None,
        stop_token_ids: Iterable[int] | None = None,
    ) -> None:
        self.engine = MemoryEngine(model, policy, config)  # fails at once for a model without the attention interface
        max_slots = self.engine.max_positions or 1 << 20  # generate()'s length is unknown until it runs
        super().__init__(**self.engine.cache_arguments(max_slots))
        if stop_token_ids is None:
            stop_token_ids = model.generation_config.eos_token_id
        if isinstance(stop_token_ids, int):
            stop_token_ids = [stop_token_ids]
        self.stop_token_ids = torch.tensor(sorted(set(stop_token_ids or ())), dtype=torch.long)
        self.run: EngineRun | None = None
        self.decoding = False
        self.pending: tuple[list[int], list[int]] | None = None  # (tokens per row, rows due) of the forward in flight
        self.previous_attention: str | None = None
        _install_hooks(model)

    # -- results ----------------------------------------------------------------------------------
    def memory(self) -> list[RowMemory]:
        """Per batch row: retained ratios, update positions, cache sizes, live/storage/overhead bytes."""
        if self.run is None:
            raise RuntimeError("no generate() call has used this cache yet; pass it as past_key_values=cache.")
        no_tokens = torch.zeros(self.run.batch, 0, dtype=torch.long)
        return [
            RowMemory(
                retained_ratio=result.retained_ratio,
                retained_ratio_per_layer=result.retained_ratio_per_layer,
                tokens_seen=result.tokens_seen,
                update_positions=result.update_positions,
                cache_sizes=result.cache_sizes,
                memory=result.memory,
            )
            for result in self.run.results(no_tokens, [0] * self.run.batch, [])
        ]

    @property
    def retained_ratio(self) -> float:
        """Kept / seen, averaged over layers, KV heads and batch rows."""
        rows = self.memory()
        return sum(row.retained_ratio for row in rows) / len(rows)

    # -- what generate() must not do --------------------------------------------------------------
    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        raise UnsupportedGenerationError(
            "beam search is not supported with a memory-managed cache (each beam would need its own eviction "
            "history); use num_beams=1, with do_sample=True for diverse outputs."
        )

    def crop(self, max_length: int) -> None:
        raise UnsupportedGenerationError(
            "assisted / speculative decoding is not supported with a memory-managed cache (it crops the cache "
            "after rejected tokens, which eviction has already reshaped); drop assistant_model / prompt_lookup."
        )

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise UnsupportedGenerationError(
            "expanding a filled memory-managed cache is not supported; give generate() an empty cache."
        )

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise UnsupportedGenerationError("selecting rows of a memory-managed cache is not supported.")

    # -- the hooks' work --------------------------------------------------------------------------
    def before_forward(self, model: PreTrainedModel, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Run every piece of this input but the last through the engine; return the last one's kwargs."""
        input_ids, real = self._inputs(kwargs)
        run = self._run_for(input_ids, real)
        self._use_memory_attention(model)  # before the prompt-end update: it may run reconstruction forwards
        # a one-token forward after the first one is a decoding step (a prefill_chunk_size that leaves one
        # prompt token over would be taken for one: only a prompt ending in a stop token could then differ)
        if any(run.tokens_seen) and input_ids.shape[1] == 1:
            if not self.decoding:
                run.update_prefill_ends()  # the whole prompt is in (update_at_prefill_end, post_prefill)
            self.decoding = True
            stopped = torch.isin(input_ids[:, 0], self.stop_token_ids.to(input_ids.device)).tolist()
            run.finished = [done or stop for done, stop in zip(run.finished, stopped)]
            real = real & ~torch.tensor(run.finished, device=real.device)[:, None]
        seen = torch.tensor(run.tokens_seen)
        positions = chunk_positions(real, seen)
        ends = chunk_ends(real, seen, run.config.update_interval, run.config.prefill_chunk)
        start = 0
        for end in ends[:-1]:
            piece = real[:, start:end]
            run.forward(input_ids[:, start:end], positions[:, start:end], piece, piece.sum(dim=1).tolist())
            start = end
        advanced = real[:, start:].sum(dim=1).tolist()
        due = run.begin_forward(input_ids.shape[1] - start, positions[:, start:], real[:, start:], advanced)
        self.pending = (advanced, due)
        kwargs = dict(kwargs, input_ids=input_ids[:, start:], position_ids=positions[:, start:], attention_mask=None)
        if kwargs.get("cache_position") is not None:  # transformers 5.17
            kwargs["cache_position"] = kwargs["cache_position"][start:]
        if "logits_to_keep" in kwargs:
            kwargs["logits_to_keep"] = 1
        return dict(kwargs, memory_cache=self)

    def after_forward(self, model: PreTrainedModel, succeeded: bool) -> None:
        """Count the forward's tokens and evict where a row reached its boundary; restore attention."""
        pending, self.pending = self.pending, None
        try:
            if succeeded and pending is not None:
                self.run.advance(*pending)
        finally:
            if self.previous_attention is not None:
                model.set_attn_implementation(self.previous_attention)
                self.previous_attention = None

    def _inputs(self, kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        asked = [name for name in _UNSUPPORTED_OUTPUTS if kwargs.get(name)]
        if asked:
            raise UnsupportedGenerationError(
                f"{asked} are not supported with a memory-managed cache: the prefill runs in pieces at the "
                "policy's update boundaries, so they would cover only the last piece."
            )
        input_ids = kwargs.get("input_ids")
        if input_ids is None:
            raise UnsupportedGenerationError(
                "inputs_embeds are not supported with a memory-managed cache; pass input_ids."
            )
        mask = kwargs.get("attention_mask")
        if mask is None:
            return input_ids, torch.ones_like(input_ids, dtype=torch.bool)
        if mask.dim() != 2:
            raise UnsupportedGenerationError(
                f"a {mask.dim()}-d attention mask is not supported with a memory-managed cache; pass the "
                "tokenizer's 2-d (batch, length) mask."
            )
        return input_ids, mask[:, -input_ids.shape[1] :].bool()

    def _run_for(self, input_ids: torch.Tensor, real: torch.Tensor) -> EngineRun:
        """The run of this generate() call, started at its first forward."""
        if self.run is None:
            prompts = [row[mask].tolist() for row, mask in zip(input_ids.cpu(), real.cpu())]
            self.run = self.engine.start_run(prompts, cache=self)
        if input_ids.shape[0] != self.run.batch:
            raise UnsupportedGenerationError(
                f"this cache holds a batch of {self.run.batch} rows, the model got {input_ids.shape[0]}; "
                "use one MemoryManagedCache per generate() call."
            )
        if self.decoding and input_ids.shape[1] > 1:
            raise UnsupportedGenerationError(
                f"{input_ids.shape[1]} new tokens after decoding started: a second generate() call on the same "
                "cache, or assisted / speculative decoding, is not supported; use one MemoryManagedCache per "
                "generate() call, with num_beams=1 and no assistant."
            )
        started = real.long().cummax(dim=1).values.bool() | torch.tensor(self.run.tokens_seen, device=real.device)[
            :, None
        ].gt(0)
        if not torch.equal(started, real):
            raise UnsupportedGenerationError(
                "the batch is right-padded (or has holes in its attention mask); decoder generation needs left "
                "padding: tokenizer.padding_side = 'left'."
            )
        return self.run

    def _use_memory_attention(self, model: PreTrainedModel) -> None:
        current = model.config._attn_implementation
        if current != self.engine.attention_name:
            self.previous_attention = current
            model.set_attn_implementation(self.engine.attention_name)


def _managed_cache(kwargs: dict[str, Any]) -> MemoryManagedCache | None:
    for keyword in _CACHE_KEYWORDS:
        if isinstance(kwargs.get(keyword), MemoryManagedCache):
            return kwargs[keyword]
    return None


def _before_forward(model: PreTrainedModel, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
    cache = _managed_cache(kwargs)
    if cache is None or "memory_cache" in kwargs:  # another cache, or a forward the engine itself drives
        return None
    return args, cache.before_forward(model, kwargs)


def _after_forward(model: PreTrainedModel, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
    cache = _managed_cache(kwargs)
    # the forward `_before_forward` prepared (pending is set), or one whose preparation raised (no
    # memory_cache keyword yet); not the engine-driven pieces run inside the preparation
    if cache is not None and (cache.pending is not None or "memory_cache" not in kwargs):
        cache.after_forward(model, succeeded=output is not None)


def _install_hooks(model: PreTrainedModel) -> None:
    """Register the two hooks once per model; they act only on forwards given a MemoryManagedCache."""
    if model in _HOOKED_MODELS:
        return
    model.register_forward_pre_hook(_before_forward, with_kwargs=True)
    model.register_forward_hook(_after_forward, with_kwargs=True, always_call=True)
    _HOOKED_MODELS.add(model)
