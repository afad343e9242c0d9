"""Losses: per-sample values and gradients against float64 NumPy and torch.nn.functional."""
import warnings

import numpy as np
import pytest
from conftest import host

from backendnn import BinaryCrossEntropy, CrossEntropy, MeanSquaredError

F32 = {"rtol": 1e-5, "atol": 1e-6}



def ref_log_softmax(z):
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


# --- binary cross-entropy --------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 3])
def test_bce_per_sample_and_gradient(backend, rng, k):
    p_np = rng.uniform(0.05, 0.95, (6, k)).astype(np.float32)
    y_np = rng.integers(0, 2, (6, k)).astype(np.float32)
    bce = BinaryCrossEntropy(backend=backend)
    loss = bce(backend.asarray(p_np), backend.asarray(y_np))
    grad = bce.backward()
    p, y = p_np.astype(np.float64), y_np.astype(np.float64)
    ref = -np.where(y == 1, np.log(p), np.log(1 - p))  # the seed's formula
    assert tuple(loss.shape) == (6,)
    assert tuple(grad.shape) == (6, k)
    assert loss.dtype == grad.dtype == backend.dtype("float32")
    np.testing.assert_allclose(host(backend, loss), ref.mean(axis=1), **F32)
    np.testing.assert_allclose(host(backend, grad), (p - y) / (p * (1 - p)) / k / 6, **F32)


def test_bce_matches_torch(backend, rng):
    torch = pytest.importorskip("torch")
    p_np = rng.uniform(0.05, 0.95, (7, 2))
    y_np = rng.integers(0, 2, (7, 2)).astype(np.float64)
    bce = BinaryCrossEntropy(backend=backend)
    loss = bce(backend.asarray(p_np, dtype="float64"), backend.asarray(y_np, dtype="float64"))
    p_t = torch.tensor(p_np, requires_grad=True)
    ref = torch.nn.functional.binary_cross_entropy(p_t, torch.tensor(y_np))
    ref.backward()
    np.testing.assert_allclose(host(backend, loss).mean(), ref.item(), rtol=1e-12)
    # backward is the gradient of the batch mean, as torch's reduction="mean"
    np.testing.assert_allclose(host(backend, bce.backward()), p_t.grad.numpy(), rtol=1e-10)


def test_bce_clip_works_in_float32(backend):
    """Predictions of exactly 0 and 1: in float32 1 - 1e-8 == 1, so the clip needs a
    larger epsilon, else ln(0)."""
    p = backend.asarray(np.array([[0.0], [1.0], [0.0], [1.0]], dtype=np.float32))
    y = backend.asarray(np.array([[0.0], [1.0], [1.0], [0.0]], dtype=np.float32))
    bce = BinaryCrossEntropy(backend=backend)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        loss = host(backend, bce(p, y))
        grad = host(backend, bce.backward())
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
    assert loss[0] < 1e-5 and loss[1] < 1e-5
    assert 10 < loss[2] < 40 and 10 < loss[3] < 40  # confidently wrong: large, finite
    assert grad[2, 0] < 0 < grad[3, 0]


def test_bce_float64_keeps_dtype_and_seed_epsilon(backend):
    p = backend.asarray(np.array([[0.0], [1.0]]), dtype="float64")
    y = backend.asarray(np.array([[1.0], [0.0]]), dtype="float64")
    loss = BinaryCrossEntropy(backend=backend)(p, y)
    assert loss.dtype == backend.dtype("float64")
    np.testing.assert_allclose(host(backend, loss), -np.log(1e-8), rtol=1e-6)


# --- mean squared error ---------------------------------------------------------------

