"""Memory-managed greedy generation: a frozen causal LM whose KV cache a policy prunes on a fixed schedule.

Schedule (the NAMM reference's, generalised to batches): a row is updated after every forward that
brings its count of real tokens to a multiple of `update_interval`, in prefill and in decoding. Prefill
chunks end at every row's update boundary (absolute multiples of the interval, shifted by each row's
left padding), so each row sees exactly the schedule it would see alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch
from transformers import PreTrainedModel

from namm.attention import attention_rows, register_memory_attention
from namm.cache import ChunkInfo, MemoryCache, MemoryCacheLayer
from namm.policies.base import LayerView, MemoryPolicy, top_k_keep
from namm.schedule import chunk_ends

EvictionMode = Literal["per_head", "per_layer_max"]


@dataclass(frozen=True)
class EngineConfig:
    """How the engine schedules and applies a policy."""

    update_interval: int = 512
    #: per_head: each KV head keeps its own tokens (storage compacted to the longest head, rest masked);
    #: per_layer_max: every head keeps as many as the layer's most retentive head (the NAMM reference rule)
    eviction_mode: EvictionMode = "per_layer_max"
    #: largest prefill forward; chunks also end at every update boundary
    prefill_chunk: int | None = None

    def __post_init__(self) -> None:
        if self.update_interval <= 0:
            raise ValueError(f"update_interval must be a positive token count, got {self.update_interval}.")
        if self.eviction_mode not in ("per_head", "per_layer_max"):
            raise ValueError(f"eviction_mode must be 'per_head' or 'per_layer_max', got {self.eviction_mode!r}.")
        if self.prefill_chunk is not None and self.prefill_chunk <= 0:
            raise ValueError(f"prefill_chunk must be positive, got {self.prefill_chunk}.")


@dataclass(frozen=True)
class GenerationSettings:
    """Greedy decoding settings for one batch."""

    max_new_tokens: int = 32
    stop_on_eos: bool = True
    stop_on_newline: bool = False
    eos_token_ids: tuple[int, ...] = ()
    newline_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    return_logits: bool = False  # keep each step's next-token logits (for parity checks)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}.")


@dataclass
class GenerationResult:
    """One row's output and memory statistics."""

    token_ids: list[int]
    prompt_length: int
    tokens_seen: int  # real tokens that went through the model (prompt + generated - 1)
    retained_ratio: float  # kept / seen, averaged over layers and KV heads
    retained_ratio_per_layer: list[float]
    cache_sizes: list[dict] = field(default_factory=list)  # after each update: tokens_seen, per-layer mean kept
    peak_kv_bytes: int = 0  # of the whole batch's cache storage
    update_positions: list[int] = field(default_factory=list)  # tokens_seen at each update
    logits: torch.Tensor | None = None  # (generated, vocab) float32 when settings.return_logits


class MemoryEngine:
    """Runs greedy generation with `policy` managing the KV cache of `model`."""

    def __init__(self, model: PreTrainedModel, policy: MemoryPolicy, config: EngineConfig | None = None) -> None:
        from namm.models import check_supported

        check_supported(model)
        self.model = model
        self.policy = policy
        self.config = config or EngineConfig()
        self.attention_name = register_memory_attention()
        text_config = model.config.get_text_config()
        self.num_layers = text_config.num_hidden_layers
        self.num_kv_heads = getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads
        self.max_positions = getattr(text_config, "max_position_embeddings", None)
        forward_params = inspect.signature(model.forward).parameters
        self._cache_keyword = "cache" if "cache" in forward_params else "past_key_values"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        settings: GenerationSettings,
        row_parameters: torch.Tensor | None = None,
    ) -> list[GenerationResult]:
        """Greedy-decode every prompt (one batch, left-padded); each row may carry its own parameters."""
        lengths = self._validate(prompts, settings)
        with torch.inference_mode(), self._memory_attention():
            return _Run(self, prompts, lengths, settings, row_parameters).execute()

    def _validate(self, prompts: Sequence[Sequence[int]], settings: GenerationSettings) -> list[int]:
        if len(prompts) == 0:
            raise ValueError("generate() needs at least one prompt.")
        lengths = []
        for index, prompt in enumerate(prompts):
            if len(prompt) == 0:
                raise ValueError(f"prompt {index} is empty: give at least one token.")
            if self.max_positions is not None and len(prompt) + settings.max_new_tokens > self.max_positions:
                raise ValueError(
                    f"prompt {index} has {len(prompt)} tokens + {settings.max_new_tokens} new tokens, more than the "
                    f"model's maximum of {self.max_positions} positions: truncate the prompt (tasks truncate in the "
                    "middle to a budget) or lower max_new_tokens."
                )
            lengths.append(len(prompt))
        return lengths

    @contextmanager
    def _memory_attention(self) -> Iterator[None]:
        previous = self.model.config._attn_implementation
        self.model.set_attn_implementation(self.attention_name)
        try:
            yield
        finally:
            self.model.set_attn_implementation(previous)


