"""Optimisers: `step()` updates every parameter of a model from its gradient."""
from .optimizer import Optimizer
from .sgd import SGD

__all__ = ["Optimizer", "SGD"]
