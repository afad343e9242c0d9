"""The backend registry: lookup, selection order, errors, plugins, run-time registration.

Tests that change the registry use the `registry` fixture, which restores the
loaders, cached instances and entry-point state afterwards. Simulated libraries
(a missing torch, a CuPy without a device) go into `sys.modules` through
`monkeypatch`, with the backend's cached instance removed for the test only.
"""
import asyncio
import contextlib
import copy
import importlib.util
import itertools
import pickle
import sys
import threading
import types

import array_api_compat
import numpy as np
import pytest
from conftest import BUILTIN, backend_or_skip, cuda, has_cuda

import backendnn
from backendnn import BinaryCrossEntropy, Linear, ReLU, Sequential, Sigmoid
from backendnn import backends as B
from backendnn.backends.numpy import NumpyBackend

INTERFACE = ("name", "xp", "device", "asarray", "to_numpy", "synchronize")
DTYPES = ("float32", "float64", "int32", "int64", "bool")
# -0.0, infinities, NaN, a subnormal and the float32 maximum must survive every transfer.
SPECIAL = np.array([0.0, -0.0, 1.5, np.inf, -np.inf, np.nan, 1e-45, 3.4e38], dtype=np.float32)


@pytest.fixture
def registry():
    """The registry module; loaders, instances and entry-point state restored afterwards."""
    saved = dict(B._loaders), dict(B._instances), B._entry_points_loaded
    yield B
    B._loaders.clear()
    B._loaders.update(saved[0])
    B._instances.clear()
    B._instances.update(saved[1])
    B._entry_points_loaded = saved[2]


def tagged(name):
    """A NumPy backend class that answers to `name` (to tell choices apart)."""
    return type(f"Tagged_{name}", (NumpyBackend,), {"name": name})


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# --- the backends ---------------------------------------------------------------------


def test_available_lists_the_installed_backends():
    names = B.available()
    expected = {"numpy"} | {n for n in ("array_api_strict", "torch") if installed(n)}
    assert expected <= set(names)
    assert ("cupy" in names) == has_cuda()
    assert names == [n for n in B.registered() if n in names]
    assert set(BUILTIN) <= set(B.registered())


def test_get_returns_one_backend_with_the_interface(backend, request):
    name = request.node.callspec.params["backend"]
    for attr in INTERFACE:
        assert hasattr(backend, attr), attr
    assert backend.name == name
    assert B.get(name) is backend
    assert hasattr(backend.xp, "matmul") and hasattr(backend.xp, "asarray")
    x = backend.asarray([1.0, 2.0], dtype="float32")
    assert backend.owns(x)
    assert array_api_compat.device(x) == backend.device
    assert backend.synchronize() is None
    assert name in repr(backend)


@pytest.mark.parametrize("dtype", DTYPES)
def test_asarray_keeps_numpy_dtype_and_round_trips(backend, dtype):
    host = np.arange(-3, 3).reshape(2, 3).astype(dtype)
    x = backend.asarray(host)
    assert x.dtype == backend.dtype(dtype)
    assert tuple(x.shape) == (2, 3)
    back = backend.to_numpy(x)
    assert isinstance(back, np.ndarray)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, host)


@pytest.mark.parametrize("dtype", DTYPES)
def test_asarray_from_list_casts_as_asked(backend, dtype):
    values = [[0, 1, 2], [3, 4, 5]]
    x = backend.asarray(values, dtype=dtype)
    assert x.dtype == backend.dtype(dtype)
    np.testing.assert_array_equal(backend.to_numpy(x), np.asarray(values, dtype=dtype))


def test_asarray_from_list_without_dtype(backend):
    np.testing.assert_array_equal(backend.to_numpy(backend.asarray([1, 2, 3])), [1, 2, 3])
    assert backend.asarray([1, 2, 3]).dtype == backend.dtype("int64")


