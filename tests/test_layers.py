"""Layers against float64 NumPy references written from seed 000's formulas.

Data is built in seeded NumPy, moved with `backend.asarray`, compared in NumPy.
"""
import math
import warnings

import numpy as np
import pytest
from conftest import host
from array_api_compat import device as device_of

import backendnn
from backendnn import LeakyReLU, Linear, MeanSquaredError, ReLU, Sequential, Sigmoid, Softmax, Tanh

F32 = {"rtol": 1e-5, "atol": 1e-6}
F64 = {"rtol": 1e-12, "atol": 1e-14}



def tol(dtype):
    return F64 if dtype == "float64" else F32


# --- references (float64 NumPy, the seed's formulas) -------------------------------------

def ref_sigmoid(x):
    with np.errstate(all="ignore"):  # np.where evaluates both branches
        return np.where(x > 0, 1 / (1 + np.exp(-x)), np.exp(x) / (1 + np.exp(x)))


def ref_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def ref_softmax_backward(x, grad):
    """Row by row through the full Jacobian diag(s) - s s^T."""
    s = ref_softmax(x)
    return np.stack([(np.diag(si) - np.outer(si, si)) @ gi for si, gi in zip(s, grad)])


ACTIVATIONS = {
    "ReLU": (ReLU, lambda x: np.where(x > 0, x, 0.0),
             lambda x, g: np.where(x > 0, g, 0.0)),
    "LeakyReLU": (LeakyReLU, lambda x: np.where(x > 0, x, 0.01 * x),
                  lambda x, g: np.where(x > 0, g, 0.01 * g)),
    "LeakyReLU(0.2)": (lambda **kw: LeakyReLU(0.2, **kw), lambda x: np.where(x > 0, x, 0.2 * x),
                       lambda x, g: np.where(x > 0, g, 0.2 * g)),
    "Sigmoid": (Sigmoid, ref_sigmoid,
                lambda x, g: ref_sigmoid(x) * (1 - ref_sigmoid(x)) * g),
    "Tanh": (Tanh, np.tanh, lambda x, g: (1 - np.tanh(x) ** 2) * g),
    "Softmax": (Softmax, ref_softmax, ref_softmax_backward),
}


# --- Linear -------------------------------------------------------------------------------

def test_linear_init_range_and_zero_bias(backend):
    backendnn.seed(3)
    layer = Linear(50, 7, backend=backend)
    w, b = host(backend, layer.weights), host(backend, layer.bias)
    k = 1 / math.sqrt(50)
    assert w.shape == (50, 7) and b.shape == (7,)
    assert np.all(np.abs(w) <= k)
    assert np.abs(w).max() > 0.9 * k  # spread over the whole interval, not a narrow one
    assert abs(w.mean()) < 0.1 * k
    np.testing.assert_array_equal(b, 0.0)
    assert layer.weights.dtype == backend.dtype("float32")
    assert backend.owns(layer.weights) and backend.owns(layer.bias)


