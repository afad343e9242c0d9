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


@pytest.fixture(params=BUILTIN)
def backend(request):
    """Each built-in backend that can run here."""
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


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def has_cuda() -> bool:
    try:
        backends.get("cupy")
        return True
    except backends.BackendError:
        return False


cuda = pytest.mark.skipif(not has_cuda(), reason="needs CuPy with a usable CUDA device")

os.environ.setdefault("OMP_NUM_THREADS", "2")
