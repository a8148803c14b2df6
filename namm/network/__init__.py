"""The NAMM network on raw tensors: config, parameter layout, features, scorers, selection."""

from namm.network.config import NAMMConfig
from namm.network.namm import NAMM, NAMMOutput
from namm.network.normalisation import FeatureNormaliser, NormalisationStats
from namm.network.parameters import ParameterLayout, param_count, parameter_layout
from namm.network.spectrogram import SpectrogramState
from namm.network.standalone import CacheUpdate, KVCacheManager

__all__ = [
    "NAMM",
    "CacheUpdate",
    "FeatureNormaliser",
    "KVCacheManager",
    "NAMMConfig",
    "NAMMOutput",
    "NormalisationStats",
    "ParameterLayout",
    "SpectrogramState",
    "param_count",
    "parameter_layout",
]
