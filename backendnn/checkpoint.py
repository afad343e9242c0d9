"""Checkpoints: a model, its optimiser, its trainer and the RNG states in one safetensors file.

    save(model, "run.safetensors", trainer=trainer)      # optimiser taken from the trainer
    model = load("run.safetensors", backend="torch")      # rebuilt, on any backend
    restore("run.safetensors", trainer=Trainer(model, SGD(model, lr=0.1, momentum=0.9), dl))

The file is plain safetensors:
- tensors `layers.<i>.<name>` hold each layer's parameters and buffers
  ("layers.0.weights", "layers.0.bias", ...), readable by any safetensors user;
  tensors `optimizer.<path>` hold the optimiser's array state.
- string metadata, JSON: `model` (layer classes and constructor arguments, the
  criterion, the dtype), `optimizer` (its class and `state_dict()` with arrays
  replaced by tensor names), `trainer` (epoch and history), `rng` (the state of
  the seeded host bit generator, which shuffles and initialises), `device_rng`
  (the Philox stream of Dropout masks, `backend.device_rng_state()`: generator
  name, seed and counter, the same on every backend), `extra` (yours).

A resume is exact, masks included, on any backend: the stream's bits do not depend
on the library or device. Files written before the Philox stream hold torch's or
CuPy's own generator state under `device_rng`; they still load and restore, and
their masks continue from the current stream.

Everything goes through the model's state protocol: tensors are
`model.state_dict()`, the description is `model.config()` (each layer's
`config()`: its constructor arguments, written by the layer).

Loading treats the file as untrusted: it never runs code, and the description is
checked (types, nesting, the layers' `state_shapes()` against the stored tensors'
shapes and dtypes) before any layer allocates an array, so a malformed or
hostile file gives a `CheckpointError` in milliseconds, whatever it claims.

Writes are atomic: the file is written beside the target and renamed over it, so
a crash mid-write leaves the previous checkpoint intact; the `*.tmp` such a crash
leaves is removed by the next save of that target. Arrays pass through the
host as NumPy arrays (`backend.to_numpy`, `backend.asarray`); this module imports
no array library itself.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile

from .backends import get_backend, host_rng
from .layers import Layer
from .layers.base import deferred_init
from .losses import Loss

FORMAT = "backendnn"
FORMAT_VERSION = "1"

__all__ = ["save", "load", "restore", "read_metadata", "CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not match what it is loaded into."""


# --- writing ------------------------------------------------------------------------

def save(model, path, optimizer=None, trainer=None, *, extra: dict | None = None) -> None:
    """Write `model` (and `optimizer`, `trainer`, the RNG states) to `path`.

    Args:
        model: a `Sequential` (or subclass).
        path: the file to write; replaced atomically when it exists.
        optimizer: its `state_dict()` is saved; default: `trainer.optimizer`.
        trainer: its `epoch` and `history` are saved (and a scheduler's
            `state_dict()` when the trainer has one).
        extra: any JSON-able dict of your own (feature scaling, class names),
            returned by `read_metadata(path)["extra"]`.
    """
    if optimizer is None and trainer is not None:
        optimizer = getattr(trainer, "optimizer", None)
    backend = model.backend
    tensors: dict = {}

    def host(name, array):
        value = backend.to_numpy(array)
        if not value.flags.c_contiguous:
            value = value.copy(order="C")
        tensors[name] = value
        return {"$tensor": name}

    for name, value in model.state_dict().items():
        host(name, value)
    spec = model.config()
    for entry, layer in zip(spec["layers"], model.layers):
        entry["arrays"] = [name for name, _ in layer.state_arrays()]
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": _dumps(spec),
                "rng": _dumps(_rng_state())}
    metadata["device_rng"] = _dumps(backend.device_rng_state())
    if optimizer is not None:
        state = _encode(_state_dict(optimizer), "optimizer", host)
        metadata["optimizer"] = _dumps({"class": type(optimizer).__qualname__, "state": state})
    if extra is not None:
        metadata["extra"] = _dumps(extra)
    if trainer is not None:
        info = {"epoch": int(trainer.epoch), "history": [dict(row) for row in trainer.history]}
        scheduler = getattr(trainer, "scheduler", None)
        if scheduler is not None and hasattr(scheduler, "state_dict"):
            info["scheduler"] = {"class": type(scheduler).__qualname__,
                                 "state": _encode(scheduler.state_dict(), "scheduler", host)}
        metadata["trainer"] = _dumps(info)
    data = _safetensors().numpy.save(tensors, metadata=metadata)
    _atomic_write(os.fspath(path), data)