def test_linear_init_same_weights_on_every_backend(backend):
    backendnn.seed(11)
    reference = Linear(6, 4, backend="numpy").weights.copy()
    backendnn.seed(11)
    layer = Linear(6, 4, backend=backend)
    np.testing.assert_array_equal(backend.to_numpy(layer.weights), reference)
    other = Linear(6, 4, backend=backend)
    assert not np.array_equal(backend.to_numpy(other.weights), reference)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_linear_forward_backward_against_seed(backend, rng, dtype):
    layer = Linear(5, 4, backend=backend, dtype=dtype)
    w = rng.uniform(-1, 1, (5, 4))
    b = rng.uniform(-1, 1, 4)
    layer.weights = backend.asarray(w, dtype=dtype)
    layer.bias = backend.asarray(b, dtype=dtype)
    w, b = host(backend, layer.weights), host(backend, layer.bias)
    x_np = rng.normal(size=(6, 5)).astype(dtype)
    g_np = rng.normal(size=(6, 4)).astype(dtype)
    x, g = backend.asarray(x_np), backend.asarray(g_np)

    y = layer(x)
    dx = layer.backward(g)

    x64, g64 = x_np.astype(np.float64), g_np.astype(np.float64)
    np.testing.assert_allclose(host(backend, y), x64 @ w + b, **tol(dtype))
    # the seed's batched outer product, summed over the batch (g is already the
    # gradient of the batch-mean loss: the loss divides, layers sum)
    grad_w = (x64[:, :, None] @ g64[:, None, :]).sum(axis=0)
    np.testing.assert_allclose(host(backend, layer.grad_w), grad_w, **tol(dtype))
    np.testing.assert_allclose(host(backend, layer.grad_b), g64.sum(axis=0), **tol(dtype))
    np.testing.assert_allclose(host(backend, dx), g64 @ w.T, **tol(dtype))
    for out in (y, dx, layer.grad_w, layer.grad_b):
        assert out.dtype == backend.dtype(dtype)
        assert device_of(out) == device_of(x)
    assert tuple(layer.grad_w.shape) == (5, 4) and tuple(layer.grad_b.shape) == (4,)


def test_model_grads_are_batch_means(backend, rng):
    """Repeating every sample leaves the parameter gradients unchanged: the loss
    divides by the batch, the layers sum."""
    with backendnn.use_backend(backend):
        model = Sequential([Linear(3, 2), ReLU(), Linear(2, 1)], MeanSquaredError())
    x_np = rng.normal(size=(4, 3)).astype(np.float32)
    y_np = rng.normal(size=(4, 1)).astype(np.float32)
    model.loss(backend.asarray(x_np), backend.asarray(y_np))
    model.backward()
    once = [host(backend, p.grad) for p in model.parameters()]
    model.loss(backend.asarray(np.concatenate([x_np] * 3)), backend.asarray(np.concatenate([y_np] * 3)))
    model.backward()
    for p, ref in zip(model.parameters(), once):
        np.testing.assert_allclose(host(backend, p.grad), ref, **F32)


def test_linear_grads_are_batch_sums(backend, rng):
    """Layers sum over the batch: repeating every sample triples the gradients."""
    layer = Linear(3, 2, backend=backend)
    x_np = rng.normal(size=(4, 3)).astype(np.float32)
    g_np = rng.normal(size=(4, 2)).astype(np.float32)
    layer(backend.asarray(x_np))
    layer.backward(backend.asarray(g_np))
    once = host(backend, layer.grad_w), host(backend, layer.grad_b)
    layer(backend.asarray(np.concatenate([x_np] * 3)))
    layer.backward(backend.asarray(np.concatenate([g_np] * 3)))
    np.testing.assert_allclose(host(backend, layer.grad_w), 3 * once[0], **F32)
    np.testing.assert_allclose(host(backend, layer.grad_b), 3 * once[1], **F32)


def test_linear_parameters_are_assignable(backend):
    layer = Linear(2, 3, backend=backend)
    layer.weights = backend.asarray(np.ones((2, 3), dtype=np.float32))
    layer.bias = backend.asarray(np.full(3, 0.5, dtype=np.float32))
    y = layer(backend.asarray(np.array([[1.0, 2.0]], dtype=np.float32)))
    np.testing.assert_array_equal(backend.to_numpy(y), [[3.5, 3.5, 3.5]])
    assert [p.name for p in layer.parameters()] == ["weights", "bias"]
    assert layer.parameters()[0].value is layer.weights


# --- activations --------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_activation_forward_backward(backend, rng, name, dtype):
    make, fwd, bwd = ACTIVATIONS[name]
    layer = make(backend=backend)
    x_np = rng.normal(scale=3.0, size=(5, 4)).astype(dtype)
    g_np = rng.normal(size=(5, 4)).astype(dtype)
    x = backend.asarray(x_np)
    y = layer(x)
    dx = layer.backward(backend.asarray(g_np))
    x64, g64 = x_np.astype(np.float64), g_np.astype(np.float64)
    np.testing.assert_allclose(host(backend, y), fwd(x64), **tol(dtype))
    np.testing.assert_allclose(host(backend, dx), bwd(x64, g64), **tol(dtype))
    for out in (y, dx):
        assert out.dtype == x.dtype
        assert device_of(out) == device_of(x)
        assert tuple(out.shape) == (5, 4)
    assert layer.parameters() == []


