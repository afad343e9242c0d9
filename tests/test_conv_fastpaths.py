"""NumPy's convolution and pooling fast paths (the stride-1 grid convolution, the
2x2 pairwise max pool) against the portable `Backend` kernels they override."""
import numpy as np
import pytest

from backendnn.backends import Backend, get

# (N, C, H, W), (O, kh, kw), padding (top, bottom, left, right), dilation
GRID_CASES = {
    "same3": ((3, 4, 7, 6), (5, 3, 3), (1, 1, 1, 1), (1, 1)),
    "valid": ((2, 2, 6, 5), (3, 3, 2), (0, 0, 0, 0), (1, 1)),
    "asymmetric": ((2, 3, 5, 8), (2, 3, 3), (0, 2, 1, 0), (1, 1)),
    "dilated": ((2, 2, 9, 7), (3, 3, 3), (2, 1, 1, 2), (2, 1)),
    "kernel1": ((4, 3, 4, 3), (5, 1, 1), (0, 0, 0, 0), (1, 1)),
    "batch1": ((1, 1, 3, 3), (2, 3, 3), (1, 1, 1, 1), (1, 1)),
    "rows9": ((3, 6, 5, 9), (6, 3, 3), (1, 1, 1, 1), (1, 1)),  # a vector and a lane
}
TOL = {"float32": dict(rtol=1e-5, atol=1e-5), "float64": dict(rtol=1e-12, atol=1e-12)}
# (the fewest channels a product sums over for the grid convolution to leave columns,
# whether the compiled direct kernel may take it): the direct kernel, kh·kw BLAS
# products on shifted windows, columns, and in between (the cases' products then mix
# shifted windows and columns)
CONV_PATHS = {"direct": (1, True), "shifted": (1, False), "columns": (10**9, False),
              "mixed": (4, False)}


def _take_path(monkeypatch, path, dtype="float32"):
    from backendnn.backends import _blas, _direct
    from backendnn.backends import numpy as npb

    min_c, direct = CONV_PATHS[path]
    if direct and not _direct.usable(dtype):
        pytest.skip("the direct kernel cannot be compiled here (or BACKENDNN_DIRECT=0)")
    if path in ("shifted", "mixed") and _blas.gemm(dtype) is None:
        pytest.skip("this NumPy's BLAS cannot be called directly (or BACKENDNN_BLAS=0)")
    if not direct:
        monkeypatch.setattr(_direct, "usable", lambda dtype: False)
    monkeypatch.setattr(_direct, "_THREADED_MIN", 0)  # small cases split between threads
    monkeypatch.setattr(npb, "_IMPLICIT_MIN_C", min_c)
    monkeypatch.setattr(npb, "_FEW_CHANNELS", 0)  # the grid even for few channels


def _portable_conv(x, w, b, padding, dilation, g, groups=1):
    be = get("numpy")
    y, saved = Backend.conv2d(be, x, w, b, (1, 1), padding, dilation, groups)
    return y, Backend.backprop_conv2d(be, g, saved, True)


