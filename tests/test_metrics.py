"""Metrics against scikit-learn, on every backend: 0-d arrays of the backend, no sync."""
import functools

import numpy as np
import pytest
from conftest import host

from backendnn import metrics

sk = pytest.importorskip("sklearn.metrics")


def value(backend, fn, y_hat, y, **kw):
    out = fn(backend.asarray(y_hat), backend.asarray(y), **kw)
    assert tuple(getattr(out, "shape", ())) == ()  # 0-d (NumPy gives a scalar), not a float
    assert not isinstance(out, float)
    return float(host(backend, out))


@pytest.fixture
def multiclass(rng):
    scores = rng.normal(size=(60, 4)).astype(np.float32)
    labels = rng.integers(0, 4, 60)
    labels[:20] = scores[:20].argmax(axis=1)  # better than chance
    return scores, labels


def test_top_k_accuracy(backend, multiclass):
    scores, labels = multiclass
    for k in (1, 2, 3):
        want = sk.top_k_accuracy_score(labels, scores, k=k, labels=range(4))
        assert value(backend, metrics.top_k_accuracy, scores, labels, k=k) == pytest.approx(want)
    one_hot = np.eye(4, dtype=np.float32)[labels]
    assert value(backend, metrics.top_k_accuracy, scores, one_hot, k=2) == pytest.approx(
        sk.top_k_accuracy_score(labels, scores, k=2))
    name = metrics.metric_name(functools.partial(metrics.top_k_accuracy, k=3))
    assert name == "top_k_accuracy"


@pytest.mark.parametrize("name", ["precision", "recall", "f1"])
def test_macro_scores_multiclass(backend, multiclass, name):
    scores, labels = multiclass
    scores[:, 3] -= 100  # class 3 is never predicted: zero_division gives 0
    ref = getattr(sk, f"{name}_score")(labels, scores.argmax(1), average="macro", zero_division=0)
    assert value(backend, getattr(metrics, name), scores, labels) == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("name", ["precision", "recall", "f1"])
def test_macro_scores_binary_probabilities(backend, rng, name):
    p = rng.uniform(size=(50, 1)).astype(np.float32)
    y = (rng.uniform(size=50) < p[:, 0]).astype(np.int64)
    ref = getattr(sk, f"{name}_score")(y, p[:, 0] > 0.5, average="macro", zero_division=0)
    assert value(backend, getattr(metrics, name), p, y) == pytest.approx(ref, rel=1e-5)


def test_macro_scores_skip_absent_classes(backend):
    """Classes in neither the labels nor the predictions do not count, as sklearn."""
    scores = np.array([[5, 0, 0, 0], [0, 5, 0, 0], [5, 0, 0, 0]], np.float32)
    labels = np.array([0, 1, 1])
    ref = sk.f1_score(labels, scores.argmax(1), average="macro")
    assert value(backend, metrics.f1, scores, labels) == pytest.approx(ref)


def test_roc_auc(backend, rng):
    s = rng.normal(size=80).astype(np.float32)
    y = (rng.uniform(size=80) < 1 / (1 + np.exp(-2 * s))).astype(np.float32)
    s[:10] = np.round(s[:10])  # ties count half
    s[10:20] = s[0]
    assert value(backend, metrics.roc_auc, s, y) == pytest.approx(sk.roc_auc_score(y, s), rel=1e-6)
    two = np.stack([-s, s], axis=1)
    assert value(backend, metrics.roc_auc, two, y[:, None]) == pytest.approx(
        sk.roc_auc_score(y, s), rel=1e-6)
    assert np.isnan(value(backend, metrics.roc_auc, s, np.ones_like(y)))


@pytest.mark.parametrize("shape", [(40,), (40, 1), (40, 3)])
def test_regression_metrics(backend, rng, shape):
    y = rng.normal(size=shape).astype(np.float32)
    y_hat = (y + rng.normal(0, 0.5, size=shape)).astype(np.float32)
    y2, p2 = y.reshape(40, -1), y_hat.reshape(40, -1)
    assert value(backend, metrics.mae, y_hat, y) == pytest.approx(
        sk.mean_absolute_error(y2, p2), rel=1e-5)
    assert value(backend, metrics.rmse, y_hat, y) == pytest.approx(
        sk.root_mean_squared_error(y2, p2), rel=1e-5)
    assert value(backend, metrics.r2, y_hat, y) == pytest.approx(sk.r2_score(y2, p2), rel=1e-5)
    if shape == (40, 1):  # a column of predictions against flat targets
        assert value(backend, metrics.mae, y_hat, y[:, 0]) == pytest.approx(
            sk.mean_absolute_error(y2, p2), rel=1e-5)


def test_metrics_refuse_mismatched_shapes(backend):
    with pytest.raises(ValueError, match="do not match"):
        metrics.mae(backend.asarray(np.zeros((4, 2), np.float32)),
                    backend.asarray(np.zeros((4, 3), np.float32)))
    with pytest.raises(ValueError, match="do not match"):
        metrics.f1(backend.asarray(np.zeros((4, 2), np.float32)),
                   backend.asarray(np.zeros((5,), np.int64)))
