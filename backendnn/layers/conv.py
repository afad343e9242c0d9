"""2-d convolution over NCHW images."""
from __future__ import annotations

import math

from .. import init as _init
from .._validate import boolean, integer, pair
from .base import Layer, ShapeError


def padding_arg(owner: str, padding, kernel=None, dilation=(1, 1), stride=(1, 1)):
    """`padding` as (top, bottom, left, right): an int, an (h, w) pair, or for
    convolutions "valid" (none) and "same" (stride 1: output as large as the input;
    an even window pads one more row and column after than before, as torch)."""
    if isinstance(padding, str) and kernel is not None:
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                msg = (f"{owner}: padding='same' needs stride 1, got stride {stride}: "
                       "give the padding as numbers")
                raise ValueError(msg)
            out = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                out += [total // 2, total - total // 2]
            return tuple(out)
        msg = f"{owner}: `padding` must be an int, an (h, w) pair, 'same' or 'valid', got {padding!r}"
        raise ValueError(msg)
    if isinstance(padding, str):
        msg = f"{owner}: `padding` must be an int or an (h, w) pair, got {padding!r}"
        raise TypeError(msg)
    ph, pw = pair(owner, "padding", padding, minimum=0)
    return (ph, ph, pw, pw)


def check_nchw(layer, x, channels: int | None) -> None:
    """ShapeError unless x is (batch, channels, H, W)."""
    if x.ndim != 4 or (channels is not None and x.shape[1] != channels):
        c = "C" if channels is None else channels
        msg = (f"{layer!r} expected NCHW input (batch, {c}, H, W), got shape "
               f"{tuple(x.shape)}")
        if x.ndim == 4 and channels is not None and x.shape[3] == channels:
            msg += " (channels last? move them to axis 1)"
        raise ShapeError(msg)


def check_window(layer, x, kernel, padding, dilation=(1, 1)) -> None:
    """ShapeError when the (dilated) window is larger than the padded input."""
    hp = x.shape[2] + padding[0] + padding[1]
    wp = x.shape[3] + padding[2] + padding[3]
    span = (dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1)
    if span[0] > hp or span[1] > wp:
        msg = (f"{layer!r}: the window {span[0]}x{span[1]} is larger than the padded input "
               f"{hp}x{wp} (input shape {tuple(x.shape)})")
        raise ShapeError(msg)


class Conv2d(Layer):
    """2-d cross-correlation: y[n, o] = bias[o] + sum_c weights[o, c] ⋆ x[n, c], as
    `torch.nn.Conv2d`, in groups of in_channels / groups input channels.

    Args:
        in_channels, out_channels: C and O; both divisible by `groups`.
        kernel_size, stride, dilation: an int or an (h, w) pair.
        padding: an int or (h, w) pair of zeros on each side, "valid" (0) or "same"
            (stride 1; an even window pads one more after than before, as torch).
        groups: 1, or split the channels into independent groups (in_channels:
            depthwise). bias: learn a bias.
        init: the weights' initialiser (a name of `backendnn.init.INITIALIZERS` or a
            callable f(shape, *, backend, dtype)), called with the shape
            (C/groups, O, kh, kw) so that its fan_in is C/groups·kh·kw; default:
            uniform in ±1/sqrt(fan_in), torch's default.
        backend, dtype: where the parameters live (default: the current backend, float32).

    Shape: x (N, C, H, W) -> y (N, O, Ho, Wo), Ho = (H + pads - dh (kh - 1) - 1) // sh + 1.
    Attributes: weights (O, C/groups, kh, kw), torch's layout; bias (O,), uniform in
        ±1/sqrt(fan_in) (torch's default), from the seeded host generator.
    After backward: grad_w, grad_b, sums over the batch and positions (grad is
        already that of the batch-mean loss, as for `Linear`).
    The products are the backend's `conv2d` (portable: im2col and one matrix product).

    Example:
        >>> Conv2d(1, 8, 3, padding=1)(x).shape   # x (64, 1, 8, 8)
        (64, 8, 8, 8)
    """

    param_names = ("weights", "bias")
    grad_names = ("grad_w", "grad_b")
    _fresh_output = _fresh_input_grad = True  # new arrays on every backend, not kept

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1,
                 padding=0, dilation=1, groups: int = 1, bias: bool = True, *,
                 init="default", backend=None, dtype: str = "float32"):
        owner = "Conv2d"
        self.in_channels = integer(owner, "in_channels", in_channels, minimum=1)
        self.out_channels = integer(owner, "out_channels", out_channels, minimum=1)
        self.kernel_size = pair(owner, "kernel_size", kernel_size)
        self.stride = pair(owner, "stride", stride)
        self.dilation = pair(owner, "dilation", dilation)
        self.groups = integer(owner, "groups", groups, minimum=1)
        self.use_bias = boolean(owner, "bias", bias)
        for name, value in (("in_channels", self.in_channels),
                            ("out_channels", self.out_channels)):
            if value % self.groups:
                msg = (f"{owner}: `{name}` ({value}) must be divisible by `groups` "
                       f"({self.groups})")
                raise ValueError(msg)
        self.padding = padding if isinstance(padding, str) else list(
            pair(owner, "padding", padding, minimum=0))
        self._pads = padding_arg(owner, padding, self.kernel_size, self.dilation, self.stride)
        super().__init__(backend=backend, dtype=dtype)
        if not self.use_bias:
            self.param_names, self.grad_names = ("weights",), ("grad_w",)
        self._init_fn = _init.get(init)
        self.init = _init.name_of(init)
        self.grad_w = self.grad_b = None
        self.bias = None
        self.reset_parameters()

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def reset_parameters(self) -> None:
        """Weights from the initialiser (default uniform in ±1/sqrt(fan_in)), bias
        uniform in ±1/sqrt(fan_in), both from the seeded host generator."""
        xp = self.xp
        o, cg, kh, kw = self.weight_shape
        drawn = self._init_fn((cg, o, kh, kw), backend=self.backend, dtype=self.dtype)
        drawn = self.backend.asarray(drawn, dtype=self.dtype)
        if tuple(drawn.shape) != (cg, o, kh, kw):
            fn = getattr(self._init_fn, "__name__", repr(self._init_fn))
            msg = (f"Conv2d: the initialiser {fn} returned weights of shape "
                   f"{tuple(drawn.shape)}, expected {(cg, o, kh, kw)} (in/groups, out, kh, kw)")
            raise ValueError(msg)
        # to torch's layout (O, C/groups, kh, kw), C-contiguous (a flat reshape copies)
        flat = xp.reshape(xp.permute_dims(drawn, (1, 0, 2, 3)), (-1,))
        self.weights = xp.reshape(flat, self.weight_shape)
        if self.use_bias:
            bound = 1.0 / math.sqrt(cg * kh * kw)
            self.bias = self.backend.uniform(-bound, bound, (o,), dtype=self.dtype)

    def forward(self, x):
        check_nchw(self, x, self.in_channels)
        check_window(self, x, self.kernel_size, self._pads, self.dilation)
        y, self._saved = self.backend.conv2d(
            x, self.weights, self.bias, self.stride, self._pads, self.dilation,
            self.groups, self._workspace)
        return y

    def _grads(self, grad, input_grad: bool):
        saved = self._need(self._saved)
        self.grad_w = self.grad_b = None
        gx, self.grad_w, gb = self.backend.backprop_conv2d(grad, saved, input_grad)
        if self.use_bias:
            self.grad_b = gb
        return gx

    def backward(self, grad):
        return self._grads(grad, True)

    def backward_params(self, grad) -> None:
        """Parameter gradients only (the first layer: no dL/dx needed)."""
        self._grads(grad, False)

    def _clear(self):
        self._saved = None
        self._workspace = {}

    def config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": self.padding, "dilation": list(self.dilation),
                "groups": self.groups, "bias": self.use_bias, "init": self.init}

    def state_shapes(self):
        shapes = {"weights": self.weight_shape}
        if self.use_bias:
            shapes["bias"] = (self.out_channels,)
        return shapes

    def extra_repr(self):
        k = self.kernel_size
        out = f"{self.in_channels}, {self.out_channels}, kernel_size={k[0] if k[0] == k[1] else k}"
        for name, default in (("stride", (1, 1)), ("dilation", (1, 1))):
            v = getattr(self, name)
            if v != default:
                out += f", {name}={v[0] if v[0] == v[1] else v}"
        if self.padding not in ([0, 0], "valid"):
            p = self.padding
            out += f", padding={p if isinstance(p, str) else (p[0] if p[0] == p[1] else tuple(p))}"
        if self.groups != 1:
            out += f", groups={self.groups}"
        if not self.use_bias:
            out += ", bias=False"
        return out