@pytest.mark.parametrize("chunk", ["image", "batch"])
@pytest.mark.parametrize("path", list(CONV_PATHS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", list(GRID_CASES))
def test_grid_conv_equals_portable(numpy_kernels, rng, case, dtype, path, chunk,
                                   monkeypatch):
    from backendnn.backends import numpy as npb

    _take_path(monkeypatch, path, dtype)
    (n, c, h, w), (o, kh, kw), padding, dilation = GRID_CASES[case]
    be = get("numpy")
    assert npb.grid_fits((n, c, h, w), (o, c, kh, kw), (1, 1), padding, dilation, 1)
    if chunk == "image":
        monkeypatch.setattr(npb, "_GRID_COLS", 64)  # the chunk loop runs once per image
    x = rng.normal(size=(n, c, h, w)).astype(dtype)
    wt = rng.normal(size=(o, c, kh, kw)).astype(dtype)
    b = rng.normal(size=(o,)).astype(dtype)
    y_ref, _ = Backend.conv2d(be, x, wt, b, (1, 1), padding, dilation, 1)
    g = rng.normal(size=y_ref.shape).astype(dtype)
    y_ref, (gx_ref, gw_ref, gb_ref) = _portable_conv(x, wt, b, padding, dilation, g)
    workspace = {}
    for _ in range(2):  # twice: the kept buffers' borders stay zero
        y, saved = be.conv2d(x, wt, b, (1, 1), padding, dilation, 1, workspace)
        assert isinstance(saved, npb._GridSaved)
        gx, gw, gb = be.backprop_conv2d(g, saved, True)
        for got, want in ((y, y_ref), (gx, gx_ref), (gw, gw_ref), (gb, gb_ref)):
            assert got.dtype == np.dtype(dtype) and got.shape == want.shape
            np.testing.assert_allclose(got, want, **TOL[dtype])
    y, saved = be.conv2d(x, wt, None, (1, 1), padding, dilation, 1, workspace)
    gx, gw2, gb2 = be.backprop_conv2d(g, saved, False)
    assert gx is None and gb2 is None
    np.testing.assert_allclose(gw2, gw_ref, **TOL[dtype])


@pytest.mark.parametrize("path", list(CONV_PATHS))
def test_grid_conv_of_an_empty_batch_has_zero_gradients(path, monkeypatch):
    """A rank's empty part of a last batch (DataParallel) must add zeros."""
    _take_path(monkeypatch, path)
    be = get("numpy")
    x = np.zeros((0, 4, 5, 5), np.float32)
    w = np.ones((3, 4, 3, 3), np.float32)
    for _ in range(2):  # the second time, freed memory of the first is reused
        y, saved = be.conv2d(x, w, np.ones(3, np.float32), (1, 1), (1, 1, 1, 1), (1, 1), 1)
        gx, gw, gb = be.backprop_conv2d(np.zeros_like(y), saved, True)
        assert y.shape == (0, 3, 5, 5) and gx.shape == x.shape
        assert not gw.any() and not gb.any()


def test_grid_conv_is_not_used_where_it_does_not_fit():
    from backendnn.backends import numpy as npb

    assert not npb.grid_fits((1, 2, 5, 5), (2, 2, 3, 3), (2, 1), (1, 1, 1, 1), (1, 1), 1)
    assert not npb.grid_fits((1, 2, 5, 5), (2, 1, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2)
    assert not npb.grid_fits((1, 2, 5, 5), (2, 2, 3, 3), (1, 1), (3, 3, 0, 0), (1, 1), 1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(2, 3, 6, 8), (1, 2, 5, 7), (3, 1, 2, 2)])
@pytest.mark.parametrize("layout", ["NCHW", "CNHW"])
def test_pairwise_max_pool_equals_portable(numpy_kernels, rng, dtype, shape, layout):
    be = get("numpy")
    n, c, h, w = shape
    # few distinct values (ReLU zeros among them): many ties, the first winner must be
    # taken as torch takes it
    data = rng.integers(-1, 2, size=(c, n, h, w)).clip(0).astype(dtype)
    x = data.transpose(1, 0, 2, 3) if layout == "CNHW" else np.ascontiguousarray(
        data.transpose(1, 0, 2, 3))
    g = rng.normal(size=(n, c, h // 2, w // 2)).astype(dtype)
    y, saved = be.max_pool2d(x, (2, 2), (2, 2), (0, 0, 0, 0))
    assert saved[0] == "pairs"
    y_ref, saved_ref = Backend.max_pool2d(be, x, (2, 2), (2, 2), (0, 0, 0, 0))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(saved[1], saved_ref[0])
    gx = be.backprop_max_pool2d(g, saved)
    gx_ref = Backend.backprop_max_pool2d(be, g, saved_ref)
    assert gx.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(gx, gx_ref)


@pytest.mark.parametrize("layout", ["NCHW", "CNHW"])
def test_max_pool_2x2_backward_sends_a_nan_gradient_to_its_winner_only(numpy_kernels, rng,
                                                                         layout):
    be = get("numpy")
    x = rng.normal(size=(2, 3, 4, 6)).astype(np.float32)
    if layout == "CNHW":
        x = np.ascontiguousarray(x.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    _, saved = be.max_pool2d(x, (2, 2), (2, 2), (0, 0, 0, 0))
    g = np.ones((2, 3, 2, 3), np.float32)
    g[1, 2, 0, 1] = np.nan
    gx = be.backprop_max_pool2d(g, saved)
    window = gx[1, 2, 0:2, 2:4]
    assert np.isnan(window).sum() == 1 and np.nansum(window) == 0
    assert np.isnan(gx).sum() == 1 and np.nansum(gx) == 2 * 3 * 2 * 3 - 1


@pytest.mark.parametrize("layout", ["NCHW", "CNHW"])
def test_max_pool_2x2_with_nan_and_inf_as_torch(numpy_kernels, torch, layout):
    """A NaN wins its window (torch's rule), +-inf compare as numbers; with Numba the
    winner's offset is torch's too (the last NaN), so the gradient goes where torch
    sends it."""
    be = get("numpy")
    data = np.array([[1.0, np.nan, np.nan, 2.0, -np.inf, -np.inf, 3.0, 4.0],
                     [5.0, 0.0, 7.0, 6.0, -np.inf, np.inf, np.inf, 4.0],
                     [0.0, 0.0, 0.0, -1.0, 2.0, 2.0, np.nan, 1.0],
                     [0.0, 0.0, -2.0, -3.0, 2.0, 2.0, 1.0, np.nan]], np.float32)
    x = np.stack([data, data[::-1]])[None]  # (1, 2, 4, 8)
    if layout == "CNHW":
        x = np.ascontiguousarray(x.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    y, saved = be.max_pool2d(x, (2, 2), (2, 2), (0, 0, 0, 0))
    t_y, t_idx = torch.nn.functional.max_pool2d(torch.from_numpy(np.ascontiguousarray(x)),
                                                2, return_indices=True)
    np.testing.assert_array_equal(y, t_y.numpy())
    if numpy_kernels == "numba":
        g = np.arange(1, 17, dtype=np.float32).reshape(1, 2, 2, 4)
        gx = be.backprop_max_pool2d(g, saved)
        t_x = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_()
        torch.nn.functional.max_pool2d(t_x, 2).backward(torch.from_numpy(g))
        np.testing.assert_array_equal(gx, t_x.grad.numpy())


@pytest.mark.parametrize("bad", [5, -1])
def test_numba_cross_entropy_refuses_labels_out_of_range(bad):
    """The compiled kernel checks every label: no read outside the row."""
    from backendnn.backends import _numba

    if _numba.kernels() is None:
        pytest.skip("numba is not installed (pip install numba)")
    logits = np.zeros((3, 5), np.float32)
    with pytest.raises(IndexError, match="outside"):
        get("numpy").softmax_cross_entropy(logits, np.array([0, bad, 1]))


def test_few_input_channels_take_the_columns_path():
    from backendnn.backends import numpy as npb

    assert npb.few_channels((32, 3, 3, 3))  # RGB to 32 channels: 27 rows <= 2 x 32
    assert npb.few_channels((16, 1, 3, 3))  # grey images
    assert not npb.few_channels((32, 8, 3, 3))  # 72 rows > 2 x 32
    assert not npb.few_channels((64, 32, 3, 3))  # the grid's products pay


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_columns_equal_portable(rng, dtype, groups, bias, monkeypatch):
    """The columns path with its row of ones (one group with a bias) or without: built
    again in backward (few channels, stride 1, where the direct kernel is not
    compiled) or kept from forward (groups), and built again for a second backward
    after dL/dx reused their buffer."""
    from backendnn.backends import _direct
    from backendnn.backends import numpy as npb

    monkeypatch.setattr(_direct, "usable", lambda dtype: False)

    be = get("numpy")
    n, c, h, w, o = 3, 3, 7, 6, 15
    x = rng.normal(size=(n, c, h, w)).astype(dtype)
    wt = rng.normal(size=(o, c // groups, 3, 3)).astype(dtype)
    b = rng.normal(size=(o,)).astype(dtype) if bias else None
    pad = (1, 1, 1, 1)
    g = rng.normal(size=(n, o, h, w)).astype(dtype)  # "same" padding
    y_ref, want = _portable_conv(x, wt, b, pad, (1, 1), g, groups)
    workspace = {}
    for _ in range(2):  # the second forward reuses the workspace's buffers
        y, saved = be.conv2d(x, wt, b, (1, 1), pad, (1, 1), groups, workspace)
        assert isinstance(saved, npb._ConvSaved)
        np.testing.assert_allclose(y, y_ref, **TOL[dtype])
        for _ in range(2):  # a second backward rebuilds the columns dL/dx overwrote
            got = be.backprop_conv2d(g, saved, True)
            for a, e in zip(got, want):
                if e is None:
                    assert a is None
                    continue
                assert a.dtype == np.dtype(dtype) and a.shape == e.shape
                np.testing.assert_allclose(a, e, **TOL[dtype])
        _, gw, gb = be.backprop_conv2d(g, saved, False)
        np.testing.assert_allclose(gw, want[1], **TOL[dtype])
        assert (gb is None) == (not bias)
