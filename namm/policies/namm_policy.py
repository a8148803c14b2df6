"""The NAMM as an engine memory policy: per-(layer, row) spectrogram state, per-row parameter vectors.

The engine hands each update's GQA-averaged attention rows (chunk by chunk); the NAMM scores every slot and returns
its keep decision. The engine applies its eviction mode (`per_head` or the reference's
`per_layer_max`) and compaction, then calls `reindex` so the state follows the surviving tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import InitVar, dataclass, field
from typing import Any, ClassVar

import torch

from namm.network.config import NAMMConfig
from namm.network.namm import NAMM, NAMMOutput
from namm.network.spectrogram import SpectrogramState
from namm.policies.base import LayerView, MemoryPolicy, Selection
from namm.policies.registry import register_policy

Observer = Callable[[LayerView, NAMMOutput], None]


@register_policy
@dataclass(eq=False)
class NAMMPolicy(MemoryPolicy):
    """Keeps a token when the NAMM scores it >= threshold (or in its top-k budget); newest always kept."""

    needs_attention: ClassVar[bool] = True
    name: ClassVar[str] = "namm"

    #: a built NAMM, its config, or the config as a plain mapping (default: the reference BAM); a NAMM after init
    namm: NAMM | NAMMConfig | dict[str, Any] | None = None
    #: the NAMM's parameter vector, handed to it (default: the NAMM's own, zeros for a fresh one: keep everything)
    parameters: InitVar[torch.Tensor | None] = None
    #: `observer(view, output)` is called after every layer update (statistics, parity checks)
    observer: Observer | None = None
    row_parameters: torch.Tensor | None = field(init=False, default=None, repr=False)
    states: dict[int, SpectrogramState] = field(init=False, default_factory=dict, repr=False)
    batch_size: int | None = field(init=False, default=None)

    def __post_init__(self, parameters: torch.Tensor | None) -> None:
        namm = NAMMConfig.from_dict(self.namm) if isinstance(self.namm, dict) else self.namm
        self.namm = namm if isinstance(namm, NAMM) else NAMM(namm)
        if parameters is not None:
            self.namm.set_parameters(parameters)

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
            keys=view.keys if self.namm.config.key_novelty else None,
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