@pytest.mark.parametrize("dst", BUILTIN)
@pytest.mark.parametrize("src", BUILTIN)
def test_asarray_between_backends_is_bit_exact(src, dst):
    a, b = backend_or_skip(src), backend_or_skip(dst)
    for host in (SPECIAL, SPECIAL.reshape(2, 4).T):
        x = b.asarray(a.asarray(host))
        assert b.owns(x)
        assert x.dtype == b.dtype("float32")
        back = b.to_numpy(x)
        assert back.shape == host.shape
        assert back.tobytes() == np.ascontiguousarray(host).tobytes()
        wide = b.asarray(a.asarray(host), dtype="float64")
        assert wide.dtype == b.dtype("float64")
        assert b.to_numpy(wide).tobytes() == np.ascontiguousarray(host, dtype=np.float64).tobytes()


def test_asarray_from_a_torch_tensor_that_requires_grad(backend):
    torch = pytest.importorskip("torch")
    t = torch.arange(3, dtype=torch.float32, requires_grad=True)
    np.testing.assert_array_equal(backend.to_numpy(backend.asarray(t)), [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(backend.to_numpy(t), [0.0, 1.0, 2.0])  # any array, as to_host


def test_copy_and_pickle_give_the_registered_instance(backend):
    assert copy.copy(backend) is backend
    assert copy.deepcopy(backend) is backend
    assert copy.deepcopy({"model": [backend]})["model"][0] is backend
    assert pickle.loads(pickle.dumps(backend)) is backend


def test_pickle_of_a_backend_registered_under_another_name(registry):
    registry.register("numpy_alias", "backendnn.backends.numpy:load")
    alias = registry.get("numpy_alias")
    assert alias is not registry.get("numpy")
    assert pickle.loads(pickle.dumps(alias)) is alias


# --- which backend: explicit > use_backend > set_backend > env > numpy ------------------

LAYERS = ("explicit", "context", "global", "env")


@pytest.fixture
def tags(registry):
    """One run-time backend per way of choosing, named tag_<way>."""
    for layer in LAYERS:
        registry.register(f"tag_{layer}", tagged(f"tag_{layer}"))
    return registry


@pytest.mark.parametrize(
    "present",
    list(itertools.product((False, True), repeat=4)),
    ids=lambda p: "+".join(l for l, on in zip(LAYERS, p) if on) or "none",
)
def test_selection_order(tags, monkeypatch, present):
    explicit, context, global_, env = present
    if env:
        monkeypatch.setenv(B.ENV_VAR, "tag_env")
    if global_:
        B.set_backend("tag_global")
    with B.use_backend("tag_context") if context else contextlib.nullcontext():
        got = B.get_backend("tag_explicit" if explicit else None)
    expected = next((f"tag_{l}" for l, on in zip(LAYERS, present) if on), "numpy")
    assert got.name == expected


def test_env_var_is_read_at_each_call_and_stripped(tags, monkeypatch):
    monkeypatch.setenv(B.ENV_VAR, "  tag_env\n")
    assert B.get_backend().name == "tag_env"
    monkeypatch.setenv(B.ENV_VAR, "")
    assert B.get_backend().name == "numpy"


def test_set_backend_returns_the_previous_choice(tags):
    assert B.set_backend("tag_global") is None
    previous = B.set_backend("tag_context")
    assert previous is B.get("tag_global")
    assert B.set_backend(previous) is B.get("tag_context")
    assert B.get_backend() is B.get("tag_global")
    assert B.set_backend(None) is B.get("tag_global")
    assert B.get_backend().name == "numpy"


def test_use_backend_nests_and_restores_on_error(tags):
    with B.use_backend("tag_global") as outer:
        assert outer is B.get("tag_global")
        with pytest.raises(KeyError):
            with B.use_backend("tag_context") as inner:
                assert B.get_backend() is inner
                with B.use_backend(B.get("tag_env")):
                    assert B.get_backend().name == "tag_env"
                raise KeyError("inside")
        assert B.get_backend() is outer
    assert B.get_backend().name == "numpy"


def test_failed_choices_leave_the_state_unchanged(tags):
    B.set_backend("tag_global")
    with pytest.raises(B.UnknownBackendError):
        B.set_backend("nope")
    with pytest.raises(B.UnknownBackendError):
        with B.use_backend("nope"):
            pass  # pragma: no cover
    assert B.get_backend().name == "tag_global"


def test_use_backend_is_local_to_a_thread(tags):
    seen = {}
    inside, checked = threading.Event(), threading.Event()

    def worker():
        seen["start"] = B.get_backend().name
        with B.use_backend("tag_env"):
            inside.set()
            checked.wait(5)
            seen["inside"] = B.get_backend().name

    B.set_backend("tag_global")
    with B.use_backend("tag_context"):
        thread = threading.Thread(target=worker)
        thread.start()
        assert inside.wait(5)
        seen["main"] = B.get_backend().name
        checked.set()
        thread.join(5)
    assert seen == {"start": "tag_global", "inside": "tag_env", "main": "tag_context"}


def test_use_backend_is_local_to_an_async_task(tags):
    async def task(name):
        with B.use_backend(name):
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            return B.get_backend().name

    async def both():
        return await asyncio.gather(task("tag_context"), task("tag_env"))

    assert asyncio.run(both()) == ["tag_context", "tag_env"]
    assert B.get_backend().name == "numpy"


def test_auto_is_cupy_with_a_device_else_numpy(monkeypatch):
    expected = B.get("cupy" if has_cuda() else "numpy")
    assert B.get("auto") is expected
    with B.use_backend("auto"):
        assert B.get_backend() is expected
    monkeypatch.setenv(B.ENV_VAR, "auto")
    assert B.get_backend() is expected


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "choose",
    [B.get, B.get_backend, B.set_backend, lambda n: B.use_backend(n).__enter__()],
    ids=["get", "get_backend", "set_backend", "use_backend"],
)
def test_unknown_name_lists_registered_and_how_to_register(choose):
    with pytest.raises(B.UnknownBackendError) as info:
        choose("nopelib")
    msg = str(info.value)
    assert "'nopelib'" in msg
    for name in B.registered():
        assert name in msg
    assert "register(" in msg and B.ENTRY_POINT_GROUP in msg
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", [3, ["numpy"], b"numpy"])
def test_name_of_the_wrong_type(name):
    with pytest.raises(TypeError, match="name"):
        B.get(name)


def test_loader_that_raises_not_installed(registry):
    def loader():
        raise B.BackendNotInstalledError("backend 'ghost' needs ghostlib: pip install ghostlib")

    registry.register("ghost", loader)
    with pytest.raises(B.BackendNotInstalledError, match="pip install ghostlib"):
        registry.get("ghost")
    assert "ghost" in registry.registered()
    assert "ghost" not in registry.available()
    assert "ghost" not in registry._instances


@pytest.mark.parametrize(
    "name, module, extra",
    [
        ("torch", "torch", "backendnn[torch]"),
        ("array_api_strict", "array_api_strict", "backendnn[strict]"),
        ("cupy", "cupy", "backendnn[cuda12]"),
    ],
)
def test_library_not_installed_names_the_extra(monkeypatch, name, module, extra):
    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.delitem(B._instances, name, raising=False)
    with pytest.raises(B.BackendNotInstalledError) as info:
        B.get(name)
    assert extra in str(info.value)
    assert isinstance(info.value, ImportError)
    assert name in B.registered()
    assert name not in B.available()
    assert name not in B._instances


@pytest.mark.skipif(installed("cupy"), reason="CuPy is installed here")
def test_cupy_not_installed_here():
    with pytest.raises(B.BackendNotInstalledError, match=r"backendnn\[cuda12\]"):
        B.get("cupy")
    assert "cupy" not in B.available()


def fake_cupy(get_device_count):
    """A module that looks like CuPy to the backend's device check."""
    module = types.ModuleType("cupy")
    module.__version__ = "99.0-fake"
    module.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=get_device_count))
    return module


