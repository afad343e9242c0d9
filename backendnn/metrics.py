"""Metrics computed on the backend, returned as 0-d arrays (no device sync): accuracy,
top_k_accuracy, macro precision / recall / f1, binary roc_auc, and mae, rmse, r2."""
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


# --- beside accuracy: each f(y_hat, y) -> 0-d array on y_hat's backend, no sync ----------

def top_k_accuracy(y_hat, y, k: int = 5):
    """Fraction of samples whose label is among the k largest scores (ties counted in
    the label's favour), as sklearn's `top_k_accuracy_score`.

    Shape: y_hat (batch, n_classes) scores; y (batch,) or (batch, 1) integer labels,
    or one-hot (batch, n_classes). `functools.partial(top_k_accuracy, k=3)` keeps the
    name "top_k_accuracy" in the History.
    """
    from ._validate import integer

    k = integer("top_k_accuracy", "k", k, minimum=1)
    xp = array_namespace(y_hat)
    n = y_hat.shape[0]
    if y_hat.ndim != 2:
        msg = f"top_k_accuracy: expected scores (batch, n_classes), got shape {tuple(y_hat.shape)}"
        raise ValueError(msg)
    truth = _labels("top_k_accuracy", xp, y_hat, y)
    classes = xp.arange(y_hat.shape[1], dtype=truth.dtype, device=_device(y_hat))
    one_hot = xp.astype(truth[:, None] == classes, y_hat.dtype)
    own = xp.sum(y_hat * one_hot, axis=1, keepdims=True)
    above = xp.sum(xp.astype(y_hat > own, y_hat.dtype), axis=1)
    return xp.mean(xp.astype(above < k, y_hat.dtype)) if n else xp.asarray(float("nan"))


def _confusion(owner, y_hat, y):
    """(xp, tp, predicted, actual) per class, each (n_classes,) in y_hat's dtype."""
    xp = array_namespace(y_hat)
    n = y_hat.shape[0]
    if y_hat.ndim == 1 or (y_hat.ndim == 2 and y_hat.shape[1] == 1):
        pred = xp.astype(xp.reshape(y_hat, (n,)) > 0.5, xp.int64)
        truth = xp.astype(xp.reshape(xp.astype(y, y_hat.dtype), (n,)) > 0.5, xp.int64)
        n_classes = 2
    elif y_hat.ndim == 2:
        pred = xp.astype(xp.argmax(y_hat, axis=1), xp.int64)
        truth = xp.astype(_labels(owner, xp, y_hat, y), xp.int64)
        n_classes = y_hat.shape[1]
    else:
        msg = f"{owner}: expected predictions (batch,) or (batch, n_classes), got {tuple(y_hat.shape)}"
        raise ValueError(msg)
    classes = xp.arange(n_classes, dtype=xp.int64, device=_device(y_hat))
    p1 = xp.astype(pred[:, None] == classes, y_hat.dtype)
    t1 = xp.astype(truth[:, None] == classes, y_hat.dtype)
    return xp, xp.sum(p1 * t1, axis=0), xp.sum(p1, axis=0), xp.sum(t1, axis=0)


def _macro(xp, per_class, present):
    """The mean of `per_class` over the classes present in the labels or predictions
    (sklearn's macro average over its unique labels)."""
    return xp.sum(per_class * present) / xp.maximum(xp.sum(present), xp.ones_like(xp.sum(present)))


def _ratio(xp, a, b):
    """a / b, 0 where b is 0 (sklearn's zero_division=0)."""
    safe = xp.where(b > 0, b, xp.ones_like(b))
    return xp.where(b > 0, a / safe, xp.zeros_like(a))


def precision(y_hat, y):
    """Macro-averaged precision: per class tp / predicted, averaged over the classes
    present in y or the predictions, as sklearn's `precision_score(average="macro")`.

    Binary when y_hat is (batch,) or (batch, 1) (probabilities thresholded at 0.5, both
    classes averaged); else argmax of (batch, n_classes) against labels or one-hot."""
    xp, tp, pred, actual = _confusion("precision", y_hat, y)
    return _macro(xp, _ratio(xp, tp, pred), xp.astype((pred + actual) > 0, tp.dtype))


def recall(y_hat, y):
    """Macro-averaged recall (tp / actual per class), as sklearn's
    `recall_score(average="macro")`; shapes as `precision`."""
    xp, tp, pred, actual = _confusion("recall", y_hat, y)
    return _macro(xp, _ratio(xp, tp, actual), xp.astype((pred + actual) > 0, tp.dtype))


def f1(y_hat, y):
    """Macro-averaged F1 (per class 2 tp / (predicted + actual), then the mean), as
    sklearn's `f1_score(average="macro")`; shapes as `precision`."""
    xp, tp, pred, actual = _confusion("f1", y_hat, y)
    return _macro(xp, _ratio(xp, 2 * tp, pred + actual), xp.astype((pred + actual) > 0, tp.dtype))