@pytest.mark.parametrize("shape", [(8, 1), (8, 3)])
def test_mse_batch_mean_equals_torch(backend, rng, shape):
    torch = pytest.importorskip("torch")
    yh_np = rng.normal(size=shape).astype(np.float32)
    y_np = rng.normal(size=shape).astype(np.float32)
    mse = MeanSquaredError(backend=backend)
    loss = mse(backend.asarray(yh_np), backend.asarray(y_np))
    grad = mse.backward()
    assert tuple(loss.shape) == (8,)
    assert tuple(grad.shape) == shape
    assert loss.dtype == grad.dtype == backend.dtype("float32")

    yh_t = torch.tensor(yh_np, dtype=torch.float64, requires_grad=True)
    ref = torch.nn.functional.mse_loss(yh_t, torch.tensor(y_np, dtype=torch.float64))
    ref.backward()
    np.testing.assert_allclose(host(backend, loss).mean(), ref.item(), rtol=1e-5)
    np.testing.assert_allclose(host(backend, grad), yh_t.grad.numpy(), **F32)
    diff = yh_np.astype(np.float64) - y_np
    np.testing.assert_allclose(host(backend, loss), (diff ** 2).mean(axis=1), **F32)
    np.testing.assert_allclose(host(backend, grad), 2 * diff / shape[1] / shape[0], **F32)


def test_mse_on_one_dimensional_predictions(backend, rng):
    yh_np, y_np = rng.normal(size=5), rng.normal(size=5)
    mse = MeanSquaredError(backend=backend)
    loss = mse(backend.asarray(yh_np, dtype="float64"), backend.asarray(y_np, dtype="float64"))
    assert loss.dtype == backend.dtype("float64")
    np.testing.assert_allclose(host(backend, loss), (yh_np - y_np) ** 2, rtol=1e-12)
    np.testing.assert_allclose(host(backend, mse.backward()), 2 * (yh_np - y_np) / len(yh_np), rtol=1e-12)


# --- cross-entropy --------------------------------------------------------------------

