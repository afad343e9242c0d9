"""NumPy backend: the CPU default and the float64 reference of the parity suite.

NumPy 2 implements the Array API in its main namespace, so `xp` is `numpy` itself:
array-api-compat's wrapper would add a Python call to every operation.
"""
import math
import threading

import numpy as np

from . import _blas, _direct, _heap, _numba, _philox
from ._base import Backend, to_host


class NumpyBackend(Backend):
    name = "numpy"
    library = "numpy"
    extra = ""

    def _load(self):
        _heap.keep_freed_memory()  # no page faults for the step's large arrays
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

    def _philox_mask(self, seed, counter, p_keep, shape, dtype, first_row):
        """The portable Philox masks (same bits), computed in uint32 words with the
        products' halves read as views: under the host generator's cost."""
        return _philox.bernoulli_mask_numpy(np, seed, int(counter), p_keep, shape, dtype,
                                            first_row=first_row)

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
        """grad where y > 0, else 0, in one pass (Numba); without Numba grad * (y > 0),
        the fallback's values wherever grad is finite."""
        k = _numba.kernels()
        if (k is not None and grad.dtype == y.dtype and grad.dtype.isnative
                and grad.strides == y.strides):
            out = np.empty_like(grad)
            flat = _flat(grad, y, out) if out.strides == grad.strides else None
            if flat is not None:
                k.backprop_relu(*flat)
                return out
        return np.multiply(grad, np.greater(y, 0))

    def relu_(self, x):
        """relu written into x (where x is a writable float array)."""
        if x.dtype.kind != "f" or not x.flags.writeable:
            return self.relu(x)
        return x.clip(0, np.inf, out=x)

    def bias_relu_(self, y, bias):
        """One pass (Numba) instead of the bias add and the clip: 34 against 124 us
        for a (256, 512) product just out of BLAS."""
        if not y.flags.writeable or np.may_share_memory(y, bias):
            return self.relu(y + bias)
        k = _numba.kernels()
        if (k is None or y.ndim != 2 or y.dtype.kind != "f" or not y.dtype.isnative
                or bias.dtype != y.dtype or bias.shape != y.shape[1:]
                or not y.flags.c_contiguous):
            return super().bias_relu_(y, bias)
        k.bias_relu(y, bias)
        return y

    def backprop_relu_(self, grad, y):
        """backprop_relu written into grad, in one pass (Numba) or NumPy's two."""
        if (grad.dtype != y.dtype or grad.dtype.kind != "f" or grad.shape != y.shape
                or not grad.flags.writeable or np.may_share_memory(grad, y)):
            return self.backprop_relu(grad, y)
        k = _numba.kernels()
        flat = _flat(grad, y) if grad.strides == y.strides else None
        if k is not None and grad.dtype.isnative and flat is not None:
            k.mask_relu(*flat)
            return grad
        return np.multiply(grad, np.greater(y, 0), out=grad)

    # NumPy reduces along a short last axis element by element (max over rows of 10:
    # 20 us for 256 rows, 2 us on the transposed copy); BLAS sums short rows 2-3x
    # faster than np.sum (the softmax totals). Fancy indexing replaces the one-hot
    # products.
    def batch_sum(self, g):
        """Numba's col_sum on C rows: one pass, in NumPy's order of additions (the
        portable kernel's bits), as fast as ones @ g in BLAS up to (256, 512)."""
        k = _numba.kernels()
        if (k is not None and g.ndim == 2 and g.dtype.kind == "f" and g.dtype.isnative
                and g.flags.c_contiguous):
            s = np.empty(g.shape[1], dtype=g.dtype)
            k.col_sum(g, s)
            return s
        return super().batch_sum(g)

    def backprop_relu_sum_(self, grad, y):
        """One pass (Numba) that masks grad in place and sums its rows, the same bits as
        backprop_relu_ then batch_sum: 31 against 59 us on (256, 512)."""
        k = _numba.kernels()
        if (k is None or grad.ndim != 2 or grad.dtype.kind != "f" or not grad.dtype.isnative
                or y.dtype != grad.dtype or y.shape != grad.shape
                or not (grad.flags.c_contiguous and grad.flags.writeable and y.flags.c_contiguous)
                or np.may_share_memory(grad, y)):
            return super().backprop_relu_sum_(grad, y)
        s = np.empty(grad.shape[1], dtype=grad.dtype)
        k.mask_relu_sum(grad, y, s)
        return grad, s

    def sub_scaled(self, p, g, alpha):
        """In place, in chunks of _CHUNK elements: the temporary alpha * g stays at
        512 KiB instead of the size of p (16 MiB for a 2048x2048 float32 weight, the
        step's memory peak), at the same speed on an L2-sized weight."""
        if not self.inplace:
            return super().sub_scaled(p, g, alpha)
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

    def can_add_product(self, shape, dtype) -> bool:
        return math.prod(shape) >= _FUSED_SGD_MIN and _blas.gemm(dtype) is not None

    def add_product(self, p, a, b, alpha):
        """BLAS's p = alpha * a @ b + p (beta = 1); OpenBLAS adds each finished block of
        the product into p, so p's one read and write ride on the product's."""
        gemm = _blas.gemm(p.dtype)
        if (gemm is None or a.dtype != p.dtype or b.dtype != p.dtype or p.ndim != 2
                or not (p.flags.c_contiguous and p.flags.writeable)
                or np.may_share_memory(p, a) or np.may_share_memory(p, b)):
            return False
        try:
            gemm(a, b, p, True, float(alpha))  # a NumPy scalar lr too
        except ValueError:  # an operand without a unit stride, or shapes that differ
            return False
        return True

    def fused_sgd(self, p, g, buf, *, lr, momentum, dampening, weight_decay, nesterov):
        if not (momentum or weight_decay or p.size >= _FUSED_SGD_MIN):
            return False  # plain SGD on a small array: NumPy's two passes cost less
        views = self._fused_views(p, g, buf)
        if views is not None:
            _numba.kernels().sgd(*views, lr, momentum, dampening, weight_decay, nesterov)
        return views is not None

    def fused_adam(self, p, g, m, v, vmax, *, beta1, beta2, eps, weight_decay, decoupled,
                   decay, step_size, root2):
        views = self._fused_views(p, g, m, v, vmax)
        if views is not None:
            _numba.kernels().adam(*views, beta1, beta2, eps, weight_decay, decoupled, decay,
                                  step_size, root2, vmax is not None)
        return views is not None

    def fused_rmsprop(self, p, g, square_avg, grad_avg, momentum_buffer, *, lr, alpha, eps,
                      weight_decay, momentum):
        views = self._fused_views(p, g, square_avg, grad_avg, momentum_buffer)
        if views is not None:
            _numba.kernels().rmsprop(*views, lr, alpha, eps, weight_decay, momentum,
                                     grad_avg is not None)
        return views is not None

    def _fused_views(self, *arrays):
        """1-D views of (p, g, state...) for a compiled update, an empty placeholder
        for each absent (None) state array; None where no kernel applies (no Numba, a
        backend that does not write in place, or arrays `_fusable` refuses)."""
        present = [a for a in arrays if a is not None]
        if _numba.kernels() is None or not self.inplace or not _fusable(*present):
            return None
        absent = np.empty(0, dtype=present[0].dtype)
        return [absent if a is None else a.reshape(-1) for a in arrays]

    def softmax_cross_entropy(self, logits, labels):
        """The fallback's maths; labels out of range raise IndexError (or wrap around
        if negative, unless `checks_labels`) instead of giving a zero one-hot row."""
        if logits.ndim != 2 or logits.dtype.kind != "f" or labels.ndim != 1:
            return super().softmax_cross_entropy(logits, labels)
        n, c = logits.shape
        k = _numba_cross_entropy(logits, labels)
        if k is not None:
            loss = np.empty(n, dtype=logits.dtype)
            e = np.empty((n, c), dtype=logits.dtype)
            k.softmax_cross_entropy(np.ascontiguousarray(logits),
                                    np.ascontiguousarray(labels, dtype=np.intp), loss, e)
            return loss, e
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

    def checks_labels(self, logits, labels):
        """True where the Numba kernel runs: it raises IndexError for any label outside
        [0, n_classes), negative ones included."""
        return _numba_cross_entropy(logits, labels) is not None

    def matmul(self, a, b):
        """a @ b; a small product on one BLAS thread (`_blas.serial`)."""
        if a.ndim == 2 and b.ndim == 2 and (_blas.SERIAL_MACS_MIN
                                            <= a.shape[0] * a.shape[1] * b.shape[1]
                                            < _blas.SERIAL_MACS):
            return _blas.serial(np.matmul, a, b)
        return a @ b

    # --- convolution and pooling -----------------------------------------------------
    # Stride 1 with one group (most layers) takes the grid path, `conv2d_grid` below:
    # the compiled direct kernels on the flat padded input (`_direct`), else BLAS
    # products on shifted windows of it (or columns made from them in chunks), and
    # dL/dx is a convolution with the flipped kernel (no col2im). Other shapes, and
    # (without the direct kernels) layers with few input channels (`few_channels`),
    # take the columns path. One layout inside: channels first, then the batch,
    # (C, N, H, W); the result is returned as an NCHW view of it (ReLU and pooling keep
    # that layout, so the next layer's copy into its padded grid reads contiguous
    # rows). The columns path keeps its padded input and one (C·kh·kw, N·Ho·Wo) column
    # buffer in the layer's workspace (few channels: the columns are built again in
    # backward), with a row of ones under it for the bias; forward is one BLAS product
    # [W | b] @ columns; backward is [grad_w | grad_b] = grad @ columns.T, then the
    # input's columns W.T @ grad, written into the same buffer, and col2im adds its
    # kh·kw slices.
    def conv2d(self, x, weights, bias, stride, padding, dilation, groups, workspace=None):
        """The direct kernels, or BLAS products on the padded input's windows or
        columns (see the comment above); float only."""
        if x.dtype.kind != "f" or x.dtype != weights.dtype:
            return super().conv2d(x, weights, bias, stride, padding, dilation, groups)
        if grid_fits(x.shape, weights.shape, stride, padding, dilation, groups):
            if _direct.usable(x.dtype) or not few_channels(weights.shape):
                return conv2d_grid(x, weights, bias, padding, dilation)
            return conv2d_columns(np, x, weights, bias, stride, padding, dilation, groups,
                                  None, keep=False)
        return conv2d_columns(np, x, weights, bias, stride, padding, dilation, groups,
                              workspace)

    def backprop_conv2d(self, grad, saved, input_grad=True):
        if isinstance(saved, _GridSaved):
            return backprop_conv2d_grid(grad, saved, input_grad)
        if not isinstance(saved, _ConvSaved):
            return super().backprop_conv2d(grad, saved, input_grad)
        return backprop_conv2d_columns(np, grad, saved, input_grad)

    def max_pool2d(self, x, kernel, stride, padding, workspace=None):
        """Running maximum over the kh·kw window slices, with the offset of the first
        winner in int8; no (kh·kw)-times copy of the input."""
        if x.dtype.kind != "f" or kernel[0] * kernel[1] > 127:
            return super().max_pool2d(x, kernel, stride, padding)
        if tuple(kernel) == (2, 2) and tuple(stride) == (2, 2) and not any(padding):
            return max_pool2d_2x2(x)
        return max_pool2d_slices(np, self, x, kernel, stride, padding)

    def backprop_max_pool2d(self, grad, saved):
        if isinstance(saved, tuple) and saved and saved[0] == "pairs":
            return backprop_max_pool2d_pairs(grad, saved)
        if not (isinstance(saved, tuple) and saved and saved[0] == "slices"):
            return super().backprop_max_pool2d(grad, saved)
        return backprop_max_pool2d_slices(np, self, grad, saved)