def roc_auc(y_hat, y):
    """Area under the ROC curve of a binary classifier: the probability that a positive
    sample scores above a negative one, ties counting half, as sklearn's
    `roc_auc_score`. NaN when y holds only one class.

    Shape: y_hat (batch,) or (batch, 1) scores (probabilities or logits), or
    (batch, 2) (the second column scores the positive class); y 0/1 of (batch,) or
    (batch, 1). Exact over what it is given: the Trainer computes it once over the
    whole validation set, not per batch."""
    xp = array_namespace(y_hat)
    n = y_hat.shape[0]
    if y_hat.ndim == 2 and y_hat.shape[1] == 2:
        y_hat = xp.asarray(y_hat[:, 1], copy=True)  # contiguous, for searchsorted
    if not (y_hat.ndim == 1 or (y_hat.ndim == 2 and y_hat.shape[1] == 1)):
        msg = f"roc_auc: expected binary scores (batch,), (batch, 1) or (batch, 2), got {tuple(y_hat.shape)}"
        raise ValueError(msg)
    s = xp.reshape(y_hat, (n,))
    pos = xp.reshape(xp.astype(xp.astype(y, s.dtype) > 0.5, s.dtype), (n,))
    inf = xp.full_like(s, float("inf"))
    negatives = xp.sort(xp.where(pos > 0, inf, s))  # the negatives' scores, then +inf
    below = xp.astype(xp.searchsorted(negatives, s, side="left"), s.dtype)
    upto = xp.astype(xp.searchsorted(negatives, s, side="right"), s.dtype)
    n_pos = xp.sum(pos)
    n_neg = n - n_pos
    below, upto = xp.minimum(below, n_neg), xp.minimum(upto, n_neg)  # a score of +inf
    wins = xp.sum(pos * (below + 0.5 * (upto - below)))
    pairs = n_pos * n_neg
    return xp.where(pairs > 0, wins / xp.where(pairs > 0, pairs, xp.ones_like(pairs)),
                    xp.full_like(pairs, float("nan")))


def mae(y_hat, y):
    """Mean absolute error, as sklearn's `mean_absolute_error`. Shape: (batch,) or
    (batch, k); y the same, or (batch,) against (batch, 1)."""
    xp, d = _diff("mae", y_hat, y)
    return xp.mean(xp.abs(d))


def rmse(y_hat, y):
    """Root mean squared error, per output then averaged over outputs, as sklearn's
    `root_mean_squared_error`; shapes as `mae`. Batches are combined by the Trainer
    over the whole validation set, not averaged."""
    xp, d = _diff("rmse", y_hat, y)
    d = xp.reshape(d, (d.shape[0], -1))
    return xp.mean(xp.sqrt(xp.mean(d * d, axis=0)))


def r2(y_hat, y):
    """Coefficient of determination 1 - SS_res / SS_tot per output, averaged over
    outputs, as sklearn's `r2_score`; shapes as `mae`."""
    xp, d = _diff("r2", y_hat, y)
    d = xp.reshape(d, (d.shape[0], -1))
    t = xp.reshape(xp.astype(y, y_hat.dtype), (d.shape[0], -1))
    centred = t - xp.mean(t, axis=0, keepdims=True)
    ss_res = xp.sum(d * d, axis=0)
    ss_tot = xp.sum(centred * centred, axis=0)
    safe = xp.where(ss_tot > 0, ss_tot, xp.ones_like(ss_tot))
    score = xp.where(ss_tot > 0, 1.0 - ss_res / safe,
                     xp.where(ss_res > 0, xp.zeros_like(ss_res), xp.ones_like(ss_res)))
    return xp.mean(score)


METRICS = {"accuracy": accuracy, "top_k_accuracy": top_k_accuracy, "precision": precision,
           "recall": recall, "f1": f1, "roc_auc": roc_auc, "mae": mae, "rmse": rmse, "r2": r2}


def metric_name(fn) -> str:
    """The name a metric function has in the History: its `__name__` (that of the
    wrapped function for a functools.partial), else "metric"."""
    name = getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", None)
    return name if isinstance(name, str) and name.isidentifier() and name != "<lambda>" else "metric"


def _diff(owner, y_hat, y):
    xp = array_namespace(y_hat)
    shape, yshape = tuple(y_hat.shape), tuple(y.shape)
    if yshape != shape:
        if len(shape) == 2 and shape[1] == 1 and yshape == (shape[0],):
            y = xp.reshape(y, shape)
        elif len(yshape) == 2 and yshape[1] == 1 and shape == (yshape[0],):
            y = xp.reshape(y, shape)
        else:
            msg = f"{owner}: targets of shape {yshape} do not match predictions {shape}"
            raise ValueError(msg)
    return xp, y_hat - xp.astype(y, y_hat.dtype)


def _labels(owner, xp, y_hat, y):
    """Integer labels (batch,) from labels (batch,), (batch, 1) or one-hot targets."""
    n = y_hat.shape[0]
    if tuple(y.shape) == (n, 1):
        y = xp.reshape(y, (n,))
    if tuple(y.shape) == tuple(y_hat.shape):
        return xp.argmax(y, axis=1)
    if tuple(y.shape) != (n,):
        msg = f"{owner}: targets of shape {tuple(y.shape)} do not match predictions {tuple(y_hat.shape)}"
        raise ValueError(msg)
    return y if xp.isdtype(y.dtype, "integral") else xp.astype(y, xp.int64)


def _device(x):
    return x.device
