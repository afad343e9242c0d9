"""Cross-entropy on logits (fused log-softmax): class labels, one-hot or soft targets,
class weights and label smoothing, as `torch.nn.functional.cross_entropy`."""
from __future__ import annotations

import contextlib
import numbers

from .._validate import boolean, number
from .base import Loss, _same_backend


class CrossEntropy(Loss):
    """-sum_c w_c t_c log softmax(logits)_c per sample, t the target distribution (one-hot
    of the label, smoothed by `label_smoothing`); the gradient is that of
    `torch.nn.functional.cross_entropy(logits, y, weight=, label_smoothing=)` with
    reduction="mean".

    Log-softmax is computed as x - max - log(sum(exp(x - max))), exact for logits far
    apart. Plain integer labels take the backend's fused `softmax_cross_entropy`.

    Args:
        weight: a weight per class (a sequence of n_classes non-negative numbers), as
            torch's `weight`; None: every class 1.
        label_smoothing: ε in [0, 1): the target becomes (1 - ε) t + ε / n_classes.
        check_labels: check that integer labels lie in [0, n_classes). It reads two
            numbers back from the device each call, except inside `labels_known` (which
            the Trainer uses for a Dataset's labels) and where the backend's fused
            kernel refuses such labels itself (NumPy with Numba); switch it off only
            for data already checked.

    Shape: y_hat (batch, n_classes) logits; y either integer labels (batch,) or
    (batch, 1), or targets of the logits' shape (batch, n_classes): one-hot or class
    probabilities (soft labels, mixup), integer or float. Returns (batch,), as torch's
    reduction="none".
    Gradient: of the batch mean, (softmax · sum_c a_c - a) / D with a = w ⊙ t; D is the
    batch size, or with `weight` and labels the sum of the labels' weights (torch's
    weighted mean). Without weights the per-sample mean of the losses is torch's mean.
    """

    _known_range = None  # (low, high) set by labels_known

    def __init__(self, *, weight=None, label_smoothing: float = 0.0,
                 check_labels: bool = True, backend=None):
        self.weight = _weights(weight)
        self.label_smoothing = number("CrossEntropy", "label_smoothing", label_smoothing,
                                      low=0.0, high=1.0)
        if self.label_smoothing >= 1.0:
            msg = f"CrossEntropy: `label_smoothing` must be in [0, 1), got {label_smoothing!r}"
            raise ValueError(msg)
        self.check_labels = boolean("CrossEntropy", "check_labels", check_labels)
        self._w = None
        super().__init__(backend=backend)

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
        xp = self.xp
        if y_hat.ndim != 2:
            msg = f"CrossEntropy: expected logits (batch, n_classes), got shape {tuple(y_hat.shape)}"
            raise ValueError(msg)
        y = _same_backend(self.backend, y, "labels `y`")
        n, c = y_hat.shape
        if self.weight is not None and len(self.weight) != c:
            msg = (f"CrossEntropy: `weight` has {len(self.weight)} entries but the logits have "
                   f"{c} classes")
            raise ValueError(msg)
        soft = y.ndim == 2 and tuple(y.shape) == (n, c) and c > 1
        if not soft:
            fused = self.weight is None and not self.label_smoothing
            y = self._labels(y_hat, y, fused)
            if fused:
                try:
                    loss, grad = self.backend.softmax_cross_entropy(y_hat, y)
                except IndexError:  # a kernel that checks labels (checks_labels) found one
                    self._check_range(y_hat, *self._label_bounds(y))
                    raise
                scale = 1.0 / max(n, 1)
                if self.backend.inplace:  # grad is new: scale it without a second array
                    grad *= scale
                else:
                    grad = grad * scale
                self.grad = grad
                return loss
            classes = xp.arange(c, dtype=y.dtype, device=self.backend.device)
            t = one_hot = xp.astype(y[:, None] == classes, y_hat.dtype)
        else:
            t = y if y.dtype == y_hat.dtype else xp.astype(y, y_hat.dtype)
        eps = self.label_smoothing
        if eps:
            t = (1.0 - eps) * t + eps / c
        shifted = y_hat - xp.max(y_hat, axis=1, keepdims=True)
        e = xp.exp(shifted)
        total = xp.sum(e, axis=1, keepdims=True)
        log_p = shifted - xp.log(total)
        a = t if self.weight is None else t * self._weight_array(y_hat.dtype)
        a_sum = xp.sum(a, axis=1, keepdims=True)
        loss = -xp.sum(a * log_p, axis=1)
        if self.weight is not None and not soft:  # torch: divide by the labels' weights
            denom = xp.sum(one_hot * self._weight_array(y_hat.dtype))
        else:
            denom = float(max(n, 1))
        self.grad = ((e / total) * a_sum - a) / denom
        return loss

    def backward(self):
        return self._need(self.grad)

    def _weight_array(self, dtype):
        w = self._w
        if w is None or w.dtype != dtype or not self.backend.owns(w):
            w = self._w = self.backend.asarray(self.weight, dtype=dtype)
        return w

    def _labels(self, y_hat, y, fused=False):
        """y as labels (n,), checked; their range is left to the backend's fused
        kernel (`fused`) where that kernel refuses labels out of range itself."""
        xp = self.xp
        if y.ndim == 2 and y.shape[1] == 1:
            y = xp.reshape(y, (y.shape[0],))
        if tuple(y.shape) != (y_hat.shape[0],):
            msg = (
                f"CrossEntropy: targets of shape {tuple(y.shape)} do not fit logits "
                f"{tuple(y_hat.shape)}; give integer labels of shape ({y_hat.shape[0]},) or "
                f"one-hot / class probabilities of shape {tuple(y_hat.shape)}"
            )
            raise ValueError(msg)
        if not xp.isdtype(y.dtype, "integral"):
            msg = (
                f"CrossEntropy: labels of shape ({y_hat.shape[0]},) must be integer class "
                f"indices, got dtype {y.dtype}; convert them (y.astype(int)), or give one-hot "
                f"or class probabilities of shape {tuple(y_hat.shape)}"
            )
            raise TypeError(msg)
        if self.check_labels and y.shape[0]:
            known = self._known_range
            if known is not None:
                self._check_range(y_hat, *known, where="the dataset's labels range")
            elif not (fused and self.backend.checks_labels(y_hat, y)):
                self._check_range(y_hat, *self._label_bounds(y))
        return y

    @staticmethod
    def _check_range(y_hat, lo, hi, where="got values"):
        if lo < 0 or hi >= y_hat.shape[1]:
            msg = (
                f"CrossEntropy: labels must lie in [0, {y_hat.shape[1]}) for "
                f"{y_hat.shape[1]} classes (the model's outputs), {where} from {lo} to "
                f"{hi}: number the classes 0..n-1 and give the last layer n outputs"
            )
            raise ValueError(msg)

    def _label_bounds(self, y) -> tuple[int, int]:
        """The smallest and largest label, read back from the device (a sync)."""
        xp = self.xp
        return int(xp.min(y)), int(xp.max(y))

    def to(self, backend):
        self._w = None
        return super().to(backend)

    def _clear(self):
        self.grad = None

    def config(self):
        return {"weight": self.weight, "label_smoothing": self.label_smoothing,
                "check_labels": self.check_labels}

    def __repr__(self):
        parts = []
        if self.weight is not None:
            parts.append(f"weight={self.weight}")
        if self.label_smoothing:
            parts.append(f"label_smoothing={self.label_smoothing:g}")
        return f"CrossEntropy({', '.join(parts)})"


def _weights(weight):
    """`weight` as a list of floats (any sequence or 1-d array of numbers), or None."""
    if weight is None:
        return None
    if hasattr(weight, "shape") or hasattr(weight, "__array__"):
        from ..backends import to_host

        weight = to_host(weight).tolist()
    if isinstance(weight, (str, bytes)) or not hasattr(weight, "__iter__"):
        msg = f"CrossEntropy: `weight` must be a sequence of numbers (one per class), got {weight!r}"
        raise TypeError(msg)
    values = list(weight)
    if not values or not all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                             for v in values):
        msg = f"CrossEntropy: `weight` must be a non-empty sequence of numbers, got {weight!r}"
        raise TypeError(msg)
    values = [float(v) for v in values]
    if any(not v >= 0 or v == float("inf") for v in values):
        msg = f"CrossEntropy: every class `weight` must be a finite number >= 0, got {values}"
        raise ValueError(msg)
    return values
