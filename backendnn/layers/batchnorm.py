"""Batch normalisation over the batch axis."""
from __future__ import annotations

from .._validate import boolean, integer, number
from .base import Layer, ShapeError


class BatchNorm1d(Layer):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta, per feature.

    In training the mean and (biased) variance are those of the batch (and of the
    positions L for 3-d input), and the running statistics move towards them:
    running = (1 - momentum) * running + momentum * batch, with the unbiased
    variance, as `torch.nn.BatchNorm1d`. In eval mode the running statistics are
    used instead.

    Args:
        num_features: C, the feature axis (axis 1) of the input.
        eps: added to the variance. momentum: weight of each new batch, in [0, 1].
        affine: learn gamma and beta (else y is the normalised x).

    Shape: x (batch, C) or (batch, C, L) -> same.
    Attributes: gamma (C,) ones, beta (C,) zeros (when affine); buffers
        running_mean (C,) zeros, running_var (C,) ones.
    After backward: grad_gamma, grad_beta (sums over the batch and positions).
    """

    buffer_names = ("running_mean", "running_var")
    _fresh_input_grad = True  # a new array, not kept

    @property
    def _fresh_output(self):
        """y is a new array with affine; without, it is x_hat, which backward reads."""
        return self.affine

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, *, backend=None, dtype: str = "float32"):
        owner = type(self).__name__
        num_features = integer(owner, "num_features", num_features, minimum=1)
        eps = number(owner, "eps", eps, low=0.0, low_open=True)
        momentum = number(owner, "momentum", momentum, low=0.0, high=1.0)
        affine = boolean(owner, "affine", affine)
        super().__init__(backend=backend, dtype=dtype)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine = affine
        self.param_names = ("gamma", "beta") if self.affine else ()
        self.grad_names = ("grad_gamma", "grad_beta") if self.affine else ()
        self.grad_gamma = self.grad_beta = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """gamma ones, beta zeros; running mean zeros, running variance ones."""
        xp, dt, dev = self.xp, self.backend.dtype(self.dtype), self.backend.device
        c = self.num_features
        self.running_mean = xp.zeros((c,), dtype=dt, device=dev)
        self.running_var = xp.ones((c,), dtype=dt, device=dev)
        self.gamma = xp.ones((c,), dtype=dt, device=dev) if self.affine else None
        self.beta = xp.zeros((c,), dtype=dt, device=dev) if self.affine else None

    def _axes(self, x):
        if x.ndim not in (2, 3) or x.shape[1] != self.num_features:
            msg = (f"expected input (batch, {self.num_features}) or "
                   f"(batch, {self.num_features}, L), got shape {tuple(x.shape)}")
            raise ShapeError(msg)
        return (0,) if x.ndim == 2 else (0, 2)

    def _per_feature(self, v, x):
        """A (C,) vector shaped to broadcast against x (C, 1, ...) over axis 1."""
        if x.ndim == 2:
            return v
        return self.xp.reshape(v, (self.num_features,) + (1,) * (x.ndim - 2))

    def forward(self, x):
        axes = self._axes(x)
        if self.training:
            mean, var, m = self._moments(x, axes)
            if m < 2:
                msg = (f"training needs more than one value per feature, got input of "
                       f"shape {tuple(x.shape)}: use a larger batch, drop_last=True in the "
                       f"DataLoader (for a last batch of one), or eval mode")
                raise ShapeError(msg)
            centred = x - self._per_feature(mean, x)
            self._update_running(mean, var * (m / (m - 1)))
            self._count = m
        else:
            var = self.running_var
            centred = x - self._per_feature(self.running_mean, x)
        inv_std = self._per_feature(1.0 / self.xp.sqrt(var + self.eps), x)
        self.x_hat, self.inv_std = centred * inv_std, inv_std
        self._batch_stats = self.training
        if not self.affine:
            return self.x_hat
        return self.x_hat * self._per_feature(self.gamma, x) + self._per_feature(self.beta, x)

    def _moments(self, x, axes):
        """(mean, biased variance, count) per feature over `axes` of this batch.
        A synchronised BatchNorm overrides this (and `_sums`) to reduce over every
        process's batch."""
        xp = self.xp
        m = 1
        for a in axes:
            m *= x.shape[a]
        mean = xp.mean(x, axis=axes)
        centred = x - self._per_feature(mean, x)
        return mean, xp.mean(centred * centred, axis=axes), m

    def _sums(self, sum_g, sum_g_xhat):
        """The per-feature sums backward needs, over the batch `_moments` used."""
        return sum_g, sum_g_xhat

    def _update_running(self, mean, unbiased_var):
        k = self.momentum
        rm, rv = self.running_mean, self.running_var
        self.running_mean = (1.0 - k) * rm + k * self.xp.astype(mean, rm.dtype, copy=False)
        self.running_var = (1.0 - k) * rv + k * self.xp.astype(unbiased_var, rv.dtype, copy=False)

    def backward(self, grad):
        xp = self.xp
        x_hat = self._need(self.x_hat)
        axes = (0,) + tuple(range(2, grad.ndim))
        sum_g = xp.sum(grad, axis=axes)
        sum_g_xhat = xp.sum(grad * x_hat, axis=axes)
        if self.affine:
            self.grad_gamma, self.grad_beta = sum_g_xhat, sum_g
            scale = self.inv_std * self._per_feature(self.gamma, grad)
        else:
            scale = self.inv_std
        if not self._batch_stats:
            return grad * scale
        sum_g, sum_g_xhat = self._sums(sum_g, sum_g_xhat)
        m = self._count
        mean_g = self._per_feature(sum_g * (1.0 / m), grad)
        mean_g_xhat = self._per_feature(sum_g_xhat * (1.0 / m), grad)
        return scale * (grad - mean_g - x_hat * mean_g_xhat)

    def _clear(self):
        self.x_hat = self.inv_std = None
        self._batch_stats = False
        self._count = None

    def config(self):
        return {"num_features": self.num_features, "eps": self.eps,
                "momentum": self.momentum, "affine": self.affine}

    def state_shapes(self):
        c = (self.num_features,)
        shapes = {"gamma": c, "beta": c} if self.affine else {}
        return {**shapes, "running_mean": c, "running_var": c}

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"


class BatchNorm2d(BatchNorm1d):
    """BatchNorm1d over images: per channel, statistics over the batch and every pixel,
    as `torch.nn.BatchNorm2d`. Same arguments, attributes and running statistics;
    the statistics go through the same `_moments` and `_sums` (a synchronised
    subclass overrides them for both).

    Shape: x (N, C, H, W) -> same.

    Example:
        >>> BatchNorm2d(8)(x).shape   # x (64, 8, 8, 8)
        (64, 8, 8, 8)
    """

    def _axes(self, x):
        if x.ndim != 4 or x.shape[1] != self.num_features:
            msg = (f"{self!r} expected NCHW input (batch, {self.num_features}, H, W), "
                   f"got shape {tuple(x.shape)}")
            raise ShapeError(msg)
        return (0, 2, 3)
