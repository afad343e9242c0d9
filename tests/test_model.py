"""Sequential (seed 000) and MLP (seed 001) against float64 NumPy references."""
import numpy as np
import pytest
from conftest import host

import backendnn
from backendnn import (
    MLP,
    BinaryCrossEntropy,
    CrossEntropy,
    LeakyReLU,
    Linear,
    MeanSquaredError,
    ReLU,
    Sequential,
    Sigmoid,
    Tanh,
)
from backendnn import backends

F32 = {"rtol": 1e-5, "atol": 1e-6}



def two_layer(backend, criterion=None):
    with backendnn.use_backend(backend):
        return Sequential([Linear(4, 5), ReLU(), Linear(5, 1), Sigmoid()],
                          criterion or BinaryCrossEntropy())


def reference_two_layer(w1, b1, w2, b2, x, y):
    """Seed 000's classes in float64: forward, BCE, backward with its outer product.
    Returns (y_hat, per-sample loss, d(mean loss)/dx, [grad_w1, grad_b1, grad_w2, grad_b2])."""
    z1 = x @ w1 + b1
    a1 = np.where(z1 > 0, z1, 0)
    z2 = a1 @ w2 + b2
    p = 1 / (1 + np.exp(-z2))
    loss = -np.where(y == 1, np.log(p), np.log(1 - p))[:, 0]
    g = (p - y) / (p * (1 - p))
    g = p * (1 - p) * g
    gw2 = (a1[:, :, None] @ g[:, None, :]).mean(axis=0)
    gb2 = g.mean(axis=0)
    g = g @ w2.T
    g = np.where(z1 > 0, g, 0)
    gw1 = (x[:, :, None] @ g[:, None, :]).mean(axis=0)
    gb1 = g.mean(axis=0)
    return p, loss, g @ w1.T / len(x), [gw1, gb1, gw2, gb2]


def test_sequential_forward_backward_like_seed(backend, rng):
    model = two_layer(backend)
    x_np = rng.normal(size=(7, 4)).astype(np.float32)
    y_np = rng.integers(0, 2, (7, 1)).astype(np.float32)
    params = [host(backend, p.value) for p in model.parameters()]

    y_hat = model(backend.asarray(x_np))
    loss = model.criterion(y_hat, backend.asarray(y_np))
    assert model.backward() is None
    ref_p, ref_loss, _, ref_grads = reference_two_layer(*params, x_np.astype(np.float64), y_np)

    np.testing.assert_allclose(host(backend, y_hat), ref_p, **F32)
    np.testing.assert_allclose(host(backend, loss), ref_loss, **F32)
    for p, ref in zip(model.parameters(), ref_grads):
        assert p.grad.dtype == backend.dtype("float32")
        np.testing.assert_allclose(host(backend, p.grad), ref, **F32)


def test_backward_input_grad_returns_dl_dx(backend, rng):
    model = two_layer(backend)
    x_np = rng.normal(size=(6, 4)).astype(np.float32)
    y_np = rng.integers(0, 2, (6, 1)).astype(np.float32)
    params = [host(backend, p.value) for p in model.parameters()]
    model.loss(backend.asarray(x_np), backend.asarray(y_np))
    dx = model.backward(input_grad=True)
    _, _, ref_dx, ref_grads = reference_two_layer(*params, x_np.astype(np.float64), y_np)
    assert tuple(dx.shape) == (6, 4)
    assert dx.dtype == backend.dtype("float32")
    np.testing.assert_allclose(host(backend, dx), ref_dx, **F32)
    np.testing.assert_allclose(host(backend, model.layers[0].grad_w), ref_grads[0], **F32)


