"""Memory-managed greedy generation: a frozen causal LM whose KV cache a policy prunes on a fixed schedule.

Schedules (`EngineConfig.schedule`). `prefill` (the NAMM reference's, generalised to batches): a row is
updated after every forward that brings its count of real tokens to a multiple of `update_interval`, in
prefill and in decoding; prefill chunks end at every row's update boundary (absolute multiples of the
interval, shifted by each row's left padding), so each row sees exactly the schedule it would see alone.
`post_prefill` (post-prefill compressors: SnapKV, KVzip, kvpress's presses): the whole prompt goes in with
no eviction, every row is updated once it is in, then after every `update_interval` generated tokens; the
decision sees the question, but peak memory is the full prompt's cache.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from transformers import PreTrainedModel

from namm.attention import (
    attention_column_sums,
    attention_rows,
    chunked_attention_rows,
    register_memory_attention,
)
from namm.budget import per_layer_max_keep_per_row
from namm.cache import ChunkInfo, MemoryCache, MemoryCacheLayer, StorageSizing
from namm.memory_meter import MemoryUsage
from namm.models import check_supported
from namm.policies.base import BudgetPolicy, LayerView, MemoryPolicy
from namm.schedule import chunk_ends, chunk_positions

EVICTION_MODES = ("per_head", "per_layer_max")
#: prefill: updates every update_interval tokens, prompt included (bounds peak memory); post_prefill: one
#: update once the whole prompt is in, then every update_interval generated tokens (peak = the full prompt)
SCHEDULES = ("prefill", "post_prefill")


@dataclass(frozen=True)
class EngineConfig:
    """How the engine schedules and applies a policy: the `engine` node of both conf/train.yaml and
    conf/evaluate.yaml (read with `namm.typed_config.typed_config`), and what checkpoints record."""

    update_interval: int = 512
    #: per_head: each KV head keeps its own tokens, in its own storage (so memory follows each head's count);
    #: per_layer_max: every head keeps as many as the layer's most retentive head (the NAMM reference rule);
    #: a str, not a Literal, so that omegaconf can type the node
    eviction_mode: str = "per_layer_max"
    #: largest prefill forward; chunks also end at every update boundary
    prefill_chunk: int | None = None
    #: also update every row once its whole prompt is in (as post-prefill compressors such as SnapKV do), so
    #: a short prompt and the prompt's tail after the last boundary are compressed before decoding. Off by
    #: default: the NAMM reference updates at interval boundaries only (golden parity, published numbers).
    update_at_prefill_end: bool = False
    #: when the policy runs (SCHEDULES); a str, not a Literal, so that omegaconf can type the node. The
    #: entry points set it from their top-level `schedule=` key
    schedule: str = "prefill"

    def __post_init__(self) -> None:
        if self.update_interval <= 0:
            raise ValueError(f"update_interval must be a positive token count, got {self.update_interval}.")
        if self.eviction_mode not in EVICTION_MODES:
            raise ValueError(f"eviction_mode must be one of {EVICTION_MODES}, got {self.eviction_mode!r}.")
        if self.prefill_chunk is not None and self.prefill_chunk <= 0:
            raise ValueError(f"prefill_chunk must be positive, got {self.prefill_chunk}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES} (schedule=...), got {self.schedule!r}.")

    @property
    def compresses_at_prefill_end(self) -> bool:
        """Every row is updated once its whole prompt is in."""
        return self.update_at_prefill_end or self.schedule == "post_prefill"


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
    prompt_retained_ratio: float  # kept / prompt tokens once the whole prompt is in (before the first new token)
    memory: MemoryUsage  # live KV bytes of this row; storage and overhead of its batch (peak and final)
    cache_sizes: list[dict] = field(default_factory=list)  # after each update: tokens_seen, per-layer mean kept
    update_positions: list[int] = field(default_factory=list)  # tokens_seen at each update
    logits: torch.Tensor | None = None  # (generated, vocab) float32 when settings.return_logits
    token_logprobs: list[float] | None = None  # teacher_force: log p(continuation[i] | prompt, continuation[:i])
    reconstruction: ReconstructionCost | None = None  # what the policy's reconstruction forwards cost (kvzip)


@dataclass(frozen=True)
class ReconstructionCost:
    """The extra forwards a reconstructing policy (kvzip) costs: this row's tokens, the batch's forwards and
    their seconds (wall clock on the host)."""

    tokens: int
    forwards: int
    seconds: float


def check_policy_engine(policy: MemoryPolicy, config: EngineConfig) -> None:
    """Refuse a policy the schedule or eviction mode cannot run, naming the setting and the fix."""
    if not policy.runs_during_prefill and policy.evicts and config.schedule != "post_prefill":
        raise ValueError(
            f"policy '{policy.name}' compresses once the whole prompt is in (post-prefill only), but "
            f"schedule={config.schedule}: set schedule=post_prefill, or leave '{policy.name}' out of compare."
        )
    if isinstance(policy, BudgetPolicy) and policy.allocation == "adakv" and config.eviction_mode != "per_head":
        raise ValueError(
            f"allocation=adakv ({policy.name}) shares a layer's budget unevenly across its KV heads, so each head "
            f"needs its own storage, but engine.eviction_mode={config.eviction_mode}: set "
            "engine.eviction_mode=per_head, or use allocation=none or pyramid."
        )


def rotary_frequencies(model: PreTrainedModel) -> torch.Tensor | None:
    """(D/2,) the rotary embedding's frequencies (its `inv_freq` buffer, rope scaling applied), or None."""
    for module in model.modules():
        frequencies = dict(module.named_buffers(recurse=False)).get("inv_freq")
        if frequencies is not None:
            return frequencies
    return None


