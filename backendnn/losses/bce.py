"""Binary cross-entropy, on probabilities or (fused and stable) on logits."""
from __future__ import annotations

import contextlib

from .._validate import boolean
from .base import Loss, mean_scale


class BinaryCrossEntropy(Loss):
    """-[y ln p + (1 - y) ln(1 - p)], mean over outputs per sample; its batch mean is
    `torch.nn.functional.binary_cross_entropy` (or `binary_cross_entropy_with_logits`
    with `from_logits=True`).

    Args:
        from_logits: y_hat are logits z (no Sigmoid layer before the loss): the loss is
            max(z, 0) - z y + log(1 + exp(-|z|)), exact and finite for any z, with
            gradient sigmoid(z) - y. Prefer it to a Sigmoid layer + BCE.
        check_range: refuse targets outside [0, 1] (and, on probabilities, y_hat outside
            [0, 1]) as torch does. It reads one boolean back from the device per call,
            except inside `range_known()` (which the Trainer enters when the Dataset's
            targets lie in [0, 1] and, on probabilities, the last layer is a Sigmoid).

    On probabilities p is clipped to [eps, 1 - eps] with eps = max(1e-8, machine epsilon
    of the dtype): in float32 1 - 1e-8 rounds to exactly 1, so 1e-8 would give ln(0).

    Shape: y_hat (batch,) or (batch, k); y the same shape, or (batch,) against
    (batch, 1). Returns (batch,).
    Gradient (of the batch mean): (p - y) / (p (1 - p)) / (k · batch) on probabilities,
    (sigmoid(z) - y) / (k · batch) on logits.
    """

    def __init__(self, *, from_logits: bool = False, check_range: bool = True, backend=None):
        self.from_logits = boolean("BinaryCrossEntropy", "from_logits", from_logits)
        self.check_range = boolean("BinaryCrossEntropy", "check_range", check_range)
        self._range_known = False
        super().__init__(backend=backend)

    @contextlib.contextmanager
    def range_known(self):
        """A context in which targets (and probabilities) are known to lie in [0, 1]:
        no read-back from the device to check them."""
        previous, self._range_known = self._range_known, True
        try:
            yield self
        finally:
            self._range_known = previous

    def forward(self, y_hat, y):
        xp = self.xp
        y = self._targets(y_hat, y)
        if self.check_range and not self._range_known:
            self._check(y_hat, y)
        if self.from_logits:
            z = y_hat
            e = xp.exp(-xp.abs(z))
            loss = xp.where(z > 0, z, 0.0) - z * y + xp.log1p(e)
            r = 1.0 / (1.0 + e)
            self.sig, self.y = xp.where(z >= 0, r, e * r), y  # sigmoid(z), stable
            return _per_sample(xp, loss)
        eps = max(1e-8, float(xp.finfo(y_hat.dtype).eps))
        p = xp.clip(y_hat, eps, 1.0 - eps)
        self.p, self.y = p, y
        loss = -(y * xp.log(p) + (1.0 - y) * xp.log(1.0 - p))
        return _per_sample(xp, loss)

    def _check(self, y_hat, y) -> None:
        """One read-back: is any target (or probability) outside [0, 1]?"""
        xp = self.xp
        bad_y = xp.any((y < 0) | (y > 1))
        bad_p = xp.zeros((), dtype=xp.bool, device=self.backend.device) if self.from_logits \
            else xp.any((y_hat < 0) | (y_hat > 1))
        flags = self.backend.to_numpy(xp.stack([bad_y, bad_p])).tolist()
        if flags[1]:
            msg = ("BinaryCrossEntropy: predictions must be probabilities in [0, 1], got values "
                   "outside; end the model with a Sigmoid, or pass logits with "
                   "BinaryCrossEntropy(from_logits=True)")
            raise ValueError(msg)
        if flags[0]:
            msg = ("BinaryCrossEntropy: targets must lie in [0, 1] (0/1 labels or "
                   "probabilities), got values outside; for class labels 0..n-1 use CrossEntropy")
            raise ValueError(msg)

    def backward(self):
        if self.from_logits:
            s, y = self._need(self.sig), self.y
            return (s - y) * mean_scale(s.shape)
        p, y = self._need(self.p), self.y
        return (p - y) * mean_scale(p.shape) / (p * (1.0 - p))

    def _clear(self):
        self.p = self.y = self.sig = None

    def config(self):
        return {"from_logits": self.from_logits, "check_range": self.check_range}

    def __repr__(self):
        return "BinaryCrossEntropy(from_logits=True)" if self.from_logits else "BinaryCrossEntropy()"


def _per_sample(xp, loss):
    if loss.ndim == 1:
        return loss
    return xp.mean(xp.reshape(loss, (loss.shape[0], -1)), axis=1)
