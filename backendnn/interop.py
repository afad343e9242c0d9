"""PyTorch interop: `from_torch(module)` builds a backendnn `Sequential` from a
`torch.nn.Sequential` with its weights; `to_torch(model)` builds the torch module back.

    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    model = from_torch(net, CrossEntropy())          # same outputs, on the current backend
    back = to_torch(model)                            # a torch.nn.Sequential again

Supported layers: Linear, ReLU, LeakyReLU, Sigmoid, Tanh, Softmax (last axis), Dropout,
Dropout2d, BatchNorm1d, BatchNorm2d, LayerNorm (one normalised axis), Flatten, Identity,
Conv2d (zero padding), MaxPool2d and AvgPool2d (torch's defaults for ceil_mode,
dilation, count_include_pad), AdaptiveAvgPool2d; nested `nn.Sequential`s are flattened.
Anything else is refused, naming the module and what would be needed.

Layouts: backendnn's `Linear` stores weights as (n_inp, n_out), the transpose of
torch's `weight` (out_features, in_features); both functions transpose. Conv2d weights
share torch's layout (out, in/groups, kh, kw). A torch `Linear(bias=False)` becomes a
backendnn `Linear` with a zero bias (trainable here). Outputs agree within float32
rounding; the training mode of each layer is kept.

torch is needed only here, and is loaded through the backend registry (the `torch`
backend, `pip install 'backendnn[torch]'`): the rest of backendnn never imports it.
"""
from __future__ import annotations

from .backends import get_backend, to_host
from .layers import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Dropout2d,
    Flatten,
    Identity,
    LayerNorm,
    LeakyReLU,
    Linear,
    MaxPool2d,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from .model import Sequential

__all__ = ["from_torch", "to_torch"]

_SIMPLE = {"ReLU": ReLU, "Sigmoid": Sigmoid, "Tanh": Tanh, "Identity": Identity}


class InteropError(TypeError):
    """A module or layer with no counterpart on the other side."""


def _host(t):
    """A torch tensor as a host array (bfloat16 through float32, which NumPy lacks)."""
    t = t.detach()
    if str(t.dtype) == "torch.bfloat16":
        t = t.float()
    return to_host(t)


def _refuse(i, m, why: str):
    msg = f"from_torch: module {i} ({m!r}) is not supported: {why}"
    raise InteropError(msg)


