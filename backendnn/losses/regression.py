"""Regression losses beside MSE: L1 (mean absolute error) and Huber."""
from __future__ import annotations

from .._validate import number
from .base import Loss, mean_scale
from .bce import _per_sample


class L1Loss(Loss):
    """|y_hat - y|, mean over outputs per sample; its batch mean is
    `torch.nn.functional.l1_loss(y_hat, y)`.

    Shape: y_hat (batch,) or (batch, k); y the same, or (batch,) against (batch, 1).
    Returns (batch,). Gradient (of the batch mean): sign(y_hat - y) / (k · batch)
    (0 where they are equal, as torch).
    """

    def forward(self, y_hat, y):
        y = self._targets(y_hat, y)
        self.diff = y_hat - y
        return _per_sample(self.xp, self.xp.abs(self.diff))

    def backward(self):
        diff = self._need(self.diff)
        return self.xp.sign(diff) * mean_scale(diff.shape)

    def _clear(self):
        self.diff = None


class HuberLoss(Loss):
    """0.5 d² where |d| < delta, else delta (|d| - 0.5 delta), d = y_hat - y, mean over
    outputs per sample; its batch mean is `torch.nn.functional.huber_loss(y_hat, y,
    delta=delta)`. Quadratic near the target, linear for outliers.

    Args:
        delta: where the loss turns from quadratic to linear (> 0).

    Shape: y_hat (batch,) or (batch, k); y the same, or (batch,) against (batch, 1).
    Returns (batch,). Gradient (of the batch mean): clip(d, -delta, delta) / (k · batch).
    """

    def __init__(self, delta: float = 1.0, *, backend=None):
        self.delta = number("HuberLoss", "delta", delta, low=0.0, low_open=True)
        super().__init__(backend=backend)

    def forward(self, y_hat, y):
        xp = self.xp
        y = self._targets(y_hat, y)
        d = y_hat - y
        a = xp.abs(d)
        delta = self.delta
        self.diff = d
        loss = xp.where(a < delta, 0.5 * d * d, delta * (a - 0.5 * delta))
        return _per_sample(xp, loss)

    def backward(self):
        d = self._need(self.diff)
        return self.xp.clip(d, -self.delta, self.delta) * mean_scale(d.shape)

    def _clear(self):
        self.diff = None

    def config(self):
        return {"delta": self.delta}

    def __repr__(self):
        return f"HuberLoss(delta={self.delta:g})"
