"""Metrics computed on the backend, returned as 0-d arrays (no device sync)."""
from __future__ import annotations

from array_api_compat import array_namespace


def accuracy(y_hat, y):
    """Fraction of correct predictions, a 0-d array in y_hat's dtype.

    Binary when y_hat is (batch,) or (batch, 1): probabilities thresholded at 0.5.
    Multi-class when y_hat is (batch, n_classes): argmax against integer labels
    (batch,) or (batch, 1), or one-hot targets (batch, n_classes).
    """
    xp = array_namespace(y_hat)
    n = y_hat.shape[0]
    if y_hat.ndim == 1 or (y_hat.ndim == 2 and y_hat.shape[1] == 1):
        pred = xp.reshape(y_hat, (n,)) > 0.5
        truth = None
        if tuple(y.shape) in ((n,), (n, 1)):
            truth = xp.reshape(xp.astype(y, y_hat.dtype), (n,)) > 0.5
    elif y_hat.ndim == 2:
        pred = xp.argmax(y_hat, axis=1)
        if tuple(y.shape) == (n, 1):  # a column of labels, as CrossEntropy takes
            y = xp.reshape(y, (n,))
        truth = y if tuple(y.shape) == (n,) else (
            xp.argmax(y, axis=1) if tuple(y.shape) == tuple(y_hat.shape) else None)
        if truth is not None and truth.dtype != pred.dtype:
            truth = xp.astype(truth, pred.dtype)
    else:
        truth = None
    if truth is None:
        msg = f"accuracy: targets of shape {tuple(y.shape)} do not match predictions {tuple(y_hat.shape)}"
        raise ValueError(msg)
    return xp.mean(xp.astype(pred == truth, y_hat.dtype))
