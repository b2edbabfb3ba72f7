"""The model: backbone loading, pooling, task heads, the multi-task model and what of it trains."""

from mtl.model.multitask import MultiTaskModel, build_model
from mtl.model.strategies import apply_strategy

__all__ = ["MultiTaskModel", "apply_strategy", "build_model"]