def _from_module(i, m, kw):
    """(layer, {name: host array}) for one torch module."""
    name = type(m).__name__
    if name in _SIMPLE:
        return _SIMPLE[name](**kw), {}
    if name == "LeakyReLU":
        return LeakyReLU(m.negative_slope, **kw), {}
    if name == "Softmax":
        if m.dim not in (-1, 1):
            _refuse(i, m, "backendnn's Softmax is over the last axis (dim=-1, or dim=1 of 2-d inputs)")
        return Softmax(**kw), {}
    if name in ("Dropout", "Dropout2d"):
        return (Dropout if name == "Dropout" else Dropout2d)(m.p, **kw), {}
    if name == "Flatten":
        return Flatten(m.start_dim, m.end_dim, **kw), {}
    if name == "Linear":
        w = _host(m.weight).T
        b = _host(m.bias) if m.bias is not None else w[0] * 0
        return Linear(m.in_features, m.out_features, **kw), {"weights": w, "bias": b}
    if name in ("BatchNorm1d", "BatchNorm2d"):
        if m.momentum is None or not m.track_running_stats:
            _refuse(i, m, "needs momentum set and track_running_stats=True")
        cls = BatchNorm1d if name == "BatchNorm1d" else BatchNorm2d
        layer = cls(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine, **kw)
        state = {"running_mean": _host(m.running_mean), "running_var": _host(m.running_var)}
        if m.affine:
            state.update(gamma=_host(m.weight), beta=_host(m.bias))
        return layer, state
    if name == "LayerNorm":
        if len(m.normalized_shape) != 1:
            _refuse(i, m, "backendnn's LayerNorm normalises the last axis only")
        layer = LayerNorm(m.normalized_shape[0], eps=m.eps,
                          elementwise_affine=m.elementwise_affine, **kw)
        state = {}
        if m.elementwise_affine:
            w = _host(m.weight)
            state = {"gamma": w, "beta": _host(m.bias) if m.bias is not None else w * 0}
        return layer, state
    if name == "Conv2d":
        if m.padding_mode != "zeros":
            _refuse(i, m, f"padding_mode={m.padding_mode!r}: only 'zeros' is supported")
        padding = m.padding if isinstance(m.padding, str) else list(m.padding)
        layer = Conv2d(m.in_channels, m.out_channels, list(m.kernel_size), list(m.stride),
                       padding, list(m.dilation), m.groups, m.bias is not None, **kw)
        state = {"weights": _host(m.weight)}
        if m.bias is not None:
            state["bias"] = _host(m.bias)
        return layer, state
    if name == "MaxPool2d":
        if m.ceil_mode or m.return_indices or m.dilation not in (1, (1, 1)):
            _refuse(i, m, "needs ceil_mode=False, dilation=1 and return_indices=False")
        return MaxPool2d(m.kernel_size, m.stride, m.padding, **kw), {}
    if name == "AvgPool2d":
        if m.ceil_mode or not m.count_include_pad or m.divisor_override is not None:
            _refuse(i, m, "needs ceil_mode=False, count_include_pad=True, divisor_override=None")
        return AvgPool2d(m.kernel_size, m.stride, m.padding, **kw), {}
    if name == "AdaptiveAvgPool2d":
        size = m.output_size
        if size is None or (isinstance(size, (tuple, list)) and None in size):
            _refuse(i, m, "needs an output size in numbers")
        return AdaptiveAvgPool2d(size, **kw), {}
    _refuse(i, m, "supported: " + ", ".join(sorted(
        [*_SIMPLE, "LeakyReLU", "Softmax", "Dropout", "Dropout2d", "Flatten", "Linear",
         "BatchNorm1d", "BatchNorm2d", "LayerNorm", "Conv2d", "MaxPool2d", "AvgPool2d",
         "AdaptiveAvgPool2d", "Sequential"])))


def _modules(module) -> list:
    if type(module).__name__ == "Sequential":
        return [leaf for child in module.children() for leaf in _modules(child)]
    return [module]


def _dtype_of(module) -> str:
    for p in list(module.parameters()) + list(module.buffers()):
        if p.is_floating_point():
            name = str(p.dtype).rsplit(".", 1)[-1]
            return name if name in ("float16", "float32", "float64", "bfloat16") else "float32"
    return "float32"


def from_torch(module, criterion=None, *, backend=None, dtype: str | None = None) -> Sequential:
    """A `Sequential` with the layers and weights of a torch module.

    Args:
        module: a `torch.nn.Sequential` of supported layers (nested ones flattened),
            or one supported layer.
        criterion: the backendnn `Loss` of the new model (torch modules carry none).
        backend: where the model computes (default: the current backend).
        dtype: default: the module's parameter dtype (float32 for none).

    Raises InteropError (a TypeError) naming the first unsupported module.
    """
    if not hasattr(module, "children") or not hasattr(module, "parameters"):
        msg = f"from_torch: expected a torch.nn.Module, got {type(module).__name__}"
        raise TypeError(msg)
    backend = get_backend(backend)
    dtype = dtype or _dtype_of(module)
    kw = {"backend": backend, "dtype": dtype}
    layers, state = [], {}
    for i, m in enumerate(_modules(module)):
        layer, arrays = _from_module(i, m, kw)
        layer.train(bool(m.training))
        layers.append(layer)
        state.update({f"layers.{i}.{k}": v for k, v in arrays.items()})
    model = Sequential(layers, criterion, backend=backend)
    model.load_state_dict(state, strict=True)
    return model


