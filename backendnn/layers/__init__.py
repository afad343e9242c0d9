"""Layers: each a class with forward(x) and backward(grad) -> dL/dx."""
from .activations import LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from .base import Layer, NotReadyError, Param, ShapeError
from .batchnorm import BatchNorm1d
from .dropout import Dropout
from .layernorm import LayerNorm
from .linear import Linear
from .shape import Flatten, Identity

__all__ = [
    "Layer",
    "Param",
    "ShapeError",
    "NotReadyError",
    "Linear",
    "ReLU",
    "LeakyReLU",
    "Sigmoid",
    "Tanh",
    "Softmax",
    "Dropout",
    "BatchNorm1d",
    "LayerNorm",
    "Flatten",
    "Identity",
]
