"""The NAMM as an engine memory policy: per-(layer, row) spectrogram state, per-row parameter vectors.

The engine hands each update's GQA-averaged attention rows (chunk by chunk); the NAMM scores every slot and returns
its keep decision. The engine applies its eviction mode (`per_head` or the reference's
`per_layer_max`) and compaction, then calls `reindex` so the state follows the surviving tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from namm.engine import EngineConfig, MemoryEngine
from namm.models import ModelConfig, load_model
from namm.network.config import NAMMConfig
from namm.network.namm import NAMM, NAMMOutput
from namm.network.spectrogram import SpectrogramState
from namm.policies.base import LayerView, MemoryPolicy, Selection
from namm.policies.registry import register_policy

Observer = Callable[[LayerView, NAMMOutput], None]


@register_policy
class NAMMPolicy(MemoryPolicy):
    """Keeps a token when the NAMM scores it >= threshold (or in its top-k budget); newest always kept."""

    needs_attention: ClassVar[bool] = True
    name: ClassVar[str] = "namm"

    def __init__(
        self,
        namm: NAMM | NAMMConfig | dict[str, Any] | None = None,
        parameters: torch.Tensor | None = None,
        observer: Observer | None = None,
    ) -> None:
        """`namm`: a built NAMM, its config, or the config as a plain mapping (default: the reference BAM).

        `observer(view, output)` is called after every layer update (statistics, parity checks).
        """
        if isinstance(namm, dict):
            namm = NAMMConfig.from_dict(namm)
        self.namm = namm if isinstance(namm, NAMM) else NAMM(namm)
        if parameters is not None:
            self.namm.set_parameters(parameters)
        self.observer = observer
        self.row_parameters: torch.Tensor | None = None
        self.states: dict[int, SpectrogramState] = {}
        self.batch_size: int | None = None

    @property
    def param_count(self) -> int:
        return self.namm.param_count

    @property
    def update_query_multiple(self) -> int:
        """The spectrogram needs whole frames: every update must bring a multiple of `hop` queries."""
        return self.namm.config.hop

    def reset(self, batch_size: int, num_layers: int, num_kv_heads: int, device: torch.device) -> None:
        self.states = {}
        self.batch_size = batch_size

    def state_bytes(self) -> int:
        tensors = [t for state in self.states.values() for t in (state.ema, state.carry)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def set_row_parameters(self, parameters: torch.Tensor | None) -> None:
        """(B, P): one vector per batch row; (P,): one for all rows; None: the NAMM's own parameters."""
        if parameters is not None:
            self.namm.layout.check(parameters)
        self.row_parameters = parameters

    def select(self, view: LayerView) -> Selection:
        output = self.namm(
            view.chunked_attention(),
            view.positions,
            view.valid,
            state=self._rows_state(view.layer_idx, view.rows),
            rows=view.rows,
            parameters=self.row_parameters,
        )
        self._store_rows(view.layer_idx, view.rows, output.state)
        if self.observer is not None:
            self.observer(view, output)
        return Selection(scores=output.ranked, keep=output.keep)

    def reindex(self, layer_idx: int, rows: torch.Tensor, index: torch.Tensor, valid: torch.Tensor) -> None:
        state = self._rows_state(layer_idx, rows)
        if state is not None:
            self._store_rows(layer_idx, rows, state.gather(index, valid))

    # -- per-row state storage: (B, H, S, .) per layer, in the engine's slot order ----------------
    def _is_whole_batch(self, rows: torch.Tensor) -> bool:
        batch = self.batch_size if self.batch_size is not None else rows.numel()
        return rows.numel() == batch and torch.equal(rows.cpu(), torch.arange(batch))

    def _rows_state(self, layer_idx: int, rows: torch.Tensor) -> SpectrogramState | None:
        state = self.states.get(layer_idx)
        if state is None or self._is_whole_batch(rows):
            return state
        index = rows.to(state.ema.device)
        return SpectrogramState(state.ema[index], state.carry[index])

    def _store_rows(self, layer_idx: int, rows: torch.Tensor, update: SpectrogramState) -> None:
        if self._is_whole_batch(rows):
            self.states[layer_idx] = update
            return
        state = self.states.get(layer_idx)
        if state is None:
            batch = self.batch_size if self.batch_size is not None else int(rows.max()) + 1
            state = SpectrogramState.zeros(batch, update.ema.shape[1], 0, self.namm.config, update.ema.device)
        slots = max(state.slots, update.slots)
        state, update = state.resized(slots), update.resized(slots)
        index = rows.to(state.ema.device)
        state.ema[index] = update.ema
        state.carry[index] = update.carry
        self.states[layer_idx] = state


@dataclass
class NAMMTransformer:
    """A causal LM whose KV cache a NAMM manages: `engine.generate(...)`; `tokenizer` is None for a
    model built from a bare config."""

    engine: MemoryEngine
    tokenizer: PreTrainedTokenizerBase | None

    @property
    def policy(self) -> NAMMPolicy:
        return self.engine.policy  # type: ignore[return-value]


def namm_transformer(
    model: str | ModelConfig | PretrainedConfig | PreTrainedModel = "smollm2-135m",
    namm: NAMM | NAMMConfig | None = None,
    parameters: torch.Tensor | None = None,
    engine_config: EngineConfig | None = None,
) -> NAMMTransformer:
    """One call from a model name (or ModelConfig), a fresh transformers config (random weights) or a
    loaded model to a NAMM-managed transformer. Zero parameters (the default) keep every token."""
    tokenizer = None
    if isinstance(model, (str, ModelConfig)):
        loaded = load_model(model if isinstance(model, ModelConfig) else ModelConfig(name=model))
        model, tokenizer = loaded.model, loaded.tokenizer
    elif isinstance(model, PretrainedConfig):
        model = AutoModelForCausalLM.from_config(model).eval()
    policy = NAMMPolicy(namm, parameters)
    return NAMMTransformer(MemoryEngine(model, policy, engine_config), tokenizer)