def test_sigmoid_bce_gradient_is_prediction_error(backend, rng):
    """Seed 000's result: through Sigmoid + BCE, dL/dz = y_hat - y."""
    with backendnn.use_backend(backend):
        model = Sequential([Linear(3, 1), Sigmoid()], BinaryCrossEntropy())
    x_np = rng.normal(size=(8, 3)).astype(np.float32)
    y_np = rng.integers(0, 2, (8, 1)).astype(np.float32)
    y_hat = model(backend.asarray(x_np))
    model.criterion(y_hat, backend.asarray(y_np))
    model.backward()
    err = host(backend, y_hat) - y_np
    np.testing.assert_allclose(host(backend, model.layers[0].grad_b), err.mean(axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(host(backend, model.layers[0].grad_w), x_np.T @ err / 8, rtol=1e-4, atol=1e-6)


def test_parameters_in_layer_order(backend):
    model = two_layer(backend)
    params = model.parameters()
    owners = [(model.layers.index(p.layer), p.name) for p in params]
    assert owners == [(0, "weights"), (0, "bias"), (2, "weights"), (2, "bias")]
    assert params[0].value is model.layers[0].weights
    assert params[3].value is model.layers[2].bias
    assert model.n_params() == 4 * 5 + 5 + 5 + 1


@pytest.mark.parametrize("source", ["numpy", "array_api_strict", "torch"])
def test_to_moves_every_array_bit_for_bit(backend, source, rng):
    try:
        source_backend = backends.get(source)
    except backends.BackendUnavailableError as e:
        pytest.skip(str(e))
    model = two_layer(source_backend, MeanSquaredError())
    before = [np.array(source_backend.to_numpy(p.value), copy=True) for p in model.parameters()]
    x_np = rng.normal(size=(3, 4)).astype(np.float32)
    out_before = host(source_backend, model(source_backend.asarray(x_np)))

    assert model.to(backend.name) is model
    assert model.backend is backend
    assert all(layer.backend is backend for layer in model.layers)
    assert model.criterion.backend is backend
    for p, old in zip(model.parameters(), before):
        assert backend.owns(p.value)
        new = backend.to_numpy(p.value)
        assert new.dtype == np.float32
        np.testing.assert_array_equal(new.view(np.uint32), old.view(np.uint32))
    out = model(backend.asarray(x_np))
    assert backend.owns(out)
    np.testing.assert_allclose(host(backend, out), out_before, rtol=1e-6)


def test_to_with_dtype(backend):
    model = two_layer("numpy").to(backend.name, "float64")
    assert model.dtype == "float64"
    for p in model.parameters():
        assert p.value.dtype == backend.dtype("float64")
    out = model(backend.asarray(np.ones((2, 4)), dtype="float32"))
    assert out.dtype == backend.dtype("float64")


@pytest.mark.parametrize("dtype, error", [("int32", TypeError), ("no_such_dtype", TypeError)])
def test_failed_to_leaves_the_model_where_it_was(backend, dtype, error):
    model = two_layer(backend)
    with pytest.raises(error):
        model.to(backend.name, dtype)
    assert model.backend is backend and model.dtype == "float32"
    out = model(backend.asarray(np.ones((2, 4), dtype=np.float32)))
    assert out.dtype == backend.dtype("float32")


def test_to_a_backend_without_the_dtype_moves_nothing(backend):
    strict = backends.get("array_api_strict")  # has no float16
    model = two_layer(backend)
    with pytest.raises(TypeError, match="float16"):
        model.to(strict, "float16")
    assert model.backend is backend and model.dtype == "float32"
    assert all(layer.backend is backend for layer in model.layers)


@pytest.mark.parametrize("source", ["numpy", "array_api_strict", "torch"])
def test_to_another_backend_copies_so_training_leaves_the_old_arrays(backend, source):
    try:
        source_backend = backends.get(source)
    except backends.BackendUnavailableError as e:
        pytest.skip(str(e))
    if source_backend is backend:
        pytest.skip("no move")
    model = two_layer(source_backend, MeanSquaredError())
    old = [p.value for p in model.parameters()]
    snapshot = [np.array(source_backend.to_numpy(a), copy=True) for a in old]
    model.to(backend.name)
    model.loss(backend.asarray(np.ones((3, 4), dtype=np.float32)),
               backend.asarray(np.full((3, 1), 5.0, dtype=np.float32)))
    model.backward()
    backendnn.SGD(model, lr=0.5).step()
    for a, before in zip(old, snapshot):
        np.testing.assert_array_equal(source_backend.to_numpy(a), before)


def test_float64_model_stays_float64(backend, rng):
    with backendnn.use_backend(backend):
        model = Sequential([Linear(3, 4, dtype="float64"), Tanh(), Linear(4, 2, dtype="float64")],
                           MeanSquaredError())
    x = backend.asarray(rng.normal(size=(5, 3)), dtype="float64")
    y = backend.asarray(rng.normal(size=(5, 2)), dtype="float64")
    out = model(x)
    loss = model.criterion(out, y)
    dx = model.backward(input_grad=True)
    for array in (out, loss, dx, model.layers[0].grad_w, model.layers[2].grad_b):
        assert array.dtype == backend.dtype("float64")


def test_repr_and_summary_show_parameter_counts(backend):
    with backendnn.use_backend(backend):
        model = Sequential([Linear(30, 20), ReLU(), Linear(20, 1), Sigmoid()], BinaryCrossEntropy())
    text = repr(model)
    for part in ("Linear(30, 20)", "ReLU()", "Linear(20, 1)", "Sigmoid()", "BinaryCrossEntropy", "641"):
        assert part in text
    summary = model.summary()
    for part in ("620", "21", "641", "(30, 20)", "(20,)", backend.name):
        assert part in summary
    assert len(summary.splitlines()) >= 6


# --- MLP (seed 001) ----------------------------------------------------------------------

@pytest.mark.parametrize("activation", ["sigmoid", Sigmoid, Sigmoid()])
@pytest.mark.parametrize("loss", ["mse", MeanSquaredError, MeanSquaredError()])
def test_mlp_accepts_names_classes_instances(backend, activation, loss):
    with backendnn.use_backend(backend):
        model = MLP([4, 6, 3], activation, loss)
    assert isinstance(model, Sequential)
    assert [type(layer) for layer in model.layers] == [Linear, Sigmoid, Linear, Sigmoid]
    assert model.layers[1] is not model.layers[3]  # each position keeps its own forward cache
    assert isinstance(model.criterion, MeanSquaredError)
    assert [tuple(p.shape) for p in model.parameters()] == [(4, 6), (6,), (6, 3), (3,)]
    assert model.backend is backend
    assert all(layer.backend is backend for layer in model.layers)


def test_mlp_activation_instance_is_copied_with_its_options(backend):
    model = MLP([2, 3, 1], LeakyReLU(0.2), "mse", backend=backend)
    first, second = model.layers[1], model.layers[3]
    assert first is not second
    assert first.negative_slope == second.negative_slope == 0.2
    x = backend.asarray(np.array([[-1.0, 1.0]], dtype=np.float32))
    model.loss(x, backend.asarray(np.zeros((1, 1), dtype=np.float32)))
    # each activation kept its own input
    assert tuple(first.x.shape) == (1, 3) and tuple(second.x.shape) == (1, 1)
    model.backward()


@pytest.mark.parametrize("activation, loss, cls, loss_cls", [
    ("relu", "cross_entropy", ReLU, CrossEntropy),
    ("tanh", "bce", Tanh, BinaryCrossEntropy),
    ("leaky_relu", "MSE", LeakyReLU, MeanSquaredError),
])
def test_mlp_names(backend, activation, loss, cls, loss_cls):
    model = MLP([2, 3], activation, loss, backend=backend)
    assert isinstance(model.layers[1], cls) and isinstance(model.criterion, loss_cls)


def test_mlp_forward_pass_single_sample(backend, rng):
    model = MLP([4, 5, 2], "tanh", "mse", backend=backend)
    x_np = rng.normal(size=4).astype(np.float32)
    single = model.forward_pass(backend.asarray(x_np))
    batch = model.forward_pass(backend.asarray(x_np[None, :]))
    assert tuple(single.shape) == (1, 2)
    np.testing.assert_array_equal(backend.to_numpy(single), backend.to_numpy(batch))
    w1, b1, w2, b2 = (host(backend, p.value) for p in model.parameters())
    ref = np.tanh(np.tanh(x_np @ w1 + b1) @ w2 + b2)
    np.testing.assert_allclose(host(backend, single)[0], ref, **F32)


def reference_backprop(ws, bs, x, y, act, act_deriv, loss_deriv):
    """Seed 001's backprop (gradients summed over the batch), returned in layer order."""
    z, activations = [], [x]
    for w, b in zip(ws, bs):
        x = x @ w + b
        z.append(x)
        x = act(x)
        activations.append(x)
    deltas, w_grad, b_grad = [], [], []
    for i in range(len(z)):
        if i == 0:
            deltas.append(loss_deriv(activations[-1], y) * act_deriv(z[-1]))
        else:
            deltas.append((deltas[i - 1] @ ws[-i].T) * act_deriv(z[-i - 1]))
        b_grad.append(deltas[i].sum(axis=0))
        w_grad.append(activations[-2 - i].T @ deltas[i])
    return w_grad[::-1], b_grad[::-1]


def test_mlp_backprop_sums_in_layer_order(backend, rng):
    model = MLP([4, 6, 5, 3], "sigmoid", "mse", backend=backend)
    x_np = rng.normal(size=(8, 4)).astype(np.float32)
    y_np = rng.uniform(size=(8, 3)).astype(np.float32)
    params = [host(backend, p.value) for p in model.parameters()]
    w_grads, b_grads = model.backprop(backend.asarray(x_np), backend.asarray(y_np))

    def sig(z):
        return 1 / (1 + np.exp(-z))

    ref_w, ref_b = reference_backprop(
        params[0::2], params[1::2], x_np.astype(np.float64), y_np.astype(np.float64),
        sig, lambda z: sig(z) * (1 - sig(z)), lambda yh, y: 2 * (yh - y) / 3)
    assert len(w_grads) == len(b_grads) == 3
    assert [tuple(g.shape) for g in w_grads] == [(4, 6), (6, 5), (5, 3)]
    linears = [layer for layer in model.layers if isinstance(layer, Linear)]
    for g, ref, layer in zip(w_grads, ref_w, linears):
        np.testing.assert_allclose(host(backend, g), ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(host(backend, g), 8 * host(backend, layer.grad_w), rtol=1e-6, atol=1e-7)
    for g, ref, layer in zip(b_grads, ref_b, linears):
        np.testing.assert_allclose(host(backend, g), ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(host(backend, g), 8 * host(backend, layer.grad_b), rtol=1e-6, atol=1e-7)


def test_model_follows_use_backend(backend):
    with backends.use_backend(backend.name):
        model = MLP([3, 2])
    assert model.backend is backend
    assert backend.owns(model.layers[0].weights)


@pytest.mark.parametrize("output_activation, last", [("same", "ReLU"), (None, "Linear"),
                                                     ("sigmoid", "Sigmoid")])
def test_mlp_output_activation(backend, output_activation, last):
    model = MLP([4, 6, 3], "relu", "cross_entropy", output_activation=output_activation,
                backend=backend)
    assert type(model.layers[-1]).__name__ == last
    assert [type(layer).__name__ for layer in model.layers[:2]] == ["Linear", "ReLU"]


def test_layers_of_different_dtypes_are_refused(backend):
    layers = [Linear(3, 4, dtype="float64", backend=backend), ReLU(backend=backend),
              Linear(4, 2, backend=backend)]
    with pytest.raises(TypeError, match=r"different dtypes \['float32', 'float64'\]"):
        Sequential(layers, MeanSquaredError(backend=backend))