def records_queries(policy: MemoryPolicy) -> bool:
    """The cache buffers post-RoPE queries only for a policy that evicts and reads attention rows."""
    return getattr(policy, "evicts", True) and policy.needs_attention


class _Run:
    """State of one `generate` call (kept apart so the engine itself stays reusable)."""

    def __init__(
        self,
        engine: MemoryEngine,
        prompts: Sequence[Sequence[int]],
        lengths: list[int],
        settings: GenerationSettings,
        row_parameters: torch.Tensor | None,
        cache: MemoryCache | None = None,
    ) -> None:
        """`cache`: storage sized by the caller (transformers' generate() brings its own), else one sized here."""
        self.engine, self.settings = engine, settings
        self.config = engine.config
        self.policy = engine.policy
        self.device = engine.device
        self.lengths = lengths
        self.batch = len(prompts)
        self.width = max(lengths)
        self.pads = [self.width - length for length in lengths]
        ids = torch.full((self.batch, self.width), settings.pad_token_id, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, self.pads[row] :] = torch.as_tensor(list(prompt), dtype=torch.long)
        self.input_ids = ids.to(self.device)
        pads = torch.tensor(self.pads, device=self.device)
        columns = torch.arange(self.width, device=self.device)
        self.real = columns[None, :] >= pads[:, None]
        self.positions = (columns[None, :] - pads[:, None]).clamp(min=0)
        self.tokens_seen = torch.zeros(self.batch, dtype=torch.long, device=self.device)
        self.finished = torch.zeros(self.batch, dtype=torch.bool, device=self.device)
        self.cache_sizes: list[list[dict]] = [[] for _ in range(self.batch)]

        self.policy.reset(self.batch, engine.num_layers, engine.num_kv_heads, self.device)
        self.policy.set_row_parameters(None if row_parameters is None else row_parameters.to(self.device))
        self.evicts = getattr(self.policy, "evicts", True)
        interval = self.config.update_interval
        total = self.width + settings.max_new_tokens
        self.cache = (
            cache
            if cache is not None
            else MemoryCache(
                engine.num_layers,
                initial_capacity=total if not self.evicts else min(total, 2 * interval),
                growth=2 * interval,
                record_queries=records_queries(self.policy),
                query_window=interval,
                max_capacity=total,
            )
        )

    # -- schedule ---------------------------------------------------------------------------------
    def chunk_ends(self) -> list[int]:
        start = torch.zeros(self.batch, dtype=torch.long)
        return chunk_ends(self.real, start, self.config.update_interval, self.config.prefill_chunk)

    def execute(self) -> list[GenerationResult]:
        start, logits = 0, None
        for end in self.chunk_ends():
            logits = self.forward(self.input_ids[:, start:end], self.positions[:, start:end], self.real[:, start:end])
            start = end
        generated: list[list[int]] = [[] for _ in range(self.batch)]
        stop_ids = set(self.settings.eos_token_ids if self.settings.stop_on_eos else ())
        if self.settings.stop_on_newline:
            stop_ids |= set(self.settings.newline_token_ids)
        stop_tensor = torch.tensor(sorted(stop_ids), dtype=torch.long, device=self.device)
        step_logits: list[list[torch.Tensor]] = [[] for _ in range(self.batch)]
        for step in range(self.settings.max_new_tokens):
            next_tokens = logits[:, -1].argmax(dim=-1)
            for row in (~self.finished).nonzero().flatten().tolist():
                generated[row].append(int(next_tokens[row]))
                if self.settings.return_logits:
                    step_logits[row].append(logits[row, -1].float().cpu())
            self.finished |= torch.isin(next_tokens, stop_tensor)
            if step == self.settings.max_new_tokens - 1 or bool(self.finished.all()):
                break
            live = ~self.finished
            fed = next_tokens.masked_fill(~live, self.settings.pad_token_id)
            logits = self.forward(fed[:, None], self.tokens_seen[:, None].clone(), live[:, None])
        return self.results(generated, step_logits)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        self.cache.chunk = ChunkInfo(positions=positions, real=real)
        output = self.engine.model(
            input_ids=input_ids,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            memory_cache=self.cache,
            **{self.engine._cache_keyword: self.cache},
        )
        self.advance(real)
        return output.logits

    def advance(self, real: torch.Tensor) -> None:
        """After a forward of `real` (B, L) tokens: count them, and update the rows that reached a boundary."""
        advanced = real.sum(dim=1)
        self.tokens_seen += advanced
        interval = self.config.update_interval
        due = (advanced > 0) & (self.tokens_seen % interval == 0) & ~self.finished
        if self.evicts and bool(due.any()):
            self.update(due.nonzero().flatten())

    # -- eviction ---------------------------------------------------------------------------------
    def update(self, rows: torch.Tensor) -> None:
        seen = self.tokens_seen[rows]
        sizes = torch.zeros(rows.numel(), self.engine.num_layers, dtype=torch.float64)
        for layer_idx, layer in enumerate(self.cache.layers):
            view = self.layer_view(layer_idx, layer, rows, seen)
            selection = self.policy.select(view)
            keep = selection.keep & view.valid
            if self.config.eviction_mode == "per_layer_max":
                keep = top_k_keep(selection.scores, view.valid, keep.sum(dim=-1).amax(dim=-1))
            index, new_valid = layer.compact(rows, keep)
            self.policy.reindex(layer_idx, rows, index, new_valid)
            sizes[:, layer_idx] = new_valid.sum(dim=-1).double().mean(dim=-1).cpu()
        for offset, row in enumerate(rows.tolist()):
            self.cache_sizes[row].append({"tokens_seen": int(seen[offset]), "cache_sizes": sizes[offset].tolist()})

    def layer_view(self, layer_idx: int, layer: MemoryCacheLayer, rows: torch.Tensor, seen: torch.Tensor) -> LayerView:
        every_row = rows.numel() == self.batch
        used = slice(0, layer.length)

        def take(store: torch.Tensor) -> torch.Tensor:
            return store[:, :, used] if every_row else store[rows][:, :, used]

        rows_fn = None
        if self.policy.needs_attention:
            rows_fn = partial(attention_rows, layer, rows, seen)
        return LayerView(
            layer_idx=layer_idx,
            rows=rows,
            keys=take(layer.keys),
            values=take(layer.values),
            valid=take(layer.valid),
            positions=take(layer.positions),
            tokens_seen=seen,
            num_new_tokens=self.config.update_interval,
            attention_fn=rows_fn,
        )

    # -- results ----------------------------------------------------------------------------------
    def results(self, generated: list[list[int]], step_logits: list[list[torch.Tensor]]) -> list[GenerationResult]:
        # Integer counts, one division per figure in Python: a row's ratios cannot depend on the batch.
        kept = torch.stack([layer.valid[:, :, : layer.length].sum(dim=-1) for layer in self.cache.layers], dim=1)
        kept_per_layer = kept.sum(dim=-1).tolist()  # (B, layers) tokens kept over all KV heads
        heads = kept.shape[-1]
        seen = self.tokens_seen.tolist()
        return [
            GenerationResult(
                token_ids=generated[row],
                prompt_length=self.lengths[row],
                tokens_seen=int(seen[row]),
                retained_ratio=sum(kept_per_layer[row]) / (len(kept_per_layer[row]) * heads * seen[row]),
                retained_ratio_per_layer=[count / (heads * seen[row]) for count in kept_per_layer[row]],
                cache_sizes=self.cache_sizes[row],
                peak_kv_bytes=self.cache.peak_bytes,
                update_positions=[entry["tokens_seen"] for entry in self.cache_sizes[row]],
                logits=torch.stack(step_logits[row]) if step_logits[row] else None,
            )
            for row in range(self.batch)
        ]
