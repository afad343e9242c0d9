"""`Sequential.backward(optimizer=opt)`: the step made inside backward gives the same
parameters and optimiser state as `backward()` then `opt.step()`, on every backend."""
import numpy as np
import pytest
from conftest import host

import backendnn as bn

OPTIMIZERS = {
    "sgd": lambda m: bn.SGD(m, lr=0.1),
    "sgd_momentum_wd": lambda m: bn.SGD(m, lr=0.05, momentum=0.9, weight_decay=1e-3,
                                        nesterov=True),
    "adam": lambda m: bn.Adam(m, lr=1e-2),
    "rmsprop_groups": lambda m: bn.RMSprop(
        [{"params": m.layers[0]}, {"params": [p for l in m.layers[1:] for p in l.parameters()], "lr": 1e-3}], lr=1e-2,
        momentum=0.5),
}


SHAPES = {"mlp": (5, 6), "cnn": (5, 2, 4, 4), "products": (5, 256)}


def _model(backend, kind):
    if kind == "cnn":
        layers = [bn.Conv2d(2, 3, 3, padding=1, backend=backend), bn.ReLU(backend=backend),
                  bn.MaxPool2d(2, backend=backend), bn.Flatten(backend=backend),
                  bn.Linear(3 * 2 * 2, 4, backend=backend)]
    elif kind == "products":  # 40,960 first-layer weights: plain SGD's step in the product
        layers = [bn.Linear(256, 160, backend=backend), bn.ReLU(backend=backend),
                  bn.Linear(160, 4, backend=backend)]
    else:
        layers = [bn.Linear(6, 8, backend=backend), bn.ReLU(backend=backend),
                  bn.Linear(8, 8, backend=backend), bn.ReLU(backend=backend),
                  bn.Linear(8, 4, backend=backend)]
    return bn.Sequential(layers, bn.CrossEntropy(backend=backend))


def _run(backend, kind, make_opt, fused, steps=3):
    bn.seed(5)
    model = _model(backend, kind)
    opt = make_opt(model)
    rng = np.random.default_rng(0)
    shape = SHAPES[kind]
    for _ in range(steps):
        x = backend.asarray(rng.normal(size=shape).astype(np.float32))
        y = backend.asarray(rng.integers(0, 4, 5))
        model.criterion(model(x), y)
        if fused:
            model.backward(optimizer=opt)
        else:
            model.backward()
            opt.step()
    state = [{k: (v if isinstance(v, int) else host(backend, v)) for k, v in s.items()}
             for s in opt.state]
    return [host(backend, p.value) for p in model.parameters()], state, opt.step_count


@pytest.mark.parametrize("kind", list(SHAPES))
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_step_in_backward_equals_two_passes(backend, name, kind):
    params, state, count = _run(backend, kind, OPTIMIZERS[name], fused=True)
    params2, state2, count2 = _run(backend, kind, OPTIMIZERS[name], fused=False)
    assert count == count2 == 3
    for a, b in zip(params, params2):
        np.testing.assert_array_equal(a, b)
    for s, s2 in zip(state, state2):
        assert s.keys() == s2.keys()
        for k in s:
            np.testing.assert_array_equal(s[k], s2[k])


def test_parameters_outside_the_model_are_still_updated():
    bn.seed(1)
    model = _model("numpy", "mlp")
    other = bn.Linear(3, 2, backend="numpy")
    opt = bn.SGD(model.parameters() + other.parameters(), lr=0.1)
    other.grad_w = np.ones((3, 2), np.float32)
    other.grad_b = np.ones(2, np.float32)
    before = other.weights.copy()
    x = np.zeros((2, 6), np.float32)
    model.criterion(model(x), np.array([0, 1]))
    model.backward(optimizer=opt)
    np.testing.assert_allclose(other.weights, before - 0.1)
    assert opt._pending == {}


def test_a_params_list_changed_in_place_is_noticed():
    """The index of parameters by layer is made again when a group's list changes in
    place: a parameter put in place of another is updated inside backward too."""
    bn.seed(2)
    model = _model("numpy", "mlp")
    opt = bn.SGD(model, lr=0.1)
    x, y = np.ones((2, 6), np.float32), np.array([0, 1])
    model.criterion(model(x), y)
    model.backward(optimizer=opt)
    other = bn.Linear(6, 8, backend="numpy")
    params = opt.param_groups[0]["params"]
    params[0] = other.parameters()[0]  # the same shape as the weights it replaces
    other.grad_w = np.ones((6, 8), np.float32)
    before_other, before_first = other.weights.copy(), model.layers[0].weights.copy()
    model.criterion(model(x), y)
    model.backward(optimizer=opt)
    np.testing.assert_allclose(other.weights, before_other - 0.1)
    np.testing.assert_array_equal(model.layers[0].weights, before_first)
