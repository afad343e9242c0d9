"""Dropout, BatchNorm1d, LayerNorm, Flatten and Identity on every backend: forward and
backward against torch.nn (CPU, float64), gradcheck in float64, running statistics,
dtype and device kept, buffers moved bit for bit, and the Dropout mask stream.

Conventions: `backward(grad)` takes dL/dy and returns dL/dx; parameter grads are
sums over the batch of grad times the local derivative, so with the same upstream
gradient they equal torch's `.grad`. torch tests skip where torch is not installed.
"""
import numpy as np
import pytest

import backendnn
from backendnn import (
    BatchNorm1d,
    Dropout,
    Dropout2d,
    Flatten,
    Identity,
    LayerNorm,
    Linear,
    MeanSquaredError,
    Sequential,
    Tanh,
    gradcheck,
)
from backendnn.layers import NotReadyError, ShapeError
from conftest import backend_or_skip, host

F32 = {"rtol": 1e-4, "atol": 1e-5}



def put(backend, a):
    return backend.asarray(np.asarray(a, dtype=np.float32))


def ref(a):
    import torch

    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


def check_output(backend, y, like):
    assert backend.owns(y), "output left the input's backend/device"
    assert y.dtype == like.dtype, f"dtype {y.dtype} != input dtype {like.dtype}"


# --- BatchNorm1d ---------------------------------------------------------------


def affine_norm_matches_torch(backend, layer, t_layer, x, g, gamma, beta):
    """Forward and backward of a backendnn normalisation layer (gamma, beta) against
    its torch twin (weight, bias) on the same x and upstream gradient g."""
    import torch

    layer.gamma, layer.beta = put(backend, gamma), put(backend, beta)
    xb = put(backend, x)
    y = layer(xb)
    dx = layer.backward(put(backend, g))
    t_layer = t_layer.double()
    with torch.no_grad():
        t_layer.weight.copy_(torch.tensor(gamma))
        t_layer.bias.copy_(torch.tensor(beta))
    xt = ref(x)
    yt = t_layer(xt)
    yt.backward(torch.tensor(g))
    check_output(backend, y, xb)
    check_output(backend, dx, xb)
    np.testing.assert_allclose(host(backend, y), yt.detach().numpy(), **F32)
    np.testing.assert_allclose(host(backend, dx), xt.grad.numpy(), **F32)
    np.testing.assert_allclose(host(backend, layer.grad_gamma), t_layer.weight.grad.numpy(),
                               **F32)
    np.testing.assert_allclose(host(backend, layer.grad_beta), t_layer.bias.grad.numpy(),
                               **F32)
    assert layer.grad_gamma.dtype == xb.dtype
    return t_layer


@pytest.mark.parametrize("shape", [(16, 5), (6, 5, 3)], ids=["2d", "3d"])
def test_batchnorm_train_matches_torch(torch, backend, rng, shape):
    x = rng.normal(1.0, 3.0, shape)
    g = rng.normal(size=shape)
    gamma, beta = rng.normal(size=5), rng.normal(size=5)
    bn = BatchNorm1d(5, backend=backend)
    tbn = affine_norm_matches_torch(backend, bn, torch.nn.BatchNorm1d(5), x, g, gamma, beta)
    np.testing.assert_allclose(host(backend, bn.running_mean), tbn.running_mean.numpy(), **F32)
    np.testing.assert_allclose(host(backend, bn.running_var), tbn.running_var.numpy(), **F32)
    assert bn.running_var.dtype == bn.gamma.dtype


def test_batchnorm_running_stats_and_eval_match_torch(torch, backend, rng):
    bn = BatchNorm1d(4, momentum=0.2, backend=backend)
    tbn = torch.nn.BatchNorm1d(4, momentum=0.2).double()
    for step in range(5):
        x = rng.normal(step, 1.0 + step, (8, 4))
        bn(put(backend, x))
        tbn(ref(x))
        np.testing.assert_allclose(host(backend, bn.running_mean), tbn.running_mean.numpy(),
                                   **F32, err_msg=f"running_mean, step {step}")
        np.testing.assert_allclose(host(backend, bn.running_var), tbn.running_var.numpy(),
                                   **F32, err_msg=f"running_var, step {step}")
    bn.eval()
    tbn.eval()
    x, g = rng.normal(2.0, 2.0, (6, 4)), rng.normal(size=(6, 4))
    running = host(backend, bn.running_mean).copy()
    y = bn(put(backend, x))
    dx = bn.backward(put(backend, g))
    xt = ref(x)
    yt = tbn(xt)
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(host(backend, y), yt.detach().numpy(), **F32)
    np.testing.assert_allclose(host(backend, dx), xt.grad.numpy(), **F32)
    np.testing.assert_allclose(host(backend, bn.grad_gamma), tbn.weight.grad.numpy(), **F32)
    np.testing.assert_array_equal(host(backend, bn.running_mean), running)


