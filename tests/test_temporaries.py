"""Sequential's temporaries: a layer that says it returns fresh arrays does, on every
backend, and ReLU writing into them changes no value, no input and no kept array."""
import numpy as np
import pytest
from conftest import host

from backendnn import (SGD, AvgPool2d, BatchNorm2d, Conv2d, CrossEntropy, Flatten,
                       Linear, MaxPool2d, ReLU, Sequential)
from backendnn.layers import Layer


def _kept(layer):
    """Every array reachable from a layer's attributes: its parameters, saved state
    (tuples, dicts, the backends' saved-state objects) and workspaces."""
    found, seen, todo = [], set(), list(vars(layer).values())
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if hasattr(obj, "shape") and hasattr(obj, "dtype"):
            found.append(obj)
        elif isinstance(obj, dict):
            todo += obj.values()
        elif isinstance(obj, (list, tuple)):
            todo += obj
        elif type(obj).__module__.startswith("backendnn.") and not hasattr(obj, "xp"):
            # a backend's saved state (slots or a __dict__); not a backend or a layer
            names = getattr(type(obj), "__slots__", ()) or vars(obj)
            todo += [getattr(obj, name, None) for name in names]
    return found


def _assert_fresh(backend, out, others, what):
    """`out` shares memory with none of `others`, seen through `to_numpy`'s views of
    host memory (a device backend's are copies: nothing to compare there)."""
    mem = backend.to_numpy(out)
    if not np.shares_memory(mem, backend.to_numpy(out)):
        pytest.skip(f"{backend.name}'s to_numpy copies: no host view to compare")
    for other in others:
        other_mem = backend.to_numpy(other)
        if other_mem.size:
            assert not np.shares_memory(mem, other_mem), what


LAYERS = {
    "linear": (lambda b: Linear(12, 5, backend=b), (4, 12)),
    "conv 3x3 same": (lambda b: Conv2d(16, 16, 3, padding=1, backend=b), (2, 16, 7, 6)),
    "conv 3 channels": (lambda b: Conv2d(3, 4, 3, padding=1, backend=b), (2, 3, 6, 6)),
    "conv stride 2": (lambda b: Conv2d(4, 6, 3, stride=2, backend=b), (2, 4, 9, 8)),
    "conv 1x1": (lambda b: Conv2d(4, 4, 1, bias=False, backend=b), (2, 4, 5, 5)),
    "conv groups": (lambda b: Conv2d(4, 8, 3, groups=4, padding=1, backend=b), (2, 4, 5, 5)),
    "max pool 2x2": (lambda b: MaxPool2d(2, backend=b), (2, 3, 6, 8)),
    "max pool odd": (lambda b: MaxPool2d(2, backend=b), (2, 3, 7, 5)),
    "max pool 1x1": (lambda b: MaxPool2d(1, backend=b), (2, 3, 4, 4)),
    "max pool 3x3 padded": (lambda b: MaxPool2d(3, stride=1, padding=1, backend=b), (2, 3, 5, 5)),
    "avg pool 1x1": (lambda b: AvgPool2d(1, backend=b), (2, 3, 4, 4)),
    "avg pool 2x2": (lambda b: AvgPool2d(2, backend=b), (2, 3, 6, 6)),
    "batch norm": (lambda b: BatchNorm2d(3, backend=b), (2, 3, 4, 4)),
    "batch norm, eval": (lambda b: BatchNorm2d(3, backend=b).eval(), (2, 3, 4, 4)),
}


@pytest.mark.parametrize("case", LAYERS)
def test_fresh_outputs_and_input_grads(backend, rng, case):
    """What `_fresh_output` and `_fresh_input_grad` promise: the result shares no
    memory with the argument or with anything the layer keeps."""
    make, shape = LAYERS[case]
    layer = make(backend)
    assert layer._fresh_output and layer._fresh_input_grad
    x = backend.asarray(rng.normal(0, 1, shape).astype(np.float32))
    y = layer.forward(x)
    if layer.param_names:  # the helper finds what a layer keeps
        assert len(_kept(layer)) > len(layer.param_names)
    _assert_fresh(backend, y, [x, *_kept(layer)], "forward's output")
    grad = backend.asarray(rng.normal(0, 1, tuple(y.shape)).astype(np.float32))
    kept = [grad, *_kept(layer)]
    gx = layer.backward(grad)
    _assert_fresh(backend, gx, [*kept, *_kept(layer)], "backward's input gradient")


def _model(backend, last_relu=False):
    layers = [ReLU(backend=backend), Conv2d(2, 16, 3, padding=1, backend=backend),
              ReLU(backend=backend), MaxPool2d(2, backend=backend),
              Conv2d(16, 16, 3, padding=1, backend=backend), BatchNorm2d(16, backend=backend),
              ReLU(backend=backend), Flatten(backend=backend),
              Linear(16 * 9, 7, backend=backend), ReLU(backend=backend),
              Linear(7, 3, backend=backend)]
    if last_relu:  # the criterion's kept gradient goes straight into a ReLU
        layers.append(ReLU(backend=backend))
    return Sequential(layers, CrossEntropy(backend=backend))


def _layer_by_layer(model, x, y):
    """(output, dL/dx) of `model` run one layer at a time with plain forward and
    backward, none of Sequential's in-place or paired calls."""
    h = x
    for layer in model.layers:
        h = layer.forward(h)
    model.criterion(h, y)
    g = model.criterion.backward()
    for layer in reversed(model.layers):
        g = layer.backward(g)
    return h, g


