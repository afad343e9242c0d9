"""One `backend` fixture over every built-in backend; unavailable ones skip with the reason.

Data is built in seeded NumPy on the host, moved with `backend.asarray`, and compared
in NumPy (`backend.to_numpy`).
"""
import os

import numpy as np
import pytest

import backendnn
from backendnn import backends

BUILTIN = ("numpy", "array_api_strict", "torch", "cupy")


def backend_or_skip(name):
    try:
        return backends.get(name)
    except backends.BackendUnavailableError as e:
        pytest.skip(f"backend {name!r} unavailable here: {e}")


@pytest.fixture(params=[pytest.param(name, marks=pytest.mark.cuda) if name == "cupy" else name
                        for name in BUILTIN])
def backend(request):
    """Each built-in backend that can run here (the cupy ones marked `cuda`, so that
    `pytest -m cuda` selects the whole GPU subset)."""
    return backend_or_skip(request.param)


@pytest.fixture
def xp(backend):
    return backend.xp


@pytest.fixture(autouse=True)
def _isolated_state(monkeypatch):
    """Every test starts from seed 0, no global backend and no env override."""
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    previous = backends.set_backend(None)
    backendnn.seed(0)
    yield
    backends.set_backend(previous)


def host(backend, x) -> np.ndarray:
    """A host NumPy copy of `x` (never sharing memory with it), float64 if floating,
    for comparisons in NumPy."""
    a = np.array(backend.to_numpy(x), copy=True)
    return a.astype(np.float64) if a.dtype.kind == "f" else a


@pytest.fixture
def torch():
    """PyTorch, the reference for layers and optimisers; tests skip without it."""
    return pytest.importorskip("torch")


@pytest.fixture(params=["numba", "numpy"])
def numpy_kernels(request, monkeypatch):
    """The NumPy backend's kernels as compiled by Numba, and without Numba (its NumPy
    spelling, what a machine without Numba runs); the Numba case skips where Numba is
    not installed."""
    from backendnn.backends import _numba

    if request.param == "numba":
        if _numba.kernels() is None:
            pytest.skip("numba is not installed (pip install numba)")
    else:
        monkeypatch.setattr(_numba, "_KERNELS", False)
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def has_cuda() -> bool:
    try:
        backends.get("cupy")
        return True
    except backends.BackendError:
        return False


def cuda(fn):
    """A test that needs a CUDA device: marked `cuda` (so `pytest -m cuda` selects the
    GPU subset) and skipped with the reason where none is usable."""
    fn = pytest.mark.cuda(fn)
    return pytest.mark.skipif(not has_cuda(), reason="needs CuPy with a usable CUDA device")(fn)

os.environ.setdefault("OMP_NUM_THREADS", "2")
