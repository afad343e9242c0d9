"""The backend kernels (relu, backprop_relu, batch_sum, softmax_cross_entropy,
sub_scaled): every backend against float64 NumPy, NumPy's fast overrides against the
portable fallbacks of `Backend`, and no array of one step overwritten by the next."""
import numpy as np
import pytest
from conftest import host

import backendnn
from backendnn import SGD, CrossEntropy, Linear, ReLU, Sequential
from backendnn.backends import Backend, get

F32 = {"rtol": 1e-5, "atol": 1e-6}
KERNELS = ("relu", "backprop_relu", "batch_sum", "softmax_cross_entropy")
UPDATES = ("sub_scaled",)



def ref_cross_entropy(z, y):
    shifted = z - z.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    one_hot = np.eye(z.shape[1])[y]
    return -(log_p * one_hot).sum(axis=1), np.exp(log_p) - one_hot


@pytest.mark.parametrize("shape", [(9, 4), (3, 17)])  # more rows than classes, and fewer
def test_kernels_match_float64_reference(backend, rng, shape):
    z_np = rng.normal(0, 3, shape).astype(np.float32)
    g_np = rng.normal(0, 1, shape).astype(np.float32)
    y_np = rng.integers(0, shape[1], shape[0])
    z, g = backend.asarray(z_np), backend.asarray(g_np)
    z64, g64 = z_np.astype(np.float64), g_np.astype(np.float64)
    f32 = backend.dtype("float32")

    y = backend.relu(z)
    assert y.dtype == f32
    np.testing.assert_array_equal(host(backend, y), np.maximum(z64, 0))
    dx = backend.backprop_relu(g, y)
    assert dx.dtype == f32
    np.testing.assert_array_equal(host(backend, dx), np.where(z64 > 0, g64, 0))
    s = backend.batch_sum(g)
    assert s.dtype == f32 and tuple(s.shape) == (shape[1],)
    np.testing.assert_allclose(host(backend, s), g64.sum(axis=0), **F32)

    loss, grad = backend.softmax_cross_entropy(z, backend.asarray(y_np))
    ref_loss, ref_grad = ref_cross_entropy(z64, y_np)
    assert loss.dtype == grad.dtype == f32
    assert tuple(loss.shape) == (shape[0],) and tuple(grad.shape) == shape
    np.testing.assert_allclose(host(backend, loss), ref_loss, **F32)
    np.testing.assert_allclose(host(backend, grad), ref_grad, **F32)


def test_sub_scaled_updates_in_place_where_allowed(backend, rng):
    p_np = rng.normal(0, 1, (7, 5)).astype(np.float32)
    g_np = rng.normal(0, 1, (7, 5)).astype(np.float32)
    expected = p_np - 0.1 * g_np.astype(np.float64)
    p, g = backend.asarray(p_np.copy()), backend.asarray(g_np.copy())
    out = backend.sub_scaled(p, g, 0.1)
    assert out.dtype == backend.dtype("float32")
    np.testing.assert_allclose(host(backend, out), expected, **F32)
    np.testing.assert_array_equal(host(backend, g), g_np)
    if backend.inplace:
        assert out is p


def test_relu_special_values(backend):
    """NaN stays NaN, -inf goes to 0; the gradient passes only where the output is > 0.
    Where the output is NaN, the torch backend passes the gradient, as torch's own
    autograd does (its threshold_backward kernel, 15x faster than a masked where);
    the others pass nothing. A NaN activation has already made the loss NaN, which
    the Trainer reports."""
    x = backend.asarray(np.array([-np.inf, -1.0, -0.0, 0.0, 2.0, np.inf, np.nan], np.float32))
    y = host(backend, backend.relu(x))
    np.testing.assert_array_equal(y, [0, 0, 0, 0, 2, np.inf, np.nan])
    grad = backend.asarray(np.arange(1, 8, dtype=np.float32))
    dx = host(backend, backend.backprop_relu(grad, backend.relu(x)))
    at_nan = 7 if backend.name == "torch" else 0
    np.testing.assert_array_equal(dx, [0, 0, 0, 0, 5, 6, at_nan])


