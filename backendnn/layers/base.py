"""The `Layer` base class and `Param`, the handle optimisers update through."""
from __future__ import annotations

import math

from ..backends import get_backend


class ShapeError(ValueError):
    """An input whose shape a layer cannot take; `Sequential` adds the layer's index."""


class NotReadyError(RuntimeError):
    """`backward()` called before the forward pass it needs."""


class Param:
    """One trainable array of a layer, with its gradient, seen by optimisers.

    `value` reads and writes the layer's attribute (so `layer.weights` stays the
    array users see); `grad` is the gradient `backward` left, or None.
    """

    __slots__ = ("layer", "name", "grad_name")

    def __init__(self, layer, name: str, grad_name: str):
        self.layer, self.name, self.grad_name = layer, name, grad_name

    @property
    def value(self):
        return getattr(self.layer, self.name)

    @value.setter
    def value(self, array):
        setattr(self.layer, self.name, array)

    @property
    def grad(self):
        return getattr(self.layer, self.grad_name, None)

    @property
    def shape(self) -> tuple:
        return tuple(self.value.shape)

    @property
    def size(self) -> int:
        return math.prod(self.value.shape)

    def __repr__(self):
        return f"Param({type(self.layer).__name__}.{self.name}, shape={self.shape})"


class Layer:
    """Base class: `forward(x)` keeps what `backward(grad)` needs; `backward` returns dL/dx.

    Subclasses list their trainable attributes in `param_names` with the matching
    gradient attributes in `grad_names`, and other arrays that move with the model
    (running statistics) in `buffer_names`. Layers take `xp`, device and dtype from
    their backend and never import an array library.
    """

    param_names: tuple[str, ...] = ()
    grad_names: tuple[str, ...] = ()
    buffer_names: tuple[str, ...] = ()

    def __init__(self, *, backend=None, dtype: str = "float32"):
        self.backend = get_backend(backend)
        self.dtype = _dtype_name(dtype)
        self.training = True
        self._clear()

    @property
    def xp(self):
        """The backend's Array API namespace."""
        return self.backend.xp

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, grad):
        raise NotImplementedError

    def parameters(self) -> list[Param]:
        """This layer's trainable arrays, in a fixed order."""
        return [Param(self, n, g) for n, g in zip(self.param_names, self.grad_names)]

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def eval(self):
        return self.train(False)

    def to(self, backend, dtype: str | None = None):
        """Move parameters and buffers to `backend` (and `dtype`); drops forward caches.

        Arrays moved to another backend are copies: a zero-copy DLPack move would let
        the in-place optimiser steps here write into the arrays left behind."""
        backend = get_backend(backend)
        dtype = self.dtype if dtype is None else _dtype_name(dtype)
        copy = backend is not self.backend
        for name in self.param_names + self.buffer_names:
            value = getattr(self, name, None)
            if value is not None:
                value = backend.asarray(value, dtype=dtype)
                setattr(self, name, backend.xp.asarray(value, copy=True) if copy else value)
        for name in self.grad_names:
            setattr(self, name, None)
        self.backend, self.dtype = backend, dtype
        self._clear()
        return self

    def _clear(self) -> None:
        """Forget what the last forward pass kept."""

    def _need(self, value, what: str = "forward"):
        if value is None:
            msg = f"{type(self).__name__}.backward() called before {what}(): run a forward pass first"
            raise NotReadyError(msg)
        return value

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


def _dtype_name(dtype) -> str:
    name = dtype if isinstance(dtype, str) else str(dtype).rsplit(".", 1)[-1]
    if name not in ("float16", "float32", "float64", "bfloat16"):
        msg = f"`dtype` must be a floating dtype name such as 'float32', got {dtype!r}"
        raise TypeError(msg)
    return name
