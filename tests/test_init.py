"""Initialisers: the formulas' bounds and spreads, torch.nn.init's conventions, and the
same weights from the same seed on every backend."""
import functools
import math

import numpy as np
import pytest
from conftest import host

import backendnn
from backendnn import Linear, init
from backendnn.backends import host_rng

SHAPE = (200, 300)  # (n_inp, n_out): fan_in 200, fan_out 300; 60,000 draws
FAN_IN, FAN_OUT = SHAPE

# name -> (kind, scale): uniform in ±scale, or normal with std scale
EXPECTED = {
    "default": ("uniform", 1 / math.sqrt(FAN_IN)),
    "xavier_uniform": ("uniform", math.sqrt(6 / (FAN_IN + FAN_OUT))),
    "xavier_normal": ("normal", math.sqrt(2 / (FAN_IN + FAN_OUT))),
    "kaiming_uniform": ("uniform", math.sqrt(6 / FAN_IN)),
    "kaiming_normal": ("normal", math.sqrt(2 / FAN_IN)),
}
NAMES = list(EXPECTED)



def check_distribution(w, kind, scale):
    """Plausible for 60,000 draws: the spread within 2% (~7 standard errors), the mean
    within 5 standard errors of 0, and the shape of the distribution."""
    n = w.size
    if kind == "uniform":
        std = scale / math.sqrt(3)
        assert np.abs(w).max() <= scale
        assert np.abs(w).max() > 0.995 * scale
    else:
        std = scale
        beyond = np.mean(np.abs(w) > 2 * std)  # 4.55% for a normal, 0 for a uniform
        assert 0.040 < beyond < 0.051
    assert abs(w.std() / std - 1) < 0.02
    assert abs(w.mean()) < 5 * std / math.sqrt(n)


@pytest.mark.parametrize("name", NAMES)
def test_bounds_and_spread(name):
    backendnn.seed(11)
    w = init.get(name)(SHAPE, backend="numpy", dtype="float64")
    assert w.shape == SHAPE
    check_distribution(w, *EXPECTED[name])


@pytest.mark.parametrize("fn, kw, kind, scale", [
    (init.kaiming_uniform, {"mode": "fan_out"}, "uniform", math.sqrt(6 / FAN_OUT)),
    (init.kaiming_normal, {"mode": "fan_out", "nonlinearity": "tanh"}, "normal",
     5 / 3 / math.sqrt(FAN_OUT)),
    (init.kaiming_normal, {"a": 0.2}, "normal", math.sqrt(2 / 1.04) / math.sqrt(FAN_IN)),
    (init.xavier_uniform, {"gain": 2.0}, "uniform", 2 * math.sqrt(6 / (FAN_IN + FAN_OUT))),
])
def test_options(fn, kw, kind, scale):
    backendnn.seed(12)
    check_distribution(fn(SHAPE, backend="numpy", dtype="float64", **kw), kind, scale)


