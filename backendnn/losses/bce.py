"""Binary cross-entropy on probabilities."""
from __future__ import annotations

from .base import Loss, outputs_per_sample


class BinaryCrossEntropy(Loss):
    """-[y ln p + (1 - y) ln(1 - p)] on probabilities p, mean over outputs per sample.

    p is clipped to [eps, 1 - eps] with eps = max(1e-8, machine epsilon of the dtype):
    in float32 1 - 1e-8 rounds to exactly 1, so the seed's 1e-8 would give ln(0).

    Shape: y_hat (batch,) or (batch, k) probabilities; y the same shape, or (batch,)
    against (batch, 1). Returns (batch,).
    Gradient (of the batch mean): (p - y) / (p (1 - p)) / (k · batch).
    """

    def forward(self, y_hat, y):
        xp = self.xp
        y = self._targets(y_hat, y)
        eps = max(1e-8, float(xp.finfo(y_hat.dtype).eps))
        p = xp.clip(y_hat, eps, 1.0 - eps)
        self.p, self.y = p, y
        loss = -(y * xp.log(p) + (1.0 - y) * xp.log(1.0 - p))
        return _per_sample(xp, loss)

    def backward(self):
        p, y = self._need(self.p), self.y
        return (p - y) / (p * (1.0 - p) * (outputs_per_sample(p.shape) * p.shape[0]))

    def _clear(self):
        self.p = self.y = None


def _per_sample(xp, loss):
    if loss.ndim == 1:
        return loss
    return xp.mean(xp.reshape(loss, (loss.shape[0], -1)), axis=1)