_CHUNK = 1 << 17  # elements per chunk of sub_scaled
# Where the compiled kernels stop paying (measured on 2 cores): plain SGD below 32K
# elements (a kernel call costs more than NumPy's two passes), cross-entropy above 32K
# logits (NumPy's exp is SIMD, Numba's a scalar loop).
_FUSED_SGD_MIN = 1 << 15
_NUMBA_CE_MAX = 1 << 15


def _numba_cross_entropy(logits, labels):
    """The compiled kernels where softmax_cross_entropy runs the Numba one (float
    logits (n, c) of at most _NUMBA_CE_MAX values, integer labels (n,)), else None."""
    k = _numba.kernels()
    if (k is None or logits.ndim != 2 or labels.ndim != 1 or logits.dtype.kind != "f"
            or not logits.dtype.isnative or labels.dtype.kind not in "iu"
            or logits.shape[0] * logits.shape[1] > _NUMBA_CE_MAX):
        return None
    return k


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


def _flat(*arrays):
    """1-D views of the memory of equally laid out dense arrays (any axis order), or
    None where one is not dense."""
    views = []
    for a in arrays:
        v = a.ravel(order="K")
        if not np.may_share_memory(v, a):
            return None
        views.append(v)
    return views


def _fusable(*arrays) -> bool:
    """Whether a fused update applies to (p, g, state...): float arrays of one
    native-endian dtype and one shape, each C-contiguous, all but g writable, and none
    sharing memory with another (else NumPy's spelling runs, and raises what it
    raises)."""
    first = arrays[0]
    if first.dtype.kind != "f" or not first.dtype.isnative:
        return False
    for i, a in enumerate(arrays):
        if (not isinstance(a, np.ndarray) or a.dtype != first.dtype or a.shape != first.shape
                or not a.flags.c_contiguous or (i != 1 and not a.flags.writeable)):
            return False
    for i, a in enumerate(arrays):
        for b in arrays[i + 1:]:
            if np.may_share_memory(a, b):
                return False
    return True


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
    """What conv2d_columns keeps for backward (`cols`: the column buffer, None where
    forward did not keep it; `ones`: whether a row of ones under it carries the
    bias)."""

    __slots__ = ("cols", "cols_valid", "ones", "xpad", "weights", "x_shape", "kernel",
                 "stride", "padding", "dilation", "groups", "out", "has_bias")


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


