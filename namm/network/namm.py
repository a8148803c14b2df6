"""The NAMM network: per-token features from attention, a scorer, and the keep decision.

One object holds the config, the (per-row) parameter vectors and the shared normalisation
statistics. It is stateless across calls: the caller passes the previous `SpectrogramState` (in slot
order) and gets the new one back, which lets the engine policy and the standalone cache manager
share the same code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from namm.attention_row_chunks import ChunkedRows
from namm.key_novelty import key_novelty
from namm.network.config import NAMMConfig
from namm.network.keep_rule import keep_mask, newest_positions, ranking_scores
from namm.network.normalisation import FeatureNormaliser, bound_features
from namm.network.parameters import ParameterLayout, parameter_layout
from namm.network.recency import RecencyCode
from namm.network.scorer import token_scores
from namm.network.spectrogram import SpectrogramState, update_spectrogram


@dataclass
class NAMMOutput:
    """One update of one layer. Shapes: R rows, H KV heads, S cache slots, F feature dims."""

    scores: torch.Tensor  # (R, H, S) scorer output (invalid slots: -inf; the newest token not forced)
    ranked: torch.Tensor  # (R, H, S) scores used for ranking: newest +inf, invalid -inf
    keep: torch.Tensor  # (R, H, S) bool: slots the NAMM keeps
    features: torch.Tensor  # (R, H, S, F) scorer input: recency code then (normalised) spectrogram
    state: SpectrogramState  # the new per-token state, in the same slot order as the input


class NAMM:
    """A Neural Attention Memory Model: scores every cached token of a layer from its attention history."""

    def __init__(self, config: NAMMConfig | None = None, parameters: torch.Tensor | None = None) -> None:
        self.config = config or NAMMConfig()
        self.layout: ParameterLayout = parameter_layout(self.config)
        self.normaliser = FeatureNormaliser(self.config.bins, self.config.norm_eps, enabled=self.config.normalise)
        self.recency = RecencyCode(self.config)
        self.parameters = torch.zeros(self.layout.size)
        self._on_device: torch.Tensor | None = None
        if parameters is not None:
            self.set_parameters(parameters)

    @property
    def param_count(self) -> int:
        return self.layout.size

    def set_parameters(self, parameters: torch.Tensor) -> None:
        """A (P,) vector for every row, or (B, P): one vector per batch row. Zeros keep everything."""
        parameters = torch.as_tensor(parameters)
        self.layout.check(parameters)
        self.parameters = parameters.detach().float()
        self._on_device = None

    def row_weights(
        self, rows: torch.Tensor | None, count: int, device: torch.device, parameters: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Weights for `count` rows from `parameters` (default: this NAMM's own): a (P,) vector is shared by
        every row; a (B, P) matrix gives each row its own vector, picked by `rows` (default: all, in order)."""
        if parameters is None:
            if self._on_device is None or self._on_device.device != device:
                self._on_device = self.parameters.to(device)
            theta = self._on_device
        else:
            theta = self.layout.check(parameters).to(device=device, dtype=torch.float32)
            theta = theta[0] if parameters.dim() == 1 else theta
        if theta.dim() == 1:
            theta = theta.expand(count, -1)
        elif rows is not None:
            theta = theta[rows.to(device)]
        elif theta.shape[0] != count:
            raise ValueError(
                f"{theta.shape[0]} per-row parameter vectors for an input of {count} rows; "
                "pass one vector per row or a single (P,) vector."
            )
        return self.layout.unflatten(theta)

    def __call__(
        self,
        attention: torch.Tensor | ChunkedRows,
        positions: torch.Tensor,
        valid: torch.Tensor | None = None,
        state: SpectrogramState | None = None,
        rows: torch.Tensor | None = None,
        parameters: torch.Tensor | None = None,
        keys: torch.Tensor | None = None,
    ) -> NAMMOutput:
        """Score one layer's cache.

        attention: (R, H, n, S) attention of the n queries since the previous update (GQA-averaged),
            zero where a query could not see a slot, as a tensor or in chunks of (row, head) pairs (only one
            chunk is held at a time). The n newest positions are this update's new tokens.
        positions: (R, H, S) int64 absolute token positions; valid: (R, H, S) bool (default: positions >= 0).
        state: the state returned by the previous call, re-gathered to the current slot order (None: fresh).
        rows: the batch rows of the input, to pick per-row parameter vectors (default: all, in order).
        parameters: (P,) or (B, P) vectors to use instead of the NAMM's own (e.g. a population).
        keys: (R, H, S, D) the cached keys; needed only with `key_novelty`.
        """
        config = self.config
        shape = tuple(attention.shape)
        if len(shape) != 4 or positions.shape != (shape[0], shape[1], shape[3]):
            raise ValueError(
                f"expected attention (R, H, n, S) and positions (R, H, S); got {shape} and {tuple(positions.shape)}."
            )
        rows_count, heads, queries, slots = shape
        device = positions.device
        valid = positions >= 0 if valid is None else valid
        newest = newest_positions(positions, valid)  # (R, H, 1)
        new_index = positions - (newest + 1 - queries)
        is_new = valid & (new_index >= 0)
        new_index = new_index.masked_fill(~is_new, -1)

        if state is None:
            state = SpectrogramState.zeros(rows_count, heads, slots, config, device)
        state = state.resized(slots).masked(valid & ~is_new)
        state = update_spectrogram(attention, state, new_index, config)

        self.normaliser.observe(state.ema, valid)
        spectrogram = bound_features(self.normaliser.apply(state.ema), config.feature_bound, config.feature_squash)
        ages = torch.where(valid, newest - positions, -1)
        inputs = [self.recency(ages), spectrogram]
        if config.key_novelty:
            if keys is None:
                raise ValueError("namm.key_novelty needs the cached keys: pass keys=(R, H, S, D) to the NAMM")
            inputs.append(key_novelty(keys, valid)[..., None])
        features = torch.cat(inputs, dim=-1) * valid[..., None]

        weights = self.row_weights(rows, rows_count, device, parameters)
        scores = token_scores(features, positions, valid, weights, config).masked_fill(~valid, float("-inf"))
        ranked = ranking_scores(scores, positions, valid, config)
        keep = keep_mask(ranked, positions, valid, config)
        return NAMMOutput(scores=scores, ranked=ranked, keep=keep, features=features, state=state)

    @contextmanager
    def calibration(self) -> Iterator[None]:
        """Collect normalisation statistics with the all-keep (zero) parameters, then freeze them.

        Inside the block every call merges its spectrogram statistics and keeps every token; on a clean
        exit the statistics are frozen and the previous parameters come back.
        """
        saved = self.parameters
        self.set_parameters(torch.zeros(self.layout.size))
        self.normaliser.start_collection()
        try:
            yield
        except BaseException:
            self.normaliser.load_state_dict({})
            raise
        finally:
            self.set_parameters(saved)
        self.normaliser.freeze()
