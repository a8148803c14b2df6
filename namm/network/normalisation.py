"""Frozen per-bin z-score statistics of the spectrogram features, shared by every layer and head.

They are collected once, in a calibration pass with the all-keep policy (zero parameters), by merging
each update's batch statistics with the parallel-variance formula, then frozen and saved next to the
parameters. Before any statistics exist the spectrogram passes through unchanged (as in the reference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class NormalisationStats:
    """Running per-bin count, mean and population variance (float64 for a stable merge)."""

    count: torch.Tensor  # () float64
    mean: torch.Tensor  # (bins,) float64
    var: torch.Tensor  # (bins,) float64

    @classmethod
    def of(cls, values: torch.Tensor) -> NormalisationStats:
        """Statistics of (tokens, bins) values."""
        values = values.double()
        count = torch.tensor(float(values.shape[0]), dtype=torch.float64, device=values.device)
        if values.shape[0] == 0:
            zeros = values.new_zeros(values.shape[1])
            return cls(count, zeros, zeros.clone())
        return cls(count, values.mean(dim=0), values.var(dim=0, unbiased=False))

    def merge(self, other: NormalisationStats) -> NormalisationStats:
        """Chan et al.'s parallel combination: equal to the statistics of both samples pooled."""
        other = other.to(self.mean.device)
        total = self.count + other.count
        if float(total) == 0:
            return self
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / total)
        m2 = self.var * self.count + other.var * other.count + delta.square() * (self.count * other.count / total)
        return NormalisationStats(total, mean, m2 / total)

    def to(self, device: torch.device | str) -> NormalisationStats:
        return NormalisationStats(self.count.to(device), self.mean.to(device), self.var.to(device))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"count": self.count.cpu(), "mean": self.mean.cpu(), "var": self.var.cpu()}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> NormalisationStats:
        return cls(
            torch.as_tensor(state["count"], dtype=torch.float64),
            torch.as_tensor(state["mean"], dtype=torch.float64).reshape(-1),
            torch.as_tensor(state["var"], dtype=torch.float64).reshape(-1),
        )


class FeatureNormaliser:
    """Applies frozen statistics; while `collecting`, merges every observed batch into them instead."""

    def __init__(self, bins: int, eps: float, enabled: bool = True) -> None:
        self.bins = bins
        self.eps = eps
        self.enabled = enabled
        self.stats: NormalisationStats | None = None
        self.collecting = False
        self._cached: tuple[torch.device, torch.Tensor, torch.Tensor] | None = None

    @property
    def active(self) -> bool:
        """Whether `apply` changes values (enabled, statistics present, not collecting)."""
        return self.enabled and self.stats is not None and not self.collecting

    def start_collection(self) -> None:
        """Forget any statistics and merge every following `observe` call into new ones."""
        self.stats = None
        self._cached = None
        self.collecting = True

    def freeze(self) -> None:
        """Stop collecting; from now on `apply` uses the statistics gathered so far."""
        if self.collecting and self.stats is None:
            raise RuntimeError("FeatureNormaliser.freeze: no statistics were collected; run a calibration pass first.")
        self.collecting = False
        self._cached = None

    def set_stats(self, mean: torch.Tensor, var: torch.Tensor, count: float = 1.0) -> None:
        """Install known statistics (e.g. from a checkpoint) and freeze them."""
        mean = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
        var = torch.as_tensor(var, dtype=torch.float64).reshape(-1)
        if mean.numel() != self.bins or var.numel() != self.bins:
            raise ValueError(
                f"normalisation statistics need {self.bins} bins, got mean {mean.numel()} / var {var.numel()}."
            )
        self.stats = NormalisationStats(torch.tensor(float(count), dtype=torch.float64), mean, var)
        self.collecting = False
        self._cached = None

    def observe(self, spectrogram: torch.Tensor, valid: torch.Tensor) -> None:
        """Merge the (..., bins) values at `valid` (...) positions when collecting; otherwise do nothing."""
        if not self.collecting:
            return
        batch = NormalisationStats.of(spectrogram[valid].reshape(-1, self.bins))
        self.stats = batch if self.stats is None else self.stats.merge(batch)

    def apply(self, spectrogram: torch.Tensor) -> torch.Tensor:
        """(x - mean) / max(sqrt(var), eps) per bin when active, else x unchanged."""
        if not self.active:
            return spectrogram
        if self._cached is None or self._cached[0] != spectrogram.device:
            mean = self.stats.mean.float().to(spectrogram.device)
            std = self.stats.var.float().sqrt().clamp(min=self.eps).to(spectrogram.device)
            self._cached = (spectrogram.device, mean, std)
        _, mean, std = self._cached
        return (spectrogram - mean) / std

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.stats is None else self.stats.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if not state:
            self.stats = None
        else:
            self.stats = NormalisationStats.from_state_dict(state)
        self.collecting = False
        self._cached = None


def check_statistics(state: dict[str, torch.Tensor], bins: int) -> None:
    """Refuse statistics `FeatureNormaliser.load_state_dict` would apply silently wrong (a NaN mean or a negative
    variance makes every feature NaN): raise ValueError starting with the entry at fault (`var[5] is -1.0; ...`)
    when one is missing, has another number of bins, is not finite, a variance is negative or the count is not
    positive. {} is fine: no statistics."""
    if not state:
        return
    missing = sorted({"count", "mean", "var"} - set(state))
    if missing:
        raise ValueError(f"statistics lack {missing}; they need count, mean and var")
    for name in ("count", "mean", "var"):
        values = torch.as_tensor(state[name], dtype=torch.float64).reshape(-1)
        if name != "count" and values.numel() != bins:
            raise ValueError(f"{name} has {values.numel()} bins, the NAMM config has {bins}")
        for index, value in enumerate(values.tolist()):
            entry = name if name == "count" else f"{name}[{index}]"
            if not math.isfinite(value):
                raise ValueError(f"{entry} is {value}, not a finite number")
            if name == "var" and value < 0:
                raise ValueError(f"{entry} is {value}; a variance cannot be negative")
            if name == "count" and value <= 0:
                raise ValueError(f"count is {value}, must be positive")


def bound_features(values: torch.Tensor, bound: float | None, squash: str) -> torch.Tensor:
    """B * squash(z / B): near z for |z| << B, never beyond B in size, so no single extreme bin (an attention
    sink at z ~ 40) can flip a token's fate; `bound` None returns the values unchanged (the reference)."""
    if bound is None:
        return values
    scaled = values / bound
    if squash == "tanh":
        squashed = torch.tanh(scaled)
    elif squash == "softsign":
        squashed = scaled / (1.0 + scaled.abs())
    elif squash == "clip":
        squashed = scaled.clamp(-1.0, 1.0)
    else:
        raise ValueError(f"unknown feature squash {squash!r}; use tanh, softsign or clip")
    return bound * squashed