@pytest.mark.parametrize("name, kw", [
    ("xavier_uniform", {}), ("xavier_normal", {}), ("kaiming_uniform", {}),
    ("kaiming_normal", {}), ("kaiming_uniform", {"mode": "fan_out"}),
    ("kaiming_normal", {"mode": "fan_out", "nonlinearity": "relu"}),
])
def test_same_spread_as_torch_nn_init_on_the_transposed_weight(name, kw):
    """torch keeps Linear weights as (n_out, n_inp): its fans must be ours."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    reference = torch.empty(SHAPE[::-1], dtype=torch.float64)
    getattr(torch.nn.init, name + "_")(reference, **kw)
    reference = reference.numpy()
    backendnn.seed(13)
    ours = getattr(init, name)(SHAPE, backend="numpy", dtype="float64", **kw)
    assert abs(ours.std() / reference.std() - 1) < 0.03
    if name.endswith("uniform"):
        assert abs(np.abs(ours).max() / np.abs(reference).max() - 1) < 0.01


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_weights_on_every_backend(backend, name, dtype):
    fn = init.get(name)
    backendnn.seed(21)
    w = fn((7, 5), backend=backend, dtype=dtype)
    backendnn.seed(21)
    again = fn((7, 5), backend=backend, dtype=dtype)
    backendnn.seed(21)
    reference = fn((7, 5), backend="numpy", dtype=dtype)
    assert backend.owns(w) and w.dtype == backend.dtype(dtype)
    np.testing.assert_array_equal(host(backend, w), host(backend, again))
    np.testing.assert_array_equal(host(backend, w), reference.astype(np.float64))
    backendnn.seed(22)
    assert not np.array_equal(host(backend, fn((7, 5), backend=backend, dtype=dtype)),
                              host(backend, w))


def test_linear_default_is_the_seed_uniform(backend):
    backendnn.seed(3)
    layer = Linear(30, 20, backend=backend)
    backendnn.seed(3)
    k = 1 / math.sqrt(30)
    expected = host_rng().uniform(-k, k, (30, 20)).astype(np.float32)
    np.testing.assert_array_equal(host(backend, layer.weights), expected.astype(np.float64))
    assert layer.init == "default"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_linear_takes_a_name_or_a_callable(backend, dtype):
    backendnn.seed(4)
    layer = Linear(30, 20, init="he_normal", backend=backend, dtype=dtype)
    backendnn.seed(4)
    expected = init.kaiming_normal((30, 20), backend="numpy", dtype=dtype)
    np.testing.assert_array_equal(host(backend, layer.weights), expected.astype(np.float64))
    assert layer.weights.dtype == backend.dtype(dtype) and layer.init == "he_normal"
    np.testing.assert_array_equal(host(backend, layer.bias), np.zeros(20))

    wide = functools.partial(init.xavier_uniform, gain=init.calculate_gain("tanh"))
    backendnn.seed(4)
    layer = Linear(30, 20, init=wide, backend=backend, dtype=dtype)
    backendnn.seed(4)
    expected = init.xavier_uniform((30, 20), gain=5 / 3, backend="numpy", dtype=dtype)
    np.testing.assert_array_equal(host(backend, layer.weights), expected.astype(np.float64))
    assert layer.init == "default"  # a name `init.get` accepts, for configs
    assert Linear(3, 2, init=init.xavier_normal, backend=backend).init == "xavier_normal"


def test_linear_casts_a_callables_numpy_float64_to_its_dtype(backend):
    def host_normal(shape, *, backend=None, dtype="float32"):
        return host_rng().normal(size=shape)  # float64 NumPy, whatever is asked

    layer = Linear(3, 2, init=host_normal, backend=backend)
    assert backend.owns(layer.weights) and layer.weights.dtype == backend.dtype("float32")
    def torch_layout(shape, **kw):
        return host_normal(shape[::-1])

    with pytest.raises(ValueError, match=r"torch_layout returned weights of shape \(2, 3\), "
                                         r"expected \(3, 2\)"):
        Linear(3, 2, init=torch_layout, backend=backend)


def test_calculate_gain_matches_torch():
    torch = pytest.importorskip("torch")
    for name in ("linear", "sigmoid", "tanh", "relu", "selu", "conv2d"):
        assert math.isclose(init.calculate_gain(name), torch.nn.init.calculate_gain(name))
    for slope in (None, 0, 0.2):
        assert math.isclose(init.calculate_gain("leaky_relu", slope),
                            torch.nn.init.calculate_gain("leaky_relu", slope))


@pytest.mark.parametrize("call, error, match", [
    (lambda: Linear(3, 2, init="glorot"), ValueError, r"unknown initialiser 'glorot'; choose one of \["),
    (lambda: Linear(3, 2, init=0.1), TypeError, "`init` must be an initialiser name or a callable"),
    (lambda: init.xavier_uniform((5,)), ValueError, r"`shape` must be a tuple of at least two positive ints"),
    (lambda: init.default_uniform((5, 0)), ValueError, "`shape`"),
    (lambda: init.kaiming_normal((5, 3), mode="fan_avg"), ValueError, "`mode` must be 'fan_in' or 'fan_out'"),
    (lambda: init.kaiming_uniform((5, 3), nonlinearity="gelu"), ValueError, "unknown nonlinearity 'gelu'"),
    (lambda: init.xavier_normal((5, 3), gain=-1.0), ValueError, "`gain` must be a number >= 0"),
])
def test_bad_arguments_are_refused(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_fans_of_a_receptive_field():
    assert init.fans((4, 6)) == (4, 6)
    assert init.fans((4, 6, 3, 3)) == (36, 54)