def test_batchnorm_without_affine_has_no_params(torch, backend, rng):
    bn = BatchNorm1d(3, affine=False, backend=backend)
    assert bn.parameters() == []
    x = rng.normal(size=(10, 3))
    y = bn(put(backend, x))
    expected = torch.nn.functional.batch_norm(
        torch.tensor(x), None, None, training=True, eps=1e-5).numpy()
    np.testing.assert_allclose(host(backend, y), expected, **F32)


# --- LayerNorm -----------------------------------------------------------------


@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 5)], ids=["2d", "3d"])
def test_layernorm_matches_torch(torch, backend, rng, shape):
    x = rng.normal(-1.0, 2.0, shape)
    g = rng.normal(size=shape)
    gamma, beta = rng.normal(size=5), rng.normal(size=5)
    affine_norm_matches_torch(backend, LayerNorm(5, backend=backend), torch.nn.LayerNorm(5),
                              x, g, gamma, beta)


def test_layernorm_without_affine(torch, backend, rng):
    ln = LayerNorm((4,), elementwise_affine=False, backend=backend)
    assert ln.parameters() == []
    x, g = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    y = ln(put(backend, x))
    dx = ln.backward(put(backend, g))
    xt = ref(x)
    yt = torch.nn.functional.layer_norm(xt, (4,))
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(host(backend, y), yt.detach().numpy(), **F32)
    np.testing.assert_allclose(host(backend, dx), xt.grad.numpy(), **F32)


# --- Flatten, Identity ---------------------------------------------------------


@pytest.mark.parametrize("start, end", [(1, -1), (0, -1), (1, 2), (-2, -1)])
def test_flatten_matches_torch(torch, backend, rng, start, end):
    x = rng.normal(size=(3, 2, 4, 5))
    layer = Flatten(start, end, backend=backend)
    xb = put(backend, x)
    y = layer(xb)
    expected = torch.nn.Flatten(start, end)(torch.tensor(x)).numpy()
    assert tuple(y.shape) == expected.shape
    np.testing.assert_array_equal(host(backend, y), expected.astype(np.float32))
    g = rng.normal(size=expected.shape)
    dx = layer.backward(put(backend, g))
    check_output(backend, y, xb)
    check_output(backend, dx, xb)
    np.testing.assert_array_equal(host(backend, dx), g.astype(np.float32).reshape(x.shape))


def test_identity_passes_values_and_grads(backend, rng):
    x = put(backend, rng.normal(size=(3, 4)))
    layer = Identity(backend=backend)
    assert layer(x) is x
    assert layer.backward(x) is x
    assert layer.parameters() == []


# --- Dropout -------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_dropout_eval_is_identity_like_torch(torch, backend, rng, p):
    x = rng.normal(size=(8, 5))
    layer = Dropout(p, backend=backend).eval()
    xb = put(backend, x)
    y = layer(xb)
    expected = torch.nn.Dropout(p).eval()(torch.tensor(x)).numpy()
    np.testing.assert_array_equal(host(backend, y), expected.astype(np.float32))
    g = put(backend, rng.normal(size=(8, 5)))
    np.testing.assert_array_equal(host(backend, layer.backward(g)), host(backend, g))


def test_dropout_train_scales_like_torch_and_backward_uses_the_mask(torch, backend, rng):
    p, shape = 0.3, (200, 50)
    layer = Dropout(p, backend=backend)
    xb = put(backend, np.ones(shape))
    y = host(backend, layer(xb))
    torch_values = set(np.unique(torch.nn.Dropout(p)(torch.ones(shape)).numpy()).tolist())
    assert set(np.unique(y).tolist()) <= torch_values == {0.0, np.float32(1 / (1 - p))}
    kept = y != 0
    assert abs(kept.mean() - (1 - p)) < 0.03, f"kept fraction {kept.mean():.3f}, expected 0.7"
    assert abs(y.mean() - 1.0) < 0.05, "inverted dropout should keep the mean"
    g = rng.normal(size=shape)
    dx = layer.backward(put(backend, g))
    check_output(backend, dx, xb)
    np.testing.assert_allclose(host(backend, dx), np.where(kept, g / (1 - p), 0.0), rtol=1e-6)