@pytest.mark.parametrize("last_relu", [False, True])
def test_in_place_relu_changes_nothing_else(backend, rng, last_relu):
    """A model run by Sequential (ReLUs writing into fresh outputs and gradients)
    against the same model run layer by layer with plain forward and backward: the
    same output, input gradient and parameter gradients, bit for bit; the caller's
    input and the criterion's gradient are not written."""
    import backendnn

    models = []
    for _ in range(2):
        backendnn.seed(3)
        models.append(_model(backend, last_relu))
    x_np = rng.normal(0, 1, (4, 2, 6, 6)).astype(np.float32)
    x = backend.asarray(x_np.copy())
    y = backend.asarray(rng.integers(0, 3, 4))

    seq, manual = models
    out = seq(x)
    seq.criterion(out, y)
    loss_grad = host(backend, seq.criterion.backward())
    gx = seq.backward(input_grad=True)
    np.testing.assert_array_equal(host(backend, x), x_np)
    np.testing.assert_array_equal(host(backend, seq.criterion.backward()), loss_grad)

    h, g = _layer_by_layer(manual, x, y)
    np.testing.assert_array_equal(host(backend, out), host(backend, h))
    np.testing.assert_array_equal(host(backend, gx), host(backend, g))
    for p, q in zip(seq.parameters(), manual.parameters()):
        np.testing.assert_array_equal(host(backend, p.grad), host(backend, q.grad))


def test_training_is_unchanged_by_in_place_relu(rng):
    """Three SGD steps of a model whose ReLUs write in place and of one whose ReLUs
    cannot (a subclass without the owned variants): the same weights."""

    class PlainReLU(ReLU):
        _forward_owned = ReLU.forward
        _backward_owned = ReLU.backward

    def net(relu):
        import backendnn

        backendnn.seed(5)
        return Sequential([Linear(10, 16), relu(), Linear(16, 16), relu(), Linear(16, 4)],
                          CrossEntropy())

    a, b = net(ReLU), net(PlainReLU)
    opts = [SGD(a, lr=0.1, momentum=0.9), SGD(b, lr=0.1, momentum=0.9)]
    for _ in range(3):
        x = rng.normal(0, 1, (8, 10)).astype(np.float32)
        y = rng.integers(0, 4, 8)
        for model, opt in zip((a, b), opts):
            model.criterion(model(x), y)
            model.backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.value, q.value)


def _shapes_of_calls(monkeypatch, method):
    """The shape of the first argument of each call of the NumPy backend's `method`."""
    from backendnn.backends import get

    be, calls = get("numpy"), []
    original = getattr(be, method)
    monkeypatch.setattr(be, method, lambda a, b: calls.append(tuple(a.shape)) or original(a, b))
    return calls


def test_linear_hands_its_bias_to_the_relu_after_it(monkeypatch, rng):
    """Inside a Sequential, each Linear followed by a ReLU leaves its bias to that
    ReLU's one pass (`bias_relu_`); a Linear subclass that overrides forward runs its
    own forward; the output equals the layers run one by one."""

    class Mine(Linear):
        def forward(self, x):
            return super().forward(x)

    calls = _shapes_of_calls(monkeypatch, "bias_relu_")
    model = Sequential([Linear(5, 6), ReLU(), Mine(6, 4), ReLU(), Linear(4, 3), ReLU()],
                       CrossEntropy())
    x = rng.normal(0, 1, (8, 5)).astype(np.float32)
    out = model(x)
    assert calls == [(8, 6), (8, 3)]
    assert Linear._bias_to_next and not Mine._bias_to_next and ReLU._takes_bias
    h = x
    for layer in model.layers:
        h = layer.forward(h)
    np.testing.assert_array_equal(out, h)


def test_relu_sums_the_bias_gradient_of_the_linear_before_it(monkeypatch, rng):
    """In backward, a ReLU after a Linear masks the gradient and sums it for that
    Linear's grad_b in one call (`backprop_relu_sum_`); not for a Linear subclass that
    overrides backward, nor where the ReLU's gradient is not its own (after Mine,
    whose backward is not fresh); the gradients equal the layers run one by one, bit
    for bit."""

    class Mine(Linear):
        def backward(self, grad):
            return super().backward(grad)

    calls = _shapes_of_calls(monkeypatch, "backprop_relu_sum_")

    def net():
        import backendnn

        backendnn.seed(2)
        return Sequential([Linear(5, 6), ReLU(), Linear(6, 6), ReLU(), Mine(6, 4), ReLU(),
                           Linear(4, 3)], CrossEntropy())

    seq, manual = net(), net()
    x, y = rng.normal(0, 1, (8, 5)).astype(np.float32), rng.integers(0, 3, 8)
    seq.criterion(seq(x), y)
    seq.backward()
    assert calls == [(8, 6)]  # the ReLU after Linear(6, 6) is owned but follows Mine
    assert Linear._takes_bias_grad and not Mine._takes_bias_grad and ReLU._gives_bias_grad
    _layer_by_layer(manual, x, y)
    for p, q in zip(seq.parameters(), manual.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad)


def test_a_subclass_that_overrides_forward_is_not_taken_as_fresh():
    class KeepsOutput(Linear):
        def forward(self, x):
            self.out = super().forward(x)
            return self.out

    class SaysSo(Linear):
        _fresh_output = True

        def forward(self, x):
            return super().forward(x)

    assert Linear._fresh_output and not KeepsOutput._fresh_output
    assert KeepsOutput._fresh_input_grad  # backward not overridden
    assert SaysSo._fresh_output
    assert not Layer._fresh_output and not Flatten._fresh_output
    assert not BatchNorm2d(3, affine=False)._fresh_output  # y is x_hat, which it keeps

    layer = KeepsOutput(3, 2)
    model = Sequential([layer, ReLU()])
    out = model(np.array([[1.0, -2.0, 3.0]], np.float32))
    assert out is not layer.out
    assert (layer.out < 0).any() or (out == layer.out).all()
