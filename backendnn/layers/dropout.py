"""Inverted dropout."""
from __future__ import annotations

from .._validate import number
from .base import Layer, ShapeError


class Dropout(Layer):
    """In training, zero each entry with probability `p` and scale the rest by
    1 / (1 - p), so the expected output is the input; in eval mode, the identity.

    Args:
        p: the probability of zeroing an entry, in [0, 1] (p = 1 outputs zeros).

    Shape: any -> same.
    Masks come from the backend's `device_bernoulli`: a Philox-4x32-10 stream keyed
    on `backendnn.seed`, computed on the device with a counter kept there, so one
    seed gives the same masks on every backend and device, a captured step
    (`Trainer(capture=True)`) draws new ones each replay, and checkpoints resume
    them anywhere (the stream's state is its seed and counter). P(keep) is 1 - p to
    2^-16 (16-bit draws); the scale is 1 / (1 - p) exactly.
    `backward` multiplies by the mask of the last forward pass.
    `hold_mask = True` (set by `gradcheck` in train mode) reuses the last mask
    while the input shape stays the same, making the layer deterministic.

    Example:
        >>> Dropout(0.2)(x).shape   # x (64, 30)
        (64, 30)
    """

    hold_mask = False

    def __init__(self, p: float = 0.5, *, backend=None, dtype: str = "float32"):
        p = number(type(self).__name__, "p", p, low=0.0, high=1.0)
        super().__init__(backend=backend, dtype=dtype)
        self.p = p

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
        if not self.hold_mask:  # a held mask outlives the pass
            self.mask = None
        self._identity = False

    def config(self):
        return {"p": self.p}

    def extra_repr(self):
        return f"p={self.p}"


class Dropout2d(Dropout):
    """Channel dropout: in training, zero whole channels (each (n, c) feature map)
    with probability `p` and scale the rest by 1 / (1 - p), as `torch.nn.Dropout2d`;
    in eval mode, the identity. Masks as Dropout's, one value per (n, c).

    Shape: x (N, C, H, W) -> same.

    Example:
        >>> Dropout2d(0.1)(x).shape   # x (64, 8, 8, 8)
        (64, 8, 8, 8)
    """

    def forward(self, x):
        if x.ndim != 4:
            msg = f"{self!r} expected NCHW input (batch, C, H, W), got shape {tuple(x.shape)}"
            raise ShapeError(msg)
        if not self.training or self.p == 0.0:
            self.mask, self._identity = None, True
            return x
        shape = (x.shape[0], x.shape[1], 1, 1)
        mask = self.mask
        if not (self.hold_mask and mask is not None and tuple(mask.shape) == shape
                and mask.dtype == x.dtype):
            p_keep = 1.0 - self.p
            mask = self.backend.device_bernoulli(p_keep, shape, x.dtype)
            if p_keep > 0.0:
                mask = mask * (1.0 / p_keep)
        self.mask, self._identity = mask, False
        return x * mask