@pytest.fixture
def no_cuda_cupy(monkeypatch):
    monkeypatch.delitem(B._instances, "cupy", raising=False)
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(lambda: 0))
    yield
    assert "cupy" not in B._instances, "a failed load must not be cached"


def test_cupy_without_device_says_so(no_cuda_cupy):
    with pytest.raises(B.CUDADeviceError) as info:
        B.get("cupy")
    msg = str(info.value)
    assert "99.0-fake" in msg and "device count 0" in msg and "CUDA" in msg
    assert isinstance(info.value, B.BackendUnavailableError)
    assert "cupy" not in B.available()
    assert B.get("auto") is B.get("numpy")


def test_cupy_whose_runtime_fails_says_why(monkeypatch):
    def fail():
        raise RuntimeError("cudaErrorInsufficientDriver: driver too old")

    monkeypatch.delitem(B._instances, "cupy", raising=False)
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(fail))
    with pytest.raises(B.CUDADeviceError, match="driver too old"):
        B.get("cupy")
    assert "cupy" not in B._instances


@pytest.mark.parametrize("value", ["nopelib", "auto-ish"])
def test_bad_env_var_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(B.ENV_VAR, value)
    with pytest.raises(B.BackendEnvironmentError) as info:
        B.get_backend()
    msg = str(info.value)
    assert B.ENV_VAR == "BACKENDNN_BACKEND" and "BACKENDNN_BACKEND" in msg
    assert repr(value) in msg and "array_api_strict" in msg
    assert isinstance(info.value.__cause__, B.UnknownBackendError)
    assert B.get_backend("numpy").name == "numpy"
    B.set_backend("numpy")
    assert B.get_backend().name == "numpy"


