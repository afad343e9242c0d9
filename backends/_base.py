"""The `Backend` base class, the registry's exceptions and the seeded host generator.

Everything here may import NumPy: the host side of every backend is NumPy (the
seeded generator, datasets, `to_numpy`). The core in `backendnn/` never does.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar

import numpy as np

from . import _philox

__all__ = [
    "Backend",
    "BackendError",
    "UnknownBackendError",
    "BackendUnavailableError",
    "BackendNotInstalledError",
    "CUDADeviceError",
    "BackendEnvironmentError",
    "seed",
    "host_rng",
    "random_state_kept",
    "to_host",
    "load_npz",
]


class BackendError(Exception):
    """Base class of every error raised by the backend registry."""


class UnknownBackendError(BackendError, ValueError):
    """A backend name that nothing registered."""


class BackendUnavailableError(BackendError, RuntimeError):
    """A registered backend that cannot run on this machine."""


class BackendNotInstalledError(BackendUnavailableError, ImportError):
    """The backend's array library is not installed."""


class CUDADeviceError(BackendUnavailableError):
    """CuPy (or another CUDA library) is installed but no CUDA device is usable."""


class BackendEnvironmentError(BackendError, ValueError):
    """`BACKENDNN_BACKEND` holds a value that is not a usable backend."""


_HOST = {"rng": np.random.default_rng(0), "seed": 0, "generation": 0}


