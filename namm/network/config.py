"""Every hyper-parameter of a NAMM, as one plain dataclass (mirrored by the Hydra group `conf/namm/`).

A config node from the command line is read with `namm.typed_config.typed_config(NAMMConfig, node, "namm")`
(types checked, the full key named); `from_dict` reads one saved in a file, without omegaconf, so an exported
NAMM loads where Hydra is not installed (the GPU image).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from namm.budget import Budget
from namm.errors import ConfigError

SCORERS = ("bam", "mlp")
SQUASHES = ("tanh", "softsign", "clip")


@dataclass(frozen=True)
class NAMMConfig:
    """Feature extraction, scorer and selection settings. Defaults are the reference's stage-1 values."""

    # attention spectrogram
    n_fft: int = 32
    hop: int = 16
    ema_coeff: float = 0.99  # per token; frames are `hop` tokens apart, so a frame decays by ema_coeff**hop
    normalise: bool = True  # z-score the spectrogram with frozen statistics once they are calibrated
    norm_eps: float = 1e-7  # lower bound of the standard deviation
    # bounded spectrogram features (off: the reference's raw z-scores, golden parity): z -> B * squash(z / B),
    # so one extreme bin (an attention sink at z ~ 40) cannot dominate the score
    feature_bound: float | None = None  # B; None: no transform
    feature_squash: str = "tanh"  # tanh | softsign (z / (1 + |z|)) | clip (clamp to [-1, 1])
    # an extra input after the spectrogram (off: the reference's inputs): each key's cosine dissimilarity to the
    # mean key of its layer and KV head (KeyDiff's rule, needs no query)
    key_novelty: bool = False  # namm/key_novelty.py
    # recency code
    recency_dims: int = 8
    max_freq: float = 50000.0
    start_recency_from: int = 0
    # scorer
    scorer: str = "bam"  # bam | mlp
    hidden: int = 32
    heads: int = 1
    bias: bool = True  # biases of the BAM attention projections (the read-out always has one)
    # selection
    threshold: float = 0.0  # keep a token when its score >= threshold
    keep_newest: bool = True  # the newest token is always kept
    protect_first: int = 0  # the first N positions (the attention sink) are always kept; 0: none (reference)
    budget_ratio: float | None = None  # hard top-k per head (fraction of tokens seen), for matched budgets
    budget_tokens: int | None = None  # hard top-k per head (token count); at most one of the two (`Budget.from_keys`)

    def check_update_interval(self, update_interval: int) -> None:
        """The spectrogram needs whole frames per update: raise ConfigError with the nearest fix."""
        if update_interval % self.hop:
            raise ConfigError(
                f"engine.update_interval={update_interval} is not a multiple of the NAMM's hop ({self.hop}); the "
                f"spectrogram needs whole frames per update. Use e.g. engine.update_interval="
                f"{max(self.hop, update_interval // self.hop * self.hop)}."
            )

    def __post_init__(self) -> None:
        problems = []
        if self.n_fft < 2 or not 0 < self.hop <= self.n_fft:
            problems.append(f"need n_fft >= 2 and 0 < hop <= n_fft (got n_fft={self.n_fft}, hop={self.hop})")
        if not 0.0 < self.ema_coeff < 1.0:
            problems.append(f"ema_coeff must be in (0, 1), got {self.ema_coeff}")
        if not self.norm_eps > 0:
            problems.append(f"norm_eps must be positive, got {self.norm_eps}")
        if self.feature_bound is not None and not (math.isfinite(self.feature_bound) and self.feature_bound > 0):
            problems.append(
                f"feature_bound must be a finite number > 0 or null (no transform), got {self.feature_bound}"
            )
        if self.feature_squash not in SQUASHES:
            problems.append(f"feature_squash must be one of {SQUASHES}, got {self.feature_squash!r}")
        if self.protect_first < 0:
            problems.append(f"protect_first must be >= 0 (0: protect nothing), got {self.protect_first}")
        if self.recency_dims < 0 or self.recency_dims % 2:
            problems.append(f"recency_dims must be an even number >= 0, got {self.recency_dims}")
        if not (self.max_freq > 1 and math.isfinite(self.max_freq)):
            problems.append(f"max_freq must be a finite number > 1, got {self.max_freq}")
        if self.start_recency_from < 0:
            problems.append(f"start_recency_from must be >= 0, got {self.start_recency_from}")
        if self.scorer not in SCORERS:
            problems.append(f"scorer must be one of {SCORERS}, got {self.scorer!r}")
        if self.hidden <= 0 or self.heads <= 0 or self.hidden % self.heads:
            problems.append(
                f"hidden must be a positive multiple of heads (got hidden={self.hidden}, heads={self.heads})"
            )
        if not math.isfinite(self.threshold):
            problems.append(f"threshold must be finite, got {self.threshold}")
        try:
            self.budget  # noqa: B018
        except ValueError as error:
            problems.append(str(error).rstrip("."))
        if problems:
            raise ValueError("NAMMConfig: " + "; ".join(problems) + ".")

    @property
    def bins(self) -> int:
        """Frequency bins of the one-sided spectrogram."""
        return self.n_fft // 2 + 1

    @property
    def carry_over(self) -> int:
        """Attention columns of the previous update prepended to each token's signal."""
        return self.n_fft - self.hop

    @property
    def feature_dim(self) -> int:
        """Per-token scorer input: recency code, spectrogram bins, then the key novelty when enabled."""
        return self.recency_dims + self.bins + int(self.key_novelty)

    @property
    def budget(self) -> Budget | None:
        """The hard top-k budget, or None for the threshold rule."""
        return Budget.from_keys(self.budget_ratio, self.budget_tokens, "namm")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> NAMMConfig:
        """Build from a plain mapping saved in a file (an exported NAMM, a checkpoint's config); unknown keys are
        an error. Kept free of omegaconf: a command-line node goes through `typed_config` instead."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"NAMMConfig: unknown field(s) {unknown}; known fields are {sorted(known)}.")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