def test_env_var_naming_an_unavailable_backend(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.delitem(B._instances, "cupy", raising=False)
    monkeypatch.setenv(B.ENV_VAR, "cupy")
    with pytest.raises(B.BackendEnvironmentError, match=r"BACKENDNN_BACKEND.*cuda12") as info:
        B.get_backend()
    assert isinstance(info.value.__cause__, B.BackendNotInstalledError)


def test_every_error_is_a_backend_error():
    for cls in (B.UnknownBackendError, B.BackendUnavailableError, B.BackendNotInstalledError,
                B.CUDADeviceError, B.BackendEnvironmentError):
        assert issubclass(cls, B.BackendError)


# --- register / unregister ---------------------------------------------------------------


def loader_function():
    return tagged("from_function")()


@pytest.mark.parametrize(
    "loader, name",
    [
        (tagged("from_class"), "from_class"),
        (loader_function, "from_function"),
        ("backendnn.backends.numpy:load", "numpy"),
        (f"{__name__}:loader_function", "from_function"),
    ],
    ids=["class", "function", "string", "string-to-test-module"],
)
def test_register_at_run_time(registry, loader, name):
    registry.register("mine", loader)
    backend = registry.get("mine")
    assert backend.name == name
    assert registry.get("mine") is backend
    assert "mine" in registry.registered() and "mine" in registry.available()
    with registry.use_backend("mine"):
        assert registry.get_backend() is backend


def test_register_again_replaces_the_cached_instance(registry):
    registry.register("mine", tagged("one"))
    assert registry.get("mine").name == "one"
    registry.register("mine", tagged("two"))
    assert registry.get("mine").name == "two"


def test_unregister(registry):
    registry.register("mine", tagged("mine"))
    registry.get("mine")
    registry.unregister("mine")
    assert "mine" not in registry.registered()
    with pytest.raises(B.UnknownBackendError):
        registry.get("mine")
    registry.register("numpy", tagged("impostor"))
    assert registry.get("numpy").name == "impostor"
    registry.unregister("numpy")
    assert type(registry.get("numpy")) is NumpyBackend


@pytest.mark.parametrize("name", ["", "auto", 3, None])
def test_register_refuses_bad_names(registry, name):
    with pytest.raises(ValueError, match="name"):
        registry.register(name, tagged("x"))


@pytest.mark.parametrize(
    "loader, error",
    [
        (3, TypeError),
        (None, TypeError),
        (NumpyBackend(), TypeError),
        ("backendnn.backends.numpy", ValueError),
        (":load", ValueError),
        ("backendnn.backends.numpy:", ValueError),
    ],
    ids=["int", "None", "instance", "no-colon", "no-module", "no-function"],
)
def test_register_refuses_bad_loaders(registry, loader, error):
    with pytest.raises(error, match="loader"):
        registry.register("mine", loader)
    assert "mine" not in registry.registered()


def test_loader_returning_something_else_is_refused(registry):
    registry.register("mine", lambda: np.zeros(3))
    with pytest.raises(TypeError, match=r"'mine'.*ndarray.*not a Backend"):
        registry.get("mine")
    assert "mine" not in registry._instances


def test_loader_whose_module_is_missing_is_not_installed(registry):
    registry.register("mine", "backendnn_no_such_module:load")
    with pytest.raises(B.BackendNotInstalledError, match="backendnn_no_such_module"):
        registry.get("mine")
    assert "mine" not in registry.available()


# --- entry-point plugins -----------------------------------------------------------------

PLUGIN_MODULE = '''\
"""dummy-backend: a third-party backendnn backend, NumPy under another name."""
import types

import numpy as np

from backendnn.backends import Backend

dummylib = types.SimpleNamespace(__version__="0.1.0")


class DummyBackend(Backend):
    name = "dummy"
    library = "dummy-backend"
    extra = ""

    def _load(self):
        return np

    def _default_device(self):
        return "cpu"

    def _module(self):
        return dummylib

    def owns(self, x):
        return isinstance(x, np.ndarray)


def load():
    return DummyBackend()
'''

PLUGIN_ENTRY_POINTS = {
    "dummy": "dummy_backend:load",
    "dummy_missing": "dummy_backend_needs_a_missing_lib:load",
    "numpy": "dummy_backend:load",  # a plugin cannot shadow a built-in
}


def write_dummy_plugin(root) -> None:
    """A distribution `dummy-backend` in folder `root`: the module and its dist-info."""
    (root / "dummy_backend.py").write_text(PLUGIN_MODULE)
    info = root / "dummy_backend-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dummy-backend\nVersion: 0.1\n")
    lines = [f"{k} = {v}" for k, v in PLUGIN_ENTRY_POINTS.items()]
    (info / "entry_points.txt").write_text(f"[{B.ENTRY_POINT_GROUP}]\n" + "\n".join(lines) + "\n")


