"""Losses: `criterion(y_hat, y)` -> per-sample loss (batch,); `backward()` -> dL/dy_hat."""
from .base import Loss
from .bce import BinaryCrossEntropy
from .cross_entropy import CrossEntropy
from .mse import MeanSquaredError
from .regression import HuberLoss, L1Loss

__all__ = ["Loss", "BinaryCrossEntropy", "MeanSquaredError", "CrossEntropy", "L1Loss",
           "HuberLoss"]
