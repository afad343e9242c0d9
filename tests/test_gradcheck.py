"""gradcheck of every layer and loss, each inside a stack so its input gradient is used."""
import numpy as np
import pytest

import backendnn
from backendnn import (
    BinaryCrossEntropy,
    CrossEntropy,
    LeakyReLU,
    Linear,
    MeanSquaredError,
    ReLU,
    Sequential,
    Sigmoid,
    Softmax,
    Tanh,
    gradcheck,
)

TOL = 1e-6
HIDDEN = {
    "ReLU": ReLU,
    "LeakyReLU": lambda: LeakyReLU(0.1),
    "Sigmoid": Sigmoid,
    "Tanh": Tanh,
    "Softmax": Softmax,
}


def data(rng, n=6, d=4, classes=3, kind="binary"):
    x = rng.normal(size=(n, d))
    if kind == "labels":
        y = rng.integers(0, classes, n)
    elif kind == "binary":
        y = rng.integers(0, 2, (n, classes)).astype(np.float64)
    else:
        y = rng.normal(size=(n, classes))
    return x, y


def check(backend, model, x, y):
    report = gradcheck(model, backend.asarray(x), backend.asarray(y))
    names = {"input"} | {f"{i}.{type(layer).__name__}.{p.name}"
                         for i, layer in enumerate(model.layers) for p in layer.parameters()}
    assert names <= set(report)
    worst = max(report.values())
    assert worst < TOL, report
    return report


@pytest.mark.parametrize("hidden", list(HIDDEN))
def test_every_activation_inside_a_stack(backend, rng, hidden):
    """Linear -> hidden -> Linear -> Sigmoid -> BCE."""
    with backendnn.use_backend(backend):
        model = Sequential([Linear(4, 5), HIDDEN[hidden](), Linear(5, 3), Sigmoid()],
                           BinaryCrossEntropy())
    check(backend, model, *data(rng))


@pytest.mark.parametrize("loss, last, kind", [
    (BinaryCrossEntropy, Sigmoid, "binary"),
    (MeanSquaredError, Tanh, "real"),
    (MeanSquaredError, None, "real"),
    (MeanSquaredError, Softmax, "real"),
    (CrossEntropy, None, "labels"),
])
def test_every_loss(backend, rng, loss, last, kind):
    with backendnn.use_backend(backend):
        layers = [Linear(4, 6), Tanh(), Linear(6, 3)] + ([last()] if last else [])
        model = Sequential(layers, loss())
    check(backend, model, *data(rng, kind=kind))


def test_deep_stack_of_every_layer(backend, rng):
    with backendnn.use_backend(backend):
        model = Sequential(
            [Linear(4, 6), LeakyReLU(), Linear(6, 6), Tanh(), Linear(6, 5), Sigmoid(),
             Linear(5, 5), ReLU(), Linear(5, 4), Softmax(), Linear(4, 3)],
            CrossEntropy())
    report = check(backend, model, *data(rng, n=8, kind="labels"))
    assert len(report) == 1 + 2 * 6


def test_single_output_binary_network(backend, rng):
    with backendnn.use_backend(backend):
        model = Sequential([Linear(4, 3), ReLU(), Linear(3, 1), Sigmoid()], BinaryCrossEntropy())
    x = rng.normal(size=(7, 4))
    check(backend, model, x, rng.integers(0, 2, 7))


def test_gradcheck_leaves_the_model_alone(backend, rng):
    with backendnn.use_backend(backend):
        model = Sequential([Linear(4, 3), Tanh(), Linear(3, 3)], MeanSquaredError())
    before = [np.array(backend.to_numpy(p.value), copy=True) for p in model.parameters()]
    check(backend, model, *data(rng, kind="real"))
    for p, old in zip(model.parameters(), before):
        assert p.value.dtype == backend.dtype("float32")
        np.testing.assert_array_equal(backend.to_numpy(p.value), old)


class WrongTanh(Tanh):
    """Tanh with the derivative 1 - y (instead of 1 - y²)."""

    def backward(self, grad):
        return (1.0 - self.y) * grad


def test_gradcheck_catches_a_wrong_backward(backend, rng):
    with backendnn.use_backend(backend):
        model = Sequential([Linear(4, 5), WrongTanh(), Linear(5, 3)], MeanSquaredError())
    report = gradcheck(model, backend.asarray(rng.normal(size=(6, 4))),
                       backend.asarray(rng.normal(size=(6, 3))))
    assert report["0.Linear.weights"] > 1e-2
    assert report["input"] > 1e-2
    assert report["2.Linear.weights"] < TOL  # layers after the wrong one are still right


def test_gradcheck_leaves_the_random_generators_as_they_were(backend):
    """gradcheck in train mode draws a Dropout mask; a later run must not notice."""
    from backendnn import Dropout
    from backendnn.backends import host_rng

    def masks():
        layer = Dropout(0.5, backend=backend)
        x = backend.asarray(np.ones((4, 6), dtype=np.float32))
        return [backend.to_numpy(layer(x)) for _ in range(2)]

    model = Sequential([Linear(6, 5, backend=backend), Dropout(0.5, backend=backend),
                        Linear(5, 2, backend=backend)], MeanSquaredError(backend=backend))
    x = np.random.default_rng(0).normal(size=(4, 6))
    y = np.random.default_rng(1).normal(size=(4, 2))
    backendnn.seed(3)
    expected, host = masks(), host_rng().random()
    backendnn.seed(3)
    gradcheck(model, x, y, mode="train")
    got = masks()
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    assert host_rng().random() == host
