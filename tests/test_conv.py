"""Conv2d, pooling, BatchNorm2d, Dropout2d and Flatten on NCHW images, against torch
autograd (losses with reduction="mean", so gradients are torch's .grad), on every
backend, in float32 and float64; bad input gets a clear error."""
import json

import numpy as np
import pytest

import backendnn as bn
from backendnn.layers import ShapeError

from conftest import cuda

torch = pytest.importorskip("torch")
F = torch.nn.functional
# torch warns that padding="same" with an even kernel copies the input
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")

TOL = {"float32": dict(rtol=2e-4, atol=2e-5), "float64": dict(rtol=1e-10, atol=1e-12)}

# (in, out, kernel, keywords, input (N, H, W))
CONV_CASES = {
    "plain": (3, 4, 3, {}, (2, 7, 6)),
    "stride_pad": (2, 3, (3, 2), {"stride": (2, 1), "padding": (1, 2)}, (3, 9, 7)),
    "dilation": (2, 2, 3, {"dilation": (2, 1), "padding": 1}, (2, 8, 5)),
    "groups": (4, 6, 3, {"groups": 2, "stride": 2}, (2, 7, 7)),
    "depthwise": (3, 3, 3, {"groups": 3, "padding": 1, "bias": False}, (2, 5, 6)),
    "kernel1": (3, 5, 1, {}, (2, 4, 3)),
    "batch1_odd": (1, 2, 2, {"stride": 3}, (1, 7, 5)),
    "same_even": (2, 3, 4, {"padding": "same", "dilation": (1, 2)}, (2, 6, 7)),
    "valid": (2, 3, 2, {"padding": "valid"}, (2, 3, 3)),
}


def run(layer, x, g, input_grad=True):
    """(y, dL/dx) of a layer as host arrays; grad g = dL/dy."""
    be = layer.backend
    y = layer(be.asarray(x, dtype=layer.dtype))
    gx = layer.backward(be.asarray(g, dtype=layer.dtype)) if input_grad else None
    return be.to_numpy(y), None if gx is None else be.to_numpy(gx)


def close(a, b, dtype):
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), b.detach().numpy()
                               if hasattr(b, "detach") else b, **TOL[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv2d_matches_torch(backend, case, dtype, rng):
    c_in, c_out, k, kw, (n, h, w) = CONV_CASES[case]
    layer = bn.Conv2d(c_in, c_out, k, backend=backend, dtype=dtype, **kw)
    x = rng.normal(size=(n, c_in, h, w))
    ref = torch.nn.Conv2d(c_in, c_out, k, **kw).double()
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(backend.to_numpy(layer.weights).astype(np.float64)))
        if ref.bias is not None:
            ref.bias.copy_(torch.from_numpy(backend.to_numpy(layer.bias).astype(np.float64)))
    tx = torch.tensor(x.astype(dtype).astype(np.float64), requires_grad=True)
    ty = ref(tx)
    g = rng.normal(size=tuple(ty.shape)) / n  # the gradient of a batch-mean loss
    ty.backward(torch.from_numpy(g.astype(dtype).astype(np.float64)))
    y, gx = run(layer, x, g)
    assert y.dtype == np.dtype(dtype) and gx.dtype == np.dtype(dtype)
    close(y, ty, dtype)
    close(gx, tx.grad, dtype)
    close(backend.to_numpy(layer.grad_w), ref.weight.grad, dtype)
    if ref.bias is not None:
        close(backend.to_numpy(layer.grad_b), ref.bias.grad, dtype)
    else:
        assert layer.grad_b is None and [n for n, _ in layer.named_parameters()] == ["weights"]
    # the first layer of a model: parameter gradients only, the same values
    layer(backend.asarray(x, dtype=dtype))
    layer.backward_params(backend.asarray(g, dtype=dtype))
    close(backend.to_numpy(layer.grad_w), ref.weight.grad, dtype)


