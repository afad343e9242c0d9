"""Matrix products straight through the BLAS that NumPy loaded, for the NumPy backend.

`np.matmul` already hands strided views to BLAS without copying, but it cannot add
into its output: BLAS's `C = alpha·A @ B + C` (beta = 1). The grid convolution needs
exactly that. Its kh·kw products read shifted windows of one padded input and sum into
one result, with no column matrix in between. Plain SGD needs it too: W -= lr·(x.T @ g)
is one product that adds into the weights, with no gradient array and no second pass.

Products too small to gain from threads run on one BLAS thread (`serial`): after a
threaded call OpenBLAS's idle workers spin for about 0.1 s, and for that time they
take a core from the convolution kernels' threads (`_direct`).

`gemm` is None where no such BLAS is found. The backend then builds columns as before.
That happens with a NumPy built on another BLAS (Accelerate, MKL), or with the
environment variable BACKENDNN_BLAS=0. The library is found with threadpoolctl, and its
CBLAS entry point is taken only when the symbol's name says it takes 64-bit integers
("...64_", as in NumPy's own wheels). One small product is checked against
`np.matmul` before the first use.
"""
from __future__ import annotations

import ctypes
import functools
import os

import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_SYMBOLS = ("scipy_cblas_{}gemm64_", "cblas_{}gemm64_")  # ILP64 CBLAS names
_FUNCS = None  # {dtype: gemm function} once looked up; {} where unavailable
SERIAL_MACS_MIN, SERIAL_MACS = 1 << 18, 1 << 24  # products that `serial` serves


def _openblas_libs():
    """The OpenBLAS libraries loaded in this process (NumPy's own first), opened with
    ctypes; none where threadpoolctl is missing or cannot look."""
    try:
        from threadpoolctl import threadpool_info
        found = threadpool_info()
    except Exception:  # noqa: BLE001 (ImportError, or an introspection failure)
        return
    for info in sorted((i for i in found if i.get("internal_api") == "openblas"),
                       key=lambda i: "numpy" not in i.get("filepath", "")):
        try:
            yield ctypes.CDLL(info["filepath"])
        except OSError:
            continue


def _lookup() -> dict:
    if os.environ.get("BACKENDNN_BLAS", "1") == "0":
        return {}
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    for lib in _openblas_libs():
        for pattern in _SYMBOLS:
            funcs = {}
            for dtype, letter, scalar in ((np.float32, "s", ctypes.c_float),
                                          (np.float64, "d", ctypes.c_double)):
                f = getattr(lib, pattern.format(letter), None)
                if f is None:
                    break
                f.restype = None
                f.argtypes = [ctypes.c_int] * 3 + [i64] * 3 + [scalar, ptr, i64, ptr, i64,
                                                               scalar, ptr, i64]
                funcs[np.dtype(dtype)] = f
            if len(funcs) == 2 and _agrees(funcs):
                return funcs
    return {}


def _agrees(funcs) -> bool:
    """One product with a strided operand and one sum into C, against NumPy."""
    rng = np.random.default_rng(0)
    for dtype in funcs:
        a = rng.standard_normal((5, 7)).astype(dtype)
        b = rng.standard_normal((7, 11)).astype(dtype)[:, 2:8]  # row stride 11
        c = rng.standard_normal((5, 6)).astype(dtype)
        want = a @ b + c
        _call(funcs[dtype], a, b, c, True)
        if not np.allclose(c, want, rtol=1e-4, atol=1e-4):
            return False
    return True


def _operand(x):
    """(transpose flag, leading dimension) of a 2-D view with one unit stride."""
    item = x.itemsize
    rows, cols = x.shape
    if x.strides[1] == item or cols == 1:
        ld = x.strides[0] // item if rows > 1 else cols
        if x.strides[0] % item == 0 and ld >= cols:
            return _NO_TRANS, ld
    if x.strides[0] == item or rows == 1:
        ld = x.strides[1] // item if cols > 1 else rows
        if x.strides[1] % item == 0 and ld >= rows:
            return _TRANS, ld
    raise ValueError(f"gemm needs a 2-D view with one unit stride; got strides {x.strides}")


def _call(f, a, b, out, accumulate=False, alpha=1.0):
    m, k = a.shape
    n = b.shape[1]
    ta, lda = _operand(a)
    tb, ldb = _operand(b)
    tc, ldc = _operand(out)
    if tc != _NO_TRANS or out.shape != (m, n) or b.shape[0] != k:
        raise ValueError(f"gemm: shapes {a.shape} @ {b.shape} -> {out.shape}")
    f(_ROW_MAJOR, ta, tb, m, n, k, alpha, a.ctypes.data, lda, b.ctypes.data, ldb,
      1.0 if accumulate else 0.0, out.ctypes.data, ldc)


def gemm(dtype):
    """A function (a, b, out, accumulate=False, alpha=1.0) computing
    out = alpha * (a @ b) (+ out) in BLAS for 2-D float views of `dtype` (any row
    stride, one unit stride; `out` row-major), or None where this NumPy's BLAS cannot
    be called directly."""
    global _FUNCS
    if _FUNCS is None:
        _FUNCS = {k: functools.partial(_call, f) for k, f in _lookup().items()}
    return _FUNCS.get(np.dtype(dtype))


@functools.cache
def _thread_funcs():
    """(get, set) of the thread count of NumPy's OpenBLAS, or None; looked up once."""
    return next(filter(None, map(_thread_symbols, _openblas_libs())), None)


def _thread_symbols(lib):
    """(get, set) of `lib`'s thread count under the names OpenBLAS builds use, or None."""
    for prefix, suffix in (("scipy_", "64_"), ("", "64_"), ("", "")):
        get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
        put = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
        if get is not None and put is not None:
            get.restype, get.argtypes = ctypes.c_int, []
            put.restype, put.argtypes = None, [ctypes.c_int]
            return get, put
    return None


def threads() -> int:
    """The threads NumPy's OpenBLAS runs a product on now (1 where unknown)."""
    funcs = _thread_funcs()
    return funcs[0]() if funcs is not None else 1


def serial(fn, *args):
    """fn(*args) with OpenBLAS on one thread: for products of SERIAL_MACS_MIN to
    SERIAL_MACS multiply-adds. OpenBLAS threads them, and they take about as long on
    one core (0.1 ms for 64x4096 @ 4096x10 here) and then leave no worker spinning.
    (OpenBLAS keeps smaller ones on one thread itself.)"""
    funcs = _thread_funcs()
    n = funcs[0]() if funcs is not None else 1
    if n <= 1:
        return fn(*args)
    funcs[1](1)
    try:
        return fn(*args)
    finally:
        funcs[1](n)
