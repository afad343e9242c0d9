"""SGD step for step against torch.optim.SGD, fed the same weights and gradients."""
import numpy as np
import pytest
from conftest import host

import backendnn
from backendnn import SGD, Layer, Linear, MeanSquaredError, ReLU, Sequential, Tanh

CONFIGS = [
    {"lr": 0.1},
    {"lr": 0.05, "momentum": 0.9},
    {"lr": 0.05, "momentum": 0.9, "dampening": 0.3},
    {"lr": 0.05, "momentum": 0.9, "nesterov": True},
    {"lr": 0.1, "weight_decay": 0.01},
    {"lr": 0.05, "momentum": 0.8, "weight_decay": 0.05, "nesterov": True},
    {"lr": 0.05, "momentum": 0.5, "dampening": 0.5, "weight_decay": 0.1},
]



def small_model(backend, dtype="float32"):
    with backendnn.use_backend(backend):
        return Sequential([Linear(4, 3, dtype=dtype), Tanh(), Linear(3, 2, dtype=dtype)],
                          MeanSquaredError())


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_sgd_matches_torch_step_for_step(backend, rng, config):
    torch = pytest.importorskip("torch")
    model = small_model(backend)
    ours = SGD(model, **config)
    params = model.parameters()
    theirs = [torch.tensor(host(backend, p.value), requires_grad=True) for p in params]
    reference = torch.optim.SGD(theirs, **config)
    for _ in range(5):
        x = backend.asarray(rng.normal(size=(6, 4)), dtype="float32")
        y = backend.asarray(rng.normal(size=(6, 2)), dtype="float32")
        model.loss(x, y)
        model.backward()
        for p, t in zip(params, theirs):
            t.grad = torch.tensor(host(backend, p.grad))
        ours.step()
        reference.step()
        for p, t in zip(params, theirs):
            assert p.value.dtype == backend.dtype("float32")
            assert backend.owns(p.value)
            np.testing.assert_allclose(host(backend, p.value), t.detach().numpy(), rtol=2e-6, atol=1e-7)
    assert ours.step_count == 5


def test_plain_sgd_is_the_seed_update(backend, rng):
    """Seed 000: weights -= lr * grad_w, bias -= lr * grad_b."""
    model = small_model(backend, "float64")
    layer = model.layers[0]
    w, b = host(backend, layer.weights), host(backend, layer.bias)
    model.loss(backend.asarray(rng.normal(size=(5, 4))), backend.asarray(rng.normal(size=(5, 2))))
    model.backward()
    gw, gb = host(backend, layer.grad_w), host(backend, layer.grad_b)
    SGD(model, lr=0.3).step()
    np.testing.assert_allclose(host(backend, layer.weights), w - 0.3 * gw, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(host(backend, layer.bias), b - 0.3 * gb, rtol=1e-14, atol=1e-15)
    assert layer.weights.dtype == backend.dtype("float64")


class Scale(Layer):
    """A layer that is not a Linear: y = x * gain, gain (n,)."""

    param_names = ("gain",)
    grad_names = ("grad_gain",)
    grad_reduction = "sum"

    def __init__(self, n, **kw):
        super().__init__(**kw)
        self.gain = self.backend.asarray(np.ones(n, dtype=np.float32))
        self.grad_gain = None

    def forward(self, x):
        self.x = x
        return x * self.gain

    def backward(self, grad):
        self.grad_gain = self.xp.sum(grad * self.x, axis=0)
        return grad * self.gain

    def _clear(self):
        self.x = None


def test_sgd_updates_every_parameter_not_only_linear(backend, rng):
    with backendnn.use_backend(backend):
        model = Sequential([Linear(3, 3), Scale(3), ReLU(), Linear(3, 1)], MeanSquaredError())
    before = [host(backend, p.value) for p in model.parameters()]
    model.loss(backend.asarray(rng.normal(size=(4, 3))), backend.asarray(rng.normal(size=(4, 1))))
    model.backward()
    grads = [host(backend, p.grad) for p in model.parameters()]
    SGD(model, lr=0.5).step()
    names = [p.name for p in model.parameters()]
    assert "gain" in names
    for p, old, g in zip(model.parameters(), before, grads):
        np.testing.assert_allclose(host(backend, p.value), old - 0.5 * g, rtol=1e-6, atol=1e-7)
    assert np.any(host(backend, model.layers[1].gain) != 1.0)


@pytest.mark.parametrize("kwargs, name", [
    ({"lr": -0.1}, "lr"),
    ({"lr": "0.1"}, "lr"),
    ({"lr": True}, "lr"),
    ({"lr": 0.1, "momentum": -0.5}, "momentum"),
    ({"lr": 0.1, "weight_decay": -1e-3}, "weight_decay"),
    ({"lr": 0.1, "dampening": 1.5}, "dampening"),
    ({"lr": 0.1, "nesterov": True}, "nesterov"),
    ({"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": True}, "nesterov"),
])
def test_sgd_rejects_bad_hyperparameters(backend, kwargs, name):
    with pytest.raises(ValueError, match=name):
        SGD(small_model(backend), **kwargs)


def test_sgd_rejects_model_without_parameters(backend):
    with backendnn.use_backend(backend):
        model = Sequential([ReLU()], MeanSquaredError())
    with pytest.raises(ValueError, match="no parameters"):
        SGD(model, lr=0.1)


def test_step_before_backward_is_refused(backend):
    with pytest.raises(RuntimeError, match="backward"):
        SGD(small_model(backend), lr=0.1).step()
