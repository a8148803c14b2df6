"""Exponential natural evolution strategies: a full d x d transform A (covariance A^T A), a matrix
exponential every step."""

from __future__ import annotations

from typing import ClassVar

from evotorch.algorithms import XNES

from namm.evolution.searchers.gaussian import GaussianSearcher
from namm.evolution.searchers.registry import register_searcher


@register_searcher
class XNESSearcher(GaussianSearcher):
    name: ClassVar[str] = "xnes"
    algorithm_class = XNES

    def step_size(self) -> float:
        transform = self.sigma()
        return float((transform.T @ transform).diagonal().sqrt().mean())