def conv2d_columns(lib, x, weights, bias, stride, padding, dilation, groups, workspace,
                   keep=True):
    """The columns path; with `keep` False the columns are a temporary of forward and
    backward builds them again from the kept padded input (less memory between the
    two)."""
    n, c, h, w = x.shape
    o, cg, kh, kw = weights.shape
    pt, pb, pl, pr = padding
    hp, wp = h + pt + pb, w + pl + pr
    ho = (hp - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (wp - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    dt = x.dtype
    xpad = _buffer(lib, workspace, "xpad", (c, n, hp, wp), dt, zero=True)
    xpad[:, :, pt:pt + h, pl:pl + w] = x.transpose(1, 0, 2, 3)
    m, k = n * ho * wo, c * kh * kw
    # one group with a bias: a row of ones under the columns, so that the product adds
    # the bias and backward's product gives its gradient (no pass over y or dL/dy)
    ones = groups == 1 and bias is not None and bias.dtype == dt
    buf = (_buffer(lib, workspace, "cols", (k + ones, m), dt) if keep
           else lib.empty((k + ones, m), dtype=dt))
    cols = buf[:k]
    cols.reshape(c, kh, kw, n, ho, wo)[...] = _windows(lib, xpad, (kh, kw), stride,
                                                        dilation, (ho, wo))
    if ones:
        buf[k] = 1
        y = lib.concatenate((weights.reshape(o, k), bias[:, None]), axis=1) @ buf
    elif groups == 1:
        y = weights.reshape(o, k) @ cols
    else:
        y = lib.matmul(weights.reshape(groups, o // groups, -1),
                       cols.reshape(groups, -1, m)).reshape(o, m)
    if bias is not None and not ones:
        y += bias[:, None]
    saved = _ConvSaved()
    saved.cols, saved.cols_valid, saved.ones = (buf if keep else None), keep, ones
    saved.xpad, saved.weights = xpad, weights
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
    m, k = n * ho * wo, c * kh * kw
    if s.cols is None:  # forward did not keep them
        s.cols = lib.empty((k + s.ones, m), dtype=grad.dtype)
        if s.ones:
            s.cols[k] = 1
    cols = s.cols[:k]  # then the row of ones, where forward added the bias with it
    if not s.cols_valid:  # not kept, or a second backward after dL/dx reused them
        cols.reshape(c, kh, kw, n, ho, wo)[...] = _windows(lib, s.xpad, s.kernel, s.stride,
                                                            s.dilation, s.out)
        s.cols_valid = True
    gy = grad.transpose(1, 0, 2, 3).reshape(o, m)  # a view when grad is our layout
    gb = None
    if s.ones:
        gwb = gy @ s.cols.T
        gw = gwb[:, :k].reshape(s.weights.shape)
        gb = lib.ascontiguousarray(gwb[:, k])
    elif g == 1:
        gw = (gy @ cols.T).reshape(s.weights.shape)
    else:
        gw = lib.matmul(gy.reshape(g, o // g, m),
                        cols.reshape(g, -1, m).transpose(0, 2, 1)).reshape(s.weights.shape)
    if s.has_bias and gb is None:
        gb = gy @ lib.ones(m, dtype=gy.dtype)
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


# --- stride-1 convolution on the padded grid (NumPy) -----------------------------------
# For stride 1 the kh·kw column rows of image n are shifts of one flat run of the padded
# input: row (c, i, j) is xpad[c, n].ravel()[i·dh·Wp + j·dw :][: Ho·Wp]. The product
# then also computes the Wp - Wo columns past each row's end (garbage, dropped when the
# result is copied out; 6% more work on 32x32, 12% on 16x16). Three ways to use this:
# - direct kernels (float32 and float64, any channel count, wherever llvmlite compiles
#   them: `_direct`): each block of output channels and positions is summed over
#   every channel and tap in registers, read from the grid in place and written
#   straight into the output rows, bias included; the weight gradient likewise, over
#   dL/dy on the input's grid. No columns, no product buffer, no copy out.
# - shifted windows (16 channels or more, where this NumPy's BLAS can be called,
#   `_blas`): kh·kw products (O, C) @ (C, run), each reading its window of the flat
#   grid in place and adding into one result (BLAS's beta = 1). No columns at all;
#   the runs of a few images at a time, so the result stays in cache.
# - columns: the shifts copied into a (C·kh·kw, run) buffer of about _GRID_COLS
#   elements and one product, a few images at a time.
# Backward pads the kept input again: no padded copy or column buffer lives between
# forward and backward. dL/dx is the same kind of convolution: dL/dy placed in a zero
# grid, with the kernel flipped and transposed (no col2im, no scattered adds). The
# padded grids, columns and products are per-thread scratch buffers shared by every
# layer (`_scratch`), as large as the largest layer's.
_GRID_COLS = 1 << 19  # elements of a column chunk or product chunk (2 MiB in float32)
# the fewest channels a product sums over for shifted windows instead of columns; a
# 32x32 layer's forward and backward took 1.03x the columns' time at 4 channels, 0.96x
# at 8, 0.84x at 16
_IMPLICIT_MIN_C = 16
# the most column rows per output channel for which a layer takes the columns path
# rather than the grid (few_channels)
_FEW_CHANNELS = 2
_SCRATCH = threading.local()  # per-thread buffers used within one call, kept for the next


class _GridSaved:
    """What conv2d_grid keeps for backward."""

    __slots__ = ("x", "weights", "x_shape", "kernel", "padding", "dilation", "out",
                 "has_bias")


def few_channels(weights_shape) -> bool:
    """Whether a stride-1 convolution takes the columns path even where the grid fits
    (and the direct kernels are not compiled): few input channels (a first layer on
    RGB or grey images), with at most _FEW_CHANNELS column rows per output channel.
    The grid would build columns for them too, in chunks, and copy each chunk's
    products out of the grid; the columns path writes its result with its product,
    bias included. The columns are built in forward and again in backward, not kept
    in between (at the start and at the end of the step, when few activations are
    alive)."""
    o, c, kh, kw = weights_shape
    return c < _IMPLICIT_MIN_C and c * kh * kw <= _FEW_CHANNELS * o


def grid_fits(x_shape, weights_shape, stride, padding, dilation, groups) -> bool:
    """Whether conv2d_grid applies: stride 1, one group, and no padding wider than the
    dilated kernel span (dL/dx's grid then holds dL/dy at a non-negative offset)."""
    kh, kw = weights_shape[2:]
    pt, pb, pl, pr = padding
    sh, sw = (kh - 1) * dilation[0], (kw - 1) * dilation[1]
    return (tuple(stride) == (1, 1) and groups == 1 and max(pt, pb) <= sh
            and max(pl, pr) <= sw)


def _scratch(name, shape, dtype):
    """A buffer of `shape` for use within one call, shared by every layer on this
    thread: one flat array per (name, dtype), as large as the largest request so far.
    Its contents are whatever the last user left."""
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    key, size = (name, np.dtype(dtype)), math.prod(shape)
    buf = buffers.get(key)
    if buf is None or buf.size < size:
        buf = buffers[key] = np.empty(size, dtype=dtype)
    return buf[:size].reshape(shape)


def _place(grid, src):
    """grid (C, N, H', W') = src (C, N, H, W) in its top left corner, zeros past its
    last row and column (a copy and two strided zero fills: faster in NumPy than in
    one compiled loop)."""
    h, w = src.shape[2:]
    grid[:, :, h:] = 0
    grid[:, :, :h, w:] = 0
    grid[:, :, :h, :w] = src


def _images_per_chunk(n, per_image):
    """Images per chunk of the grid convolution: about _GRID_COLS elements of its
    columns or products, `per_image` elements an image."""
    return max(1, min(n, _GRID_COLS // per_image))


def _runs(n, nb, hs, ws, ho):
    """(n0, m, start, run) of each chunk of m <= nb images from image n0: its first
    grid position and its positions up to its last image's last output row."""
    for n0 in range(0, n, nb):
        m = min(nb, n - n0)
        yield n0, m, n0 * hs * ws, (m - 1) * hs * ws + ho * ws


def _taps(kernel, dilation, ws):
    """[(i, j, offset)]: each kernel tap and the distance, on a grid of rows of ws,
    from an output position to the input it reads."""
    return [(i, j, i * dilation[0] * ws + j * dilation[1])
            for i in range(kernel[0]) for j in range(kernel[1])]


def _grid_columns(src, n0, nb, hs, ws, kernel, dilation, ho, out):
    """The columns of images n0 .. n0+nb of a grid buffer (C, N·Hs·Ws + tail) into
    `out` (C·kh·kw, nb·Ho·Ws): row (c, i, j) holds the run of Ho·Ws elements of each
    image starting at i·dh·Ws + j·dw."""
    c = src.shape[0]
    kh, kw = kernel
    item = src.itemsize
    view = np.lib.stride_tricks.as_strided(
        src[:, n0 * hs * ws:], shape=(c, kh, kw, nb, ho * ws),
        strides=(src.strides[0], dilation[0] * ws * item, dilation[1] * item,
                 hs * ws * item, item))
    cols = out[:, :nb * ho * ws]
    cols.reshape(c, kh, kw, nb, ho * ws)[...] = view
    return cols


def _grid_conv(src, hs, ws, weights, dilation, out, bias):
    """out (O, N, Ho, Wo) = the stride-1 convolution of the grid buffer `src` (C, N·Hs·Ws
    + tail) with weights (O, C, kh, kw) (any strides), plus bias (O,) if given."""
    c = weights.shape[1]
    if _direct.usable(src.dtype):
        return _direct.conv(src, hs, ws, weights, dilation, out, bias)
    gemm = _blas.gemm(src.dtype) if c >= _IMPLICIT_MIN_C else None
    if gemm is None:
        return _grid_conv_columns(src, hs, ws, weights, dilation, out, bias)
    o, n, ho, _ = out.shape
    wt = np.ascontiguousarray(weights.transpose(2, 3, 0, 1))  # (kh, kw, O, C)
    nb = _images_per_chunk(n, o * hs * ws)
    prod = _scratch("prod", (o, nb * hs * ws), src.dtype)
    taps = _taps(weights.shape[2:], dilation, ws)
    for n0, m, start, run in _runs(n, nb, hs, ws, ho):
        for i, j, off in taps:
            gemm(wt[i, j], src[:, start + off:start + off + run], prod[:, :run], i + j > 0)
        _crop_into(prod[:, :m * hs * ws].reshape(o, m, hs, ws)[:, :, :ho],
                   out[:, n0:n0 + m], bias)
    return out


def _grid_conv_columns(src, hs, ws, weights, dilation, out, bias):
    """_grid_conv through columns made chunk by chunk: one product over C·kh·kw."""
    o, n, ho, _ = out.shape
    kernel = weights.shape[2:]
    wmat = np.ascontiguousarray(weights).reshape(o, -1)
    k = wmat.shape[1]
    nb = _images_per_chunk(n, k * ho * ws)
    cols = _scratch("cols", (k, nb * ho * ws), src.dtype)
    prod = _scratch("prod", (o, nb * ho * ws), src.dtype)
    for n0 in range(0, n, nb):
        m = min(nb, n - n0)
        c = _grid_columns(src, n0, m, hs, ws, kernel, dilation, ho, cols)
        p = np.matmul(wmat, c, out=prod[:, :m * ho * ws]).reshape(o, m, ho, ws)
        _crop_into(p, out[:, n0:n0 + m], bias)
    return out


def _crop_into(p, out, bias):
    """out (O, N, Ho, Wo) = p (O, N, Ho, Ws) cropped to Wo columns, plus bias (O,)."""
    compiled = _numba.kernels()
    if (compiled is not None and bias is not None and bias.dtype == p.dtype
            and p.dtype.isnative):
        compiled.crop_add(p, out, bias)  # 2.5x NumPy's broadcast add
    elif bias is None:
        out[...] = p[:, :, :, :out.shape[3]]
    else:
        np.add(p[:, :, :, :out.shape[3]], bias.reshape(-1, 1, 1, 1), out=out)


def _padded_grid(x, padding, span, name):
    """x (C, N, H, W) (any strides) copied into the scratch buffer `name` as one flat
    zero-padded grid (C, lead + N·Hs·Ws + tail), returned with Hs and Ws. Row r of image
    n starts at lead + (n·Hs + r)·Ws; each row is followed by max(pl, pr) zero columns
    and each image by max(pt, pb) zero rows, so one band of zeros is the bottom (right)
    padding of an image (row) and the top (left) padding of the next: 6% fewer grid
    positions than separate borders on 32x32 with padding 1, 11% on 16x16. Index 0 is
    (row -pt, column -pl) of image 0; a window at offset (i·dh·Ws + j·dw) from an output
    position's index reads its input."""
    c, n, h, w = x.shape
    pt, pb, pl, pr = padding
    hs, ws = h + max(pt, pb), w + max(pl, pr)
    lead, size = pt * ws + pl, n * hs * ws
    buf = _scratch(name, (c, lead + size + span[0] * ws + span[1]), x.dtype)
    buf[:, :lead] = 0
    _place(buf[:, lead:lead + size].reshape(c, n, hs, ws), x)
    buf[:, lead + size:] = 0
    return buf, hs, ws


def _spans(kernel, dilation):
    return dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)


def conv2d_grid(x, weights, bias, padding, dilation):
    """The stride-1 convolution on the padded grid; keeps x itself (which the layer
    before usually keeps anyway) and pads it again in backward, instead of keeping the
    padded copy."""
    n, c, h, w = x.shape
    o, _, kh, kw = weights.shape
    pt, pb, pl, pr = padding
    span = _spans((kh, kw), dilation)
    ho, wo = h + pt + pb - span[0], w + pl + pr - span[1]
    xbuf, hs, ws = _padded_grid(x.transpose(1, 0, 2, 3), padding, span, "xgrid")
    y = np.empty((o, n, ho, wo), dtype=x.dtype)
    _grid_conv(xbuf, hs, ws, weights, dilation, y, bias)
    s = _GridSaved()
    s.x, s.weights, s.x_shape, s.kernel = x, weights, (n, c, h, w), (kh, kw)
    s.padding, s.dilation, s.out, s.has_bias = padding, dilation, (ho, wo), bias is not None
    return y.transpose(1, 0, 2, 3), s


def backprop_conv2d_grid(grad, s, input_grad=True):
    n, c, h, w = s.x_shape
    o = s.weights.shape[0]
    kh, kw = s.kernel
    ho, wo = s.out
    pt, pb, pl, pr = s.padding
    span = _spans(s.kernel, s.dilation)
    dt = grad.dtype
    xbuf, hs, ws = _padded_grid(s.x.transpose(1, 0, 2, 3), s.padding, span, "xgrid")
    gy = grad.transpose(1, 0, 2, 3)  # (O, N, Ho, Wo): a view when grad is our layout
    # dL/dweights: dL/dy on the input's grid (zero past each image's Ho rows and Wo
    # columns) times the input's shifted windows: the direct kernel, or kh products
    # (one per kernel row) summed over chunks of images, or one product with columns
    # made chunk by chunk
    wide = min(o, c) >= _IMPLICIT_MIN_C
    direct = _direct.usable(dt)
    gemm = _blas.gemm(dt) if wide and not direct else None
    on_grid = direct or gemm is not None
    # dL/dx's padded dL/dy (below) holds that grid too where their row and image
    # lengths agree (stride 1, "same" padding): one copy of dL/dy serves both
    back = (span[0] - pt, span[0] - pb, span[1] - pl, span[1] - pr)
    shared = (on_grid and input_grad
              and (ho + max(back[:2]), wo + max(back[2:])) == (hs, ws))
    if shared:
        gbuf, hq, wq = _padded_grid(gy, back, span, "grid")
        lead = back[0] * ws + back[2]
        gyw2 = gbuf[:, lead:lead + n * hs * ws]
    else:
        rows = hs if on_grid else ho
        gyw = _scratch("grid", (o, n, rows, ws), dt)
        _place(gyw, gy)
        gyw2 = gyw.reshape(o, n * rows * ws)
    if direct:
        run = (n - 1) * hs * ws + ho * ws if n else 0
        gw, gb = _direct.weight_grad(gyw2, xbuf, run, s.kernel, s.dilation, ws,
                                     s.has_bias)
    elif gemm is not None:
        # kw copies of the input's grid, copy j shifted by j kernel columns, in rows
        # (c, j): a kernel row's weight gradient is then one product over c·kw rows,
        # and BLAS packs dL/dy kh times instead of kh·kw (a one-column kernel reads
        # the grid itself)
        dh, dw = s.dilation
        lift = (kh - 1) * dh * ws
        gwr = (np.empty if n else np.zeros)((kh, o, c * kw), dtype=dt)  # no image: 0
        for n0, _, start, run in _runs(n, _images_per_chunk(n, max(o, c * kw) * hs * ws),
                                       hs, ws, ho):
            if kw == 1:
                shifted = xbuf[:, start:start + run + lift]
            else:
                shifted = _scratch("cols", (c, kw, run + lift), dt)
                for j in range(kw):
                    shifted[:, j] = xbuf[:, start + j * dw:start + j * dw + run + lift]
                shifted = shifted.reshape(c * kw, run + lift)
            for i in range(kh):
                window = shifted[:, i * dh * ws:i * dh * ws + run]
                gemm(gyw2[:, start:start + run], window.T, gwr[i], n0 > 0)
        gw = gwr.reshape(kh, o, c, kw).transpose(1, 2, 0, 3)
    else:
        k = c * kh * kw
        nb = _images_per_chunk(n, k * ho * ws)
        cols = _scratch("cols", (k, nb * ho * ws), dt)
        gw = np.zeros((o, k), dtype=dt)
        part = np.empty((o, k), dtype=dt)
        for n0 in range(0, n, nb):
            m = min(nb, n - n0)
            cc = _grid_columns(xbuf, n0, m, hs, ws, s.kernel, s.dilation, ho, cols)
            gw += np.matmul(gyw2[:, n0 * ho * ws:(n0 + m) * ho * ws], cc.T, out=part)
    if not direct:  # the direct kernel summed the bias gradient with the weights'
        gb = gyw2 @ _ones(gyw2.shape[1], dt) if s.has_bias else None
    gw = np.ascontiguousarray(gw).reshape(s.weights.shape)
    if not input_grad:
        return None, gw, gb
    # dL/dx: dL/dy padded by the kernel span less the forward padding on each side,
    # convolved with the flipped kernel, channels swapped
    if not shared:
        gbuf, hq, wq = _padded_grid(gy, back, span, "grid")  # gyw's memory
    wflip = s.weights[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
    gx = np.empty((c, n, h, w), dtype=dt)
    _grid_conv(gbuf, hq, wq, wflip, s.dilation, gx, None)
    return gx.transpose(1, 0, 2, 3), gw, gb


# --- 2x2 max pooling, stride 2, no padding (NumPy) --------------------------------------
def max_pool2d_2x2(x):
    """One pass of the Numba kernel where x, or its (C, N, H, W) transpose, is
    C-contiguous (the result keeps that layout); else the pairwise maxima below."""
    k = _numba.kernels()
    n, c, h, w = x.shape
    if k is not None and x.dtype.isnative:
        for axes in ((0, 1, 2, 3), (1, 0, 2, 3)):
            xt = x.transpose(axes)
            if xt.flags.c_contiguous:
                shape = xt.shape[:2] + (h // 2, w // 2)
                y, idx = np.empty(shape, dtype=x.dtype), np.empty(shape, dtype=np.int8)
                if k.max_pool2x2(xt, y, idx):
                    k.max_pool2x2_nan(xt, y, idx)
                return y.transpose(axes), ("pairs", idx.transpose(axes), (n, c, h, w))
    return max_pool2d_pairs(x)


def max_pool2d_pairs(x):
    """Max over the 2x2 windows as two pairwise maxima (columns, then rows), with the
    winner's offset 0..3 (row-major, the first largest as torch) in int8: four
    element-wise passes instead of the running maximum's masked copies."""
    n, c, h, w = x.shape
    ho, wo = h // 2, w // 2
    xv = x[:, :, :2 * ho, :2 * wo]
    left, right = xv[..., 0::2], xv[..., 1::2]
    right_wins = np.greater(right, left)
    m = np.maximum(left, right)
    top, bottom = m[:, :, 0::2], m[:, :, 1::2]
    bottom_wins = np.greater(bottom, top)
    y = np.maximum(top, bottom)
    rt, rb = right_wins[:, :, 0::2], right_wins[:, :, 1::2]
    col = rt ^ (bottom_wins & (rt ^ rb))  # the winning row's right_wins
    idx = np.left_shift(bottom_wins.view(np.int8), 1)
    idx |= col.view(np.int8)
    return y, ("pairs", idx, (n, c, h, w))


def backprop_max_pool2d_pairs(grad, saved):
    _, idx, (n, c, h, w) = saved
    ho, wo = idx.shape[2:]
    make = np.zeros if (h % 2 or w % 2) else np.empty
    axes = (1, 0, 2, 3) if grad.transpose(1, 0, 2, 3).flags.c_contiguous else (0, 1, 2, 3)
    gx = make(tuple((n, c, h, w)[a] for a in axes), dtype=grad.dtype).transpose(axes)
    k = _numba.kernels()
    if k is not None and grad.dtype.isnative:
        k.max_unpool2x2(grad.transpose(axes), idx.transpose(axes), gx.transpose(axes))
        return gx
    zero = grad.dtype.type(0)
    for q in range(4):  # a select, not grad * mask: a NaN gradient stays at its winner
        a, b = divmod(q, 2)
        gx[:, :, a:2 * ho:2, b:2 * wo:2] = np.where(idx == q, grad, zero)
    return gx


def load():
    return NumpyBackend()
