"""The backend registry: which array library the framework computes with.

Choice, strongest first: an explicit name (`model.to("cupy")`, `get_backend("torch")`),
the innermost `use_backend(name)` context, `set_backend(name)`, the environment
variable `BACKENDNN_BACKEND`, then "numpy". "auto" means CuPy where a CUDA device
is usable, else NumPy.

Built in: numpy, cupy, torch, array_api_strict. Other packages add backends through
the entry-point group ``backendnn.backends`` (each entry point names a loader: a
callable that returns a `Backend`), or at run time with `register(name, loader)`.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
from importlib import metadata

from ._base import (
    Backend,
    BackendEnvironmentError,
    BackendError,
    BackendNotInstalledError,
    BackendUnavailableError,
    CUDADeviceError,
    UnknownBackendError,
    batch_rows,
    host_rng,
    random_state_kept,
    load_npz,
    seed,
    to_host,
)

__all__ = [
    "Backend",
    "BackendError",
    "UnknownBackendError",
    "BackendUnavailableError",
    "BackendNotInstalledError",
    "CUDADeviceError",
    "BackendEnvironmentError",
    "available",
    "registered",
    "get",
    "register",
    "unregister",
    "set_backend",
    "use_backend",
    "get_backend",
    "seed",
    "host_rng",
    "random_state_kept",
    "batch_rows",
    "to_host",
    "load_npz",
    "describe",
    "ENV_VAR",
    "ENTRY_POINT_GROUP",
]

ENV_VAR = "BACKENDNN_BACKEND"
ENTRY_POINT_GROUP = "backendnn.backends"

_BUILTIN = {
    "numpy": "backendnn.backends.numpy:load",
    "array_api_strict": "backendnn.backends.array_api_strict:load",
    "torch": "backendnn.backends.torch:load",
    "cupy": "backendnn.backends.cupy:load",
}
_loaders: dict = dict(_BUILTIN)
_instances: dict[str, Backend] = {}
_entry_points_loaded = False
_global: list[Backend | None] = [None]
_context: contextvars.ContextVar[Backend | None] = contextvars.ContextVar(
    "backendnn_backend", default=None
)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        _loaders.setdefault(ep.name, ep)


def register(name: str, loader) -> None:
    """Register a backend under `name`.

    `loader` is a zero-argument callable returning a `Backend` (a Backend subclass
    itself works), or a "module:function" string imported on first use. Registering
    an existing name replaces it and forgets the cached instance.
    """
    if not isinstance(name, str) or not name or name == "auto":
        msg = f"backend name must be a non-empty string other than 'auto', got {name!r}"
        raise ValueError(msg)
    if not (callable(loader) or isinstance(loader, str)):
        msg = f"`loader` for backend {name!r} must be callable or 'module:function', got {loader!r}"
        raise TypeError(msg)
    if isinstance(loader, str) and not all(loader.partition(":")[::2]):
        msg = f"`loader` for backend {name!r} must look like 'module:function', got {loader!r}"
        raise ValueError(msg)
    _load_entry_points()
    _loaders[name] = loader
    _instances.pop(name, None)


def unregister(name: str) -> None:
    """Remove a registered backend (built-ins come back with their defaults)."""
    _loaders.pop(name, None)
    _instances.pop(name, None)
    if name in _BUILTIN:
        _loaders[name] = _BUILTIN[name]


def registered() -> list[str]:
    """Every registered backend name, whether or not it can run here."""
    _load_entry_points()
    return list(_loaders)


def _unknown(name) -> UnknownBackendError:
    names = ", ".join(registered())
    msg = (
        f"unknown backend {name!r}; registered backends: {names} (or 'auto'). "
        "A new one is added with backendnn.backends.register(name, loader) or an "
        f"entry point in the group {ENTRY_POINT_GROUP!r}."
    )
    return UnknownBackendError(msg)


def _call_loader(name, loader) -> Backend:
    """Run `loader`; an ImportError on the way (a plugin whose library is missing)
    becomes BackendNotInstalledError, so `available()` skips it instead of failing."""
    try:
        if isinstance(loader, str):
            module, _, attr = loader.partition(":")
            loader = getattr(importlib.import_module(module), attr)
        elif isinstance(loader, metadata.EntryPoint):
            loader = loader.load()
        backend = loader()
    except BackendError:
        raise
    except ImportError as e:
        msg = f"backend {name!r} cannot be loaded here: {e}. Install the package that provides it."
        raise BackendNotInstalledError(msg) from e
    if not isinstance(backend, Backend):
        msg = f"the loader of backend {name!r} returned {type(backend).__name__}, not a Backend"
        raise TypeError(msg)
    return backend


def get(name: str) -> Backend:
    """The backend registered as `name` ("auto": CuPy with a CUDA device, else NumPy).

    Raises UnknownBackendError for a name nothing registered, and
    BackendUnavailableError (BackendNotInstalledError, CUDADeviceError) with the
    reason when the backend cannot run here; TypeError for a name that is not a str.
    """
    if isinstance(name, Backend):
        return name
    if not isinstance(name, str):
        msg = f"a backend is a name (str) or a Backend, got {type(name).__name__} {name!r}"
        raise TypeError(msg)
    if name == "auto":
        try:
            return get("cupy")
        except BackendUnavailableError:
            return get("numpy")
    try:
        return _instances[name]
    except KeyError:
        pass
    _load_entry_points()
    if name not in _loaders:
        raise _unknown(name)
    backend = _call_loader(name, _loaders[name])
    _instances[name] = backend
    return backend


def available() -> list[str]:
    """The registered backends that can run here now (importable; CuPy: a usable GPU)."""
    names = []
    for name in registered():
        try:
            get(name)
        except BackendUnavailableError:
            continue
        names.append(name)
    return names


def _from_env() -> Backend | None:
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return None
    try:
        return get(value)
    except BackendError as e:
        msg = f"environment variable {ENV_VAR}={value!r} is not usable: {e}"
        raise BackendEnvironmentError(msg) from e


def get_backend(name: str | Backend | None = None) -> Backend:
    """The backend to use now: `name` if given, else the context, global, env, numpy."""
    if name is not None:
        return get(name)
    backend = _context.get() or _global[0] or _from_env()
    return backend if backend is not None else get("numpy")


def set_backend(name: str | Backend | None) -> Backend | None:
    """Make `name` the process-wide default (None clears it); returns the previous one."""
    previous = _global[0]
    _global[0] = None if name is None else get(name)
    return previous


@contextlib.contextmanager
def use_backend(name: str | Backend):
    """Within the block, `get_backend()` is `name`; the previous choice returns on exit,
    error or not. Nests, and is local to the thread or async task."""
    token = _context.set(get(name))
    try:
        yield _context.get()
    finally:
        _context.reset(token)


def describe(x) -> str:
    """Which backend an array belongs to, for error messages."""
    for name, backend in list(_instances.items()):
        try:
            if backend.owns(x):
                return f"an array of backend {name!r}"
        except Exception:
            continue
    return f"a {type(x).__module__}.{type(x).__qualname__}"
