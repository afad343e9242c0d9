"""Mean squared error."""
from __future__ import annotations

from .base import Loss, mean_scale
from .bce import _per_sample


class MeanSquaredError(Loss):
    """(y_hat - y)², mean over outputs per sample; its batch mean is
    `torch.nn.functional.mse_loss(y_hat, y)`.

    Shape: y_hat (batch,) or (batch, k); y the same, or (batch,) against (batch, 1).
    Returns (batch,). Gradient (of the batch mean): 2 (y_hat - y) / (k · batch).
    """

    def forward(self, y_hat, y):
        y = self._targets(y_hat, y)
        self.diff = y_hat - y
        return _per_sample(self.xp, self.diff * self.diff)

    def backward(self):
        diff = self._need(self.diff)
        return diff * (2.0 * mean_scale(diff.shape))

    def _clear(self):
        self.diff = None
