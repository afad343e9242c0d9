"""The `Loss` base class: per-sample losses and their gradients."""
from __future__ import annotations

import math

from ..backends import describe, get_backend
from ..layers.base import NotReadyError


class Loss:
    """`loss(y_hat, y)` returns the per-sample loss, shape (batch,); `backward()`
    returns the gradient of the batch-mean loss with respect to y_hat (shape of
    y_hat): each sample's gradient divided by the batch size, as `torch.nn` losses
    with reduction="mean". This is the one place the 1/batch lives: layers sum.
    """

    def __init__(self, *, backend=None):
        self.backend = get_backend(backend)
        self._clear()

    @property
    def xp(self):
        """The backend's Array API namespace."""
        return self.backend.xp

    def __call__(self, y_hat, y):
        return self.forward(y_hat, y)

    def forward(self, y_hat, y):
        raise NotImplementedError

    def backward(self):
        raise NotImplementedError

    def to(self, backend):
        self.backend = get_backend(backend)
        self._clear()
        return self

    def _clear(self) -> None:
        """Forget what the last forward pass kept."""

    def config(self) -> dict:
        """The constructor arguments that rebuild this loss, JSON-able."""
        return {}

    def _need(self, value):
        if value is None:
            msg = f"{type(self).__name__}.backward() called before the loss was computed: call criterion(y_hat, y) first"
            raise NotReadyError(msg)
        return value

    def _targets(self, y_hat, y):
        """`y` on y_hat's backend, dtype and shape; (batch,) against (batch, 1) is
        reshaped, any other mismatch raises instead of broadcasting to (batch, batch)."""
        y = _same_backend(self.backend, y, "targets `y`")
        shape, yshape = tuple(y_hat.shape), tuple(y.shape)
        if yshape != shape:
            if len(shape) == 2 and shape[1] == 1 and yshape == (shape[0],):
                y = self.xp.reshape(y, shape)
            else:
                msg = (
                    f"{type(self).__name__}: targets of shape {yshape} do not match "
                    f"predictions of shape {shape}; give y the shape of y_hat"
                )
                raise ValueError(msg)
        if y.dtype != y_hat.dtype:
            y = self.xp.astype(y, y_hat.dtype)
        return y

    def __repr__(self):
        return f"{type(self).__name__}()"


def _same_backend(backend, x, what: str):
    if backend.owns(x):
        return x
    if isinstance(x, (list, tuple, int, float)):
        return backend.asarray(x)
    msg = (
        f"{what} is {describe(x)}, but the model computes on "
        f"backend {backend.name!r}: move the data with "
        f"backendnn.backends.get({backend.name!r}).asarray(...), or the model with model.to(...)"
    )
    raise TypeError(msg)


def mean_scale(shape) -> float:
    """1 / the number of values averaged: outputs per sample times the batch, the
    factor that turns each value's derivative into that of the batch-mean loss."""
    return 1.0 / max(math.prod(shape), 1)
