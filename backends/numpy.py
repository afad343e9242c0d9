"""NumPy backend: the CPU default and the float64 reference of the parity suite.

NumPy 2 implements the Array API in its main namespace, so `xp` is `numpy` itself:
array-api-compat's wrapper would add a Python call to every operation.
"""
import numpy as np

from ._base import Backend, host_rng, to_host


class NumpyBackend(Backend):
    name = "numpy"
    library = "numpy"
    extra = ""

    def _load(self):
        return np

    def _default_device(self):
        return "cpu"

    def owns(self, x) -> bool:
        return isinstance(x, np.ndarray)

    def asarray(self, obj, dtype=None):
        if isinstance(obj, np.ndarray) or not hasattr(obj, "__dlpack__"):
            return np.asarray(obj, dtype=self.dtype(dtype))
        return super().asarray(obj, dtype)

    def to_numpy(self, x):
        """`x` itself for a NumPy array; other arrays (torch with grad, CuPy) via to_host."""
        return x if isinstance(x, np.ndarray) else to_host(x)

    def device_bernoulli(self, p_keep, shape, dtype="float32"):
        """The fallback's host draws (same masks as array-api-strict), without the copy."""
        u = host_rng().random(tuple(shape), dtype=np.float32)
        return np.less(u, p_keep).astype(self.dtype(dtype), copy=False)

    # np.where with a data-dependent mask branches per element: about 4 ns each, 40x
    # a multiply. clip with both bounds has a SIMD loop (one bound, or maximum with a
    # scalar, does not: 3.5x slower; the method skips np.clip's Python wrapper); a
    # bool mask times grad is one branch-free pass.
    def relu(self, x):
        """x.clip(0, inf): the fallback's values (NaN kept), 40x faster than np.where."""
        if x.dtype.kind != "f":
            return super().relu(x)
        return x.clip(0, np.inf)

    def backprop_relu(self, grad, y):
        """grad * (y > 0): the fallback's values wherever grad is finite."""
        return np.multiply(grad, np.greater(y, 0))

    # NumPy reduces along a short last axis element by element (max over rows of 10:
    # 20 us for 256 rows, 2 us on the transposed copy); BLAS sums rows and columns
    # 2-3x faster than np.sum. Fancy indexing replaces the one-hot products.
    def batch_sum(self, g):
        """ones @ g: one BLAS call instead of np.sum's reduction loop."""
        if g.ndim != 2 or g.dtype.kind != "f":
            return super().batch_sum(g)
        return _ones(g.shape[0], g.dtype) @ g

    def sub_scaled(self, p, g, alpha):
        """In place, in chunks of _CHUNK elements: the temporary alpha * g stays at
        512 KiB instead of the size of p (16 MiB for a 2048x2048 float32 weight, the
        step's memory peak), at the same speed on an L2-sized weight."""
        n = p.size
        if (n <= _CHUNK or p.dtype != g.dtype or p.shape != g.shape
                or not (p.flags.c_contiguous and g.flags.c_contiguous)):
            return super().sub_scaled(p, g, alpha)
        pf, gf = p.reshape(-1), g.reshape(-1)
        scratch = np.empty(_CHUNK, dtype=p.dtype)
        for i in range(0, n, _CHUNK):
            j = min(i + _CHUNK, n)
            step = np.multiply(gf[i:j], alpha, out=scratch[: j - i])
            np.subtract(pf[i:j], step, out=pf[i:j])
        return p

    def softmax_cross_entropy(self, logits, labels):
        """The fallback's maths; labels out of range raise IndexError (or wrap around
        if negative) instead of giving a zero one-hot row: check them first."""
        if logits.ndim != 2 or logits.dtype.kind != "f" or labels.ndim != 1:
            return super().softmax_cross_entropy(logits, labels)
        n, c = logits.shape
        top = np.ascontiguousarray(logits.T).max(axis=0) if n > c else logits.max(axis=1)
        e = np.subtract(logits, top[:, None])
        rows = _arange(n)
        picked = e[rows, labels]
        np.exp(e, out=e)
        total = e @ _ones(c, e.dtype)
        loss = np.log(total)
        loss -= picked
        e /= total[:, None]
        e[rows, labels] -= 1
        return loss, e

    # --- convolution and pooling -----------------------------------------------------
    # One layout inside: channels first, then the batch, (C, N, H, W). The padded input
    # is copied into a buffer of that layout kept in the layer's workspace (its zero
    # border is written once); im2col is one strided copy into a (C·kh·kw, N·Ho·Wo)
    # column buffer, also kept; the forward is one BLAS product (O, C·kh·kw) @ columns,
    # whose (O, N, Ho, Wo) result is returned as an NCHW view (ReLU and pooling keep
    # that layout, so the next layer's copy into its buffer reads contiguous rows).
    # Backward: grad_w = grad @ columns.T, then the input's columns W.T @ grad are
    # written into the same column buffer, and col2im adds its kh·kw slices.
    def conv2d(self, x, weights, bias, stride, padding, dilation, groups, workspace=None):
        """One GEMM on sliding-window columns (see the comment above); float only."""
        if x.dtype.kind != "f" or x.dtype != weights.dtype:
            return super().conv2d(x, weights, bias, stride, padding, dilation, groups)
        return conv2d_columns(np, x, weights, bias, stride, padding, dilation, groups,
                              workspace)

    def backprop_conv2d(self, grad, saved, input_grad=True):
        if not isinstance(saved, _ConvSaved):
            return super().backprop_conv2d(grad, saved, input_grad)
        return backprop_conv2d_columns(np, grad, saved, input_grad)

    def max_pool2d(self, x, kernel, stride, padding, workspace=None):
        """Running maximum over the kh·kw window slices, with the offset of the first
        winner in int8; no (kh·kw)-times copy of the input."""
        if x.dtype.kind != "f" or kernel[0] * kernel[1] > 127:
            return super().max_pool2d(x, kernel, stride, padding)
        return max_pool2d_slices(np, self, x, kernel, stride, padding)

    def backprop_max_pool2d(self, grad, saved):
        if not (isinstance(saved, tuple) and saved and saved[0] == "slices"):
            return super().backprop_max_pool2d(grad, saved)
        return backprop_max_pool2d_slices(np, self, grad, saved)


