"""Layers: each a class with forward(x) and backward(grad) -> dL/dx."""
from .activations import LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from .base import Layer, NotReadyError, Param, ShapeError
from .linear import Linear

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
]