def test_in_place_variants_give_the_same_values(backend, rng):
    """relu_ and backprop_relu_ (which may write into their first argument) equal relu
    and backprop_relu, special values included; where a backend writes in place the
    result is that argument."""
    z_np = rng.normal(0, 2, (6, 7)).astype(np.float32)
    z_np[0, :5] = [-np.inf, -0.0, 0.0, np.inf, np.nan]
    g_np = rng.normal(0, 1, (6, 7)).astype(np.float32)
    y = backend.relu(backend.asarray(z_np))
    want_y, want_dx = host(backend, y), host(backend, backend.backprop_relu(backend.asarray(g_np), y))
    z, g = backend.asarray(z_np.copy()), backend.asarray(g_np.copy())
    y_ = backend.relu_(z)
    dx_ = backend.backprop_relu_(g, y_)
    np.testing.assert_array_equal(host(backend, y_), want_y)
    np.testing.assert_array_equal(host(backend, dx_), want_dx)
    if backend.name in ("numpy", "torch"):
        assert y_ is z and dx_ is g


def test_bias_relu_equals_relu_of_the_sum(backend, rng):
    """bias_relu_ (a Linear layer's fresh product and its bias, for the ReLU after it)
    equals relu(y + bias), special values included; NumPy and torch write into y."""
    y_np = rng.normal(0, 2, (6, 7)).astype(np.float32)
    y_np[0, :5] = [-np.inf, -0.0, 0.0, np.inf, np.nan]
    b_np = rng.normal(0, 1, 7).astype(np.float32)
    b_np[6] = np.nan
    want = host(backend, backend.relu(backend.asarray(y_np) + backend.asarray(b_np)))
    y = backend.asarray(y_np.copy())
    out = backend.bias_relu_(y, backend.asarray(b_np))
    np.testing.assert_array_equal(host(backend, out), want)
    if backend.name in ("numpy", "torch"):
        assert out is y


def test_backprop_relu_sum_equals_its_two_steps(backend, rng):
    """backprop_relu_sum_ (a ReLU's backward and the bias gradient of the Linear layer
    before it, in one pass where a backend can) equals backprop_relu then batch_sum,
    bit for bit; NumPy and torch mask the gradient in place."""
    g_np = rng.normal(0, 1, (9, 7)).astype(np.float32)
    y_np = np.maximum(rng.normal(0, 1, (9, 7)), 0).astype(np.float32)
    y = backend.asarray(y_np)
    want = backend.backprop_relu(backend.asarray(g_np), y)
    want_sum = host(backend, backend.batch_sum(want))
    g = backend.asarray(g_np.copy())
    got, got_sum = backend.backprop_relu_sum_(g, y)
    np.testing.assert_array_equal(host(backend, got), host(backend, want))
    np.testing.assert_array_equal(host(backend, got_sum), want_sum)
    if backend.name in ("numpy", "torch"):
        assert got is g


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_bias_grads_are_numpys_sums(numpy_kernels, rng, layout, dtype):
    """NumPy's batch_sum and backprop_relu_sum_ on every layout: the same bits as
    np.sum over the batch axis (the portable kernel)."""
    be = get("numpy")
    a = rng.normal(0, 2, (37, 24)).astype(dtype)
    g = {"C": a, "F": np.asfortranarray(a), "strided": a[:, ::2]}[layout]
    y = np.maximum(rng.normal(0, 1, g.shape), 0).astype(dtype)
    np.testing.assert_array_equal(be.batch_sum(g), np.sum(g, axis=0))
    masked = _portable("backprop_relu")(g, y)
    got, s = be.backprop_relu_sum_(g.copy(order="K"), y)
    np.testing.assert_array_equal(got, masked)
    np.testing.assert_array_equal(s, np.sum(got, axis=0))


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_bias_relu_equals_portable(numpy_kernels, rng, layout, dtype):
    """NumPy's one-pass bias_relu_ on C rows, and its fallback on other layouts, against
    the portable spelling; a read-only product gets a new array."""
    be = get("numpy")
    a = rng.normal(0, 2, (5, 24)).astype(dtype)
    y = {"C": a, "F": np.asfortranarray(a), "strided": a[:, ::2]}[layout]
    b = rng.normal(0, 1, y.shape[1]).astype(dtype)
    want = _portable("relu")(y + b)
    out = be.bias_relu_(y, b)
    assert out is y
    np.testing.assert_array_equal(out, want)
    frozen = a.copy()
    frozen.flags.writeable = False
    b = rng.normal(0, 1, a.shape[1]).astype(dtype)
    out = be.bias_relu_(frozen, b)
    assert out is not frozen
    np.testing.assert_array_equal(out, _portable("relu")(frozen + b))


