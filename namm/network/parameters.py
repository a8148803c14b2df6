"""The flat parameter vector CMA-ES evolves, and its mapping to the scorer's weight matrices.

The layout follows the reference implementation so its vectors load unchanged: weights are stored
input-major (W[i, o] = theta[offset + i * out + o]) and applied as y = x @ W + b.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from namm.network.config import NAMMConfig


@dataclass(frozen=True)
class ParameterBlock:
    """One named weight inside the flat vector."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class ParameterLayout:
    """Ordered blocks of the flat vector; `unflatten` gives per-row weight views, `flatten` the inverse."""

    blocks: tuple[ParameterBlock, ...]

    @classmethod
    def from_shapes(cls, shapes: list[tuple[str, tuple[int, ...]]]) -> ParameterLayout:
        blocks, offset = [], 0
        for name, shape in shapes:
            blocks.append(ParameterBlock(name, shape, offset))
            offset += math.prod(shape)
        return cls(tuple(blocks))

    @property
    def size(self) -> int:
        return sum(block.size for block in self.blocks)

    def check(self, theta: torch.Tensor) -> torch.Tensor:
        """Return theta as (rows, size); raise a clear error for a wrong length or rank."""
        if theta.dim() not in (1, 2) or theta.shape[-1] != self.size:
            raise ValueError(
                f"NAMM parameter vector has shape {tuple(theta.shape)}, expected ({self.size},) or "
                f"(rows, {self.size}) for this config; check that the checkpoint was saved for the same "
                "`namm` config (scorer, hidden, heads, bias, recency_dims, n_fft)."
            )
        if not torch.is_floating_point(theta):
            raise ValueError(f"NAMM parameters must be floating point, got {theta.dtype}.")
        return theta if theta.dim() == 2 else theta[None]

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """(size,) or (rows, size) -> {name: (rows, *shape)} views into theta."""
        rows = self.check(theta)
        return {
            block.name: rows[:, block.offset : block.offset + block.size].reshape(rows.shape[0], *block.shape)
            for block in self.blocks
        }

    def flatten(self, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """{name: (rows, *shape)} -> (rows, size), the inverse of `unflatten`."""
        missing = [block.name for block in self.blocks if block.name not in weights]
        if missing:
            raise ValueError(f"missing NAMM weights {missing}; expected {[b.name for b in self.blocks]}.")
        parts = []
        for block in self.blocks:
            tensor = weights[block.name]
            if tuple(tensor.shape[1:]) != block.shape:
                raise ValueError(f"weight {block.name!r} has shape {tuple(tensor.shape[1:])}, expected {block.shape}.")
            parts.append(tensor.reshape(tensor.shape[0], -1))
        return torch.cat(parts, dim=1)


def parameter_layout(config: NAMMConfig) -> ParameterLayout:
    """The flat layout for a config: BAM (reference order) or the MLP scorer."""
    features, hidden = config.feature_dim, config.hidden
    if config.scorer == "bam":
        shapes: list[tuple[str, tuple[int, ...]]] = [("qkv_weight", (features, 3 * hidden))]
        if config.bias:
            shapes.append(("qkv_bias", (3 * hidden,)))
        shapes.append(("out_weight", (hidden, 2 * features)))
        if config.bias:
            shapes.append(("out_bias", (2 * features,)))
        shapes += [("readout_weight", (features, 1)), ("readout_bias", (1,))]
    else:
        shapes = [
            ("hidden_weight", (features, hidden)),
            ("hidden_bias", (hidden,)),
            ("readout_weight", (hidden, 1)),
            ("readout_bias", (1,)),
        ]
    return ParameterLayout.from_shapes(shapes)


def param_count(config: NAMMConfig) -> int:
    """Length of the flat parameter vector (4,172 for the default BAM)."""
    return parameter_layout(config).size


def keep_all_centre(config: NAMMConfig, margin: float) -> torch.Tensor:
    """The zero vector with the read-out bias at threshold + `margin`: every token scores `margin` above the
    threshold, so nothing is evicted (where `evo.init=keep_all` starts the search)."""
    layout = parameter_layout(config)
    centre = torch.zeros(layout.size)
    (bias,) = [block for block in layout.blocks if block.name == "readout_bias"]
    centre[bias.offset] = config.threshold + margin
    return centre
