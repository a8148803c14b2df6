"""Attention spectrogram features: each cached token's received attention as a signal over queries,
turned into STFT magnitudes and collapsed over frames by an exponential moving average.

Per token the signal is the previous update's last `n_fft - hop` attention values (the carry-over)
followed by the `n` new ones; frames of `n_fft` samples, `hop` apart, are windowed (periodic Hann),
Fourier-transformed (one-sided, as `torch.stft(center=False)`) and reduced to magnitudes. The EMA weighs frame t of T = n / hop by
(1 - a) a^(T-1-t) with a = ema_coeff^hop and decays the previous state by a^T. A token that is new in
this update (index j inside the block) only collects frames t >= floor(j / hop): earlier frames
precede its arrival. Tokens are processed in blocks, and the attention rows arrive in chunks of (row, head)
pairs, so memory stays bounded at long contexts.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from namm.attention_row_chunks import ChunkedRows
from namm.network.config import NAMMConfig

# Token blocks bound the spectrum's memory: cache-sized on CPU (where memory traffic dominates), large
# on accelerators (where each block costs kernel launches).
ELEMENTS_PER_BLOCK = 1 << 19  # CPU: spectrum elements of one token block (2 MiB in float32)
ACCELERATOR_ELEMENTS_PER_BLOCK = 1 << 24  # 64 MiB in float32


@dataclass
class SpectrogramState:
    """Per-token state carried between updates, in slot order: the EMA and the carried-over columns."""

    ema: torch.Tensor  # (R, H, S, bins) float32
    carry: torch.Tensor  # (R, H, S, n_fft - hop) float32: the last attention values each token received

    @classmethod
    def zeros(cls, rows: int, heads: int, slots: int, config: NAMMConfig, device: torch.device) -> SpectrogramState:
        return cls(
            torch.zeros(rows, heads, slots, config.bins, device=device),
            torch.zeros(rows, heads, slots, config.carry_over, device=device),
        )

    @property
    def slots(self) -> int:
        return self.ema.shape[2]

    def resized(self, slots: int) -> SpectrogramState:
        """Zero-padded or truncated along the slot axis (slots past the storage end hold nothing)."""
        if slots == self.slots:
            return self
        if slots < self.slots:
            return SpectrogramState(self.ema[:, :, :slots], self.carry[:, :, :slots])
        pad = slots - self.slots

        def grow(tensor: torch.Tensor) -> torch.Tensor:
            return torch.cat([tensor, tensor.new_zeros(*tensor.shape[:2], pad, tensor.shape[3])], dim=2)

        return SpectrogramState(grow(self.ema), grow(self.carry))

    def masked(self, keep: torch.Tensor) -> SpectrogramState:
        """Zero the state of slots where `keep` (R, H, S) is False."""
        return SpectrogramState(self.ema * keep[..., None], self.carry * keep[..., None])

    def gather(self, index: torch.Tensor, valid: torch.Tensor) -> SpectrogramState:
        """Re-gather along slots with `index` (R, H, K); slots where `valid` is False become zero."""

        def take(tensor: torch.Tensor) -> torch.Tensor:
            picked = tensor.gather(2, index[..., None].expand(-1, -1, -1, tensor.shape[3]))
            return picked * valid[..., None]

        return SpectrogramState(take(self.ema), take(self.carry))


@functools.lru_cache(maxsize=16)
@torch.inference_mode(False)  # cached across calls: a normal tensor works inside and outside inference mode
def dft_basis(config: NAMMConfig, device: torch.device) -> torch.Tensor:
    """(2 * bins, n_fft) float32 rows [w_k cos(2 pi f k / n_fft)] then [-w_k sin(...)], w = periodic Hann.

    One matmul of this basis with the frames gives the windowed one-sided DFT; on CPU it is several
    times faster than an FFT of 32-sample frames followed by a complex magnitude. Cached per config and
    device (every layer of every update uses it; read-only).
    """
    samples = torch.arange(config.n_fft, dtype=torch.float64)
    angles = 2 * math.pi * torch.arange(config.bins, dtype=torch.float64)[:, None] * samples[None, :] / config.n_fft
    window = torch.hann_window(config.n_fft, periodic=True, dtype=torch.float64)
    return (torch.cat([angles.cos(), -angles.sin()], dim=0) * window).float().to(device)


@functools.lru_cache(maxsize=16)
@torch.inference_mode(False)
def ema_frame_weights(config: NAMMConfig, frames: int, device: torch.device) -> tuple[torch.Tensor, float]:
    """(T,) float32 weights (1 - a) a^(T-1-t) and the decay a^T of the previous state (cached, read-only)."""
    per_frame = config.ema_coeff**config.hop
    exponents = torch.arange(frames - 1, -1, -1, dtype=torch.float64)
    weights = (1.0 - per_frame) * per_frame**exponents
    return weights.float().to(device), float(per_frame**frames)


def update_spectrogram(
    attention: torch.Tensor | ChunkedRows, state: SpectrogramState, new_index: torch.Tensor, config: NAMMConfig
) -> SpectrogramState:
    """One update of every token's EMA spectrogram.

    attention: (R, H, n, S) attention of the n new queries (rows) on the S slots (columns), as a tensor or
        in chunks of (row, head) pairs (each chunk's rows are computed when needed and dropped after).
    state: the previous state, already zero for slots that are new or invalid.
    new_index: (R, H, S) int64, j for the j-th new token of this update, -1 for tokens cached before.
    Returns the new state: EMA (R, H, S, bins) and the carry-over for the next update.
    """
    attention = attention if isinstance(attention, ChunkedRows) else ChunkedRows.whole(attention)
    rows, heads, queries, slots = attention.shape
    if queries % config.hop or queries == 0:
        raise ValueError(
            f"the NAMM needs a positive multiple of hop={config.hop} queries per update, got {queries}; "
            "use an update interval that is a multiple of the hop."
        )
    bins, carry_len, device = config.bins, config.carry_over, new_index.device
    # (row, head) pairs are independent: flatten them so a block can take whole pairs when they are short
    pairs = rows * heads
    old = SpectrogramState(state.ema.reshape(pairs, slots, bins), state.carry.reshape(pairs, slots, carry_len))
    first_frame = torch.div(new_index, config.hop, rounding_mode="floor").reshape(pairs, slots)  # old tokens: -1
    new = SpectrogramState(
        torch.empty(pairs, slots, bins, device=device), torch.empty(pairs, slots, carry_len, device=device)
    )
    for chunk, chunk_rows in attention.chunks:
        update_pairs(chunk_rows(), old, first_frame, new, chunk, config)
    return SpectrogramState(new.ema.view(rows, heads, slots, bins), new.carry.view(rows, heads, slots, carry_len))


def update_pairs(
    attention: torch.Tensor,
    old: SpectrogramState,
    first_frame: torch.Tensor,
    new: SpectrogramState,
    chunk: slice,
    config: NAMMConfig,
) -> None:
    """Write the new state of the pairs `chunk` (of the flattened (pairs, S, .) states) from their (P, n, S)
    attention, in blocks of pairs and tokens; a function of its own so the chunk's rows die on return."""
    _, queries, slots = attention.shape
    frames, bins, carry_len = queries // config.hop, config.bins, config.carry_over
    basis = dft_basis(config, attention.device)
    weights, decay = ema_frame_weights(config, frames, attention.device)
    frame_ids = torch.arange(frames, device=attention.device)
    old_ema, old_carry, first_frame = old.ema[chunk], old.carry[chunk], first_frame[chunk]
    ema, carry = new.ema[chunk], new.carry[chunk]  # views: written in place
    pairs = attention.shape[0]
    budget = ELEMENTS_PER_BLOCK if attention.device.type == "cpu" else ACCELERATOR_ELEMENTS_PER_BLOCK
    block = max(1, min(slots, budget // (frames * 2 * bins)))  # tokens per block
    pair_block = max(1, budget // (frames * 2 * bins * block))
    for first in range(0, pairs, pair_block):
        last = min(pairs, first + pair_block)
        for start in range(0, slots, block):
            stop = min(slots, start + block)
            width = stop - start
            signal = torch.cat(
                [old_carry[first:last, start:stop].transpose(1, 2), attention[first:last, :, start:stop].float()],
                dim=1,
            )  # (P, carry + n, b), contiguous: queries along dim 1, tokens along dim 2
            carry[first:last, start:stop] = signal[:, signal.shape[1] - carry_len :].transpose(1, 2)
            frames_view = signal.as_strided(  # (P, T, n_fft, b): frame t = query rows t*hop ... t*hop+n_fft-1
                (last - first, frames, config.n_fft, width), (signal.stride(0), config.hop * width, width, 1)
            )
            spectrum = torch.matmul(basis, frames_view).square_()  # (P, T, 2 * bins, b), in place from here on
            magnitudes = spectrum[:, :, :bins].add_(spectrum[:, :, bins:]).sqrt_()
            mask = frame_ids[:, None] >= first_frame[first:last, None, start:stop]  # (P, T, b)
            collected = magnitudes.mul_((weights[:, None] * mask)[:, :, None, :]).sum(dim=1)  # (P, bins, b)
            ema[first:last, start:stop] = old_ema[first:last, start:stop] * decay + collected.transpose(1, 2)