@pytest.mark.parametrize("label_dtype", ["int64", "int32"])
def test_cross_entropy_equals_torch(backend, rng, label_dtype):
    torch = pytest.importorskip("torch")
    z_np = rng.normal(scale=2.0, size=(9, 4)).astype(np.float32)
    y_np = rng.integers(0, 4, 9)
    ce = CrossEntropy(backend=backend)
    loss = ce(backend.asarray(z_np), backend.asarray(y_np, dtype=label_dtype))
    grad = ce.backward()
    assert tuple(loss.shape) == (9,)
    assert tuple(grad.shape) == (9, 4)
    assert loss.dtype == grad.dtype == backend.dtype("float32")

    z_t = torch.tensor(z_np, dtype=torch.float64, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(z_t, torch.tensor(y_np))
    ref.backward()
    np.testing.assert_allclose(host(backend, loss).mean(), ref.item(), rtol=1e-5)
    np.testing.assert_allclose(host(backend, grad), z_t.grad.numpy(), **F32)

    z = z_np.astype(np.float64)
    np.testing.assert_allclose(host(backend, loss), -ref_log_softmax(z)[np.arange(9), y_np], **F32)
    one_hot = np.eye(4)[y_np]
    np.testing.assert_allclose(host(backend, grad), (np.exp(ref_log_softmax(z)) - one_hot) / 9, **F32)


def test_cross_entropy_logits_far_apart(backend):
    z = backend.asarray(np.array([[0.0, 1e4, -1e4], [0.0, 1e4, -1e4]], dtype=np.float32))
    y = backend.asarray(np.array([1, 2]))
    ce = CrossEntropy(backend=backend)
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        loss = host(backend, ce(z, y))
        grad = host(backend, ce.backward())
    np.testing.assert_allclose(loss, [0.0, 2e4], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad, [[0, 0, 0], [0, 0.5, -0.5]], atol=1e-6)


def test_cross_entropy_accepts_column_labels(backend, rng):
    z_np = rng.normal(size=(5, 3)).astype(np.float32)
    y_np = rng.integers(0, 3, 5)
    ce = CrossEntropy(backend=backend)
    flat = host(backend, ce(backend.asarray(z_np), backend.asarray(y_np)))
    column = host(backend, ce(backend.asarray(z_np), backend.asarray(y_np[:, None])))
    np.testing.assert_array_equal(flat, column)


@pytest.mark.parametrize("make", [BinaryCrossEntropy, MeanSquaredError, CrossEntropy])
def test_criterion_follows_model_dtype(backend, rng, make):
    z_np = rng.uniform(0.1, 0.9, (4, 2))
    y_np = rng.integers(0, 2, 4) if make is CrossEntropy else rng.integers(0, 2, (4, 2))
    for dtype in ("float32", "float64"):
        loss_fn = make(backend=backend)
        loss = loss_fn(backend.asarray(z_np, dtype=dtype), backend.asarray(y_np))
        assert loss.dtype == backend.dtype(dtype)
        assert loss_fn.backward().dtype == backend.dtype(dtype)


# --- new in issue 15: BCE on logits, CE weight / smoothing / soft targets, L1, Huber ----

from backendnn import HuberLoss, L1Loss  # noqa: E402

F64 = {"rtol": 1e-9, "atol": 1e-12}


def torch_ref(torch, fn, y_hat, y, **kw):
    """(loss, grad) of a torch.nn.functional loss with reduction="mean", in float64."""
    t = torch.tensor(y_hat, requires_grad=True)
    loss = fn(t, torch.tensor(y), **kw)
    loss.backward()
    return loss.item(), t.grad.numpy()


def run_loss(backend, loss, y_hat, y, y_dtype="float64"):
    per_sample = loss(backend.asarray(y_hat, dtype="float64"), backend.asarray(y, dtype=y_dtype))
    return host(backend, per_sample), host(backend, loss.backward())


@pytest.mark.parametrize("k", [1, 3])
def test_bce_from_logits_equals_torch(backend, torch, rng, k):
    z = rng.normal(0, 4, (9, k))
    y = rng.uniform(0, 1, (9, k))
    per, grad = run_loss(backend, BinaryCrossEntropy(from_logits=True, backend=backend), z, y)
    ref, ref_grad = torch_ref(torch, torch.nn.functional.binary_cross_entropy_with_logits, z, y)
    assert per.shape == (9,)
    np.testing.assert_allclose(per.mean(), ref, **F64)
    np.testing.assert_allclose(grad, ref_grad, **F64)


def test_bce_from_logits_is_finite_far_out(backend, torch):
    z = np.array([[200.0], [-200.0], [200.0], [-200.0]], dtype=np.float32)
    y = np.array([[1.0], [0.0], [0.0], [1.0]], dtype=np.float32)
    bce = BinaryCrossEntropy(from_logits=True, backend=backend)
    per = host(backend, bce(backend.asarray(z), backend.asarray(y)))
    grad = host(backend, bce.backward())
    assert np.all(np.isfinite(per)) and np.all(np.isfinite(grad))
    ref = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(z), torch.tensor(y), reduction="none").numpy()[:, 0]
    np.testing.assert_allclose(per, ref, rtol=1e-6)
    np.testing.assert_allclose(grad[:, 0], np.array([0, 0, 1, -1]) / 4, atol=1e-7)


@pytest.mark.parametrize("p, y, match", [
    ([[1.5], [0.5]], [[1.0], [0.0]], "predictions must be probabilities"),
    ([[-0.1], [0.5]], [[1.0], [0.0]], "predictions must be probabilities"),
    ([[0.5], [0.5]], [[2.0], [0.0]], "targets must lie in"),
])
def test_bce_refuses_values_outside_0_1(backend, p, y, match):
    with pytest.raises(ValueError, match=match):
        BinaryCrossEntropy(backend=backend)(backend.asarray(p), backend.asarray(y))


def test_bce_from_logits_refuses_targets_outside_0_1(backend):
    with pytest.raises(ValueError, match="targets must lie in"):
        BinaryCrossEntropy(from_logits=True, backend=backend)(
            backend.asarray([[3.0]]), backend.asarray([[-1.0]]))