def seed(n: int) -> None:
    """Reseed the one host generator behind initialisation, shuffling and masks.

    The same seed gives the same weights and batch order on every backend.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        msg = f"`seed` expects a non-negative int, got {n!r}"
        raise TypeError(msg)
    _HOST["rng"] = np.random.default_rng(n)
    _HOST["seed"] = n
    _HOST["generation"] += 1


def host_rng() -> np.random.Generator:
    """The seeded host NumPy generator (replaced by every `seed` call)."""
    return _HOST["rng"]


@contextlib.contextmanager
def random_state_kept(backend=None):
    """Run the block, then put every random state back as it was: the host
    generator (object, bit state, seed and generation counter, so device streams
    keyed on it do not restart) and `backend`'s device generator when given.
    gradcheck and the parity battery draw numbers without changing a later run."""
    saved = dict(_HOST)
    bits = saved["rng"].bit_generator.state
    device = None if backend is None else backend.device_rng_state()
    try:
        yield
    finally:
        _HOST.update(saved)
        _HOST["rng"].bit_generator.state = bits
        if backend is not None:
            backend.set_device_rng_state(device)


_LIVE: list = []  # every Backend made so far (the registry keeps one per name)


_ROWS: ContextVar = ContextVar("backendnn_batch_rows", default=None)


@contextlib.contextmanager
def batch_rows(start: int, n: int):
    """Within: masks of n rows (`device_bernoulli`) are rows start .. start + n of the
    mask of a larger batch, the one a single process draws; their stream advances as
    that process's does. Data-parallel training runs each rank's step inside it."""
    token = _ROWS.set((int(start), int(n)))
    try:
        yield
    finally:
        _ROWS.reset(token)


def to_host(obj) -> np.ndarray:
    """Any array (NumPy, CuPy, torch, array-api-strict, sequence) as a host NumPy array.

    An array of a library some backend has loaded is converted by that backend
    (`Backend.converts`, `Backend.to_numpy`); any other goes through DLPack, else
    `np.asarray`. No library is imported here."""
    if isinstance(obj, np.ndarray):
        return obj
    backend = owning_backend(obj)
    return _plain_host(obj) if backend is None else backend.to_numpy(obj)


def owning_backend(obj):
    """The loaded backend whose library `obj` is an array of (`Backend.converts`),
    or None: no library is imported to find out."""
    for backend in _LIVE:
        if backend.converts(obj):
            return backend
    return None


def _plain_host(obj) -> np.ndarray:
    """A host array through DLPack where `obj` offers it, else `np.asarray`."""
    if hasattr(obj, "__dlpack__"):
        try:
            return np.from_dlpack(obj)
        except (BufferError, RuntimeError, TypeError, ValueError):
            pass
    return np.asarray(obj)


def load_npz(path) -> dict:
    """The arrays of a NumPy .npz file as host arrays, by name (no pickles allowed)."""
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


class Backend:
    """One array library, seen through the Array API.

    Subclasses set `name`, `library` (the pip distribution) and `extra` (the
    backendnn extra that installs it), and implement `_load()` which imports the
    library and returns its Array API namespace, or raises BackendUnavailableError.

    Attributes: name, xp (Array API namespace), device, inplace (whether arrays may
    be written in place: optimisers then update parameters without reallocating),
    can_capture (whether `capture_step` records a step for replay, as CUDA graphs).
    """

    name = "base"
    library = ""
    extra = ""
    inplace = True
    can_capture = False

    def __init__(self):
        self.xp = self._load()
        self.device = self._default_device()
        self._dtypes = {}
        _LIVE.append(self)

    def _load(self):
        raise NotImplementedError

    def _default_device(self):
        return self.xp.asarray(0).device if hasattr(self.xp, "asarray") else None

    # --- arrays -----------------------------------------------------------------
    def dtype(self, dtype):
        """The namespace's dtype for a name ("float32") or a dtype of any library."""
        if dtype is None:
            return None
        key = dtype if isinstance(dtype, str) else str(dtype).rsplit(".", 1)[-1]
        try:
            return self._dtypes[key]
        except KeyError:
            pass
        try:
            value = getattr(self.xp, key)
        except AttributeError:
            msg = f"backend {self.name!r} has no dtype {dtype!r}"
            raise TypeError(msg) from None
        self._dtypes[key] = value
        return value

    def owns(self, x) -> bool:
        """Whether `x` is an array of this backend (on its device)."""
        raise NotImplementedError

    def asarray(self, obj, dtype=None):
        """`obj` (NumPy array, sequence or another backend's array) as an array here.

        Arrays of another library come through DLPack where both sides support it
        (no copy on a shared device), else through host memory.
        """
        xp = self.xp
        dt = self.dtype(dtype)
        if not self.owns(obj) and hasattr(obj, "__dlpack__") and not isinstance(obj, np.ndarray):
            try:
                obj = xp.from_dlpack(obj)
            except (BufferError, RuntimeError, TypeError, ValueError, AttributeError):
                obj = to_host(obj)
        return xp.asarray(obj, dtype=dt, device=self.device)

    def converts(self, x) -> bool:
        """Whether `x` is an array of this backend's library, on any of its devices
        (`to_numpy` then knows how to bring it to the host)."""
        return self.owns(x)

    def to_numpy(self, x) -> np.ndarray:
        """`x` as a host NumPy array (a copy when it lives on a device). Arrays of
        another library go through `to_host`."""
        if not self.owns(x):
            return to_host(x)
        return _plain_host(x)

    def synchronize(self) -> None:
        """Wait for queued device work; a no-op on synchronous CPU libraries."""

    # --- random numbers, all from the seeded host generator ---------------------
    def uniform(self, low, high, shape, dtype="float32"):
        """Uniform samples in [low, high), drawn on the host in float64 then cast."""
        values = host_rng().uniform(low, high, shape)
        return self.asarray(values.astype(_np_dtype(dtype)), dtype=dtype)

    def normal(self, mean, std, shape, dtype="float32"):
        """Normal samples, drawn on the host in float64 then cast."""
        values = host_rng().normal(mean, std, shape)
        return self.asarray(values.astype(_np_dtype(dtype)), dtype=dtype)

    def permutation(self, n: int) -> np.ndarray:
        """A host permutation of range(n): the batch order, the same on every backend."""
        return host_rng().permutation(n)

    # --- random numbers during a step: Philox-4x32-10, computed where arrays live ---
    # The stream of Dropout masks is (seed, counter): the key is the `backendnn.seed`
    # value, the counter a 0-d int64 array on the device, one per mask drawn and
    # advanced there, so a captured step (a CUDA graph) draws new masks each replay.
    # Every backend computes the same bits (backends/_philox.py).
    philox_wide = True  # products in uint64 (False: int64 from 16-bit halves, torch)

    def device_bernoulli(self, p_keep: float, shape, dtype="float32", *, first_row: int = 0):
        """A 0/1 mask with P(1) = `p_keep` (to 2^-16), drawn on the device from the
        Philox stream (seed, counter): the same mask on every backend and device for
        a seed and counter, whatever `dtype` is; the counter advances by one.

        Rows are independent: row i of the mask is row `first_row` + i of a taller
        mask drawn with the same counter; inside `batch_rows(start, n)` a mask of n
        rows starts `start` rows further, so a data-parallel rank draws only its own
        rows of the global batch's mask. Shape: any; axis 0 is the row axis.
        """
        shape = tuple(shape)
        rows = _ROWS.get()
        if rows is not None and shape and shape[0] == rows[1]:
            first_row += rows[0]
        seed, counter = self.random_stream()
        mask = self._philox_mask(seed, counter, p_keep, shape, self.dtype(dtype), first_row)
        self._advance(counter)
        return mask

    def _philox_mask(self, seed, counter, p_keep, shape, dtype, first_row):
        """The mask of `device_bernoulli` (portable Array API integer arithmetic); a
        backend may override it with a faster kernel giving the same bits."""
        return _philox.bernoulli_mask(self.xp, seed, counter, p_keep, shape, dtype,
                                      device=self.device, first_row=first_row,
                                      wide=self.philox_wide)

    def random_stream(self):
        """(seed, counter) of the mask stream: the `backendnn.seed` value and the 0-d
        int64 device array counting the masks drawn since. After a `seed()` call the
        counter is set to 0 in place (the same array, which a captured step keeps):
        call this before capturing a step, so that reset is not recorded."""
        stream = getattr(self, "_stream", None)
        if stream is None or stream[0] != _HOST["generation"]:
            counter = None if stream is None else stream[2]
            self._stream = stream = [_HOST["generation"], _HOST["seed"],
                                     self._put_counter(counter, 0)]
        return stream[1], stream[2]

    def _put_counter(self, counter, value: int):
        """`counter` set to `value` in place, or a new 0-d int64 array holding it."""
        if counter is not None and self.inplace:
            counter[...] = value
            return counter
        return self.xp.asarray(value, dtype=self.xp.int64, device=self.device)

    def _advance(self, counter) -> None:
        if self.inplace:
            counter += 1
        else:
            self._stream[2] = counter + 1

    def device_rng_state(self) -> dict:
        """The mask stream's state, JSON-able: {"generator": "philox4x32-10", "seed":
        the key, "counter": masks drawn}. Reads the counter from the device (a sync).
        The same on every backend: a checkpoint resumes its masks anywhere."""
        seed, counter = self.random_stream()
        return {"generator": _philox.GENERATOR, "seed": int(seed),
                "counter": int(self.to_numpy(counter))}

    def set_device_rng_state(self, state) -> bool:
        """Continue the mask stream from `state` (from `device_rng_state()`, on any
        backend): the next masks are the ones drawn after it was taken. It holds
        until the next `seed()` call, which starts that seed's stream.

        Returns True when set; False when there is nothing to set: `state` is None,
        or the state of a device generator that older versions saved (torch's or
        CuPy's own, with "backend" and "state" keys), whose masks no backend draws
        now. Raises TypeError for a state that is not a dict, ValueError for one
        of another generator or with bad numbers.
        """
        _check_rng_state(state)
        if state is None or ("generator" not in state and "backend" in state):
            return False
        generator = state.get("generator")
        if generator != _philox.GENERATOR:
            msg = (f"backend {self.name!r}: the RNG state is of generator {generator!r}, "
                   f"expected {_philox.GENERATOR!r}; pass a dict from device_rng_state()")
            raise ValueError(msg)
        seed, count = state.get("seed"), state.get("counter")
        for key, value, top in (("seed", seed, 1 << 64), ("counter", count, 1 << 63)):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < top:
                msg = (f"backend {self.name!r}: the RNG state's {key!r} must be a "
                       f"non-negative int below 2**{top.bit_length() - 1}, got {value!r}; "
                       "pass a dict from device_rng_state()")
                raise ValueError(msg)
        _, counter = self.random_stream()
        self._stream = [_HOST["generation"], seed, self._put_counter(counter, count)]
        return True

    # --- kernels: standard code a backend may override with a faster spelling ----
    # Overrides must agree with these within float32 rounding (tests/test_fastpaths.py).
    def relu(self, x):
        """max(x, 0) element-wise, NaN kept; a new array.  Shape: any -> same."""
        return self.xp.where(x < 0, 0.0, x)

    def backprop_relu(self, grad, y):
        """`grad` where the ReLU output `y` > 0, else 0; a new array.  Shape: y's."""
        return self.xp.where(y > 0, grad, 0.0)

    # The in-place variants take an array the caller no longer needs (a layer's fresh
    # output, a fresh input gradient) and may write the result into it, saving the
    # allocation and a pass over memory; the default makes a new array as above.
    def relu_(self, x):
        """`relu(x)`, possibly written into x."""
        return self.relu(x)

    def backprop_relu_(self, grad, y):
        """`backprop_relu(grad, y)`, possibly written into grad."""
        return self.backprop_relu(grad, y)

    def bias_relu_(self, y, bias):
        """`relu(y + bias)`, possibly written into y (a Linear layer's fresh product
        and its bias, for the ReLU after it).  Shapes: y (batch, n), bias (n,)."""
        if self.inplace:
            y += bias
            return self.relu_(y)
        return self.relu(y + bias)

    def batch_sum(self, g):
        """Sum over the batch axis (a bias gradient).  Shape: (batch, n) -> (n,)."""
        return self.xp.sum(g, axis=0)

    def backprop_relu_sum_(self, grad, y):
        """(`backprop_relu_(grad, y)`, its `batch_sum`): a ReLU's input gradient and the
        bias gradient of the Linear layer before it.  Shapes: (batch, n) -> that, (n,)."""
        grad = self.backprop_relu_(grad, y)
        return grad, self.batch_sum(grad)

    def sub_scaled(self, p, g, alpha: float):
        """p - alpha * g (an SGD update): written into p and p returned where the
        backend writes in place, else a new array.  Shapes: p and g alike."""
        if self.inplace:
            p -= alpha * g
            return p
        return p - alpha * g

    def can_add_product(self, shape, dtype) -> bool:
        """Whether `add_product` runs on a parameter of `shape` and `dtype`: a layer
        then leaves that parameter's product-shaped gradient unmade until it is read
        or an optimiser adds it into the parameter (`layers.base.ProductGrad`)."""
        return False

    def add_product(self, p, a, b, alpha: float) -> bool:
        """p += alpha * (a @ b) in place, as one matrix product that adds into p (plain
        SGD's step made inside the weight gradient's product: no gradient array, no
        second pass); False where not available.  Shapes: a (m, k), b (k, n), p (m, n)."""
        return False

    # One-pass optimiser updates. The optimisers spell their maths in array code (read
    # it there); a backend with a fused kernel does the same operations, in the same
    # order and dtype, in one pass, and returns True. The default has none.
    def fused_sgd(self, p, g, buf, *, lr, momentum, dampening, weight_decay,
                  nesterov) -> bool:
        """SGD._update on p and its momentum buffer `buf` (None without momentum; the
        first step, which makes the buffer, is the optimiser's), in place; False where
        not available."""
        return False

    def fused_adam(self, p, g, m, v, vmax, *, beta1, beta2, eps, weight_decay, decoupled,
                   decay, step_size, root2) -> bool:
        """Adam._update on p and its moments m, v (and vmax, amsgrad's running maximum,
        or None), in place; False where not available."""
        return False

    def fused_rmsprop(self, p, g, square_avg, grad_avg, momentum_buffer, *, lr, alpha, eps,
                      weight_decay, momentum) -> bool:
        """RMSprop._update on p and its state (grad_avg None unless centered,
        momentum_buffer None without momentum), in place; False where not available."""
        return False

    def softmax_cross_entropy(self, logits, labels):
        """Fused log-softmax and negative log-likelihood, from logits shifted by their
        row max (exact for logits far apart).

        Shape: logits (batch, n_classes), labels (batch,) integers in [0, n_classes).
        Returns (loss, grad): loss (batch,) = log(sum(exp(logits))) - logits[label];
        grad (batch, n_classes) = softmax(logits) - one_hot(label), a new array.
        """
        xp = self.xp
        shifted = logits - xp.max(logits, axis=1, keepdims=True)
        e = xp.exp(shifted)
        total = xp.sum(e, axis=1, keepdims=True)
        classes = xp.arange(logits.shape[1], dtype=labels.dtype, device=self.device)
        one_hot = xp.astype(labels[:, None] == classes, logits.dtype)
        loss = xp.log(total[:, 0]) - xp.sum(shifted * one_hot, axis=1)
        return loss, e / total - one_hot

    def checks_labels(self, logits, labels) -> bool:
        """Whether `softmax_cross_entropy(logits, labels)` raises IndexError for any
        label outside [0, n_classes), so that the loss need not read the labels first.
        The portable spelling does not (such a label gets a zero one-hot row)."""
        return False

    def matmul(self, a, b):
        """a @ b, the products of `Linear`; a backend may route them (CuPy does while
        capturing a step).  Shape: (n, k), (k, m) -> (n, m)."""
        return a @ b

    # --- graph capture -------------------------------------------------------------
    def capture_step(self, fn):
        """`fn` (no arguments) recorded once, returned as a callable that replays it.

        Where `can_capture` (CuPy: a CUDA graph), replays run the recorded device work
        without running Python: `fn` must read its inputs from arrays it keeps (static
        buffers the caller refills before each replay), update state in place, draw no
        random numbers and read nothing back to the host; what it returned at capture
        holds each replay's values. Capturing does not run the step: the first replay
        does. Portable fallback: `fn` itself, uncaptured.
        """
        return fn

    # --- information -------------------------------------------------------------
    def version(self) -> str:
        return getattr(self._module(), "__version__", "?")

    @property
    def module(self):
        """The array library itself (numpy, torch, cupy), for what the Array API
        namespace lacks: torch interop, NCCL through CuPy."""
        return self._module()

    def _module(self):
        return self.xp

    def __repr__(self):
        return f"<Backend {self.name} on {self.device}>"

    # One instance per name: copies and pickles refer to the registered backend.
    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        from . import _instances, get

        key = next((k for k, b in _instances.items() if b is self), self.name)
        return get, (key,)

    # --- convolution and pooling (NCHW): portable im2col, overridden by fast paths ---
    # `padding` is (top, bottom, left, right); `stride`, `dilation`, `kernel` are (h, w)
    # pairs. Each forward returns (y, saved): `saved` is what its backprop needs, in a
    # form only this backend reads (the layer keeps it and hands it back). `workspace`
    # is a dict the calling layer owns, where a backend may keep buffers between steps.
    def conv2d(self, x, weights, bias, stride, padding, dilation, groups, workspace=None):
        """Cross-correlation of x with weights, as torch.nn.functional.conv2d.

        Portable: im2col from kh·kw strided slices of the zero-padded input, stacked
        into columns (batch, groups, in_channels/groups·kh·kw, Ho·Wo), and one
        (broadcast, batched over groups) matrix product with the weights.
        Shape: x (N, C, H, W), weights (O, C/groups, kh, kw), bias (O,) or None ->
        y (N, O, Ho, Wo) with Ho = (H + pt + pb - dh (kh - 1) - 1) // sh + 1.
        """
        xp = self.xp
        n, c, h, w = x.shape
        o, cg, kh, kw = weights.shape
        xpad = self._pad2d(x, padding, 0.0)
        ho, wo = self._out_size(xpad.shape, (kh, kw), stride, dilation)
        k = cg * kh * kw
        cols = xp.stack(self._slices(xpad, (kh, kw), stride, dilation, (ho, wo)), axis=2)
        cols = xp.reshape(cols, (n, groups, k, ho * wo))
        wm = xp.reshape(weights, (groups, o // groups, k))
        y = xp.reshape(wm @ cols, (n, o, ho, wo))
        if bias is not None:
            y = y + xp.reshape(bias, (o, 1, 1))
        return y, (cols, weights, tuple(x.shape), tuple(xpad.shape), (kh, kw), stride,
                   padding, dilation, groups, bias is not None)

    def backprop_conv2d(self, grad, saved, input_grad=True):
        """(dL/dx or None, dL/dweights, dL/dbias or None) from dL/dy and `conv2d`'s saved
        state: the weight gradient is one batched product of grad with the columns
        (summed over the batch, as `Linear`'s); dL/dx is col2im, the kh·kw column
        slices added into the padded input's gradient.
        Shape: grad (N, O, Ho, Wo) -> (N, C, H, W), (O, C/groups, kh, kw), (O,).
        """
        xp = self.xp
        cols, weights, x_shape, pad_shape, kernel, stride, padding, dilation, groups, \
            has_bias = saved
        n, g, k, m = cols.shape
        o = weights.shape[0]
        gy = xp.reshape(grad, (n, g, o // g, m))
        gy_g = xp.reshape(xp.permute_dims(gy, (1, 2, 0, 3)), (g, o // g, n * m))
        # columns (g, n·m, k) in the order (batch, position) gy_g's columns take
        cols_t = xp.reshape(xp.permute_dims(cols, (1, 0, 3, 2)), (g, n * m, k))
        gw = xp.reshape(gy_g @ cols_t, weights.shape)
        gb = xp.sum(grad, axis=(0, 2, 3)) if has_bias else None
        if not input_grad:
            return None, gw, gb
        wm = xp.reshape(weights, (g, o // g, k))
        gcols = xp.matrix_transpose(wm) @ gy  # (n, g, k, m)
        ho, wo = grad.shape[2], grad.shape[3]
        gcols = xp.reshape(gcols, (n, x_shape[1], kernel[0] * kernel[1], ho, wo))
        gx = xp.zeros(pad_shape, dtype=grad.dtype, device=self.device)
        for i, idx in enumerate(self._slice_keys(kernel, stride, dilation, (ho, wo))):
            gx[idx] += gcols[:, :, i, :, :]
        return self._crop(gx, x_shape, padding), gw, gb

    def max_pool2d(self, x, kernel, stride, padding, workspace=None):
        """Max over each kh×kw window (padding counts as -inf), keeping the index of
        each window's first largest value (0 .. kh·kw-1), as torch's MaxPool2d.
        Shape: x (N, C, H, W) -> y (N, C, Ho, Wo); saved: the indices, same shape."""
        xp = self.xp
        xpad = self._pad2d(x, padding, -float("inf"))
        out = self._out_size(xpad.shape, kernel, stride, (1, 1))
        windows = xp.stack(self._slices(xpad, kernel, stride, (1, 1), out), axis=0)
        idx = xp.argmax(windows, axis=0)
        y = xp.max(windows, axis=0)
        return y, (idx, tuple(x.shape), tuple(xpad.shape), kernel, stride, padding)

    def backprop_max_pool2d(self, grad, saved):
        """dL/dx: each window's gradient added at its kept index.  Shape: y's -> x's."""
        xp = self.xp
        idx, x_shape, pad_shape, kernel, stride, padding = saved
        gx = xp.zeros(pad_shape, dtype=grad.dtype, device=self.device)
        out = tuple(grad.shape[2:])
        for i, key in enumerate(self._slice_keys(kernel, stride, (1, 1), out)):
            gx[key] += xp.where(idx == i, grad, xp.zeros_like(grad))
        return self._crop(gx, x_shape, padding)

    def avg_pool2d(self, x, kernel, stride, padding, workspace=None):
        """Mean over each kh×kw window, zero padding counted (torch's default).
        Shape: x (N, C, H, W) -> y (N, C, Ho, Wo)."""
        xpad = self._pad2d(x, padding, 0.0)
        out = self._out_size(xpad.shape, kernel, stride, (1, 1))
        parts = self._slices(xpad, kernel, stride, (1, 1), out)
        y = parts[0]
        for part in parts[1:]:
            y = y + part
        y = y * (1.0 / (kernel[0] * kernel[1]))
        return y, (tuple(x.shape), tuple(xpad.shape), kernel, stride, padding)

    def backprop_avg_pool2d(self, grad, saved):
        """dL/dx: each window's gradient / (kh·kw) added over the window."""
        xp = self.xp
        x_shape, pad_shape, kernel, stride, padding = saved
        gx = xp.zeros(pad_shape, dtype=grad.dtype, device=self.device)
        share = grad * (1.0 / (kernel[0] * kernel[1]))
        for key in self._slice_keys(kernel, stride, (1, 1), tuple(grad.shape[2:])):
            gx[key] += share
        return self._crop(gx, x_shape, padding)

    def _pad2d(self, x, padding, value):
        """x (N, C, H, W) with `padding` (top, bottom, left, right) rows and columns of
        `value` around it; x itself without padding."""
        if not any(padding):
            return x
        xp = self.xp
        pt, pb, pl, pr = padding
        n, c, h, w = x.shape
        out = xp.full((n, c, h + pt + pb, w + pl + pr), value, dtype=x.dtype,
                      device=self.device)
        out[:, :, pt:pt + h, pl:pl + w] = x
        return out

    @staticmethod
    def _out_size(padded_shape, kernel, stride, dilation) -> tuple[int, int]:
        """(Ho, Wo) of a window sweep over a padded (N, C, Hp, Wp) input."""
        return tuple((padded_shape[2 + a] - dilation[a] * (kernel[a] - 1) - 1) // stride[a] + 1
                     for a in (0, 1))

    @staticmethod
    def _slice_keys(kernel, stride, dilation, out) -> list:
        """The index of each kernel offset (i, j), row-major: the (N, C, Ho, Wo) slice of
        the padded input that offset sees."""
        keys = []
        for i in range(kernel[0]):
            r = i * dilation[0]
            for j in range(kernel[1]):
                c = j * dilation[1]
                keys.append((slice(None), slice(None),
                             slice(r, r + stride[0] * (out[0] - 1) + 1, stride[0]),
                             slice(c, c + stride[1] * (out[1] - 1) + 1, stride[1])))
        return keys

    @staticmethod
    def _slices(xpad, kernel, stride, dilation, out) -> list:
        return [xpad[key] for key in Backend._slice_keys(kernel, stride, dilation, out)]

    @staticmethod
    def _crop(gx, x_shape, padding):
        """The unpadded part of a padded input's gradient."""
        if not any(padding):
            return gx
        pt, _, pl, _ = padding
        return gx[:, :, pt:pt + x_shape[2], pl:pl + x_shape[3]]


def _check_rng_state(state) -> None:
    if state is not None and not isinstance(state, dict):
        msg = (f"`set_device_rng_state` expects a dict from device_rng_state() or None, "
               f"got {type(state).__name__}")
        raise TypeError(msg)


def _np_dtype(dtype):
    if isinstance(dtype, str):
        return np.dtype(dtype)
    return np.dtype(str(dtype).rsplit(".", 1)[-1])
