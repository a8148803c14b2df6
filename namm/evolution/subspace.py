"""The part of the parameter vector the search moves (`evo.evolve`); every other weight stays at the start's value.

Why: a CMA-ES of 8 candidates for a few generations cannot learn in the NAMM's ~4,300 dimensions. When the default
demo searched them all, its centre moved each generation exactly the distance a random walk of that step size
covers, 10% of its norm (results/default-demo/all-parameters). Searching only named weight blocks, such as the
read-out (about 30 weights), keeps the same budget's draws near the start, in a space small enough to steer. The
searcher sees the short vector. Scoring, validation and checkpoints see the full one: the fixed coordinates come
from the start (the distilled or loaded centre).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from namm.errors import ConfigError
from namm.evolution.scorer_protocol import NamesParameterBlocks


@dataclass(frozen=True, eq=False)
class SearchedSubspace:
    """`indices` of a `length`-long vector are searched; the rest are read from `base` (the start)."""

    length: int
    indices: torch.Tensor  # (k,) int64, ascending
    base: torch.Tensor | None = None  # (length,) the full start; set once it is known (after distillation)

    @classmethod
    def everything(cls, length: int) -> SearchedSubspace:
        return cls(length, torch.arange(length))

    @property
    def size(self) -> int:
        return int(self.indices.numel())

    @property
    def is_everything(self) -> bool:
        return self.size == self.length

    def with_base(self, base: torch.Tensor) -> SearchedSubspace:
        if tuple(base.shape) != (self.length,):
            raise ValueError(f"the start has shape {tuple(base.shape)}, expected ({self.length},)")
        return SearchedSubspace(self.length, self.indices, base.detach().clone().float())

    def project(self, full: torch.Tensor) -> torch.Tensor:
        """(..., length) -> (..., k): the searched coordinates."""
        return full[..., self.indices].clone()

    def embed(self, searched: torch.Tensor) -> torch.Tensor:
        """(..., k) -> (..., length): the searched coordinates written over the start."""
        if self.is_everything:
            return searched.clone()
        if self.base is None:
            raise RuntimeError("the subspace's fixed coordinates are not known yet: call with_base(start) first")
        full = self.base.to(searched.dtype).expand(*searched.shape[:-1], self.length).clone()
        full[..., self.indices] = searched
        return full


def searched_subspace(factory: object, cfg: DictConfig, blocks: list[str], length: int) -> SearchedSubspace:
    """The subspace of `evo.evolve=blocks` ([]: everything) for the scorer `factory`; ConfigError for a block it
    lacks or a scorer that does not name its blocks (checked before any model loads)."""
    if not blocks:
        return SearchedSubspace.everything(length)
    if not isinstance(factory, NamesParameterBlocks):
        raise ConfigError(
            f"evo.evolve={list(blocks)} needs a scorer that names its weight blocks (parameter_layout); "
            f"{getattr(factory, '__name__', factory)!r} does not: leave evo.evolve empty to search every parameter"
        )
    layout = factory.parameter_layout(cfg)
    known = [block.name for block in layout.blocks]
    unknown = [name for name in blocks if name not in known]
    repeated = sorted({name for name in blocks if blocks.count(name) > 1})
    if unknown or repeated:
        problem = f"unknown blocks {unknown}" if unknown else f"{repeated} named more than once"
        raise ConfigError(f"evo.evolve={list(blocks)}: {problem}; the scorer's blocks are {known}")
    if layout.size != length:
        raise ValueError(f"the scorer's layout has {layout.size} parameters but its candidates {length}")
    ranges = [torch.arange(b.offset, b.offset + b.size) for b in layout.blocks if b.name in blocks]
    return SearchedSubspace(length, torch.cat(ranges))
