"""Cross-entropy on logits with integer class labels (fused log-softmax)."""
from __future__ import annotations

import contextlib

from .base import Loss, _same_backend


class CrossEntropy(Loss):
    """-log softmax(logits)[y] per sample; its batch mean is
    `torch.nn.functional.cross_entropy(logits, y)`.

    Log-softmax is computed as x - max - log(sum(exp(x - max))), exact for logits
    far apart, fused with the loss and its gradient in the backend's
    `softmax_cross_entropy`. Gradient (of the batch mean): (softmax(logits) - one_hot(y)) / batch.

    Args:
        check_labels: check that labels lie in [0, n_classes). It reads two numbers
            back from the device each call, except inside `labels_known` (which the
            Trainer uses for a Dataset's labels); switch it off only for data already
            checked (labels out of range then give undefined losses, or IndexError on
            NumPy).

    Shape: y_hat (batch, n_classes) logits; y (batch,) integer labels. Returns (batch,).
    """

    _known_range = None  # (low, high) set by labels_known

    def __init__(self, *, check_labels: bool = True, backend=None):
        super().__init__(backend=backend)
        self.check_labels = check_labels

    @contextlib.contextmanager
    def labels_known(self, low: int, high: int):
        """A context in which every label is known to lie in [low, high], e.g. the
        host range a `Dataset` read once: each call checks that range against the
        logits' width on the host, with no read-back from the device."""
        previous = self._known_range
        self._known_range = (int(low), int(high))
        try:
            yield self
        finally:
            self._known_range = previous

    def forward(self, y_hat, y):
        y = self._labels(y_hat, y)
        loss, grad = self.backend.softmax_cross_entropy(y_hat, y)
        scale = 1.0 / max(grad.shape[0], 1)
        if self.backend.inplace:  # grad is new: scale it without a second array
            grad *= scale
        else:
            grad = grad * scale
        self.grad = grad
        return loss

    def backward(self):
        return self._need(self.grad)

    def _labels(self, y_hat, y):
        xp = self.xp
        y = _same_backend(self.backend, y, "labels `y`")
        if y_hat.ndim != 2:
            msg = f"CrossEntropy: expected logits (batch, n_classes), got shape {tuple(y_hat.shape)}"
            raise ValueError(msg)
        if y.ndim == 2 and y.shape[1] == 1:
            y = xp.reshape(y, (y.shape[0],))
        if tuple(y.shape) != (y_hat.shape[0],):
            msg = (
                f"CrossEntropy: labels of shape {tuple(y.shape)} do not match logits "
                f"{tuple(y_hat.shape)}; expected integer labels of shape ({y_hat.shape[0]},)"
            )
            raise ValueError(msg)
        if not xp.isdtype(y.dtype, "integral"):
            msg = (
                f"CrossEntropy: labels must be integer class indices, got dtype {y.dtype}; "
                "for one-hot or soft targets use MeanSquaredError, or convert with argmax"
            )
            raise TypeError(msg)
        if self.check_labels and y.shape[0]:
            known = self._known_range
            lo, hi = known if known is not None else self._label_bounds(y)
            if lo < 0 or hi >= y_hat.shape[1]:
                where = "the dataset's labels range" if known is not None else "got values"
                msg = (
                    f"CrossEntropy: labels must lie in [0, {y_hat.shape[1]}) for "
                    f"{y_hat.shape[1]} classes (the model's outputs), {where} from {lo} to "
                    f"{hi}: number the classes 0..n-1 and give the last layer n outputs"
                )
                raise ValueError(msg)
        return y

    def _label_bounds(self, y) -> tuple[int, int]:
        """The smallest and largest label, read back from the device (a sync)."""
        xp = self.xp
        return int(xp.min(y)), int(xp.max(y))

    def _clear(self):
        self.grad = None

    def config(self):
        return {"check_labels": self.check_labels}