def _torch():
    return get_backend("torch").module


def _to_module(nn, layer):
    """(torch module, {torch name: our state name, transposed?}) for one layer."""
    if isinstance(layer, (ReLU, Sigmoid, Tanh, Identity)):
        return getattr(nn, type(layer).__name__)(), {}
    if isinstance(layer, LeakyReLU):
        return nn.LeakyReLU(layer.negative_slope), {}
    if isinstance(layer, Softmax):
        return nn.Softmax(dim=-1), {}
    if isinstance(layer, Dropout2d):
        return nn.Dropout2d(layer.p), {}
    if isinstance(layer, Dropout):
        return nn.Dropout(layer.p), {}
    if isinstance(layer, Flatten):
        return nn.Flatten(layer.start_dim, layer.end_dim), {}
    if isinstance(layer, Linear):
        return nn.Linear(layer.n_inp, layer.n_out), {"weight": ("weights", True),
                                                      "bias": ("bias", False)}
    if isinstance(layer, BatchNorm1d):
        cls = nn.BatchNorm2d if isinstance(layer, BatchNorm2d) else nn.BatchNorm1d
        names = {"running_mean": ("running_mean", False), "running_var": ("running_var", False)}
        if layer.affine:
            names.update(weight=("gamma", False), bias=("beta", False))
        return cls(layer.num_features, eps=layer.eps, momentum=layer.momentum,
                   affine=layer.affine), names
    if isinstance(layer, LayerNorm):
        names = {"weight": ("gamma", False), "bias": ("beta", False)} \
            if layer.elementwise_affine else {}
        return nn.LayerNorm(layer.normalized_shape, eps=layer.eps,
                            elementwise_affine=layer.elementwise_affine), names
    if isinstance(layer, Conv2d):
        padding = layer.padding if isinstance(layer.padding, str) else tuple(layer.padding)
        names = {"weight": ("weights", False)}
        if layer.use_bias:
            names["bias"] = ("bias", False)
        return nn.Conv2d(layer.in_channels, layer.out_channels, tuple(layer.kernel_size),
                         tuple(layer.stride), padding, tuple(layer.dilation), layer.groups,
                         layer.use_bias), names
    if isinstance(layer, (MaxPool2d, AvgPool2d)):
        cls = nn.MaxPool2d if isinstance(layer, MaxPool2d) else nn.AvgPool2d
        return cls(tuple(layer.kernel_size), tuple(layer.stride), tuple(layer.padding)), {}
    if isinstance(layer, AdaptiveAvgPool2d):
        return nn.AdaptiveAvgPool2d(tuple(layer.output_size)), {}
    return None, None


def to_torch(model, *, device=None):
    """A `torch.nn.Sequential` with the layers and weights of a backendnn `Sequential`
    (the criterion is not converted), in the model's dtype, on `device` (default: the
    model's device when it computes on torch, else the CPU), each layer in its mode.

    Raises InteropError naming the first layer torch has no counterpart for, and
    BackendUnavailableError when torch is not installed."""
    torch = _torch()
    nn = torch.nn
    state = model.state_dict()
    if device is None:
        device = model.backend.device if model.backend.name == "torch" else "cpu"
    dtype = getattr(torch, model.dtype)
    modules = []
    for i, layer in enumerate(model.layers):
        m, names = _to_module(nn, layer)
        if m is None:
            msg = f"to_torch: layer {i} ({layer!r}) has no torch counterpart here"
            raise InteropError(msg)
        m = m.to(device=device, dtype=dtype)
        with torch.no_grad():
            for torch_name, (ours, transpose) in names.items():
                value = model.backend.to_numpy(state[f"layers.{i}.{ours}"])
                t = torch.as_tensor(value.T if transpose else value)
                getattr(m, torch_name).copy_(t)
        m.train(layer.training)
        modules.append(m)
    seq = nn.Sequential(*modules)
    seq.training = model.training  # the container alone: each layer keeps its own mode
    return seq
