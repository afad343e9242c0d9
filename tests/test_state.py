"""The state protocol: named parameters and buffers, state_dict / load_state_dict,
config; reused layer objects; parameterless layers following the model's dtype."""
import warnings

import numpy as np
import pytest
from conftest import host
from hypothesis import given, settings
from hypothesis import strategies as st

import backendnn
from backendnn.layers import ShapeError
from backendnn.layers.base import _WARNED
from backendnn import (
    SGD,
    BatchNorm1d,
    CrossEntropy,
    DataLoader,
    Dataset,
    Dropout,
    LeakyReLU,
    Linear,
    MeanSquaredError,
    ReLU,
    Sequential,

    Trainer,
)


def model_on(backend, dtype="float32"):
    with backendnn.use_backend(backend):
        return Sequential([Linear(4, 6, dtype=dtype), BatchNorm1d(6, dtype=dtype), ReLU(),
                           Dropout(0.2), Linear(6, 3, dtype=dtype)], CrossEntropy())


def test_names_follow_the_checkpoint_layout(backend):
    model = model_on(backend)
    assert [n for n, _ in model.named_parameters()] == [
        "layers.0.weights", "layers.0.bias", "layers.1.gamma", "layers.1.beta",
        "layers.4.weights", "layers.4.bias"]
    assert [n for n, _ in model.named_buffers()] == ["layers.1.running_mean", "layers.1.running_var"]
    state = model.state_dict()
    assert list(state) == ["layers.0.weights", "layers.0.bias", "layers.1.gamma", "layers.1.beta",
                           "layers.1.running_mean", "layers.1.running_var",
                           "layers.4.weights", "layers.4.bias"]
    assert state["layers.4.weights"] is model.layers[4].weights


def test_state_shapes_match_the_built_arrays(backend):
    for layer in model_on(backend).layers:
        shapes = layer.state_shapes()
        assert shapes == {n: tuple(v.shape) for n, v in layer.state_arrays()}


def test_load_state_dict_round_trips_across_backends(backend):
    source = model_on("numpy")
    backendnn.seed(5)
    target = model_on(backend)
    target.load_state_dict(source.state_dict())
    for (name, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items()):
        np.testing.assert_array_equal(host(backend, b), np.asarray(a, dtype=np.float64), err_msg=name)
        assert backend.owns(b) and b.dtype == backend.dtype("float32")


def test_load_state_dict_refuses_before_changing_anything(backend):
    model = model_on(backend)
    before = {k: host(backend, v) for k, v in model.state_dict().items()}
    state = dict(model_on("numpy").state_dict())
    state["layers.4.weights"] = np.zeros((6, 2), np.float32)
    with pytest.raises(ShapeError, match=r"'layers\.4\.weights' has shape \(6, 2\).*\(6, 3\)"):
        model.load_state_dict(state)
    del state["layers.4.weights"]
    with pytest.raises(KeyError, match=r"missing \['layers\.4\.weights'\]"):
        model.load_state_dict(state)
    state["layers.4.weights"], state["layers.9.extra"] = np.zeros((6, 3), np.float32), np.zeros(2)
    with pytest.raises(KeyError, match=r"unexpected \['layers\.9\.extra'\]"):
        model.load_state_dict(state)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(host(backend, v), before[k])
    model.load_state_dict(state, strict=False)
    np.testing.assert_array_equal(host(backend, model.layers[4].weights), 0.0)


def test_config_rebuilds_each_layer():
    model = Sequential([Linear(3, 2, init="xavier_uniform"), LeakyReLU(0.2), BatchNorm1d(2, momentum=0.3)],
                       MeanSquaredError())
    spec = model.config()
    assert [e["class"] for e in spec["layers"]] == ["Linear", "LeakyReLU", "BatchNorm1d"]
    for entry, layer in zip(spec["layers"], model.layers):
        clone = type(layer)(**entry["config"])
        assert clone.config() == layer.config()


# --- one layer object at two positions ---------------------------------------------------

def _losses(layers, epochs=5):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 4)).astype(np.float32)
    y = (X[:, 0] * X[:, 1] > 0).astype(np.int64)
    backendnn.seed(0)
    model = Sequential(layers(), CrossEntropy())
    dl = DataLoader(Dataset(X, y), batch_size=16, shuffle=True)
    return Trainer(model, SGD(model, lr=0.5), dl).train(epochs, log_level=0).loss


