"""The NumPy backend's compiled direct convolution kernels (backends/_direct.py) beyond
their values, which tests/test_conv_fastpaths.py checks against the portable
convolution: when they are used, their threads, and small products on one BLAS
thread (`_blas.serial`)."""
import multiprocessing
import os

import numpy as np
import pytest

from backendnn.backends import Backend, get


@pytest.fixture
def direct():
    from backendnn.backends import _direct

    if not _direct.usable("float32"):
        pytest.skip("the direct kernels cannot be compiled here (or BACKENDNN_DIRECT=0)")
    return _direct


def _conv_step(x, w, b):
    be = get("numpy")
    y, saved = be.conv2d(x, w, b, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    return (y, *be.backprop_conv2d(np.ones_like(y), saved, True))


def _case(rng, dtype="float32", n=2, c=16, o=8, hw=9):
    x = rng.normal(size=(n, c, hw, hw)).astype(dtype)
    w = rng.normal(size=(o, c, 3, 3)).astype(dtype)
    return x, w, rng.normal(size=(o,)).astype(dtype)


def test_kernels_compile_where_llvmlite_is_installed():
    """The other tests here skip where the kernels are not usable: that must be for
    want of llvmlite or by choice, never a kernel that fails to compile or agree."""
    from backendnn.backends import _direct

    pytest.importorskip("llvmlite", reason="llvmlite is not installed")
    if os.environ.get("BACKENDNN_DIRECT", "1") == "0":
        pytest.skip("BACKENDNN_DIRECT=0 turns the kernels off")
    assert _direct.usable("float32"), _direct._STATE.get("why")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtypes_in_this_machines_byte_order_only(direct, dtype):
    assert direct.usable(dtype)
    assert not direct.usable(np.dtype(dtype).newbyteorder())
    assert not direct.usable("float16") and not direct.usable("int32")


@pytest.mark.parametrize("why", ["environment", "disagrees"])
def test_without_the_kernels_convolutions_take_blas_products(direct, rng, monkeypatch,
                                                             why):
    """BACKENDNN_DIRECT=0, or a first kernel that does not agree with NumPy: the
    backend takes its other paths, with the same values."""
    x, w, b = _case(rng)
    want = _conv_step(x, w, b)
    monkeypatch.setattr(direct, "_STATE", {})
    if why == "environment":
        monkeypatch.setenv("BACKENDNN_DIRECT", "0")
    else:
        monkeypatch.setattr(direct, "_agrees", lambda: False)
    assert not direct.usable("float32")
    called = []
    monkeypatch.setattr(direct, "conv", lambda *a: called.append(a))
    for got, ref in zip(_conv_step(x, w, b), want):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert not called


def test_kernels_split_over_threads_equal_one_thread(direct, rng, monkeypatch):
    """Forward, dL/dx and dL/dweights in parts over the calling thread and the pool:
    the same values as in one piece on one thread."""
    x, w, b = _case(rng, n=5, hw=11)
    monkeypatch.setattr(direct, "_THREADED_MIN", 1 << 62)
    one = _conv_step(x, w, b)
    monkeypatch.setattr(direct, "_THREADED_MIN", 0)
    monkeypatch.setattr(direct, "_CHUNK_W", 64)  # positions of a part: several parts
    runs, slots = [], set()
    run = direct._run

    def recording(work, items, threads):
        runs.append((items, threads))
        return run(lambda i, slot: slots.add(slot) or work(i, slot), items, threads)

    monkeypatch.setattr(direct, "_run", recording)
    for got, ref in zip(_conv_step(x, w, b), one):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    nt = direct._threads()
    assert len(runs) == 3 and all(t == nt for _, t in runs)
    if nt > 1:
        assert all(items > nt for items, _ in runs)
    assert slots <= set(range(nt)) and 0 in slots


def _child(queue):
    from backendnn.backends import _direct

    rng = np.random.default_rng(1)
    x, w, b = _case(rng, n=4, hw=12)
    _direct._THREADED_MIN = 0
    queue.put(float(_conv_step(x, w, b)[0].sum()))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork (POSIX)")
def test_a_forked_child_makes_its_own_threads(direct, monkeypatch):
    """A child made by fork does not inherit the parent's pool threads: it must not
    wait on them forever."""
    rng = np.random.default_rng(1)
    x, w, b = _case(rng, n=4, hw=12)
    monkeypatch.setattr(direct, "_THREADED_MIN", 0)
    want = float(_conv_step(x, w, b)[0].sum())  # the parent's pool exists now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(queue,))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung on the parent's pool")
    assert child.exitcode == 0
    assert queue.get(timeout=5) == pytest.approx(want, rel=1e-6)


def test_weight_gradient_of_no_positions_is_zero(direct):
    gw, gb = direct.weight_grad(np.zeros((4, 0), np.float32), np.zeros((3, 10), np.float32),
                                0, (3, 3), (1, 1), 4, bias=True)
    assert gw.shape == (4, 3, 3, 3) and not gw.any() and gb.shape == (4,) and not gb.any()


def test_kernels_refuse_mixed_dtypes_and_strided_rows(direct):
    src = np.zeros((3, 64), np.float32)
    w = np.zeros((4, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match="unit-stride"):
        direct.conv(src, 4, 6, w, (1, 1), np.zeros((4, 1, 2, 4), np.float64), None)
    with pytest.raises(ValueError, match="unit-stride"):
        direct.conv(src[:, ::2], 4, 6, w, (1, 1), np.zeros((4, 1, 2, 4), np.float32), None)
    with pytest.raises(ValueError, match="unit-stride"):
        direct.weight_grad(np.zeros((4, 20), np.float32)[:, ::2], src, 8, (3, 3), (1, 1), 6)


def test_serial_products_run_on_one_blas_thread_and_restore_it(rng):
    from backendnn.backends import _blas

    before = _blas.threads()
    if _blas._thread_funcs() is None or before < 2:
        pytest.skip("NumPy's OpenBLAS is not threaded here, or cannot be controlled")
    seen = []
    a, b = rng.normal(size=(64, 512)), rng.normal(size=(512, 10))
    got = _blas.serial(lambda p, q: seen.append(_blas.threads()) or p @ q, a, b)
    np.testing.assert_allclose(got, a @ b)
    assert seen == [1] and _blas.threads() == before
    with pytest.raises(ZeroDivisionError):
        _blas.serial(lambda: 1 / 0)
    assert _blas.threads() == before


@pytest.mark.parametrize("shape", [(32, 64, 64), (64, 4096, 10), (256, 784, 512)])
def test_numpy_matmul_equals_the_portable_product(rng, shape):
    """Small products take `serial`, large ones the threaded BLAS: the same values up
    to rounding (BLAS sums in another order on one thread)."""
    m, k, n = shape
    a = rng.normal(size=(m, k)).astype("float32")
    b = rng.normal(size=(k, n)).astype("float32")
    be = get("numpy")
    np.testing.assert_allclose(be.matmul(a, b), Backend.matmul(be, a, b), rtol=1e-5,
                               atol=1e-4)


def test_compiled_kernels_are_kept_on_disk_for_the_next_process(direct, rng, monkeypatch,
                                                                 tmp_path):
    """The second compilation of a kernel loads the first one's machine code (no
    optimisation passes run) and computes the same values."""
    monkeypatch.setenv("BACKENDNN_CACHE_DIR", str(tmp_path))
    llvm_state = direct._STATE["llvm"]
    monkeypatch.setattr(direct, "_STATE", {"llvm": llvm_state})
    x, w, b = _case(rng, c=5, o=3, hw=7)
    want = _conv_step(x, w, b)
    files = sorted(tmp_path.iterdir())
    assert len(files) == 3  # forward, dL/dx, dL/dweights
    monkeypatch.setattr(direct, "_STATE", {"llvm": llvm_state})
    llvm = llvm_state[0]

    def no_passes(*args):
        raise AssertionError("a cached kernel was optimised again")

    monkeypatch.setattr(llvm, "create_pass_builder", no_passes)
    for got, ref in zip(_conv_step(x, w, b), want):
        np.testing.assert_array_equal(got, ref)
    assert sorted(tmp_path.iterdir()) == files


def test_a_kernel_called_first_looks_llvm_up_without_waiting_on_itself(direct, rng,
                                                                       monkeypatch):
    """`conv` before any `usable`: the look-up compiles its check's kernels under the
    lock the kernel holds (it used to wait on itself forever)."""
    import threading

    monkeypatch.setattr(direct, "_STATE", {})
    src = rng.normal(size=(3, 64)).astype("float32")
    w = rng.normal(size=(4, 3, 3, 3)).astype("float32")
    out = np.zeros((4, 1, 2, 4), np.float32)
    worker = threading.Thread(target=direct.conv, args=(src, 4, 6, w, (1, 1), out, None),
                              daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "conv waited on its own look-up"
    want = np.zeros_like(out)
    for r in range(2):
        for col in range(4):
            window = np.stack([src[:, (r + i) * 6 + col:(r + i) * 6 + col + 3]
                               for i in range(3)], axis=1)  # (C, 3, 3)
            want[:, 0, r, col] = np.einsum("ocij,cij->o", w, window)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_kernels_where_they_are_not_usable_say_why(direct, monkeypatch):
    monkeypatch.setattr(direct, "_STATE", {})
    monkeypatch.setenv("BACKENDNN_DIRECT", "0")
    with pytest.raises(RuntimeError, match="BACKENDNN_DIRECT=0"):
        direct.conv(np.zeros((3, 64), np.float32), 4, 6, np.zeros((4, 3, 3, 3), np.float32),
                    (1, 1), np.zeros((4, 1, 2, 4), np.float32), None)


def test_without_a_home_folder_nothing_is_cached(direct, rng, monkeypatch, tmp_path):
    """No HOME, no XDG_CACHE_HOME, no BACKENDNN_CACHE_DIR: kernels compile and run, and
    no folder appears where the process runs (not a literal "~")."""
    for var in ("HOME", "XDG_CACHE_HOME", "BACKENDNN_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(os.path, "expanduser", lambda p: p)  # what Python gives then
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(direct, "_STATE", {"llvm": direct._STATE["llvm"]})
    x, w, b = _case(rng, c=7, o=5, hw=6)
    y = _conv_step(x, w, b)[0]
    assert y.shape == (2, 5, 6, 6) and np.isfinite(y).all()
    assert list(tmp_path.iterdir()) == []
