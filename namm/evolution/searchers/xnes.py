"""Exponential natural evolution strategies: a full d x d transform A (covariance A^T A), a matrix
exponential every step."""

from __future__ import annotations

from typing import ClassVar

import torch
from evotorch.algorithms import XNES

from namm.evolution.searchers.gaussian import GaussianSearcher
from namm.evolution.searchers.registry import register_searcher


@register_searcher
class XNESSearcher(GaussianSearcher):
    name: ClassVar[str] = "xnes"
    algorithm_class = XNES

    def stdevs(self) -> torch.Tensor:
        """sqrt of the diagonal of the covariance A^T A."""
        transform = self.sigma()
        return (transform.T @ transform).diagonal().sqrt()

    def step_size(self) -> float:
        return float(self.stdevs().mean())