POOL_CASES = {
    "max2": (bn.MaxPool2d, (2,), lambda t: F.max_pool2d(t, 2)),
    "max_overlap_pad": (bn.MaxPool2d, (3, 2, 1), lambda t: F.max_pool2d(t, 3, 2, 1)),
    "max_rect": (bn.MaxPool2d, ((2, 3), (1, 2)), lambda t: F.max_pool2d(t, (2, 3), (1, 2))),
    "avg2": (bn.AvgPool2d, (2,), lambda t: F.avg_pool2d(t, 2)),
    "avg_pad": (bn.AvgPool2d, ((3, 2), 1, (1, 1)), lambda t: F.avg_pool2d(t, (3, 2), 1, 1)),
    "adaptive1": (bn.AdaptiveAvgPool2d, (1,), lambda t: F.adaptive_avg_pool2d(t, 1)),
    "adaptive_div": (bn.AdaptiveAvgPool2d, ((3, 2),), lambda t: F.adaptive_avg_pool2d(t, (3, 2))),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", list(POOL_CASES))
def test_pooling_matches_torch(backend, case, dtype, rng):
    cls, args, fn = POOL_CASES[case]
    layer = cls(*args, backend=backend, dtype=dtype)
    x = rng.normal(size=(2, 3, 6, 8)).astype(dtype)
    x[0, 0, :2, :2] = 1.5  # a tie: the first winner takes the gradient, as torch
    tx = torch.tensor(x.astype(np.float64), requires_grad=True)
    ty = fn(tx)
    g = rng.normal(size=tuple(ty.shape)).astype(dtype)
    ty.backward(torch.from_numpy(g.astype(np.float64)))
    y, gx = run(layer, x, g)
    assert y.dtype == np.dtype(dtype)
    close(y, ty, dtype)
    close(gx, tx.grad, dtype)


@pytest.mark.parametrize("train", [True, False])
def test_batchnorm2d_matches_torch(backend, train, rng):
    gamma, beta = np.array([0.5, 1.0, 2.0]), np.array([0.1, -0.2, 0.3])
    layer = bn.BatchNorm2d(3, momentum=0.2, backend=backend, dtype="float64")
    layer.gamma = backend.asarray(gamma, dtype="float64")
    layer.beta = backend.asarray(beta, dtype="float64")
    ref = torch.nn.BatchNorm2d(3, momentum=0.2).double()
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(gamma))
        ref.bias.copy_(torch.from_numpy(beta))
    x0 = rng.normal(2.0, 3.0, size=(4, 3, 5, 2))
    layer(backend.asarray(x0, dtype="float64"))  # a training batch moves the running stats
    ref(torch.from_numpy(x0))
    if not train:
        layer.eval()
        ref.eval()
    x = rng.normal(2.0, 3.0, size=(4, 3, 5, 2))
    w = rng.normal(size=x.shape)
    tx = torch.tensor(x, requires_grad=True)
    ty = ref(tx)
    (ty * torch.from_numpy(w)).sum(dim=(1, 2, 3)).mean().backward()  # dL/dy = w / N
    y, gx = run(layer, x, w / 4)
    close(y, ty, "float64")
    close(gx, tx.grad, "float64")
    close(backend.to_numpy(layer.grad_gamma), ref.weight.grad, "float64")
    close(backend.to_numpy(layer.grad_beta), ref.bias.grad, "float64")
    close(backend.to_numpy(layer.running_mean), ref.running_mean, "float64")
    close(backend.to_numpy(layer.running_var), ref.running_var, "float64")
    assert {n for n, _ in layer.named_buffers()} == {"running_mean", "running_var"}


def test_dropout2d_zeroes_whole_channels(backend):
    layer = bn.Dropout2d(0.5, backend=backend)
    x = backend.asarray(np.ones((8, 6, 3, 2)), dtype="float32")
    y = backend.to_numpy(layer(x))
    per_channel = y.reshape(8, 6, -1)
    assert set(np.unique(per_channel)) <= {0.0, 2.0}
    assert (per_channel.min(axis=2) == per_channel.max(axis=2)).all()  # whole maps
    assert 0 < (per_channel[:, :, 0] == 0).sum() < 48
    gx = backend.to_numpy(layer.backward(x))
    np.testing.assert_array_equal(gx, y)
    layer.eval()
    np.testing.assert_array_equal(backend.to_numpy(layer(x)), 1.0)


def test_flatten_nchw_as_torch(backend, rng):
    x = rng.normal(size=(2, 3, 4, 5))
    layer = bn.Flatten(backend=backend)
    y, gx = run(layer, x, rng.normal(size=(2, 60)))
    np.testing.assert_array_equal(y, torch.flatten(torch.tensor(x.astype(np.float32)), 1).numpy())
    assert gx.shape == (2, 3, 4, 5)


def test_conv_stack_gradcheck(backend):
    """A small CNN in float64 against central finite differences."""
    kw = {"backend": backend, "dtype": "float64"}
    model = bn.Sequential([
        bn.Conv2d(2, 3, 3, padding=1, **kw), bn.BatchNorm2d(3, **kw), bn.ReLU(backend=backend),
        bn.MaxPool2d(2, backend=backend), bn.Conv2d(3, 4, 2, groups=1, **kw),
        bn.AvgPool2d(1, backend=backend), bn.AdaptiveAvgPool2d(1, backend=backend),
        bn.Flatten(backend=backend), bn.Linear(4, 3, **kw)],
        bn.CrossEntropy(backend=backend), backend=backend)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 2, 6, 6))
    y = np.array([0, 2, 1])
    report = bn.gradcheck(model, x, y)
    assert max(report.values()) < 1e-6, report
    assert any("Conv2d.weights" in name for name in report) and "input" in report


