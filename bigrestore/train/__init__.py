"""Training on paired OME-Zarr stores: lazy patch pairs, the paper's recipe, a regression baseline.

Public API: :func:`train` (``bigrestore train``), :class:`TrainConfig` and :func:`load_config`.
"""

from bigrestore.train.config import TrainConfig, load_config
from bigrestore.train.trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "load_config", "train"]