def test_dropout_edge_probabilities(backend, rng):
    x = put(backend, rng.normal(size=(4, 6)))
    np.testing.assert_array_equal(host(backend, Dropout(0.0, backend=backend)(x)), host(backend, x))
    zeros = Dropout(1.0, backend=backend)
    np.testing.assert_array_equal(host(backend, zeros(x)), np.zeros((4, 6), np.float32))
    assert np.all(host(backend, zeros.backward(x)) == 0)


def test_dropout_masks_follow_the_seed(backend):
    def masks(n):
        backendnn.seed(n)
        layer = Dropout(0.5, backend=backend)
        x = backend.asarray(np.ones((64, 32), np.float32))
        return host(backend, layer(x)), host(backend, layer(x))

    first, second = masks(7)
    again = masks(7)
    np.testing.assert_array_equal(first, again[0])
    np.testing.assert_array_equal(second, again[1])
    assert not np.array_equal(first, second), "two forward passes drew the same mask"
    assert not np.array_equal(first, masks(8)[0]), "another seed gave the same mask"


def test_dropout_masks_agree_across_dtypes(backend):
    shape = (16, 16)
    backendnn.seed(3)
    m32 = backend.device_bernoulli(0.6, shape, "float32")
    backendnn.seed(3)
    m64 = backend.device_bernoulli(0.6, shape, "float64")
    assert m64.dtype == backend.dtype("float64") and m32.dtype == backend.dtype("float32")
    m32, m64 = host(backend, m32), host(backend, m64)
    np.testing.assert_array_equal(m32, m64)


def test_dropout_masks_are_the_same_on_every_backend(backend):
    """One Philox stream: the seed alone decides the masks (tests/test_random.py)."""
    def masks(b):
        backendnn.seed(11)
        layer, channels = Dropout(0.5, backend=b), Dropout2d(0.5, backend=b)
        x = b.asarray(np.ones((10, 3, 4, 4), np.float32))
        return host(b, layer(x)), host(b, channels(x))

    for got, want in zip(masks(backend), masks(backend_or_skip("numpy"))):
        np.testing.assert_array_equal(got, want)


def test_model_mode_switches_dropout_and_batchnorm(backend, rng):
    model = Sequential([BatchNorm1d(4), Dropout(0.5)], backend=backend)
    x = put(backend, rng.normal(size=(6, 4)))
    model.eval()
    assert not model.training
    np.testing.assert_allclose(host(backend, model(x)), host(backend, x) / np.sqrt(1 + 1e-5),
                               rtol=1e-6)
    model.train()
    assert model.training
    assert np.any(host(backend, model(x)) == 0)


# --- gradcheck (float64) ---------------------------------------------------------


def _models():
    return {
        "batchnorm": lambda: [BatchNorm1d(4), Linear(4, 3), Tanh(), Linear(3, 2)],
        "batchnorm_no_affine": lambda: [BatchNorm1d(4, affine=False), Linear(4, 2)],
        "batchnorm_3d": lambda: [Linear(12, 6), Tanh(), _Reshape((-1, 3, 2)), BatchNorm1d(3),
                                 Flatten(), Linear(6, 2)],
        "layernorm": lambda: [Linear(4, 6), LayerNorm(6), Tanh(), Linear(6, 2)],
        "dropout": lambda: [Linear(4, 6), Tanh(), Dropout(0.4), Linear(6, 2)],
        "flatten_identity": lambda: [Flatten(), Identity(), Linear(12, 2)],
    }


class _Reshape(backendnn.Layer):
    """Test helper: reshape each sample (so BatchNorm1d sees (batch, C, L) inside a model)."""

    def __init__(self, shape, **kw):
        super().__init__(**kw)
        self.shape = shape

    def forward(self, x):
        self.in_shape = tuple(x.shape)
        return self.xp.reshape(x, self.shape)

    def backward(self, grad):
        return self.xp.reshape(grad, self.in_shape)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", list(_models()))
def test_gradcheck(backend, rng, name, mode):
    with backendnn.use_backend(backend):
        layers = _models()[name]()
    model = Sequential(layers, MeanSquaredError(), backend=backend)
    in_shape = (8, 12) if name == "batchnorm_3d" else (8, 4)
    if name == "flatten_identity":
        in_shape = (8, 3, 4)
    x = rng.normal(size=in_shape).astype(np.float32)
    y = rng.normal(size=(8, 2)).astype(np.float32)
    for layer in model.layers:
        if isinstance(layer, BatchNorm1d):
            c = layer.num_features
            layer.running_mean = put(backend, rng.normal(size=c))
            layer.running_var = put(backend, rng.uniform(0.5, 2.0, size=c))
            if layer.affine:
                layer.gamma = put(backend, rng.normal(size=c))
                layer.beta = put(backend, rng.normal(size=c))
        if isinstance(layer, LayerNorm):
            layer.gamma = put(backend, rng.normal(size=layer.normalized_shape))
    report = gradcheck(model, x, y, mode=mode)
    assert max(report.values()) < 1e-6, report


