"""Layer normalisation over the last axis."""
from __future__ import annotations

from .._validate import boolean, integer, number
from .base import Layer, ShapeError


class LayerNorm(Layer):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta, with the mean and (biased)
    variance of each sample's last axis; the same in training and eval.

    Args:
        normalized_shape: n, the size of the last axis (an int or a 1-tuple).
        eps: added to the variance.
        elementwise_affine: learn gamma and beta (else y is the normalised x).

    Shape: x (batch, ..., n) -> same.
    Attributes: gamma (n,) ones, beta (n,) zeros (when elementwise_affine).
    After backward: grad_gamma, grad_beta (sums over every position but the last axis).
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 *, backend=None, dtype: str = "float32"):
        n = normalized_shape
        if isinstance(n, (tuple, list)) and len(n) == 1:
            n = n[0]
        if isinstance(n, (tuple, list)):
            msg = (f"LayerNorm: `normalized_shape` must be a positive int (the last axis; "
                   f"only one axis is normalised), got {normalized_shape!r}")
            raise ValueError(msg)
        n = integer("LayerNorm", "normalized_shape", n, minimum=1)
        eps = number("LayerNorm", "eps", eps, low=0.0, low_open=True)
        elementwise_affine = boolean("LayerNorm", "elementwise_affine", elementwise_affine)
        super().__init__(backend=backend, dtype=dtype)
        self.normalized_shape, self.eps = n, eps
        self.elementwise_affine = elementwise_affine
        self.param_names = ("gamma", "beta") if self.elementwise_affine else ()
        self.grad_names = ("grad_gamma", "grad_beta") if self.elementwise_affine else ()
        self.grad_gamma = self.grad_beta = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """gamma ones, beta zeros."""
        xp, dt, dev = self.xp, self.backend.dtype(self.dtype), self.backend.device
        n = self.normalized_shape
        self.gamma = xp.ones((n,), dtype=dt, device=dev) if self.elementwise_affine else None
        self.beta = xp.zeros((n,), dtype=dt, device=dev) if self.elementwise_affine else None

    def forward(self, x):
        xp = self.xp
        if x.ndim < 2 or x.shape[-1] != self.normalized_shape:
            msg = f"expected input (batch, ..., {self.normalized_shape}), got shape {tuple(x.shape)}"
            raise ShapeError(msg)
        centred = x - xp.mean(x, axis=-1, keepdims=True)
        var = xp.mean(centred * centred, axis=-1, keepdims=True)
        self.inv_std = 1.0 / xp.sqrt(var + self.eps)
        self.x_hat = centred * self.inv_std
        if not self.elementwise_affine:
            return self.x_hat
        return self.x_hat * self.gamma + self.beta

    def backward(self, grad):
        xp = self.xp
        x_hat = self._need(self.x_hat)
        if self.elementwise_affine:
            axes = tuple(range(grad.ndim - 1))
            self.grad_gamma = xp.sum(grad * x_hat, axis=axes)
            self.grad_beta = xp.sum(grad, axis=axes)
            grad = grad * self.gamma
        mean_g = xp.mean(grad, axis=-1, keepdims=True)
        mean_g_xhat = xp.mean(grad * x_hat, axis=-1, keepdims=True)
        return self.inv_std * (grad - mean_g - x_hat * mean_g_xhat)

    def _clear(self):
        self.x_hat = self.inv_std = None

    def config(self):
        return {"normalized_shape": self.normalized_shape, "eps": self.eps,
                "elementwise_affine": self.elementwise_affine}

    def state_shapes(self):
        n = (self.normalized_shape,)
        return {"gamma": n, "beta": n} if self.elementwise_affine else {}

    def extra_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")
