"""Pooling over NCHW images: max, average and adaptive (divisible) average."""
from __future__ import annotations

from .._validate import pair
from .base import Layer, ShapeError
from .conv import check_nchw, check_window


class _Pool2d(Layer):
    """Shared by MaxPool2d and AvgPool2d: the window, stride and padding, checked."""

    _kind = ""
    _fresh_output = _fresh_input_grad = True  # new arrays on every backend, not kept

    def __init__(self, kernel_size, stride=None, padding=0, *, backend=None,
                 dtype: str = "float32"):
        owner = type(self).__name__
        self.kernel_size = pair(owner, "kernel_size", kernel_size)
        self.stride = self.kernel_size if stride is None else pair(owner, "stride", stride)
        self.padding = pair(owner, "padding", padding, minimum=0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            msg = (f"{owner}: `padding` {self.padding} must be at most half of `kernel_size` "
                   f"{self.kernel_size} (as torch)")
            raise ValueError(msg)
        self._given_stride = stride is not None
        super().__init__(backend=backend, dtype=dtype)

    @property
    def _pads(self):
        ph, pw = self.padding
        return (ph, ph, pw, pw)

    def forward(self, x):
        check_nchw(self, x, None)
        check_window(self, x, self.kernel_size, self._pads)
        y, self._saved = getattr(self.backend, f"{self._kind}_pool2d")(
            x, self.kernel_size, self.stride, self._pads)
        return y

    def backward(self, grad):
        saved = self._need(self._saved)
        return getattr(self.backend, f"backprop_{self._kind}_pool2d")(grad, saved)

    def _clear(self):
        self._saved = None

    def config(self):
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding)}

    def extra_repr(self):
        def short(v):
            return v[0] if v[0] == v[1] else v

        out = f"kernel_size={short(self.kernel_size)}"
        if self.stride != self.kernel_size:
            out += f", stride={short(self.stride)}"
        if any(self.padding):
            out += f", padding={short(self.padding)}"
        return out


class MaxPool2d(_Pool2d):
    """The largest value of each kh×kw window, as `torch.nn.MaxPool2d`.

    Args:
        kernel_size: an int or (h, w) pair. stride: default the kernel size.
        padding: rows and columns of -inf on each side, at most half the kernel.

    Shape: x (N, C, H, W) -> (N, C, Ho, Wo), Ho = (H + 2 ph - kh) // sh + 1.
    Keeps the index of each window's winner (the first largest value, as torch), not
    a mask of the input; backward sends each window's gradient to its winner.

    Example:
        >>> MaxPool2d(2)(x).shape   # x (64, 8, 8, 8)
        (64, 8, 4, 4)
    """

    _kind = "max"


class AvgPool2d(_Pool2d):
    """The mean of each kh×kw window, zero padding counted in the mean, as
    `torch.nn.AvgPool2d` with its defaults (count_include_pad=True).

    Args: as MaxPool2d (padding is zeros).
    Shape: x (N, C, H, W) -> (N, C, Ho, Wo).

    Example:
        >>> AvgPool2d(2)(x).shape   # x (64, 8, 8, 8)
        (64, 8, 4, 4)
    """

    _kind = "avg"


class AdaptiveAvgPool2d(Layer):
    """Average pooling to a fixed output size (oh, ow) that divides the input size:
    windows of H/oh × W/ow, as `torch.nn.AdaptiveAvgPool2d` gives for such sizes.
    `AdaptiveAvgPool2d(1)` is global average pooling.

    Args:
        output_size: an int or (h, w) pair, at least 1.
    Shape: x (N, C, H, W) -> (N, C, oh, ow); H divisible by oh and W by ow.

    Example:
        >>> AdaptiveAvgPool2d(1)(x).shape   # x (64, 8, 4, 4)
        (64, 8, 1, 1)
    """

    def __init__(self, output_size, *, backend=None, dtype: str = "float32"):
        self.output_size = pair("AdaptiveAvgPool2d", "output_size", output_size)
        super().__init__(backend=backend, dtype=dtype)

    def forward(self, x):
        check_nchw(self, x, None)
        (h, w), (oh, ow) = tuple(x.shape[2:]), self.output_size
        if h % oh or w % ow:
            msg = (f"{self!r}: the input's {h}x{w} pixels do not divide into {oh}x{ow} "
                   f"equal windows (input shape {tuple(x.shape)}); use sizes that divide it")
            raise ShapeError(msg)
        kernel = (h // oh, w // ow)
        y, self._saved = self.backend.avg_pool2d(x, kernel, kernel, (0, 0, 0, 0))
        return y

    def backward(self, grad):
        return self.backend.backprop_avg_pool2d(grad, self._need(self._saved))

    def _clear(self):
        self._saved = None

    def config(self):
        return {"output_size": list(self.output_size)}

    def extra_repr(self):
        o = self.output_size
        return f"output_size={o[0] if o[0] == o[1] else o}"