def _atomic_write(path: str, data: bytes) -> None:
    """Write `data` to a temporary file in `path`'s folder, fsync it, rename it over `path`.
    Temporary files an earlier, killed save of `path` left are removed first."""
    folder = os.path.dirname(os.path.abspath(path))
    for stale in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(os.path.basename(path))}.*.tmp")):
        with contextlib.suppress(OSError):
            os.unlink(stale)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_all(f, data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    """Make the rename durable (POSIX); a no-op where folders cannot be opened."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_all(f, data: bytes) -> None:
    f.write(data)


def _file_mode(path: str) -> int:
    """The existing file's permissions, else the usual 0o666 minus the umask."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _encode(obj, path: str, host):
    """`obj` (nested dicts, lists, tuples, scalars, arrays) as JSON, arrays given to `host`."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: _encode(v, f"{path}.{k}", host) for k, v in obj.items()}
        return {"$items": [[k, _encode(v, f"{path}.{k}", host)] for k, v in obj.items()]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}.{i}", host) for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v, f"{path}.{i}", host) for i, v in enumerate(obj)]}
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        return host(path, obj)
    msg = f"cannot save {path}: {type(obj).__name__} is not an array, number, string, list or dict"
    raise TypeError(msg)


def _decode(obj, array):
    if isinstance(obj, list):
        return [_decode(v, array) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "$tensor" in obj:
        return array(obj["$tensor"])
    if "$tuple" in obj:
        return tuple(_decode(v, array) for v in obj["$tuple"])
    if "$items" in obj:
        return {k: _decode(v, array) for k, v in obj["$items"]}
    return {k: _decode(v, array) for k, v in obj.items()}


def _state_dict(optimizer) -> dict:
    if hasattr(optimizer, "state_dict"):
        return optimizer.state_dict()
    msg = f"{type(optimizer).__name__} has no state_dict(): it cannot be checkpointed"
    raise TypeError(msg)


def _rng_state() -> dict:
    return host_rng().bit_generator.state


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


# --- reading ------------------------------------------------------------------------

def read_metadata(path) -> dict:
    """The checkpoint's metadata, JSON values decoded (no tensor is read)."""
    with _open(path) as f:
        return _metadata(path, f)


def load(path, backend=None):
    """Rebuild the model saved in `path` on `backend` (default: the current backend).

    Returns a `Sequential` (or the saved subclass, rebuilt through
    `Sequential.__init__`) with the saved weights and buffers. The host RNG is
    left as it was; `restore` brings back the optimiser, trainer and RNG state.
    """
    backend = get_backend(backend)
    with _open(path) as f:
        meta = _metadata(path, f)
        spec = meta.get("model")
        if spec is None:
            msg = (
                f"{os.fspath(path)} has no backendnn model description (metadata 'model'); "
                "build the model yourself and read the weights with restore(path, model=model)"
            )
            raise CheckpointError(msg)
        spec = _check_spec(path, spec)
        rng = host_rng().bit_generator
        state = rng.state
        try:
            model = _build(path, f, spec, backend)
        finally:
            rng.state = state
        _load_weights(path, f, model, spec)
    return model


def restore(path, *, model=None, optimizer=None, trainer=None, rng: bool = True) -> dict:
    """Load what `path` holds into existing objects, for an exact resume.

    Args:
        model: receives the weights and buffers; default: `optimizer.model` or
            `trainer.model`.
        optimizer: receives the saved optimiser state (`load_state_dict`);
            default: `trainer.optimizer`.
        trainer: receives the saved epoch and history (and scheduler state).
        rng: also set the seeded host generator to its saved state, so shuffling
            continues as it would have, and the Dropout mask stream (seed and
            counter); an older file's torch or CuPy generator state is skipped
            without error (no backend draws those masks now).

    Returns the checkpoint's metadata. Raises CheckpointError when the file does not
    match: another architecture, a tensor of another shape, another optimiser class.
    """
    if trainer is not None:
        optimizer = optimizer if optimizer is not None else getattr(trainer, "optimizer", None)
        model = model if model is not None else trainer.model
    if model is None and optimizer is not None:
        model = getattr(optimizer, "model", None)
        model = model if hasattr(model, "layers") else None
    with _open(path) as f:
        meta = _metadata(path, f)
        with _its_fault(path, "the saved optimiser or trainer state"):
            _check_fits(path, meta, optimizer, trainer)
        if model is not None:
            _load_weights(path, f, model, meta.get("model"))
        array = _reader(path, f, model.backend if model is not None else get_backend())
        if optimizer is not None:
            with _its_fault(path, f"the optimiser state (for {type(optimizer).__name__})"):
                _restore_optimizer(path, meta, optimizer, array)
        if trainer is not None:
            with _its_fault(path, "the trainer state"):
                _restore_trainer(path, meta, trainer, array)
    if rng:
        with _its_fault(path, "the saved RNG state"):
            _restore_rng(path, meta)
            _restore_device_rng(path, meta, model.backend if model is not None else get_backend())
    return meta


@contextlib.contextmanager
def _its_fault(path, what: str):
    """Any error while decoding `what` from the file is a CheckpointError naming it."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as e:
        msg = f"{os.fspath(path)}: {what} is malformed ({type(e).__name__}: {e}); the file is corrupt"
        raise CheckpointError(msg) from None


def _open(path):
    st = _safetensors()
    try:
        return st.safe_open(os.fspath(path), framework="np")
    except FileNotFoundError:
        raise
    except Exception as e:
        msg = (
            f"{os.fspath(path)} is not a readable safetensors file ({e}); it may be "
            "truncated or corrupt: use an earlier checkpoint"
        )
        raise CheckpointError(msg) from None


def _metadata(path, f) -> dict:
    raw = f.metadata() or {}
    meta = {}
    for key, value in raw.items():
        if key in ("model", "optimizer", "trainer", "rng", "device_rng", "extra"):
            try:
                value = json.loads(value)
            except (ValueError, RecursionError) as e:
                msg = f"{os.fspath(path)}: metadata {key!r} is not valid JSON ({e}); the file is corrupt"
                raise CheckpointError(msg) from None
            if _depth(value) > _MAX_DEPTH:
                msg = (f"{os.fspath(path)}: metadata {key!r} is nested deeper than {_MAX_DEPTH} "
                       "levels; the file is corrupt or not a backendnn checkpoint")
                raise CheckpointError(msg)
        meta[key] = value
    if raw and raw.get("format") not in (None, FORMAT):
        msg = f"{os.fspath(path)}: metadata 'format' is {raw.get('format')!r}, expected {FORMAT!r}"
        raise CheckpointError(msg)
    return meta


def _reader(path, f, backend):
    """name -> a fresh array on `backend`, with a clear error for a missing tensor."""
    names = set(f.keys())

    def array(name, dtype=None):
        x = backend.asarray(_host_tensor(path, f, name, names), dtype=dtype)
        return backend.xp.asarray(x, copy=True)

    return array


def _host_tensor(path, f, name: str, names: set):
    """The stored tensor `name` as a host NumPy array read from the file, whose tensor
    names are `names`."""
    if name not in names:
        msg = f"{os.fspath(path)} lacks the tensor {name!r}; the file is incomplete or corrupt"
        raise CheckpointError(msg)
    try:
        return f.get_tensor(name)
    except Exception as e:
        msg = f"{os.fspath(path)}: cannot read tensor {name!r} ({e}); the file is corrupt"
        raise CheckpointError(msg) from None


_MAX_DEPTH = 32
_FLOAT_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}


def _depth(obj, level: int = 0) -> int:
    """How deeply `obj` (decoded JSON) nests, counted without recursion."""
    deepest, todo = level, [(obj, level)]
    while todo:
        item, d = todo.pop()
        deepest = max(deepest, d)
        if deepest > _MAX_DEPTH:
            break
        if isinstance(item, dict):
            todo.extend((v, d + 1) for v in item.values())
        elif isinstance(item, list):
            todo.extend((v, d + 1) for v in item)
    return deepest


def _check_spec(path, spec) -> dict:
    """The model description, checked to have the types `save` writes."""
    where = os.fspath(path)

    def bad(what):
        msg = f"{where}: the model description is malformed: {what}; the file is corrupt or not written by backendnn.save"
        return CheckpointError(msg)

    def entry_ok(entry, kind):
        if not isinstance(entry, dict) or not isinstance(entry.get("class"), str):
            raise bad(f"a {kind} entry is {type(entry).__name__}, not a dict with a 'class' name")
        if not isinstance(entry.get("module", ""), str) or not isinstance(entry.get("config", {}), dict):
            raise bad(f"the {kind} {entry['class']!r} has a malformed 'module' or 'config'")

    if not isinstance(spec, dict):
        raise bad(f"it is {type(spec).__name__}, not a dict")
    layers = spec.get("layers")
    if not isinstance(layers, list):
        raise bad(f"'layers' is {type(layers).__name__}, not a list")
    for entry in layers:
        entry_ok(entry, "layer")
        arrays = entry.get("arrays", [])
        if not isinstance(arrays, list) or not all(isinstance(a, str) for a in arrays):
            raise bad(f"the layer {entry['class']!r} lists its arrays as {arrays!r}")
    if spec.get("criterion") is not None:
        entry_ok(spec["criterion"], "criterion")
    if spec.get("dtype", "float32") not in _FLOAT_DTYPES.values():
        raise bad(f"'dtype' is {spec.get('dtype')!r}")
    if not isinstance(spec.get("class", "Sequential"), str):
        raise bad("'class' is not a name")
    sizes = spec.get("sizes", [])
    if not isinstance(sizes, list) or not all(isinstance(n, int) for n in sizes):
        raise bad(f"'sizes' is {sizes!r}")
    return spec


def _stored(f) -> dict:
    """{tensor name: (shape, dtype name)} from the file's header (nothing is read)."""
    out = {}
    for key in f.keys():
        view = f.get_slice(key)
        out[key] = (tuple(view.get_shape()), view.get_dtype())
    return out


def _build(path, f, spec: dict, backend):
    """The saved model, built only after every layer's configuration was checked
    against the stored tensors (no layer allocates what the file does not hold)."""
    from .model import Sequential

    dtype = spec.get("dtype", "float32")
    stored = _stored(f)
    with deferred_init():
        layers = [_make(path, entry, Layer, backend, dtype) for entry in spec["layers"]]
    for i, layer in enumerate(layers):
        _check_shapes(path, i, layer, layer.state_shapes(), stored)
    for entry, layer in zip(spec["layers"], layers):
        reset = getattr(layer, "reset_parameters", None)
        if callable(reset):
            _guarded(path, entry, reset)
    criterion = spec.get("criterion")
    criterion = None if criterion is None else _make(path, criterion, Loss, backend, None)
    cls = _find_class(spec.get("class", "Sequential"), None, Sequential)
    model = cls.__new__(cls)
    _guarded(path, {"class": cls.__name__, "config": {}},
             lambda: Sequential.__init__(model, layers, criterion, backend=backend))
    if "sizes" in spec:
        model.sizes = list(spec["sizes"])
    return model


def _check_shapes(path, i: int, layer, shapes, stored: dict) -> None:
    """Refuse a layer whose configuration claims other tensors than the file holds."""
    if shapes is None:
        return  # a layer that cannot tell: its arrays are checked after it is built
    for name, shape in shapes.items():
        _check_tensor(path, stored, i, layer, name, shape, " as described")


def _check_tensor(path, stored: dict, i: int, layer, name: str, shape, how: str = "") -> None:
    """Refuse a stored tensor `layers.<i>.<name>` that is missing, of another shape
    than `shape`, or not of a floating dtype (read from the header: no data is read)."""
    where, kind, key, shape = os.fspath(path), type(layer).__name__, f"layers.{i}.{name}", tuple(shape)
    if key not in stored:
        msg = f"{where} lacks the tensor {key!r} ({kind}.{name}, shape {shape})"
        raise CheckpointError(msg)
    got, dt = stored[key]
    if got != shape:
        msg = (f"{where}: tensor {key!r} has shape {got}, but layer {i} ({kind}){how} "
               f"expects {name} of shape {shape}")
        raise CheckpointError(msg)
    if dt not in _FLOAT_DTYPES:
        msg = f"{where}: tensor {key!r} has dtype {dt}, not a floating dtype"
        raise CheckpointError(msg)


def _guarded(path, entry: dict, fn):
    """Run `fn` (a constructor fed the file's arguments): any error is the file's."""
    try:
        return fn()
    except CheckpointError:
        raise
    except Exception as e:
        msg = (f"{os.fspath(path)}: cannot rebuild {entry['class']} with the saved arguments "
               f"{entry.get('config')}: {type(e).__name__}: {e}")
        raise CheckpointError(msg) from None


def _make(path, entry: dict, base: type, backend, dtype):
    """A layer (or loss) from its class name and `config()`; every layer takes
    `backend` and `dtype` keywords, every loss `backend`."""
    cls = _find_class(entry["class"], entry.get("module"), base)
    kwargs = dict(entry.get("config", {}))
    kwargs["backend"] = backend
    if dtype is not None:
        kwargs["dtype"] = dtype
    return _guarded(path, entry, lambda: cls(**kwargs))


def _find_class(name: str, module: str | None, base: type) -> type:
    """`base` or the subclass of it called `name` (defined in `module`, preferred)."""
    found, todo = [], [base]
    while todo:
        cls = todo.pop()
        if cls.__qualname__ == name:
            found.append(cls)
        todo.extend(cls.__subclasses__())
    exact = [c for c in found if c.__module__ == module]
    if exact or found:
        return (exact or found)[0]
    msg = (
        f"the checkpoint names the {base.__name__} class {name!r}"
        f"{f' from {module!r}' if module else ''}, which is not defined: import the "
        "module that defines it before loading"
    )
    raise CheckpointError(msg)


def _load_weights(path, f, model, spec) -> None:
    """Set every saved parameter and buffer of `model` (`load_state_dict`), checking
    the layer classes, names, shapes and dtypes first."""
    where = os.fspath(path)
    layers = model.layers
    if spec is not None:
        spec = _check_spec(path, spec)
        saved = [entry["class"] for entry in spec["layers"]]
        mine = [type(layer).__qualname__ for layer in layers]
        if saved != mine:
            msg = f"{where} holds the layers {saved}, but the model has {mine}"
            raise CheckpointError(msg)
    stored = _stored(f)
    mine = model.state_dict()
    for key, current in mine.items():
        i, name = key.split(".", 2)[1:]
        _check_tensor(path, stored, int(i), layers[int(i)], name, current.shape)
    extra = sorted(k for k in stored if k.startswith("layers.") and k not in mine)
    if extra:
        msg = f"{where} holds tensors the model has no place for: {extra}"
        raise CheckpointError(msg)
    names = set(f.keys())
    model.load_state_dict({key: _host_tensor(path, f, key, names) for key in mine})


def _check_fits(path, meta: dict, optimizer, trainer) -> None:
    """Raise before anything is loaded when the file lacks what restore was asked for
    or names another optimiser or schedule class, so a refused restore changes nothing."""
    if optimizer is not None:
        _saved_optimizer(path, meta, optimizer)
    if trainer is not None:
        _saved_trainer(path, meta, trainer)


def _saved_optimizer(path, meta: dict, optimizer) -> dict:
    saved = meta.get("optimizer")
    if saved is None:
        msg = f"{os.fspath(path)} holds no optimiser state: it was saved without an optimizer"
        raise CheckpointError(msg)
    if saved.get("class") != type(optimizer).__qualname__:
        msg = (
            f"{os.fspath(path)} holds the state of a {saved.get('class')} optimiser, "
            f"not of {type(optimizer).__name__}: build a {saved.get('class')} to resume"
        )
        raise CheckpointError(msg)
    return saved


def _restore_optimizer(path, meta: dict, optimizer, array) -> None:
    saved = _saved_optimizer(path, meta, optimizer)
    try:
        optimizer.load_state_dict(_decode(saved["state"], array))
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        msg = f"{os.fspath(path)}: the optimiser state does not fit {optimizer!r}: {e}"
        raise CheckpointError(msg) from None


def _saved_trainer(path, meta: dict, trainer) -> dict:
    info = meta.get("trainer")
    if info is None:
        msg = f"{os.fspath(path)} holds no trainer state: it was saved without a trainer"
        raise CheckpointError(msg)
    scheduler, saved = getattr(trainer, "scheduler", None), info.get("scheduler")
    if scheduler is not None and saved is not None and hasattr(scheduler, "load_state_dict"):
        if saved.get("class") != type(scheduler).__qualname__:
            msg = (f"{os.fspath(path)} holds the state of a {saved.get('class')} schedule, "
                   f"not of {type(scheduler).__name__}")
            raise CheckpointError(msg)
    return info


def _restore_trainer(path, meta: dict, trainer, array) -> None:
    from .train import History

    info = _saved_trainer(path, meta, trainer)
    scheduler, saved = getattr(trainer, "scheduler", None), info.get("scheduler")
    if scheduler is not None and saved is not None and hasattr(scheduler, "load_state_dict"):
        try:
            scheduler.load_state_dict(_decode(saved["state"], array))
        except (KeyError, TypeError, ValueError) as e:
            msg = f"{os.fspath(path)}: the schedule state does not fit {scheduler!r}: {e}"
            raise CheckpointError(msg) from None
    trainer.epoch = int(info["epoch"])
    trainer.history = History(info.get("history", []))


def _restore_rng(path, meta: dict) -> None:
    state = meta.get("rng")
    if state is None:
        return
    generator = host_rng().bit_generator
    try:
        generator.state = state
    except (TypeError, ValueError, KeyError) as e:
        msg = f"{os.fspath(path)}: the saved RNG state does not fit the host generator ({e})"
        raise CheckpointError(msg) from None


def _restore_device_rng(path, meta: dict, backend) -> None:
    """Continue `backend`'s mask stream from the saved state (any backend saved it);
    an older file's device-generator state is skipped by `set_device_rng_state`."""
    state = meta.get("device_rng")
    if not isinstance(state, dict):
        return
    try:
        backend.set_device_rng_state(state)
    except (TypeError, ValueError) as e:
        msg = f"{os.fspath(path)}: the saved device RNG state does not fit backend {backend.name!r} ({e})"
        raise CheckpointError(msg) from None


def _safetensors():
    try:
        import safetensors
        import safetensors.numpy  # noqa: F401
    except ImportError as e:
        msg = "checkpoints need the safetensors package: pip install 'backendnn[io]'"
        raise ImportError(msg) from e
    return safetensors
