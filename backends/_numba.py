"""Fused single-pass kernels for the NumPy backend, compiled by Numba.

NumPy spends one pass over memory per operation: `grad * (y > 0)` is two, 2x2 max
pooling with winner indices nine (strided ones), softmax cross-entropy six, an Adam
update eleven. Each kernel here reads its inputs once and writes its outputs once, in
the NumPy spelling's order of operations and dtype (the optimiser updates give the same
bits). They run on the calling thread and release the GIL.

Numba is optional: `kernels()` is None where it is not installed, or where the
environment sets BACKENDNN_NUMBA=0, and the backend then takes its NumPy spelling
(the same values; tests compare both with the portable default). Kernels are compiled
on first use and cached on disk (`cache=True`), so later processes load them in
milliseconds.
"""
from __future__ import annotations

import os

_KERNELS = None  # the namespace, False when unavailable, None before the first look


def kernels():
    """The compiled kernels (a module-like namespace), or None without Numba."""
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = False
        if os.environ.get("BACKENDNN_NUMBA", "1") != "0":
            try:
                import numba
            except ImportError:
                pass
            else:
                _KERNELS = _define(numba)
    return _KERNELS or None


def _define(numba):
    """The kernels, each compiled on its first call (per argument types)."""
    import types

    import numpy as np

    # error_model="numpy": x / 0 gives inf or NaN as in NumPy, with no per-division
    # check, so loops with a division vectorise (Adam: 10x)
    jit = numba.njit(cache=True, nogil=True, error_model="numpy")

    @jit
    def backprop_relu(grad, y, out):
        """out = grad where y > 0, else 0 (1-D views of equally laid out arrays)."""
        zero = out.dtype.type(0)
        for i in range(out.size):
            out[i] = grad[i] if y[i] > 0 else zero

    @jit
    def bias_relu(y, b):
        """y = max(y + b, 0) in place, NaN kept; y (rows, n) C-contiguous, b (n,)."""
        zero = y.dtype.type(0)
        for r in range(y.shape[0]):
            row = y[r]
            for c in range(row.size):
                v = row[c] + b[c]
                row[c] = zero if v < zero else v

    @jit
    def col_sum(g, s):
        """s (n,) = the sum of g's rows (rows, n), added in row order (as NumPy's sum
        over axis 0), each column in its own lane."""
        zero = s.dtype.type(0)
        for c in range(s.size):
            s[c] = zero
        for r in range(g.shape[0]):
            row = g[r]
            for c in range(s.size):
                s[c] += row[c]

    @jit
    def mask_relu_sum(grad, y, s):
        """grad = 0 where not y > 0, in place, and s = the sum of its rows as col_sum
        gives it (ReLU's backward and the bias gradient before it, in one pass)."""
        zero = s.dtype.type(0)
        for c in range(s.size):
            s[c] = zero
        for r in range(grad.shape[0]):
            g, yr = grad[r], y[r]
            for c in range(s.size):
                v = g[c] if yr[c] > zero else zero
                g[c] = v
                s[c] += v

    @jit
    def mask_relu(grad, y):
        """grad = 0 where not y > 0, in place (backprop_relu with out=grad would not
        vectorise: the compiler must assume that out overlaps its inputs)."""
        zero = grad.dtype.type(0)
        for i in range(grad.size):
            grad[i] = grad[i] if y[i] > 0 else zero

    @jit
    def sgd(p, g, buf, lr, momentum, dampening, weight_decay, nesterov):
        """SGD._update after its first step, in one pass over 1-D views, operation for
        operation in p's dtype: g' = p * wd + g; buf = buf * momentum + g' * (1 -
        dampening); d = buf * momentum + g' (Nesterov), or buf; p -= d * lr. Without
        momentum d = g' and `buf` (then empty) is not read."""
        t = p.dtype.type
        lr_, mom, keep, wd = t(lr), t(momentum), t(1.0 - dampening), t(weight_decay)
        for i in range(p.size):
            gi = g[i]
            if weight_decay != 0.0:
                gi = p[i] * wd + gi
            if momentum != 0.0:
                if dampening != 0.0:
                    b = buf[i] * mom + gi * keep
                else:
                    b = buf[i] * mom + gi
                buf[i] = b
                gi = b * mom + gi if nesterov else b
            p[i] = p[i] - gi * lr_

    @jit
    def adam(p, g, m, v, vmax, beta1, beta2, eps, weight_decay, decoupled, decay,
             step_size, root2, amsgrad):
        """Adam._update in one pass over 1-D views, operation for operation in p's
        dtype: `decay` (1 - lr * weight_decay, for decoupled weight decay), `step_size`
        and `root2` (the bias corrections) come computed as there; `vmax` is empty, and
        not read, without amsgrad."""
        t = p.dtype.type
        b1, b2, one_b2, eps_ = t(beta1), t(beta2), t(1.0 - beta2), t(eps)
        wd, decay_, step_, root2_ = t(weight_decay), t(decay), t(step_size), t(root2)
        for i in range(p.size):
            pi, gi = p[i], g[i]
            if weight_decay != 0.0 and decoupled:
                pi = pi * decay_
            elif weight_decay != 0.0:
                gi = pi * wd + gi
            mi = (m[i] - gi) * b1 + gi
            m[i] = mi
            vi = v[i] * b2 + (gi * gi) * one_b2
            v[i] = vi
            if amsgrad:
                old = vmax[i]
                if old != old or (vi == vi and old > vi):
                    vi = old
                vmax[i] = vi
            p[i] = pi - (mi / (np.sqrt(vi) / root2_ + eps_)) * step_

    @jit
    def rmsprop(p, g, s, a, b, lr, alpha, eps, weight_decay, momentum, centered):
        """RMSprop._update in one pass over 1-D views, operation for operation in p's
        dtype; `a` (grad_avg) is read when centered, `b` (momentum buffer) when
        momentum > 0 (else they are empty)."""
        t = p.dtype.type
        lr_, al, one_al, eps_, wd, mom = (t(lr), t(alpha), t(1.0 - alpha), t(eps),
                                          t(weight_decay), t(momentum))
        minus = t(-1.0)
        for i in range(p.size):
            gi = g[i]
            if weight_decay != 0.0:
                gi = p[i] * wd + gi
            si = s[i] * al + (gi * gi) * one_al
            s[i] = si
            if centered:
                ai = (a[i] - gi) * al + gi
                a[i] = ai
                di = np.sqrt((ai * ai) * minus + si) + eps_
            else:
                di = np.sqrt(si) + eps_
            if momentum > 0.0:
                bi = b[i] * mom + gi / di
                b[i] = bi
                p[i] = p[i] - bi * lr_
            else:
                p[i] = p[i] - (gi / di) * lr_

    @jit
    def softmax_cross_entropy(logits, labels, loss, e):
        """Per row r of logits (n, c): loss[r] = logsumexp - logits[r, labels[r]] and
        e[r] = softmax - onehot, from the row's maximum, in the logits' dtype as the
        NumPy spelling; a label outside [0, c) raises IndexError."""
        n, c = logits.shape
        for r in range(n):
            k = labels[r]
            if k < 0 or k >= c:
                raise IndexError("a label is outside [0, classes)")
            row = logits[r]
            top = row[0]
            for j in range(1, c):
                if row[j] > top:
                    top = row[j]
            total = e.dtype.type(0)
            for j in range(c):
                v = np.exp(row[j] - top)
                e[r, j] = v
                total += v
            loss[r] = np.log(total) - (row[k] - top)
            for j in range(c):
                e[r, j] /= total
            e[r, k] -= 1

    @jit
    def max_pool2x2(x, y, idx):
        """y, idx (A, B, H//2, W//2) = the maximum of each 2x2 window of x (A, B, H, W)
        and its offset 0..3 in row-major order, the first of equal maxima (as torch).
        Branch-free enough to vectorise, so NaN is not looked for: returns whether x
        held a NaN or an infinity, and the caller then runs max_pool2x2_nan."""
        a_n, b_n, ho, wo = y.shape
        bad = 0.0
        for a in range(a_n):
            for b in range(b_n):
                for i in range(ho):
                    top, bottom = x[a, b, 2 * i], x[a, b, 2 * i + 1]
                    yr, ir = y[a, b, i], idx[a, b, i]
                    for j in range(wo):
                        m, k = top[2 * j], 0
                        v = top[2 * j + 1]
                        total = m + v
                        if v > m:
                            m, k = v, 1
                        v = bottom[2 * j]
                        total += v
                        if v > m:
                            m, k = v, 2
                        v = bottom[2 * j + 1]
                        total += v
                        if v > m:
                            m, k = v, 3
                        yr[j], ir[j] = m, k
                        bad += total * 0.0  # NaN from here on after a NaN or inf
        return bad != bad

    @jit
    def max_pool2x2_nan(x, y, idx):
        """max_pool2x2 where a NaN wins its window, at the offset of its last NaN (as
        torch's CPU kernel); 6x slower."""
        a_n, b_n, ho, wo = y.shape
        for a in range(a_n):
            for b in range(b_n):
                for i in range(ho):
                    top, bottom = x[a, b, 2 * i], x[a, b, 2 * i + 1]
                    yr, ir = y[a, b, i], idx[a, b, i]
                    for j in range(wo):
                        m, k = top[2 * j], 0
                        for q, v in ((1, top[2 * j + 1]), (2, bottom[2 * j]),
                                     (3, bottom[2 * j + 1])):
                            if v > m or v != v:
                                m, k = v, q
                        yr[j], ir[j] = m, k

    @jit
    def max_unpool2x2(grad, idx, gx):
        """gx (A, B, >= 2Ho, >= 2Wo) = grad (A, B, Ho, Wo) at each window's winner
        (offset idx, 0..3), zero elsewhere in the window. One loop per output row:
        each then vectorises (one loop writing both rows is 7x slower)."""
        a_n, b_n, ho, wo = grad.shape
        zero = gx.dtype.type(0)
        for a in range(a_n):
            for b in range(b_n):
                for i in range(ho):
                    g, k = grad[a, b, i], idx[a, b, i]
                    top, bottom = gx[a, b, 2 * i], gx[a, b, 2 * i + 1]
                    for j in range(wo):
                        v, q = g[j], k[j]
                        top[2 * j] = v if q == 0 else zero
                        top[2 * j + 1] = v if q == 1 else zero
                    for j in range(wo):
                        v, q = g[j], k[j]
                        bottom[2 * j] = v if q == 2 else zero
                        bottom[2 * j + 1] = v if q == 3 else zero

    @jit
    def crop_add(src, out, bias):
        """out (A, B, H, W) = src (A, B, H, W') cropped to W columns, plus bias[a]
        (A,) (a convolution's result off its grid)."""
        a_n, b_n, h, w = out.shape
        for a in range(a_n):
            v = bias[a]
            for b in range(b_n):
                for i in range(h):
                    s, o = src[a, b, i], out[a, b, i]
                    for j in range(w):
                        o[j] = s[j] + v

    return types.SimpleNamespace(crop_add=crop_add, sgd=sgd, adam=adam, rmsprop=rmsprop,
                                 backprop_relu=backprop_relu, mask_relu=mask_relu,
                                 bias_relu=bias_relu, col_sum=col_sum,
                                 mask_relu_sum=mask_relu_sum,
                                 softmax_cross_entropy=softmax_cross_entropy,
                                 max_pool2x2=max_pool2x2, max_pool2x2_nan=max_pool2x2_nan,
                                 max_unpool2x2=max_unpool2x2)
