"""Searcher registry: a searcher module registers its class once; `evo.searcher` names it.

Mirrors the policy registry (`namm/policies/registry.py`): the modules of this package are imported on the first
lookup, so a new searcher needs no line anywhere else.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import torch
    from evotorch import Problem

    from namm.evolution.config import EvoConfig
    from namm.evolution.searchers.base import Searcher

_SEARCHERS: dict[str, type[Searcher]] = {}

SearcherClass = TypeVar("SearcherClass", bound="type[Searcher]")


def register_searcher(cls: SearcherClass) -> SearcherClass:
    """Class decorator: make the searcher selectable as `evo.searcher=<cls.name>`."""
    if _SEARCHERS.get(cls.name, cls) is not cls:
        raise ValueError(f"searcher name {cls.name!r} is taken by {_SEARCHERS[cls.name].__qualname__}")
    _SEARCHERS[cls.name] = cls
    return cls


def available_searchers() -> list[str]:
    _import_all()
    return sorted(_SEARCHERS)


def searcher_class(name: str) -> type[Searcher]:
    _import_all()
    if name not in _SEARCHERS:
        raise KeyError(name)
    return _SEARCHERS[name]


def build_searcher(problem: Problem, evo: EvoConfig, centre: torch.Tensor) -> Searcher:
    """The configured searcher, centred at `centre`, with initial step size `evo.sigma`."""
    return searcher_class(evo.searcher).build(problem, evo, centre.float())


def _import_all() -> None:
    """Import every module of this package, so each searcher registers itself."""
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{__package__}.{module.name}")
