"""Weight initialisers, all drawn from the seeded host generator.

Each is `f(shape, *, backend=None, dtype="float32", **options) -> array` and draws
through `backend.uniform` / `backend.normal`: the same seed gives the same weights
on every backend. Shapes follow backendnn's layout, (n_inp, n_out) for `Linear`
(the transpose of torch's), so fan_in = shape[0] and fan_out = shape[1]; trailing
dimensions, if any, multiply both (a receptive field).

    Linear(64, 30, init="kaiming_normal")
    Linear(64, 30, init=functools.partial(xavier_uniform, gain=calculate_gain("tanh")))
"""
from __future__ import annotations

import math

from .backends import get_backend

__all__ = [
    "calculate_gain",
    "fans",
    "default_uniform",
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "INITIALIZERS",
    "get",
    "name_of",
]

_LINEAR = ("linear", "identity", "sigmoid", "conv1d", "conv2d", "conv3d",
           "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The gain torch.nn.init recommends for a nonlinearity: 1 (linear, sigmoid),
    5/3 (tanh), sqrt(2) (relu), sqrt(2 / (1 + slope**2)) (leaky_relu, slope
    `param`, default 0.01), 3/4 (selu)."""
    if nonlinearity in _LINEAR:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if not isinstance(slope, (int, float)) or isinstance(slope, bool):
            msg = f"calculate_gain: the leaky_relu slope `param` must be a number, got {param!r}"
            raise ValueError(msg)
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    names = sorted(set(_LINEAR) | {"tanh", "relu", "leaky_relu", "selu"})
    msg = f"calculate_gain: unknown nonlinearity {nonlinearity!r}; choose one of {names}"
    raise ValueError(msg)


def fans(shape) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight shaped (n_inp, n_out, *receptive_field)."""
    shape = _shape(shape, "fans")
    receptive = math.prod(shape[2:])
    return shape[0] * receptive, shape[1] * receptive


def default_uniform(shape, *, backend=None, dtype: str = "float32"):
    """The seed's initialisation: uniform in ±1/sqrt(fan_in) (torch's default for
    nn.Linear weights too). Shape: (n_inp, n_out)."""
    bound = 1.0 / math.sqrt(fans(shape)[0])
    return get_backend(backend).uniform(-bound, bound, _shape(shape), dtype)


def xavier_uniform(shape, *, gain: float = 1.0, backend=None, dtype: str = "float32"):
    """Glorot & Bengio (2010), http://proceedings.mlr.press/v9/glorot10a.html:
    uniform in ±gain * sqrt(6 / (fan_in + fan_out))."""
    _gain(gain, "xavier_uniform")
    fan_in, fan_out = fans(shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return get_backend(backend).uniform(-bound, bound, _shape(shape), dtype)


def xavier_normal(shape, *, gain: float = 1.0, backend=None, dtype: str = "float32"):
    """Glorot & Bengio (2010): normal, mean 0, std gain * sqrt(2 / (fan_in + fan_out))."""
    _gain(gain, "xavier_normal")
    fan_in, fan_out = fans(shape)
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    return get_backend(backend).normal(0.0, std, _shape(shape), dtype)


def kaiming_uniform(shape, *, a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu", backend=None, dtype: str = "float32"):
    """He et al. (2015), https://arxiv.org/abs/1502.01852: uniform in
    ±gain * sqrt(3 / fan), gain = calculate_gain(nonlinearity, a), fan = fan_in or
    fan_out (`mode`). torch.nn.init's defaults: gain sqrt(2), as for ReLU."""
    std = _kaiming_std(shape, a, mode, nonlinearity, "kaiming_uniform")
    bound = math.sqrt(3.0) * std
    return get_backend(backend).uniform(-bound, bound, _shape(shape), dtype)


def kaiming_normal(shape, *, a: float = 0.0, mode: str = "fan_in",
                   nonlinearity: str = "leaky_relu", backend=None, dtype: str = "float32"):
    """He et al. (2015): normal, mean 0, std gain / sqrt(fan) (see kaiming_uniform)."""
    std = _kaiming_std(shape, a, mode, nonlinearity, "kaiming_normal")
    return get_backend(backend).normal(0.0, std, _shape(shape), dtype)


INITIALIZERS = {
    "default": default_uniform,
    "uniform": default_uniform,
    "xavier_uniform": xavier_uniform,
    "glorot_uniform": xavier_uniform,
    "xavier_normal": xavier_normal,
    "glorot_normal": xavier_normal,
    "kaiming_uniform": kaiming_uniform,
    "he_uniform": kaiming_uniform,
    "kaiming_normal": kaiming_normal,
    "he_normal": kaiming_normal,
}


def get(init):
    """The initialiser named `init` (see INITIALIZERS), or `init` itself if callable."""
    if callable(init):
        return init
    if isinstance(init, str):
        try:
            return INITIALIZERS[init.lower()]
        except KeyError:
            pass
        msg = f"unknown initialiser {init!r}; choose one of {sorted(INITIALIZERS)}, or pass a callable"
        raise ValueError(msg)
    msg = ("`init` must be an initialiser name or a callable f(shape, *, backend, dtype), "
           f"got {type(init).__name__}")
    raise TypeError(msg)


def name_of(init) -> str:
    """A name that `get` turns back into `init` (for configs and checkpoints); a
    callable not in INITIALIZERS gives "default"."""
    if isinstance(init, str):
        get(init)
        return init
    return next((name for name, fn in INITIALIZERS.items() if fn is init), "default")


def _shape(shape, owner: str = "initialiser") -> tuple[int, ...]:
    ok = isinstance(shape, (tuple, list)) and len(shape) >= 2
    ok = ok and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
    if not ok:
        msg = (f"{owner}: `shape` must be a tuple of at least two positive ints "
               f"(n_inp, n_out, ...), got {shape!r}")
        raise ValueError(msg)
    return tuple(shape)


def _gain(gain, owner: str) -> None:
    if not isinstance(gain, (int, float)) or isinstance(gain, bool) or gain < 0:
        msg = f"{owner}: `gain` must be a number >= 0, got {gain!r}"
        raise ValueError(msg)


def _kaiming_std(shape, a, mode, nonlinearity, owner: str) -> float:
    if mode not in ("fan_in", "fan_out"):
        msg = f"{owner}: `mode` must be 'fan_in' or 'fan_out', got {mode!r}"
        raise ValueError(msg)
    fan_in, fan_out = fans(shape)
    gain = calculate_gain(nonlinearity, a)
    return gain / math.sqrt(fan_in if mode == "fan_in" else fan_out)