@pytest.fixture
def plugin(tmp_path, monkeypatch, registry):
    """The dummy distribution on sys.path, with the registry to load entry points afresh."""
    write_dummy_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    registry._entry_points_loaded = False
    yield registry
    sys.modules.pop("dummy_backend", None)


def test_plugin_is_found_through_its_entry_point(plugin):
    assert {"dummy", "dummy_missing"} <= set(plugin.registered())
    assert plugin.registered().count("numpy") == 1
    names = plugin.available()
    assert "dummy" in names and "dummy_missing" not in names
    dummy = plugin.get("dummy")
    assert type(dummy).__name__ == "DummyBackend"
    assert (dummy.name, dummy.version(), dummy.device) == ("dummy", "0.1.0", "cpu")
    assert pickle.loads(pickle.dumps(dummy)) is dummy


def test_plugin_with_a_missing_library_is_unavailable(plugin):
    with pytest.raises(B.BackendNotInstalledError, match="dummy_backend_needs_a_missing_lib"):
        plugin.get("dummy_missing")


def test_plugin_cannot_shadow_a_builtin(plugin, monkeypatch):
    monkeypatch.delitem(plugin._instances, "numpy")
    assert type(plugin.get("numpy")) is NumpyBackend


def train_one_step(name):
    """Seed 0, a 4-3-1 network, one gradient step (lr 0.5); returns (model, loss
    before, loss after). The step is written out so that only the registry is tested."""
    backendnn.seed(0)
    rng = np.random.default_rng(7)
    x_host = rng.normal(size=(8, 4)).astype(np.float32)
    y_host = (rng.random(8) < 0.5).astype(np.float32)
    with backendnn.use_backend(name):
        model = Sequential([Linear(4, 3), ReLU(), Linear(3, 1), Sigmoid()], BinaryCrossEntropy())
        x, y = model.backend.asarray(x_host), model.backend.asarray(y_host)
        before = model.backend.to_numpy(model.loss(x, y)).mean()
        model.backward()
        for p in model.parameters():
            p.value = p.value - 0.5 * p.grad
        after = model.backend.to_numpy(model.loss(x, y)).mean()
    return model, before, after