class MemoryEngine:
    """Runs greedy generation with `policy` managing the KV cache of `model`."""

    def __init__(self, model: PreTrainedModel, policy: MemoryPolicy, config: EngineConfig | None = None) -> None:
        check_supported(model)
        self.model = model
        self.policy = policy
        self.config = config or EngineConfig()
        check_policy_engine(policy, self.config)
        self.rotary_inv_freq = rotary_frequencies(model)
        self.attention_name = register_memory_attention()
        text_config = model.config.get_text_config()
        self.num_layers = text_config.num_hidden_layers
        self.num_kv_heads = getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads
        self.max_positions = getattr(text_config, "max_position_embeddings", None)
        forward_params = inspect.signature(model.forward).parameters
        self._cache_keyword = "cache" if "cache" in forward_params else "past_key_values"

    def cache_arguments(self, max_slots: int) -> dict[str, Any]:
        """`MemoryCache`'s arguments for this policy and schedule, for a run that appends at most `max_slots`
        slots per row (a subclass such as transformers' cache, `namm.generate`, passes them on)."""
        return {
            "num_layers": self.num_layers,
            "sizing": storage_sizing(self.policy, self.config, max_slots),
            "per_head_storage": self.policy.evicts and self.config.eviction_mode == "per_head",
            "record_queries": records_queries(self.policy),
            "query_window": self.config.update_interval,
        }

    def new_cache(self, max_slots: int) -> MemoryCache:
        """Storage for a run that appends at most `max_slots` slots per row."""
        return MemoryCache(**self.cache_arguments(max_slots))

    def start_run(self, prompts: Sequence[Sequence[int]], cache: MemoryCache) -> EngineRun:
        """A run whose forwards the caller drives (`namm.generate` inside transformers' `generate()`): the
        schedule, updates and results of `generate`, over `cache`, storage the caller sized."""
        return EngineRun(self, prompts, [len(prompt) for prompt in prompts], GenerationSettings(), None, cache=cache)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        settings: GenerationSettings,
        row_parameters: torch.Tensor | None = None,
        on_prompt_end: Callable[[MemoryCache], None] | None = None,
    ) -> list[GenerationResult]:
        """Greedy-decode every prompt (one batch, left-padded); each row may carry its own parameters.
        `on_prompt_end(cache)` sees the cache once every prompt is in, before the first new token (eviction maps)."""
        lengths = self._validate(prompts, settings)
        with torch.inference_mode(), self._memory_attention():
            run = EngineRun(self, prompts, lengths, settings, row_parameters)
            run.on_prompt_end = on_prompt_end
            return run.execute()

    def teacher_force(
        self,
        prompts: Sequence[Sequence[int]],
        continuation: Sequence[int],
        row_parameters: torch.Tensor | None = None,
    ) -> list[GenerationResult]:
        """Each row's log-probabilities of `continuation` after its prompt, fed as input (no decoding).

        The prompt goes in as `generate` prefills it; the continuation follows in one forward, cut only at an
        update boundary it crosses (the policy then updates there, as it would while decoding those tokens).
        `token_ids` is the continuation and the memory statistics count it as generated."""
        if len(continuation) == 0:
            raise ValueError("teacher_force() needs at least one continuation token.")
        settings = GenerationSettings(max_new_tokens=len(continuation), stop_on_eos=False)
        lengths = self._validate(prompts, settings)
        with torch.inference_mode(), self._memory_attention():
            return EngineRun(self, prompts, lengths, settings, row_parameters).teacher_force(list(continuation))

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
        multiple = self.policy.update_query_multiple
        if self.config.compresses_at_prefill_end and self.policy.evicts and multiple > 1:
            interval = self.config.update_interval
            post_prefill = self.config.schedule == "post_prefill"
            for index, length in enumerate(lengths):
                tail = min(length, interval) if post_prefill else length % interval
                if tail % multiple:
                    setting = "schedule=post_prefill" if post_prefill else "engine.update_at_prefill_end"
                    raise ValueError(
                        f"prompt {index} has {length} tokens, so the update once it is in sees {tail} queries: "
                        f"policy '{self.policy.name}' needs a multiple of {multiple} queries per update, so with "
                        f"{setting} the prompt length must be one modulo the interval ({interval}); pad or truncate "
                        f"prompts to a multiple of {multiple} tokens, or use schedule=prefill without "
                        "update_at_prefill_end."
                    )
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
    """The cache buffers post-RoPE queries only for a policy that evicts and reads attention rows or queries."""
    return policy.evicts and (policy.needs_attention or policy.needs_queries)