@pytest.mark.parametrize("weight", [None, [0.2, 1.0, 3.0, 0.5]])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("target", ["labels", "one_hot", "soft"])
def test_cross_entropy_options_equal_torch(backend, torch, rng, weight, smoothing, target):
    logits = rng.normal(0, 2, (10, 4))
    labels = rng.integers(0, 4, 10)
    if target == "labels":
        y, y_dtype, y_t = labels, "int64", labels
    elif target == "one_hot":  # integer one-hot: torch wants float probabilities
        y, y_dtype = np.eye(4, dtype=np.int64)[labels], "int64"
        y_t = y.astype(np.float64)
    else:
        y = rng.dirichlet(np.ones(4), 10)
        y_dtype, y_t = "float64", y
    ce = CrossEntropy(weight=weight, label_smoothing=smoothing, backend=backend)
    per, grad = run_loss(backend, ce, logits, y, y_dtype)
    kw = {"label_smoothing": smoothing}
    if weight is not None:
        kw["weight"] = torch.tensor(weight, dtype=torch.float64)
    ref, ref_grad = torch_ref(torch, torch.nn.functional.cross_entropy, logits, y_t, **kw)
    none = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(y_t),
                                             reduction="none", **kw).numpy()
    np.testing.assert_allclose(per, none, **F64)          # per sample: reduction="none"
    np.testing.assert_allclose(grad, ref_grad, **F64)     # gradient: reduction="mean"
    if weight is None:
        np.testing.assert_allclose(per.mean(), ref, **F64)


def test_cross_entropy_options_are_checked_and_saved(backend):
    with pytest.raises(ValueError, match="label_smoothing"):
        CrossEntropy(label_smoothing=1.0)
    with pytest.raises(ValueError, match="weight"):
        CrossEntropy(weight=[1.0, -1.0])
    with pytest.raises(TypeError, match="weight"):
        CrossEntropy(weight="balanced")
    ce = CrossEntropy(weight=np.array([1.0, 2.0]), label_smoothing=np.float32(0.25),
                      backend=backend)
    assert ce.config() == {"weight": [1.0, 2.0], "label_smoothing": 0.25, "check_labels": True}
    with pytest.raises(ValueError, match="2 entries but the logits have 3"):
        ce(backend.asarray(np.zeros((2, 3), np.float32)), backend.asarray(np.array([0, 1])))


@pytest.mark.parametrize("shape", [(8,), (8, 1), (8, 3)])
def test_l1_equals_torch(backend, torch, rng, shape):
    y_hat, y = rng.normal(size=shape), rng.normal(size=shape)
    y_hat[0] = y[0]  # the gradient is 0 where they are equal, as torch's
    per, grad = run_loss(backend, L1Loss(backend=backend), y_hat, y)
    ref, ref_grad = torch_ref(torch, torch.nn.functional.l1_loss, y_hat, y)
    np.testing.assert_allclose(per.mean(), ref, **F64)
    np.testing.assert_allclose(grad, ref_grad, **F64)


@pytest.mark.parametrize("delta", [1.0, 0.3])
@pytest.mark.parametrize("shape", [(8,), (8, 3)])
def test_huber_equals_torch(backend, torch, rng, delta, shape):
    y_hat, y = rng.normal(0, 2, size=shape), rng.normal(size=shape)
    per, grad = run_loss(backend, HuberLoss(delta, backend=backend), y_hat, y)
    ref, ref_grad = torch_ref(torch, torch.nn.functional.huber_loss, y_hat, y, delta=delta)
    np.testing.assert_allclose(per.mean(), ref, **F64)
    np.testing.assert_allclose(grad, ref_grad, **F64)


def test_huber_delta_checked():
    with pytest.raises(ValueError, match="delta"):
        HuberLoss(0.0)
    with pytest.raises(TypeError, match="delta"):
        HuberLoss("1")
    assert HuberLoss(np.float64(2.0)).config() == {"delta": 2.0}