@pytest.mark.parametrize("layout", ["C", "F", "strided", "CNHW"])
def test_numpy_in_place_variants_equal_portable(numpy_kernels, rng, layout):
    """NumPy's relu_ and backprop_relu_ on every layout (a strided view is written
    through, NCHW views of (C, N, H, W) memory as the convolutions return), against
    the portable kernels; a read-only array or a gradient sharing memory with y gets
    a new array."""
    be = get("numpy")

    def make():
        a = rng.normal(0, 2, (4, 3, 5, 12)).astype(np.float32)
        if layout == "strided":
            return a[..., ::2]
        if layout == "CNHW":
            return np.ascontiguousarray(a.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
        return np.asfortranarray(a) if layout == "F" else a

    z, g = make(), make()
    want_y = _portable("relu")(z)
    want_dx = _portable("backprop_relu")(g, want_y)
    y = be.relu_(z)
    dx = be.backprop_relu_(g, y)
    assert y is z and dx is g
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(dx, want_dx)
    frozen = make()
    frozen.flags.writeable = False
    assert be.relu_(frozen) is not frozen
    y = be.relu(make())
    assert be.backprop_relu_(y, y) is not y


def test_softmax_cross_entropy_logits_far_apart(backend):
    """Rows whose logits differ by 1e4 (exp overflows unshifted) and rows far below
    the others (a global shift would underflow them to log(0))."""
    z_np = np.array([[0.0, 1e4, -1e4], [-5e3, -5e3 + 1.0, -5e3], [1e4, 0.0, 0.0]], np.float32)
    y_np = np.array([1, 0, 1])
    loss, grad = backend.softmax_cross_entropy(backend.asarray(z_np), backend.asarray(y_np))
    ref_loss, ref_grad = ref_cross_entropy(z_np.astype(np.float64), y_np)
    np.testing.assert_allclose(host(backend, loss), ref_loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(host(backend, grad), ref_grad, rtol=1e-5, atol=1e-6)


# --- NumPy: the fast overrides give the portable fallbacks' values ---------------------

def _portable(kernel):
    """The `Backend` fallback of `kernel`, run on the NumPy backend (xp = numpy)."""
    numpy_backend = get("numpy")
    return lambda *args: getattr(Backend, kernel)(numpy_backend, *args)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
@pytest.mark.parametrize("shape", [(64, 10), (5, 40), (1, 1)])
def test_numpy_fast_paths_equal_portable(numpy_kernels, rng, dtype, layout, shape):
    be = get("numpy")
    n, c = shape

    def make():
        a = rng.normal(0, 2, (n, 2 * c)).astype(dtype)
        if layout == "strided":
            return a[:, ::2]
        return np.asfortranarray(a[:, :c]) if layout == "F" else np.ascontiguousarray(a[:, :c])

    z, g = make(), make()
    z[0, 0] = 0.0
    labels = rng.integers(0, c, n)
    rtol = 1e-6 if dtype == "float32" else 1e-13
    for name in KERNELS:
        args = {"relu": (z,), "backprop_relu": (g, np.maximum(z, 0)), "batch_sum": (g,),
                "softmax_cross_entropy": (z, labels)}[name]
        fast, slow = getattr(be, name)(*args), _portable(name)(*args)
        for f, s in zip(fast if isinstance(fast, tuple) else (fast,),
                        slow if isinstance(slow, tuple) else (slow,)):
            assert f.dtype == s.dtype == np.dtype(dtype), name
            assert f.shape == s.shape, name
            np.testing.assert_allclose(f, s, rtol=rtol, atol=rtol, err_msg=name)


@pytest.mark.parametrize("shape", [(3, 4), (600, 500), (2, 70001)])  # < 1 chunk, 3, 1 and a bit
@pytest.mark.parametrize("layout", ["C", "F"])  # F: not C-contiguous, the fallback
def test_numpy_sub_scaled_equals_portable(numpy_kernels, rng, shape, layout):
    be = get("numpy")
    order = "C" if layout == "C" else "F"
    p = np.array(rng.normal(0, 1, shape), dtype=np.float32, order=order)
    g = np.array(rng.normal(0, 1, shape), dtype=np.float32, order=order)
    g_before, expected = g.copy(), _portable("sub_scaled")(p.copy(), g, 0.03)
    out = be.sub_scaled(p, g, 0.03)
    assert out is p
    np.testing.assert_array_equal(out, expected)  # same operations, same rounding
    np.testing.assert_array_equal(g, g_before)


def test_numpy_kernels_return_fresh_writable_arrays(numpy_kernels, rng):
    """No kernel hands out its input, a cached array, or the previous call's output."""
    be = get("numpy")
    z = rng.normal(0, 1, (8, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 8)
    z_before = z.copy()
    outs = [be.relu(z), be.backprop_relu(z, be.relu(z)), be.batch_sum(z),
            *be.softmax_cross_entropy(z, labels)]
    again = [be.batch_sum(z), *be.softmax_cross_entropy(z, labels)]
    for a in outs:
        assert a.flags.writeable and not np.shares_memory(a, z)
    for a, b in zip(outs[2:], again):
        assert not np.shares_memory(a, b)
    outs[2][...] = 7.0  # writing into one result leaves later results alone
    np.testing.assert_allclose(be.batch_sum(z), z.sum(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(z, z_before)


def _train(n_steps, seed=3):
    backendnn.seed(seed)
    rng = np.random.default_rng(seed)
    model = Sequential([Linear(12, 16, backend="numpy"), ReLU(backend="numpy"),
                        Linear(16, 16, backend="numpy"), ReLU(backend="numpy"),
                        Linear(16, 5, backend="numpy")], CrossEntropy(backend="numpy"))
    opt = SGD(model, lr=0.1)
    losses = []
    for _ in range(n_steps):
        x = rng.normal(0, 1, (20, 12)).astype(np.float32)
        y = rng.integers(0, 5, 20)
        losses.append(model.criterion(model(x), y))
        model.backward()
        opt.step()
    return [p.value.copy() for p in model.parameters()], np.stack(losses)


def test_numpy_training_with_fast_paths_follows_the_portable_path(numpy_kernels, monkeypatch):
    fast_params, fast_losses = _train(5)
    numpy_backend = type(get("numpy"))
    for name in KERNELS + UPDATES:
        monkeypatch.setattr(numpy_backend, name, getattr(Backend, name))
    slow_params, slow_losses = _train(5)
    np.testing.assert_allclose(fast_losses, slow_losses, rtol=1e-5, atol=1e-6)
    for f, s in zip(fast_params, slow_params):
        np.testing.assert_allclose(f, s, rtol=1e-5, atol=1e-6)


# --- no aliasing across steps ----------------------------------------------------------

def test_arrays_kept_from_one_step_survive_the_next(backend, rng):
    """Outputs, activations, loss gradients and parameter gradients a user keeps are
    not overwritten by the next forward, backward or step."""
    model = Sequential([Linear(6, 8, backend=backend), ReLU(backend=backend),
                        Linear(8, 3, backend=backend)], CrossEntropy(backend=backend))
    opt = SGD(model, lr=0.5)

    def batch():
        return (backend.asarray(rng.normal(0, 1, (5, 6)).astype(np.float32)),
                backend.asarray(rng.integers(0, 3, 5)))

    x, y = batch()
    kept = {"output": model(x)}
    kept["relu.y"] = model.layers[1].y  # written in place into Linear's fresh output
    model.criterion(kept["output"], y)
    model.backward()
    kept["loss grad"] = model.criterion.backward()
    for i, p in enumerate(model.parameters()):
        kept[f"grad {i}"] = p.grad
    snapshot = {k: host(backend, v) for k, v in kept.items()}
    weights_before = host(backend, model.layers[0].weights)
    opt.step()
    assert not np.array_equal(host(backend, model.layers[0].weights), weights_before)
    for _ in range(2):
        x, y = batch()
        model.criterion(model(x), y)
        model.backward()
        opt.step()
    for k, v in kept.items():
        np.testing.assert_array_equal(host(backend, v), snapshot[k], err_msg=k)


def _torch_cuda_reason():
    try:
        import torch
    except ImportError:
        return "needs PyTorch"
    return "" if torch.cuda.is_available() else "needs PyTorch built with CUDA and a usable GPU"


@pytest.mark.cuda
@pytest.mark.skipif(bool(_torch_cuda_reason()), reason=_torch_cuda_reason() or "-")
def test_torch_backend_on_cuda_is_a_gpu_path(rng):
    """backend="torch" on a CUDA machine: tensors on the GPU, the kernels above on it,
    and the Philox Dropout masks equal to NumPy's."""
    tb = get("torch")
    assert tb.device.type == "cuda"
    z_np = rng.normal(0, 3, (64, 10)).astype(np.float32)
    y_np = rng.integers(0, 10, 64)
    loss, grad = tb.softmax_cross_entropy(tb.asarray(z_np), tb.asarray(y_np))
    ref_loss, ref_grad = ref_cross_entropy(z_np.astype(np.float64), y_np)
    np.testing.assert_allclose(host(tb, loss), ref_loss, **F32)
    np.testing.assert_allclose(host(tb, grad), ref_grad, **F32)
    backendnn.seed(3)
    got = host(tb, tb.device_bernoulli(0.3, (256, 512)))
    nb = get("numpy")
    backendnn.seed(3)
    np.testing.assert_array_equal(got, nb.device_bernoulli(0.3, (256, 512)))


def test_numpy_kernels_take_big_endian_arrays(numpy_kernels, rng):
    """Arrays in the other byte order (read from a file, say) take the NumPy spelling:
    the same values as native ones, no error from the compiled kernels."""
    be = get("numpy")
    z = rng.normal(0, 1, (6, 4)).astype(np.float32)
    x = rng.normal(0, 1, (2, 3, 4, 4)).astype(np.float32)
    w = rng.normal(0, 1, (2, 3, 3, 3)).astype(np.float32)
    b = rng.normal(0, 1, 2).astype(np.float32)
    labels = rng.integers(0, 4, 6)

    def swapped(a):
        return a.astype(a.dtype.newbyteorder(">"))

    pairs = [
        (be.softmax_cross_entropy(z, labels), be.softmax_cross_entropy(swapped(z), labels)),
        (be.backprop_relu(z, be.relu(z)), be.backprop_relu(swapped(z), swapped(be.relu(z)))),
        (be.max_pool2d(x, (2, 2), (2, 2), (0, 0, 0, 0))[0],
         be.max_pool2d(swapped(x), (2, 2), (2, 2), (0, 0, 0, 0))[0]),
        (be.conv2d(x, w, b, (1, 1), (1, 1, 1, 1), (1, 1), 1)[0],
         be.conv2d(swapped(x), swapped(w), swapped(b), (1, 1), (1, 1, 1, 1), (1, 1), 1)[0]),
    ]
    for native, other in pairs:
        for f, s in zip(native if isinstance(native, tuple) else (native,),
                        other if isinstance(other, tuple) else (other,)):
            np.testing.assert_allclose(s, f, rtol=1e-6, atol=1e-6)
    p, g = z.copy(), rng.normal(0, 1, z.shape).astype(np.float32)
    ps = swapped(p)
    assert be.fused_sgd(ps, swapped(g), swapped(np.zeros_like(p)), lr=0.1, momentum=0.9,
                        dampening=0.0, weight_decay=0.0, nesterov=False) is False


def test_fused_updates_leave_read_only_state_to_numpy(numpy_kernels):
    """A read-only parameter is not written by a compiled kernel: the update falls back
    to NumPy's spelling, which raises NumPy's own error; a read-only gradient is fine."""
    be = get("numpy")
    p, g = np.ones((200, 200), np.float32), np.ones((200, 200), np.float32)
    g.flags.writeable = False
    taken = be.fused_sgd(p, g, None, lr=0.5, momentum=0.0, dampening=0.0, weight_decay=0.0,
                         nesterov=False)
    assert taken is (numpy_kernels == "numba")
    if taken:
        np.testing.assert_array_equal(p, 0.5)
    p.flags.writeable = False
    assert be.fused_sgd(p, np.ones_like(p), None, lr=0.5, momentum=0.0, dampening=0.0,
                        weight_decay=0.0, nesterov=False) is False
    with pytest.raises(ValueError, match="read-only"):
        be.sub_scaled(p, np.ones_like(p), 0.5)