def test_relu_gradient_is_zero_at_zero(backend):
    layer = ReLU(backend=backend)
    x = backend.asarray(np.array([[-1.0, 0.0, 2.0]], dtype=np.float32))
    np.testing.assert_array_equal(backend.to_numpy(layer(x)), [[0.0, 0.0, 2.0]])
    grad = layer.backward(backend.asarray(np.ones((1, 3), dtype=np.float32)))
    np.testing.assert_array_equal(backend.to_numpy(grad), [[0.0, 0.0, 1.0]])


# Underflow to 0 is the exact limit wanted; overflow, 0/0 and inf/inf are not.
RAISE = {"over": "raise", "invalid": "raise", "divide": "raise", "under": "ignore"}
EXTREMES = np.array([-1e4, -100.0, -88.8, -30.0, 0.0, 30.0, 88.8, 100.0, 1e4], dtype=np.float32)


def test_sigmoid_extreme_float32_no_warnings_no_nan(backend):
    layer = Sigmoid(backend=backend)
    x = backend.asarray(EXTREMES[None, :])
    with warnings.catch_warnings(), np.errstate(**RAISE):
        warnings.simplefilter("error")
        y = layer(x)
        dx = layer.backward(backend.asarray(np.ones((1, EXTREMES.size), dtype=np.float32)))
        y_np, dx_np = backend.to_numpy(y), backend.to_numpy(dx)
    assert y.dtype == backend.dtype("float32")
    assert np.all(np.isfinite(y_np)) and np.all(np.isfinite(dx_np))
    assert np.all((y_np >= 0) & (y_np <= 1))
    assert y_np[0, 0] == 0.0 and y_np[0, -1] == 1.0
    assert y_np[0, -2] == 1.0 and 0.0 <= y_np[0, 1] < 1e-40
    assert y_np[0, 4] == 0.5
    assert np.all(np.diff(y_np[0]) >= 0)
    np.testing.assert_allclose(y_np[0], ref_sigmoid(EXTREMES.astype(np.float64)), rtol=1e-5, atol=1e-30)
    assert dx_np[0, 0] == 0.0 and dx_np[0, -1] == 0.0


def test_softmax_logits_far_apart(backend):
    logits = np.array([[0.0, 1e4, -1e4], [1e4, 1e4, -1e4], [-1e4, -1e4, -1e4]], dtype=np.float32)
    layer = Softmax(backend=backend)
    with warnings.catch_warnings(), np.errstate(**RAISE):
        warnings.simplefilter("error")
        y = backend.to_numpy(layer(backend.asarray(logits)))
        dx = backend.to_numpy(layer.backward(backend.asarray(np.ones((3, 3), dtype=np.float32))))
    np.testing.assert_allclose(y, [[0, 1, 0], [0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6, atol=0)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-6)
    assert np.all(np.isfinite(dx))
    np.testing.assert_allclose(dx, 0.0, atol=1e-6)  # a constant upstream gradient cancels


def test_softmax_over_last_axis_of_3d(backend, rng):
    x_np = rng.normal(size=(2, 3, 4)).astype(np.float32)
    y = Softmax(backend=backend)(backend.asarray(x_np))
    np.testing.assert_allclose(host(backend, y), ref_softmax(x_np.astype(np.float64)), **F32)


def test_leaky_relu_repr_shows_slope(backend):
    assert "0.2" in repr(LeakyReLU(0.2, backend=backend))
    assert repr(Linear(3, 2, backend=backend)) == "Linear(3, 2)"