def test_plugin_trains_a_model(plugin):
    model, before, after = train_one_step("dummy")
    assert model.backend is plugin.get("dummy")
    assert all(layer.backend is model.backend for layer in model.layers)
    assert after < before
    # The plugin runs the portable Array API kernels, the numpy backend its fast
    # paths (e.g. bias gradients as ones @ g): equal up to float32 summation order.
    reference, ref_before, ref_after = train_one_step("numpy")
    np.testing.assert_allclose([before, after], [ref_before, ref_after], rtol=1e-6)
    for p, q in zip(model.parameters(), reference.parameters()):
        assert model.backend.owns(p.value)
        np.testing.assert_allclose(p.value, q.value, rtol=1e-6, atol=1e-7)


# --- CUDA (skip without a device) --------------------------------------------------------


@cuda
def test_cupy_backend_on_the_device():
    cp = B.get("cupy")
    assert "cupy" in B.available()
    host = SPECIAL.reshape(2, 4)
    x = cp.asarray(host)
    assert type(x).__module__.startswith("cupy") and cp.owns(x)
    assert x.dtype == cp.dtype("float32")
    assert cp.asarray(host, dtype="float64").dtype == cp.dtype("float64")
    assert cp.synchronize() is None
    assert cp.to_numpy(x).tobytes() == host.tobytes()
    assert pickle.loads(pickle.dumps(cp)) is cp


@cuda
def test_dlpack_between_torch_cuda_and_cupy_copies_nothing():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch was built without CUDA")
    cp, tb = B.get("cupy"), B.get("torch")
    t = torch.arange(6, dtype=torch.float32, device="cuda")
    c = cp.asarray(t)
    assert c.data.ptr == t.data_ptr()
    back = tb.asarray(c)
    assert back.data_ptr() == t.data_ptr()
    c[0] = 42.0
    cp.synchronize()
    assert float(t[0]) == 42.0


# --- the CuPy backend's code paths that run without a GPU (fakes for CuPy) -----------------

def test_cupy_kernel_sources_use_only_their_parameters():
    import re

    from backendnn.backends import cupy as cupy_module

    known = {"i", "exp", "log", "T", "long"}
    for name, (inputs, outputs, body) in cupy_module._KERNELS.items():
        params = {p.split()[-1] for p in f"{inputs}, {outputs}".split(",")}
        used = set(re.findall(r"[A-Za-z_]\w*", body))
        assert used <= params | known, f"kernel {name} uses {used - params - known}"
        assert outputs.split()[-1] in re.findall(r"^\s*(\w+)\s*[-+]?=", body)[0:1], name


class _FakeCupyModule:
    """What the CuPy backend's host-side code touches: ndarray, from_dlpack, asarray."""

    class ndarray:  # noqa: N801 (CuPy's name)
        pass

    def __init__(self):
        self.dlpack_calls, self.host_copies = [], []

    def from_dlpack(self, obj):
        self.dlpack_calls.append(obj)
        if obj.requires_grad:
            raise BufferError("Can't export tensors that require gradient, use tensor.detach()")
        raise RuntimeError("unsupported device")  # a CPU-side fake: fall back to the host

    def asarray(self, obj, dtype=None):
        self.host_copies.append(obj)
        return obj

    def zeros(self, shape, dtype=None):
        return np.zeros(shape, dtype=dtype)


def fake_cupy_backend(monkeypatch):
    from backendnn.backends.cupy import CupyBackend

    b = CupyBackend.__new__(CupyBackend)
    b._cupy, b._dtypes, b.device = _FakeCupyModule(), {}, types.SimpleNamespace(id=0)
    b.xp = types.SimpleNamespace()
    monkeypatch.setattr(CupyBackend, "_host", staticmethod(lambda obj: np.asarray(obj.values)))
    return b


