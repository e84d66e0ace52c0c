"""Depth Anything 3, written for da3-splat and weight-compatible with the official checkpoints."""

from da3_splat.model.config import CONFIGS, OFFICIAL_MODELS, DA3Config, get_config, register_config
from da3_splat.model.da3 import DA3
from da3_splat.model.weights import WeightsError

__all__ = ["DA3", "DA3Config", "CONFIGS", "OFFICIAL_MODELS", "get_config", "register_config", "WeightsError"]
