"""Layers that only move values: Flatten and Identity."""
from __future__ import annotations

import math

from .._validate import integer
from .base import Layer, ShapeError


class Flatten(Layer):
    """Merge axes start_dim..end_dim into one; backward reshapes the gradient back.

    Args:
        start_dim, end_dim: the first and last axis merged (negative counts from
            the end), as `torch.nn.Flatten`.

    Shape: x (batch, 8, 8) -> (batch, 64) with the defaults; NCHW images (N, C, H, W)
        -> (N, C·H·W) in C order (channel, then row, then column), as torch, so a
        Linear after it takes torch's weights unchanged.
    """

    def __init__(self, start_dim: int = 1, end_dim: int = -1, *, backend=None,
                 dtype: str = "float32"):
        start_dim = integer("Flatten", "start_dim", start_dim)
        end_dim = integer("Flatten", "end_dim", end_dim)
        super().__init__(backend=backend, dtype=dtype)
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        shape = tuple(x.shape)
        start = self.start_dim + len(shape) if self.start_dim < 0 else self.start_dim
        end = self.end_dim + len(shape) if self.end_dim < 0 else self.end_dim
        if not 0 <= start <= end < len(shape):
            msg = (f"cannot flatten axes {self.start_dim}..{self.end_dim} of an input of "
                   f"shape {shape}")
            raise ShapeError(msg)
        self.in_shape = shape
        merged = math.prod(shape[start:end + 1])
        return self.xp.reshape(x, shape[:start] + (merged,) + shape[end + 1:])

    def backward(self, grad):
        return self.xp.reshape(grad, self._need(self.in_shape))

    def _clear(self):
        self.in_shape = None

    def config(self):
        return {"start_dim": self.start_dim, "end_dim": self.end_dim}

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Identity(Layer):
    """Returns its input, and the gradient unchanged (a placeholder in a layer list).

    Shape: any -> same.
    """

    def forward(self, x):
        return x

    def backward(self, grad):
        return grad