def storage_sizing(policy: MemoryPolicy, config: EngineConfig, max_slots: int) -> StorageSizing:
    """Headroom of one update interval for a policy that evicts; a full-cache run grows to its length once."""
    return StorageSizing(headroom=config.update_interval if policy.evicts else max_slots, max_slots=max_slots)


class EngineRun:
    """State of one `generate` call (kept apart so the engine itself stays reusable).

    The schedule lives on the host (pads and prompt lengths are known, and each decoding step brings back
    the finished flags in its one host sync), so nothing else in the decode loop waits on the device.
    """

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
        self.tokens_seen = [0] * self.batch  # real tokens each row has put through the model
        self.last_update = [0] * self.batch  # tokens_seen at each row's latest update
        self.finished = [False] * self.batch
        self.updates: list[tuple[list[int], list[int], torch.Tensor]] = []  # rows, seen, (R, layers) kept
        self.policy_state_bytes = 0
        self.prompt_kept: torch.Tensor | None = None  # (B,) kept slots over layers and heads at the prompt's end
        self.prompt_seen: list[int] = []  # tokens each row had seen then
        self.reconstruction_tokens = [0] * self.batch
        self.reconstruction_forwards = 0
        self.reconstruction_seconds = 0.0
        self.on_prompt_end: Callable[[MemoryCache], None] | None = None

        self.policy.reset(self.batch, engine.num_layers, engine.num_kv_heads, self.device)
        self.policy.set_row_parameters(None if row_parameters is None else row_parameters.to(self.device))
        self.cache = cache if cache is not None else engine.new_cache(self.width + settings.max_new_tokens)

    # -- schedule ---------------------------------------------------------------------------------
    def chunk_ends(self) -> list[int]:
        start = torch.zeros(self.batch, dtype=torch.long)
        return chunk_ends(self.real, start, self.config.update_interval, self.config.prefill_chunk)

    def prefill(self) -> torch.Tensor:
        """Put every prompt through the model on its schedule; returns the last forward's logits."""
        start, logits = 0, None
        for end in self.chunk_ends():
            advanced = [max(0, end - max(start, pad)) for pad in self.pads]
            span = slice(start, end)
            ids, positions, real = self.input_ids[:, span], self.positions[:, span], self.real[:, span]
            logits = self.forward(ids, positions, real, advanced, prefill_end=end == self.width)
            start = end
        self.update_prefill_ends()
        if self.on_prompt_end is not None:
            self.on_prompt_end(self.cache)
        return logits

    def teacher_force(self, continuation: list[int]) -> list[GenerationResult]:
        """Prefill, then feed continuation[:-1] to every row; logits at each position score the next token."""
        step_logits = [self.prefill()[:, -1:].float()]
        fed = torch.tensor(continuation[:-1], dtype=torch.long, device=self.device).expand(self.batch, -1)
        real = torch.ones_like(fed, dtype=torch.bool)
        seen = torch.tensor(self.tokens_seen, device=self.device)
        ends = chunk_ends(real, seen, self.config.update_interval, self.config.prefill_chunk) if len(fed[0]) else []
        start = 0
        for end in ends:
            positions = seen[:, None] + torch.arange(start, end, device=self.device)[None, :]
            logits = self.forward(
                fed[:, start:end], positions, real[:, start:end], [end - start] * self.batch, keep_all=True
            )
            step_logits.append(logits.float())
            start = end
        logprobs = torch.cat(step_logits, dim=1).log_softmax(dim=-1)  # (B, len(continuation), vocab)
        target = torch.tensor(continuation, device=self.device).expand(self.batch, -1)
        chosen = logprobs.gather(-1, target[..., None])[..., 0].double().cpu().tolist()
        results = self.results(target.clone(), [len(continuation)] * self.batch, [])
        for result, row_logprobs in zip(results, chosen):
            result.token_logprobs = row_logprobs
        return results

    def execute(self) -> list[GenerationResult]:
        logits = self.prefill()

        settings = self.settings
        stop_ids = set(settings.eos_token_ids if settings.stop_on_eos else ())
        if settings.stop_on_newline:
            stop_ids |= set(settings.newline_token_ids)
        stop_tensor = torch.tensor(sorted(stop_ids), dtype=torch.long, device=self.device)
        tokens = torch.zeros(self.batch, settings.max_new_tokens, dtype=torch.long, device=self.device)
        generated = [0] * self.batch
        finished = torch.zeros(self.batch, dtype=torch.bool, device=self.device)
        step_logits: list[torch.Tensor] = []
        for step in range(settings.max_new_tokens):
            next_tokens = logits[:, -1].argmax(dim=-1)
            tokens[:, step] = next_tokens
            if settings.return_logits:
                step_logits.append(logits[:, -1].float())
            generated = [count + (not done) for count, done in zip(generated, self.finished)]
            finished |= torch.isin(next_tokens, stop_tensor)
            self.finished = finished.tolist()  # the step's one host sync
            if step == settings.max_new_tokens - 1 or all(self.finished):
                break
            fed = next_tokens.masked_fill(finished, settings.pad_token_id)
            positions = torch.tensor(self.tokens_seen, device=self.device)[:, None]
            advanced = [0 if done else 1 for done in self.finished]
            logits = self.forward(fed[:, None], positions, ~finished[:, None], advanced)
        return self.results(tokens, generated, step_logits)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        real: torch.Tensor,
        advanced: list[int],
        prefill_end: bool = False,
        keep_all: bool = False,
    ) -> torch.Tensor:
        """One forward; `advanced` (host) counts each row's real tokens in it. Updates the rows now due.
        Returns the last position's logits, or every position's with `keep_all`."""
        due = self.begin_forward(input_ids.shape[1], positions, real, advanced, prefill_end)
        output = self.engine.model(
            input_ids=input_ids,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=0 if keep_all else 1,
            memory_cache=self.cache,
            **{self.engine._cache_keyword: self.cache},
        )
        self.advance(advanced, due)
        return output.logits

    def begin_forward(
        self, width: int, positions: torch.Tensor, real: torch.Tensor, advanced: list[int], prefill_end: bool = False
    ) -> list[int]:
        """Tell the cache about the forward to come; returns the rows it brings to an update boundary."""
        interval = self.config.update_interval
        due = [row for row, count in enumerate(advanced) if count and self.reaches_boundary(row, count, interval)]
        every_row_compacts = len(due) == self.batch or (prefill_end and self.config.compresses_at_prefill_end)
        self.cache.chunk = ChunkInfo(
            positions=positions,
            real=real,
            all_real=all(count == width for count in advanced),
            compacted_next=self.policy.evicts and every_row_compacts,
        )
        return due

    def reaches_boundary(self, row: int, count: int, interval: int) -> bool:
        """Whether `count` more tokens bring `row` to an update: a multiple of the interval of all its tokens
        (schedule=prefill) or of its generated ones (schedule=post_prefill)."""
        seen = self.tokens_seen[row] + count
        if self.config.schedule == "prefill":
            return seen % interval == 0
        generated = seen - self.lengths[row]
        return generated > 0 and generated % interval == 0

    def advance(self, advanced: list[int], due: list[int]) -> None:
        """After the forward: count each row's tokens, and update the rows that reached a boundary."""
        for row, count in enumerate(advanced):
            self.tokens_seen[row] += count
        if self.policy.evicts and due:
            self.update(due)

    def update_prefill_ends(self) -> None:
        """With update_at_prefill_end or schedule=post_prefill: update every row whose prompt tail has not been
        updated yet (after the policy's reconstruction forwards, if it has any); then note what each row keeps (its
        end-of-prompt ratio, free of generated tokens)."""
        if self.config.compresses_at_prefill_end and self.policy.evicts:
            if self.policy.needs_reconstruction:
                self.reconstruct()
            self.update([row for row in range(self.batch) if self.tokens_seen[row] > self.last_update[row]])
        self.prompt_kept, self.prompt_seen = self.kept_slots().sum(dim=(1, 2)), list(self.tokens_seen)

    def kept_slots(self) -> torch.Tensor:
        """(B, layers, KV heads) live slots of every row now."""
        return torch.stack([layer.kept_per_head() for layer in self.cache.layers], dim=1)

    # -- context reconstruction (kvzip) -------------------------------------------------------------
    def reconstruct(self) -> None:
        """Run the policy's reconstruction forwards after the prompt: each continues every row's positions,
        the policy observes its attention layer by layer, and its tokens leave the cache after it."""
        started = time.perf_counter()
        prompts = [self.input_ids[row, self.pads[row] :].tolist() for row in range(self.batch)]
        inputs = [self.policy.reconstruction_inputs(prompt) for prompt in prompts]
        for step in range(max(len(pieces) for pieces in inputs)):
            pieces = [row_inputs[step] if step < len(row_inputs) else [] for row_inputs in inputs]
            width = max(len(piece) for piece in pieces)
            ids = torch.full((self.batch, width), self.settings.pad_token_id, dtype=torch.long)
            real = torch.zeros(self.batch, width, dtype=torch.bool)
            for row, piece in enumerate(pieces):
                ids[row, width - len(piece) :] = torch.as_tensor(piece, dtype=torch.long)
                real[row, width - len(piece) :] = True
            ids, real = ids.to(self.device), real.to(self.device)
            counts = [len(piece) for piece in pieces]
            positions = chunk_positions(real, torch.tensor(self.tokens_seen, device=self.device))
            self.cache.chunk = ChunkInfo(positions, real, all(c == width for c in counts), compacted_next=True)
            self.engine.model(
                input_ids=ids,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                memory_cache=self.cache,
                **{self.engine._cache_keyword: self.cache},
            )
            for layer in self.cache.layers:
                layer.discount_appended(width)  # they leave the cache below: no headroom for them
            self.observe_reconstruction(counts)
            self.reconstruction_forwards += 1
            self.reconstruction_tokens = [total + count for total, count in zip(self.reconstruction_tokens, counts)]
        self.reconstruction_seconds += time.perf_counter() - started

    def observe_reconstruction(self, counts: list[int]) -> None:
        """Let the policy see each layer's rows of the forward just run, then drop its tokens from the cache."""
        by_count: dict[int, list[int]] = {}
        for row, count in enumerate(counts):
            if count:
                by_count.setdefault(count, []).append(row)
        for count, rows in sorted(by_count.items()):
            index = torch.tensor(rows, device=self.device)
            seen = torch.tensor([self.tokens_seen[row] + count for row in rows], device=self.device)
            for layer_idx, layer in enumerate(self.cache.layers):
                with self.cache.meter.scope():
                    self.policy.observe_reconstruction(self.layer_view(layer_idx, layer, index, seen, count))
        self.cache.meter.observe_live(self.cache.live_bytes())  # the reconstruction's tokens were live too
        every = torch.arange(self.batch, device=self.device)
        context_end = torch.tensor(self.tokens_seen, device=self.device).view(-1, 1, 1)
        for layer_idx, layer in enumerate(self.cache.layers):
            slots = layer.slots(every, every_row=True)
            order, new_valid = layer.compact(every, slots.valid & (slots.positions < context_end))
            self.policy.reindex(layer_idx, every, order, new_valid)
            layer.forget_queries()

    # -- eviction ---------------------------------------------------------------------------------
    def update(self, rows: list[int]) -> None:
        """Update `rows`, grouped by how many queries each saw since its previous update."""
        by_count: dict[int, list[int]] = {}
        for row in rows:  # at most the query window: the newest interval of a post_prefill prompt
            count = min(self.tokens_seen[row] - self.last_update[row], self.config.update_interval)
            by_count.setdefault(count, []).append(row)
        for count, group in sorted(by_count.items()):
            self.update_rows(group, count)
        if len(rows) == self.batch:
            for layer in self.cache.layers:
                layer.forget_queries()

    def update_rows(self, rows: list[int], count: int) -> None:
        self.cache.meter.observe_live(self.cache.live_bytes())  # live bytes peak just before an eviction
        seen_list = [self.tokens_seen[row] for row in rows]
        index = torch.tensor(rows, device=self.device)
        seen = torch.tensor(seen_list, device=self.device)
        sizes = []
        for layer_idx, layer in enumerate(self.cache.layers):
            with self.cache.meter.scope():  # the view's attention rows live until the layer is compacted
                view = self.layer_view(layer_idx, layer, index, seen, count)
                selection = self.policy.select(view)
                keep = selection.keep & view.valid
                if self.config.eviction_mode == "per_layer_max":
                    keep = per_layer_max_keep_per_row(selection.scores, keep, view.valid)
                order, new_valid = layer.compact(index, keep)
            self.policy.reindex(layer_idx, index, order, new_valid)
            sizes.append(new_valid.sum(dim=-1).double().mean(dim=-1))
        state = self.policy.state_bytes()
        self.cache.meter.allocated(overhead=state - self.policy_state_bytes)
        self.policy_state_bytes = state
        for row in rows:
            self.last_update[row] = self.tokens_seen[row]
        self.updates.append((rows, seen_list, torch.stack(sizes, dim=1)))

    def layer_view(
        self, layer_idx: int, layer: MemoryCacheLayer, rows: torch.Tensor, seen: torch.Tensor, count: int
    ) -> LayerView:
        slots = layer.slots(rows, every_row=rows.numel() == self.batch)
        rows_fn = sums_fn = chunks_fn = queries_fn = None
        if records_queries(self.policy):
            queries_fn = partial(layer.recent_queries, rows)
        if self.policy.needs_attention:
            rows_fn = partial(attention_rows, layer, rows, seen)
            sums_fn = partial(attention_column_sums, layer, rows, seen)
            chunks_fn = partial(chunked_attention_rows, layer, rows, seen)
        return LayerView(
            layer_idx=layer_idx,
            rows=rows,
            keys=slots.keys,
            values=slots.values,
            valid=slots.valid,
            positions=slots.positions,
            tokens_seen=seen,
            num_new_tokens=count,
            attention_fn=rows_fn,
            attention_sums_fn=sums_fn,
            attention_chunks_fn=chunks_fn,
            num_layers=self.engine.num_layers,
            queries_fn=queries_fn,
            rotary_inv_freq=self.engine.rotary_inv_freq,
        )

    # -- results ----------------------------------------------------------------------------------
    def reconstruction_cost(self, row: int) -> ReconstructionCost | None:
        if not self.reconstruction_forwards:
            return None
        return ReconstructionCost(
            self.reconstruction_tokens[row], self.reconstruction_forwards, self.reconstruction_seconds
        )

    def results(
        self, tokens: torch.Tensor, generated: list[int], step_logits: list[torch.Tensor]
    ) -> list[GenerationResult]:
        # Integer counts, one division per figure in Python: a row's ratios cannot depend on the batch.
        kept = self.kept_slots()
        heads = kept.shape[-1]
        slots_per_token = len(self.cache.layers) * heads
        at_prompt_end = self.prompt_kept is not None  # else the run ends before decoding: now is the prompt's end
        prompt_kept = (self.prompt_kept if at_prompt_end else kept.sum(dim=(1, 2))).tolist()
        prompt_seen = self.prompt_seen if at_prompt_end else self.tokens_seen
        kept_per_layer = kept.sum(dim=-1).tolist()
        per_layer = [
            [count / (heads * self.tokens_seen[row]) for count in kept_per_layer[row]] for row in range(self.batch)
        ]
        memory = self.cache.meter.usage(self.cache.live_bytes())
        cache_sizes: list[list[dict]] = [[] for _ in range(self.batch)]
        for rows, seen_list, sizes in self.updates:
            for row, row_seen, row_sizes in zip(rows, seen_list, sizes.tolist()):
                cache_sizes[row].append({"tokens_seen": row_seen, "cache_sizes": row_sizes})
        token_lists = tokens.tolist()
        logits = torch.stack(step_logits, dim=1).cpu() if step_logits else None  # (B, steps, vocab)
        return [
            GenerationResult(
                token_ids=token_lists[row][: generated[row]],
                prompt_length=self.lengths[row],
                tokens_seen=self.tokens_seen[row],
                retained_ratio=sum(kept_per_layer[row]) / (len(kept_per_layer[row]) * heads * self.tokens_seen[row]),
                retained_ratio_per_layer=per_layer[row],
                prompt_retained_ratio=prompt_kept[row] / (slots_per_token * prompt_seen[row]),
                memory=memory[row],
                cache_sizes=cache_sizes[row],
                update_positions=[entry["tokens_seen"] for entry in cache_sizes[row]],
                logits=None if logits is None else logits[row, : generated[row]],
                reconstruction=self.reconstruction_cost(row),
            )
            for row in range(self.batch)
        ]