_CHUNK = 1 << 17  # elements per chunk of sub_scaled
_ONES: dict = {}  # (n, dtype) -> ones(n)
_ROWS: dict = {}  # n -> arange(n)


def _ones(n: int, dtype) -> np.ndarray:
    """A read-only vector of n ones, kept per (n, dtype)."""
    key = (n, dtype)
    ones = _ONES.get(key)
    if ones is None:
        ones = np.ones(n, dtype=dtype)
        ones.flags.writeable = False
        _ONES[key] = ones
    return ones


def _arange(n: int) -> np.ndarray:
    """A read-only arange(n) (row indices), kept per n."""
    rows = _ROWS.get(n)
    if rows is None:
        rows = np.arange(n)
        rows.flags.writeable = False
        _ROWS[n] = rows
    return rows


# --- convolution helpers shared with the CuPy backend (`lib` is numpy or cupy) --------
class _ConvSaved:
    """What conv2d_columns keeps for backward."""

    __slots__ = ("cols", "cols_valid", "xpad", "weights", "x_shape", "kernel", "stride",
                 "padding", "dilation", "groups", "out", "has_bias")


def _buffer(lib, workspace, key, shape, dtype, zero=False):
    """An array of `shape` kept in `workspace[key]` (reused while shape and dtype hold)."""
    buf = None if workspace is None else workspace.get(key)
    if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype:
        buf = (lib.zeros if zero else lib.empty)(tuple(shape), dtype=dtype)
        if workspace is not None:
            workspace[key] = buf
    return buf


def _windows(lib, xpad, kernel, stride, dilation, out):
    """The (C, kh, kw, N, Ho, Wo) strided view of a (C, N, Hp, Wp) buffer."""
    sc, sn, sh, sw = xpad.strides
    shape = (xpad.shape[0], kernel[0], kernel[1], xpad.shape[1], out[0], out[1])
    strides = (sc, dilation[0] * sh, dilation[1] * sw, sn, stride[0] * sh, stride[1] * sw)
    return lib.lib.stride_tricks.as_strided(xpad, shape=shape, strides=strides)


