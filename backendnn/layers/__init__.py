"""Layers: each a class with forward(x) and backward(grad) -> dL/dx."""
from .activations import LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from .base import Layer, NotReadyError, Param, ShapeError
from .batchnorm import BatchNorm1d, BatchNorm2d
from .conv import Conv2d
from .dropout import Dropout, Dropout2d
from .layernorm import LayerNorm
from .linear import Linear
from .pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
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
    "Conv2d",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "BatchNorm2d",
    "Dropout2d",
]