class _TorchLikeCudaTensor:
    __module__ = "torch.fake"
    is_cuda = True

    def __init__(self, requires_grad):
        self.requires_grad, self.values = requires_grad, [1.0, 2.0]

    def detach(self):
        return _TorchLikeCudaTensor(False)

    def __dlpack__(self, *args, **kwargs):
        raise AssertionError("the fake CuPy does not call this")


def test_cupy_asarray_falls_back_to_the_host_when_dlpack_refuses(monkeypatch):
    """A torch CUDA tensor that requires grad: DLPack refuses it, the values still come
    (through the host, where the torch backend detaches it)."""
    b = fake_cupy_backend(monkeypatch)
    out = b.asarray(_TorchLikeCudaTensor(requires_grad=True))
    assert len(b._cupy.dlpack_calls) == 1 and len(b._cupy.host_copies) == 1
    np.testing.assert_array_equal(out, [1.0, 2.0])


def test_cupy_owns_only_arrays_of_its_device(monkeypatch):
    b = fake_cupy_backend(monkeypatch)
    here, there = b._cupy.ndarray(), b._cupy.ndarray()
    here.device, there.device = types.SimpleNamespace(id=0), types.SimpleNamespace(id=1)
    assert b.owns(here) and not b.owns(there) and not b.owns(np.zeros(2))


def test_cupy_captured_products_refuse_what_cublas_gemm_cannot_do():
    from backendnn.backends.cupy import _DirectGemm

    gemm = _DirectGemm.__new__(_DirectGemm)
    gemm.cupy = _FakeCupyModule()
    f32 = np.zeros((3, 4), np.float32)
    for a, b in ((np.zeros((3, 4), np.int64), np.zeros((4, 2), np.int64)),
                 (f32, np.zeros((4, 2), np.float64)), (f32, np.zeros((5, 2), np.float32)),
                 (np.zeros((2, 3, 4), np.float32), np.zeros((4, 2), np.float32))):
        with pytest.raises(RuntimeError, match=r"captured step can only multiply.*capture=False"):
            gemm(a, b)
    empty = gemm(np.zeros((3, 0), np.float32), np.zeros((0, 2), np.float32))
    assert empty.shape == (3, 2) and not empty.any()


def test_cupy_gemm_handle_gets_its_workspace_after_each_stream_change():
    from backendnn.backends.cupy import _DirectGemm

    calls = []
    gemm = _DirectGemm.__new__(_DirectGemm)
    gemm.handle = 7
    gemm._workspace = types.SimpleNamespace(data=types.SimpleNamespace(ptr=1234), nbytes=99)
    gemm._set_stream = lambda handle, ptr: calls.append(("stream", handle, ptr)) or 0
    gemm._set_workspace = lambda handle, ptr, size: calls.append(("workspace", handle, ptr, size)) or 0
    gemm.bind(types.SimpleNamespace(ptr=55))
    assert calls == [("stream", 7, 55), ("workspace", 7, 1234, 99)]
    gemm._set_workspace = lambda *args: 14  # CUBLAS_STATUS_INTERNAL_ERROR
    with pytest.raises(RuntimeError, match="cublasSetWorkspace failed with cuBLAS status 14"):
        gemm.bind(types.SimpleNamespace(ptr=55))


def test_gpu_check_script_parses_and_runs_every_step():
    """benchmarks/gpu_check.sh, the one-shot check for a CUDA machine: bash -n here."""
    import pathlib
    import shutil
    import subprocess

    script = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.sh"
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash here")
    subprocess.run([bash, "-n", str(script)], check=True, capture_output=True, text=True)
    text = script.read_text()
    for needed in ("-m cuda", "parity --backend cupy", "gpu.py\" --graph", "unset CUPY_TF32",
                   "capture_step", "device_bernoulli"):
        assert needed in text, needed
    run = subprocess.run([bash, str(script)], capture_output=True, text=True)
    assert run.returncode != 0 and "usage: gpu_check.sh LOGDIR" in run.stderr