def test_gradcheck_rejects_unknown_mode(backend):
    model = Sequential([Linear(2, 1, backend=backend)], MeanSquaredError(backend=backend))
    with pytest.raises(ValueError, match="mode"):
        gradcheck(model, np.ones((2, 2), np.float32), np.ones((2, 1), np.float32), mode="test")


# --- dtype, device, buffers ------------------------------------------------------


LAYERS = {
    "dropout": lambda b: Dropout(backend=b),
    "batchnorm": lambda b: BatchNorm1d(5, backend=b),
    "layernorm": lambda b: LayerNorm(5, backend=b),
    "flatten": lambda b: Flatten(backend=b),
    "identity": lambda b: Identity(backend=b),
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_float32_stays_float32_on_the_device(backend, rng, name, training):
    layer = LAYERS[name](backend).train(training)
    x = put(backend, rng.normal(size=(4, 5)))
    y = layer(x)
    dx = layer.backward(put(backend, rng.normal(size=tuple(y.shape))))
    check_output(backend, y, x)
    check_output(backend, dx, x)
    for p in layer.parameters():
        assert p.grad.dtype == x.dtype and backend.owns(p.grad)
    for buf in layer.buffer_names:
        assert getattr(layer, buf).dtype == x.dtype


def test_sequential_to_moves_buffers_bit_for_bit(backend, rng):
    numpy_b = backend_or_skip("numpy")
    model = Sequential([Linear(3, 4, backend=numpy_b), BatchNorm1d(4, backend=numpy_b)],
                       MeanSquaredError(backend=numpy_b))
    for _ in range(3):
        model(rng.normal(size=(5, 3)).astype(np.float32))
    bn = model.layers[1]
    before = {n: np.array(getattr(bn, n)) for n in ("running_mean", "running_var", "gamma")}
    model.to(backend)
    for name, value in before.items():
        moved = getattr(bn, name)
        assert backend.owns(moved) and moved.dtype == backend.dtype("float32")
        np.testing.assert_array_equal(host(backend, moved), value)
    model.to(numpy_b)
    for name, value in before.items():
        np.testing.assert_array_equal(getattr(bn, name), value)


def test_to_float64_moves_buffers_without_params(backend):
    model = Sequential([BatchNorm1d(3, affine=False, backend=backend)], backend=backend)
    model.to(backend, "float64")
    assert model.layers[0].running_var.dtype == backend.dtype("float64")


# --- errors, repr ------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda: Dropout(1.5), lambda: Dropout(-0.1), lambda: BatchNorm1d(0),
    lambda: BatchNorm1d(3, momentum=2.0), lambda: BatchNorm1d(3, eps=0),
    lambda: LayerNorm((2, 3)), lambda: LayerNorm(0),
], ids=["dropout_p", "dropout_neg", "bn_features", "bn_momentum", "bn_eps", "ln_2axes", "ln_0"])
def test_bad_arguments_raise(make):
    with pytest.raises(ValueError):
        make()


def test_flatten_rejects_non_int():
    with pytest.raises(TypeError, match="start_dim"):
        Flatten(1.5)


def test_shape_errors(backend):
    x = backend.asarray(np.ones((4, 3), np.float32))
    with pytest.raises(ShapeError, match=r"\(batch, 5\)"):
        BatchNorm1d(5, backend=backend)(x)
    with pytest.raises(ShapeError, match="more than one value"):
        BatchNorm1d(3, backend=backend)(backend.asarray(np.ones((1, 3), np.float32)))
    with pytest.raises(ShapeError, match="5"):
        LayerNorm(5, backend=backend)(x)
    with pytest.raises(ShapeError, match="flatten"):
        Flatten(2, backend=backend)(x)


@pytest.mark.parametrize("name", ["dropout", "batchnorm", "layernorm", "flatten"])
def test_backward_before_forward_raises(backend, name):
    with pytest.raises(NotReadyError):
        LAYERS[name](backend).backward(backend.asarray(np.ones((2, 5), np.float32)))


def test_repr():
    assert repr(Dropout(0.2)) == "Dropout(p=0.2)"
    assert repr(BatchNorm1d(4)) == "BatchNorm1d(4, eps=1e-05, momentum=0.1, affine=True)"
    assert repr(LayerNorm(3)) == "LayerNorm(3, eps=1e-05, elementwise_affine=True)"
    assert repr(Flatten()) == "Flatten(start_dim=1, end_dim=-1)"
    assert repr(Identity()) == "Identity()"
