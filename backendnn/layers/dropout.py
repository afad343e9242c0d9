"""Inverted dropout."""
from __future__ import annotations

from .base import Layer


class Dropout(Layer):
    """In training, zero each entry with probability `p` and scale the rest by
    1 / (1 - p), so the expected output is the input; in eval mode, the identity.

    Args:
        p: the probability of zeroing an entry, in [0, 1] (p = 1 outputs zeros).

    Shape: any -> same.
    Masks come from the backend's `device_bernoulli`, whose generator follows
    `backendnn.seed`: NumPy and array-api-strict draw the same masks from the
    seeded host generator; torch and CuPy draw on their device, reproducibly for
    a seed on one backend and device, but not the NumPy masks. Checkpoints save the
    device generator's state, so a resume on the same backend and device is exact.
    `backward` multiplies by the mask of the last forward pass.
    `hold_mask = True` (set by `gradcheck` in train mode) reuses the last mask
    while the input shape stays the same, making the layer deterministic.

    Example:
        >>> Dropout(0.2)(x).shape   # x (64, 30)
        (64, 30)
    """

    def __init__(self, p: float = 0.5, *, backend=None, dtype: str = "float32"):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            msg = f"Dropout: `p` must be a probability in [0, 1], got {p!r}"
            raise ValueError(msg)
        super().__init__(backend=backend, dtype=dtype)
        self.p = float(p)
        self.hold_mask = False

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self.mask, self._identity = None, True
            return x
        mask = self.mask
        if not (self.hold_mask and mask is not None and mask.shape == x.shape
                and mask.dtype == x.dtype):
            p_keep = 1.0 - self.p
            mask = self.backend.device_bernoulli(p_keep, tuple(x.shape), x.dtype)
            if p_keep > 0.0:
                mask = mask * (1.0 / p_keep)
        self.mask, self._identity = mask, False
        return x * mask

    def backward(self, grad):
        if self._identity:
            return grad
        return grad * self._need(self.mask)

    def _clear(self):
        self.mask, self._identity = None, False

    def extra_repr(self):
        return f"p={self.p}"
