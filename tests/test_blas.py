"""The NumPy backend's direct BLAS products (`backends/_blas.py`) against np.matmul."""
import numpy as np
import pytest

from backendnn.backends import _blas


def _gemm(dtype):
    gemm = _blas.gemm(dtype)
    if gemm is None:
        pytest.skip("this NumPy's BLAS cannot be called directly (or BACKENDNN_BLAS=0)")
    return gemm


def _view(rng, rows, cols, dtype, transposed, padded):
    """A (rows, cols) operand: row-major or a transpose, with a row stride wider than
    its width when `padded` (a window of a larger array, as the grid convolution's)."""
    shape = (cols, rows) if transposed else (rows, cols)
    big = rng.normal(size=(shape[0], shape[1] + (5 if padded else 0))).astype(dtype)
    v = big[:, 2:2 + shape[1]] if padded else big
    return v.T if transposed else v


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_gemm_matches_matmul(rng, dtype, ta, tb, padded):
    gemm = _gemm(dtype)
    a = _view(rng, 6, 9, dtype, ta, padded)
    b = _view(rng, 9, 7, dtype, tb, padded)
    out_big = rng.normal(size=(6, 11)).astype(dtype)
    out = out_big[:, 1:8]  # a window too
    gemm(a, b, out)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=1e-12)
    np.testing.assert_allclose(out, a @ b, **tol)
    gemm(a, b, out, True)
    np.testing.assert_allclose(out, 2 * (a @ b), **tol)
    gemm(a, b, out, True, -0.5)  # alpha, as plain SGD's step inside the product
    np.testing.assert_allclose(out, 1.5 * (a @ b), **tol)


def test_gemm_leaves_the_rest_of_the_output_buffer(rng):
    gemm = _gemm("float32")
    a, b = rng.normal(size=(3, 4)).astype("float32"), rng.normal(size=(4, 5)).astype("float32")
    big = np.full((3, 9), 7.0, np.float32)
    gemm(a, b, big[:, 2:7])
    assert (big[:, :2] == 7).all() and (big[:, 7:] == 7).all()
    np.testing.assert_allclose(big[:, 2:7], a @ b, rtol=1e-5, atol=1e-5)


def test_gemm_refuses_views_without_a_unit_stride(rng):
    gemm = _gemm("float32")
    a = rng.normal(size=(4, 8)).astype("float32")[:, ::2]
    b = rng.normal(size=(4, 3)).astype("float32")
    with pytest.raises(ValueError, match="unit stride"):
        gemm(a, b, np.empty((4, 3), np.float32))
    with pytest.raises(ValueError, match="shapes"):
        gemm(b.T, b, np.empty((2, 2), np.float32))


def test_gemm_is_absent_for_other_dtypes_and_when_turned_off(monkeypatch):
    assert _blas.gemm(np.int32) is None and _blas.gemm(np.float16) is None
    monkeypatch.setenv("BACKENDNN_BLAS", "0")
    monkeypatch.setattr(_blas, "_FUNCS", None)
    assert _blas.gemm(np.float32) is None


def test_gemm_is_absent_when_the_blas_cannot_be_inspected(monkeypatch):
    import threadpoolctl

    def broken():
        raise RuntimeError("no dl_iterate_phdr here")

    monkeypatch.setattr(threadpoolctl, "threadpool_info", broken)
    monkeypatch.setattr(_blas, "_FUNCS", None)
    assert _blas.gemm(np.float32) is None