def conv2d_columns(lib, x, weights, bias, stride, padding, dilation, groups, workspace):
    n, c, h, w = x.shape
    o, cg, kh, kw = weights.shape
    pt, pb, pl, pr = padding
    hp, wp = h + pt + pb, w + pl + pr
    ho = (hp - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (wp - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    dt = x.dtype
    xpad = _buffer(lib, workspace, "xpad", (c, n, hp, wp), dt, zero=True)
    xpad[:, :, pt:pt + h, pl:pl + w] = x.transpose(1, 0, 2, 3)
    m = n * ho * wo
    cols = _buffer(lib, workspace, "cols", (c * kh * kw, m), dt)
    cols.reshape(c, kh, kw, n, ho, wo)[...] = _windows(lib, xpad, (kh, kw), stride,
                                                        dilation, (ho, wo))
    if groups == 1:
        y = weights.reshape(o, -1) @ cols
    else:
        y = lib.matmul(weights.reshape(groups, o // groups, -1),
                       cols.reshape(groups, -1, m)).reshape(o, m)
    if bias is not None:
        y += bias[:, None]
    saved = _ConvSaved()
    saved.cols, saved.cols_valid, saved.xpad, saved.weights = cols, True, xpad, weights
    saved.x_shape, saved.kernel, saved.stride = (n, c, h, w), (kh, kw), stride
    saved.padding, saved.dilation, saved.groups = padding, dilation, groups
    saved.out, saved.has_bias = (ho, wo), bias is not None
    # workspace buffers are the layer's: a later forward overwrites them, as it
    # replaces `saved`
    return y.reshape(o, n, ho, wo).transpose(1, 0, 2, 3), saved


def backprop_conv2d_columns(lib, grad, s, input_grad=True):
    n, c, h, w = s.x_shape
    o = s.weights.shape[0]
    kh, kw = s.kernel
    ho, wo = s.out
    g = s.groups
    m = n * ho * wo
    cols = s.cols
    if not s.cols_valid:  # a second backward after the first reused the columns
        cols.reshape(c, kh, kw, n, ho, wo)[...] = _windows(lib, s.xpad, s.kernel, s.stride,
                                                            s.dilation, s.out)
        s.cols_valid = True
    gy = grad.transpose(1, 0, 2, 3).reshape(o, m)  # a view when grad is our layout
    if g == 1:
        gw = (gy @ cols.T).reshape(s.weights.shape)
    else:
        gw = lib.matmul(gy.reshape(g, o // g, m),
                        cols.reshape(g, -1, m).transpose(0, 2, 1)).reshape(s.weights.shape)
    gb = gy @ lib.ones(m, dtype=gy.dtype) if s.has_bias else None
    if not input_grad:
        return None, gw, gb
    # the input's columns into the column buffer (its values are no longer needed)
    s.cols_valid = False
    if g == 1:
        lib.matmul(s.weights.reshape(o, -1).T, gy, out=cols)
    else:
        lib.matmul(s.weights.reshape(g, o // g, -1).transpose(0, 2, 1),
                   gy.reshape(g, o // g, m), out=cols.reshape(g, -1, m))
    gcols = cols.reshape(c, kh, kw, n, ho, wo)
    pt, pb, pl, pr = s.padding
    gpad = lib.zeros((c, n, h + pt + pb, w + pl + pr), dtype=grad.dtype)
    sh, sw = s.stride
    dh, dw = s.dilation
    for i in range(kh):
        for j in range(kw):
            r, q = i * dh, j * dw
            view = gpad[:, :, r:r + sh * (ho - 1) + 1:sh, q:q + sw * (wo - 1) + 1:sw]
            lib.add(view, gcols[:, i, j], out=view)
    gx = gpad[:, :, pt:pt + h, pl:pl + w].transpose(1, 0, 2, 3)
    return gx, gw, gb


def max_pool2d_slices(lib, backend, x, kernel, stride, padding):
    xpad = backend._pad2d(x, padding, -lib.inf)
    out = backend._out_size(xpad.shape, kernel, stride, (1, 1))
    keys = backend._slice_keys(kernel, stride, (1, 1), out)
    y = lib.array(xpad[keys[0]], copy=True, order="K")
    idx = lib.zeros(y.shape, dtype=lib.int8)
    for k, key in enumerate(keys[1:], 1):
        s = xpad[key]
        lib.copyto(idx, k, where=lib.greater(s, y))
        lib.maximum(y, s, out=y)
    return y, ("slices", idx, tuple(x.shape), tuple(xpad.shape), kernel, stride, padding)


def backprop_max_pool2d_slices(lib, backend, grad, saved):
    _, idx, x_shape, pad_shape, kernel, stride, padding = saved
    gx = lib.zeros(pad_shape, dtype=grad.dtype)
    keys = backend._slice_keys(kernel, stride, (1, 1), tuple(grad.shape[2:]))
    disjoint = stride[0] >= kernel[0] and stride[1] >= kernel[1]
    for k, key in enumerate(keys):
        if disjoint:  # each input pixel is in one window: write, not add
            gx[key] = grad * (idx == k)
        else:
            view = gx[key]
            lib.add(view, grad * (idx == k), out=view)
    return backend._crop(gx, x_shape, padding)


def load():
    return NumpyBackend()