def test_a_reused_relu_trains_like_separate_ones():
    """`r = ReLU()` at two places: each position gets its own forward cache."""
    def shared():
        r = ReLU()
        return [Linear(4, 16), r, Linear(16, 16), r, Linear(16, 2)]

    def separate():
        return [Linear(4, 16), ReLU(), Linear(16, 16), ReLU(), Linear(16, 2)]

    np.testing.assert_allclose(_losses(shared), _losses(separate), rtol=1e-6)


def test_a_reused_linear_is_refused_naming_both_positions():
    shared = Linear(4, 4)
    with pytest.raises(ValueError, match=r"same Linear object is at positions 0 and 2.*separate Linear"):
        Sequential([shared, ReLU(), shared], MeanSquaredError())
    bn = BatchNorm1d(4)
    with pytest.raises(ValueError, match="positions 1 and 3"):
        Sequential([Linear(4, 4), bn, Linear(4, 4), bn], MeanSquaredError())


def test_parameterless_layers_follow_a_float64_model(backend):
    model = model_on(backend).to(backend, "float64")
    assert {layer.dtype for layer in model.layers} == {"float64"}
    x = backend.asarray(np.ones((5, 4)), dtype="float64")
    model.loss(x, backend.asarray(np.zeros(5, np.int64)))
    assert model.backward(input_grad=True).dtype == backend.dtype("float64")


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 9), st.integers(0, 2**31 - 1))
def test_per_sample_losses_do_not_depend_on_the_batch(n, seed):
    """A sample's loss is the same alone as in any batch (eval mode: no batch
    statistics), and the mean loss's gradient is the mean of the samples'."""
    rng = np.random.default_rng(seed)
    model = model_on("numpy", "float64").eval()
    X = rng.normal(size=(n, 4))
    y = rng.integers(0, 3, n)
    together = model.loss(X, y)
    model.backward()
    grad = model.layers[0].grad_w.copy()
    alone, grads = [], []
    for i in range(n):
        alone.append(model.loss(X[i:i + 1], y[i:i + 1])[0])
        model.backward()
        grads.append(model.layers[0].grad_w.copy())
    np.testing.assert_allclose(together, alone, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad, np.mean(grads, axis=0), rtol=1e-10, atol=1e-12)


# --- layers written for the old gradient convention ---------------------------------------

class _Gain:
    """y = x * gain, gain (n,); subclasses differ only in how they reduce grad_gain."""

    param_names = ("gain",)
    grad_names = ("grad_gain",)

    def __init__(self, n, **kw):
        super().__init__(**kw)
        self.gain = self.backend.asarray(np.linspace(0.5, 1.5, n), dtype=self.dtype)
        self.grad_gain = None

    def forward(self, x):
        self.x = x
        return x * self.gain

    def _clear(self):
        self.x = None


class OldGain(_Gain, backendnn.Layer):
    """Written for backendnn 0.1: parameter gradients as batch means."""

    def backward(self, grad):
        self.grad_gain = self.xp.mean(grad * self.x, axis=0)
        return grad * self.gain


class NewGain(_Gain, backendnn.Layer):
    """Written for the convention now: sums, and says so."""

    grad_reduction = "sum"

    def backward(self, grad):
        self.grad_gain = self.xp.sum(grad * self.x, axis=0)
        return grad * self.gain


def test_a_layer_written_for_batch_means_still_gets_the_right_gradient(backend, rng):
    x = backend.asarray(rng.normal(size=(6, 3)), dtype="float32")
    y = backend.asarray(rng.normal(size=(6, 1)), dtype="float32")
    grads = []
    for kind in (OldGain, NewGain):
        backendnn.seed(0)
        with backendnn.use_backend(backend):
            model = Sequential([Linear(3, 3), kind(3), Linear(3, 1)], MeanSquaredError())
        model.loss(x, y)
        if kind is OldGain:
            _WARNED.discard(OldGain)  # the warning comes once per class and process
            with pytest.warns(FutureWarning, match=r"OldGain does not declare grad_reduction"):
                model.backward()
        else:
            model.backward()
        grads.append([host(backend, p.grad) for p in model.parameters()])
    for old, new in zip(*grads):
        np.testing.assert_allclose(old, new, rtol=1e-5, atol=1e-7)


class OlderGain(OldGain):
    """A subclass of an old-style layer calling its backward: rescaled once."""

    def backward(self, grad):
        return super().backward(grad)


def test_an_old_style_subclass_is_rescaled_once(rng):
    x = rng.normal(size=(5, 3)).astype(np.float32)
    grads = []
    for kind in (OlderGain, NewGain):
        layer = kind(3)
        layer(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            layer.backward(np.ones((5, 3), np.float32) / 5)
        grads.append(layer.grad_gain)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-6)