def test_cnn_checkpoint_resumes_across_backends(tmp_path, backend):
    def make(be):
        bn.seed(0)
        return bn.Sequential([bn.Conv2d(1, 2, 3, padding="same", backend=be),
                              bn.BatchNorm2d(2, backend=be), bn.ReLU(backend=be),
                              bn.MaxPool2d(2, backend=be), bn.Flatten(backend=be),
                              bn.Linear(8, 3, backend=be)], bn.CrossEntropy(backend=be))

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 1, 4, 4)).astype(np.float32), np.array([0, 1, 2, 0])
    model = make("numpy")
    opt = bn.SGD(model, lr=0.1)
    model.criterion(model(x), y)
    model.backward()
    opt.step()
    path = tmp_path / "cnn.npz"
    bn.save(model, path)
    other = bn.load(path, backend=backend.name)
    model.eval()
    other.eval()
    np.testing.assert_allclose(backend.to_numpy(other(backend.asarray(x))),
                               model(x), rtol=1e-5, atol=1e-6)
    assert json.dumps([layer.config() for layer in other.layers])


def test_state_shapes_from_config(backend):
    layers = [bn.Conv2d(4, 6, (3, 2), groups=2, backend=backend),
              bn.Conv2d(2, 3, 1, bias=False, backend=backend), bn.BatchNorm2d(5, backend=backend)]
    for layer in layers:
        assert layer.state_shapes() == {n: tuple(a.shape) for n, a in layer.state_arrays()}
        rebuilt = type(layer)(**json.loads(json.dumps(layer.config())), backend=backend)
        assert rebuilt.config() == layer.config()


def test_default_init_is_torchs_bound():
    layer = bn.Conv2d(4, 8, 3, groups=2)
    bound = 1 / np.sqrt(2 * 3 * 3)
    assert layer.weights.shape == (8, 2, 3, 3) and layer.weights.flags.c_contiguous
    assert np.abs(layer.weights).max() <= bound and np.abs(layer.bias).max() <= bound
    assert np.abs(layer.weights).max() > 0.8 * bound


@pytest.mark.parametrize("shape, words", [
    ((2, 8, 8, 3), ["(batch, 3, H, W)", "(2, 8, 8, 3)", "Conv2d", "channels last"]),
    ((3, 8, 8), ["(batch, 3, H, W)", "(3, 8, 8)", "Conv2d"]),
    ((2, 3, 2, 2), ["3x3", "larger than the padded input 2x2"]),
])
def test_conv_bad_input_is_named(shape, words):
    layer = bn.Conv2d(3, 4, 3)
    with pytest.raises(ShapeError) as e:
        layer(np.zeros(shape, np.float32))
    for w in words:
        assert w in str(e.value), str(e.value)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="divisible by `groups`"):
        bn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="'same' needs stride 1"):
        bn.Conv2d(3, 4, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding"):
        bn.Conv2d(3, 4, 3, padding="full")
    with pytest.raises(TypeError, match="kernel_size"):
        bn.Conv2d(3, 4, 2.5)
    with pytest.raises(ValueError, match="kernel_size"):
        bn.Conv2d(3, 4, 0)
    assert bn.Conv2d(np.int64(3), 4, np.int32(2)).kernel_size == (2, 2)
    with pytest.raises(ValueError, match="at most half"):
        bn.MaxPool2d(2, padding=2)
    with pytest.raises(ValueError, match="output_size"):
        bn.AdaptiveAvgPool2d(0)
    with pytest.raises(ShapeError, match="do not divide"):
        bn.AdaptiveAvgPool2d(3)(np.zeros((1, 2, 4, 4), np.float32))
    with pytest.raises(ShapeError, match=r"\(batch, 2, H, W\)"):
        bn.BatchNorm2d(2)(np.zeros((4, 2), np.float32))
    with pytest.raises(ShapeError, match="NCHW"):
        bn.Dropout2d(0.1)(np.zeros((4, 2), np.float32))
    with pytest.raises(ShapeError, match="layer 0 \\(Conv2d\\)"):
        bn.Sequential([bn.Conv2d(1, 2, 3)])(np.zeros((2, 8, 8, 1), np.float32))


@cuda
def test_cupy_conv_and_pool_match_numpy(rng):  # unverified here: no CUDA device
    cp = bn.backends.get("cupy")
    x = rng.normal(size=(2, 4, 7, 6))
    for make in (lambda be: bn.Conv2d(4, 6, 3, padding=1, groups=2, backend=be),
                 lambda be: bn.MaxPool2d(3, 2, 1, backend=be),
                 lambda be: bn.AvgPool2d(2, backend=be)):
        bn.seed(0)
        a = make("numpy")
        bn.seed(0)
        b = make(cp)
        ya, gxa = run(a, x, np.ones(tuple(a(x.astype(np.float32)).shape)))
        yb, gxb = run(b, x, np.ones(ya.shape))
        np.testing.assert_allclose(yb, ya, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(gxb, gxa, rtol=1e-4, atol=1e-5)
