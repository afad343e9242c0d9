"""CuPy backend: CUDA GPUs. Needs a usable CUDA device, not only the package.

One device: the one current when the backend loads (device 0 unless
`cupy.cuda.Device(i).use()` ran first, or CUDA_VISIBLE_DEVICES picks another).
Arrays on another device are not this backend's (`owns`), and `asarray` copies
them here. For several GPUs, run one process per GPU (backendnn.distributed).

A training step can be captured as one CUDA graph (`capture_step`): small networks
are launch-bound, and a replay launches the whole step at once. Dropout masks come
from the portable Philox code (uint64 words), whose counter lives on the GPU.
"""
import contextlib
import ctypes
import os

from ._base import Backend, BackendNotInstalledError, CUDADeviceError


class CupyBackend(Backend):
    name = "cupy"
    library = "cupy"
    extra = "cuda12"
    can_capture = True
    _capturing = 0  # > 0 while a step is being captured
    _gemm = None  # the _DirectGemm, made on first use (a capture, or add_product)
    _capture_stream = None  # the stream every capture records on, made on the first
    # Plain SGD adds its step into weights of this many elements or more as the weight
    # gradient's own product (`add_product`). Below it a step is bound by the host's
    # launches, where the product's extra work on the host outweighs the update kernel
    # it saves: on an H200 (in-process A/B), 1.16x, 1.03x and 1.12x the two-pass step
    # on the mlp, wide (2048 x 2048 weights) and tiny benchmark cases.
    add_product_min = 2**24

    def _load(self):
        try:
            import cupy
        except ImportError as e:
            msg = (
                "backend 'cupy' needs CuPy built for your CUDA: "
                "pip install 'backendnn[cuda12]' (CUDA 12) or 'backendnn[cuda13]' (CUDA 13)"
            )
            raise BackendNotInstalledError(msg) from e
        try:
            count = cupy.cuda.runtime.getDeviceCount()
            reason = "" if count > 0 else "the CUDA driver reported 0 devices"
        except Exception as e:  # CUDARuntimeError, driver missing, ...
            count, reason = 0, f"the CUDA runtime failed: {e}"
        if count == 0:
            msg = (
                f"backend 'cupy': CuPy {cupy.__version__} is installed but no CUDA device "
                f"is usable ({reason}; device count 0). Use 'numpy' or 'torch' here, or "
                "run on a machine with an NVIDIA GPU and driver."
            )
            raise CUDADeviceError(msg)
        import array_api_compat.cupy as xp

        self._cupy = cupy
        return xp

    def _default_device(self):
        return self._cupy.cuda.Device()

    def _module(self):
        return self._cupy

    def owns(self, x) -> bool:
        """A CuPy array on this backend's device (not merely any CuPy array)."""
        return isinstance(x, self._cupy.ndarray) and x.device.id == self.device.id

    def asarray(self, obj, dtype=None):
        """CuPy arrays of this device as they are; another library's arrays through
        DLPack where they live on this GPU (no copy); anything else, or a DLPack
        refusal (a torch tensor that requires grad), through the host (`to_host`,
        which asks the owning backend)."""
        cupy = self._cupy
        dt = self.dtype(dtype)
        if isinstance(obj, cupy.ndarray):
            if obj.device.id != self.device.id:
                with self.device:
                    obj = cupy.array(obj, copy=True)
            return obj if dt is None else obj.astype(dt, copy=False)
        if hasattr(obj, "__dlpack__") and not hasattr(obj, "__array_interface__"):
            try:
                out = cupy.from_dlpack(obj)
            except (BufferError, RuntimeError, TypeError, ValueError, AttributeError):
                out = None
            if out is not None and out.device.id == self.device.id:
                return out if dt is None else out.astype(dt, copy=False)
        return cupy.asarray(self._host(obj), dtype=dt)

    @staticmethod
    def _host(obj):
        from ._base import to_host

        return obj if not hasattr(obj, "__dlpack__") else to_host(obj)

    def converts(self, x) -> bool:
        return isinstance(x, self._cupy.ndarray)

    def to_numpy(self, x):
        return self._cupy.asnumpy(x) if isinstance(x, self._cupy.ndarray) else super().to_numpy(x)

    def synchronize(self):
        self._cupy.cuda.get_current_stream().synchronize()

    def nccl(self):
        """CuPy's NCCL bindings (`cupy.cuda.nccl`, a submodule that `import cupy` does
        not load), for backendnn.distributed; ImportError where CuPy lacks them."""
        from cupy.cuda import nccl

        return nccl

    # --- kernels: one CuPy kernel where the portable spelling launches several -------
    # tests/test_fastpaths.py checks them on a GPU (cuda marker); their sources are
    # checked on the CPU for their parameters (tests/test_registry.py).
    def _kernel(self, name: str):
        """The ElementwiseKernel `name` of _KERNELS, compiled on first use."""
        kernels = self.__dict__.setdefault("_kernels", {})
        k = kernels.get(name)
        if k is None:
            params_in, params_out, body = _KERNELS[name]
            k = kernels[name] = self._cupy.ElementwiseKernel(params_in, params_out, body,
                                                             f"backendnn_{name}")
        return k

    def relu(self, x):
        """max(x, 0), NaN kept: one kernel."""
        if x.dtype.kind != "f":
            return super().relu(x)
        return self._kernel("relu")(x)

    def backprop_relu(self, grad, y):
        """grad where y > 0, else 0: one kernel."""
        if grad.dtype.kind != "f" or grad.dtype != y.dtype:
            return super().backprop_relu(grad, y)
        return self._kernel("backprop_relu")(grad, y)

    def sub_scaled(self, p, g, alpha):
        """p -= alpha * g in place: one kernel (no alpha * g temporary)."""
        if p.dtype.kind != "f" or p.dtype != g.dtype or p.shape != g.shape:
            return super().sub_scaled(p, g, alpha)
        self._kernel("sub_scaled")(g, alpha, p)
        return p

    def softmax_cross_entropy(self, logits, labels):
        """Row max and row sum as reductions, then one kernel each for exp(z - max), the
        losses and softmax - one_hot (label compared with the column index)."""
        cupy = self._cupy
        if logits.ndim != 2 or logits.dtype.kind != "f" or labels.ndim != 1:
            return super().softmax_cross_entropy(logits, labels)
        top = logits.max(axis=1, keepdims=True)
        e = self._kernel("exp_shifted")(logits, top)
        total = e.sum(axis=1, keepdims=True)
        labels = labels.astype(cupy.int64, copy=False)[:, None]
        picked = cupy.take_along_axis(logits, labels, axis=1)
        loss = self._kernel("ce_loss")(total, picked, top)[:, 0]
        grad = self._kernel("ce_grad")(e, total, labels, logits.shape[1])
        return loss, grad

    def matmul(self, a, b):
        """a @ b; while a step is being captured, cuBLAS is called directly with
        CuPy's arguments (same kernel, same bits), as CuPy refuses cuBLAS calls on a
        capturing stream (cupy/cupy#6290)."""
        if self._capturing:
            return self._gemm(a, b)
        return a @ b

    def _direct_gemm(self):
        """This backend's _DirectGemm (one cuBLAS handle and workspace)."""
        if self._gemm is None:
            self._gemm = _DirectGemm(self._cupy)
        return self._gemm

    def can_add_product(self, shape, dtype) -> bool:
        """Only for parameters of `add_product_min` elements or more."""
        if len(shape) != 2 or shape[0] * shape[1] < self.add_product_min:
            return False
        try:
            return self._cupy.dtype(dtype).name in _DirectGemm._TYPES
        except TypeError:
            return False

    def add_product(self, p, a, b, alpha):
        """cuBLAS's p = alpha * a @ b + p (beta = 1): plain SGD's step made by the
        weight gradient's own product, with no gradient array and no update kernel
        (the same call eager and inside a capture)."""
        cupy = self._cupy
        if (not all(isinstance(v, cupy.ndarray) for v in (p, a, b))
                or p.dtype.name not in _DirectGemm._TYPES
                or a.dtype != p.dtype or b.dtype != p.dtype or p.ndim != 2
                or a.ndim != 2 or b.ndim != 2 or p.shape != (a.shape[0], b.shape[1])
                or a.shape[1] != b.shape[0] or not p.flags.c_contiguous
                or cupy.may_share_memory(p, a) or cupy.may_share_memory(p, b)):
            return False
        self._direct_gemm()(a, b, out=p, alpha=float(alpha), beta=1.0)
        return True

    def capture_step(self, fn):
        """`fn` captured as a CUDA graph; calling the result launches the graph on the
        current stream and returns what `fn` returned at capture (see Backend).

        The capture runs on a private stream and memory pool: what `fn` allocates
        (its temporaries included) keeps the addresses the graph was recorded with,
        and no other array is ever given that memory while the graph lives.
        """
        return _CudaGraphStep(self, fn)

    # --- convolution and pooling ---------------------------------------------------------
    # The NumPy backend's column kernels with CuPy as the array module: a strided
    # as_strided copy for im2col, one cuBLAS product per pass, col2im as kh·kw
    # strided adds, max pooling as a running maximum with int8 winner offsets.
    # tests/test_conv.py::test_cupy_conv_and_pool_match_numpy checks them on a GPU.
    # Not usable inside `capture_step` (cuBLAS on a capturing stream, see matmul).
    def conv2d(self, x, weights, bias, stride, padding, dilation, groups, workspace=None):
        from .numpy import conv2d_columns

        if x.dtype.kind != "f" or x.dtype != weights.dtype or self._capturing:
            return super().conv2d(x, weights, bias, stride, padding, dilation, groups)
        return conv2d_columns(self._cupy, x, weights, bias, stride, padding, dilation,
                              groups, workspace)

    def backprop_conv2d(self, grad, saved, input_grad=True):
        from .numpy import _ConvSaved, backprop_conv2d_columns

        if not isinstance(saved, _ConvSaved):
            return super().backprop_conv2d(grad, saved, input_grad)
        return backprop_conv2d_columns(self._cupy, grad, saved, input_grad)

    def max_pool2d(self, x, kernel, stride, padding, workspace=None):
        from .numpy import max_pool2d_slices

        if x.dtype.kind != "f" or kernel[0] * kernel[1] > 127:
            return super().max_pool2d(x, kernel, stride, padding)
        return max_pool2d_slices(self._cupy, self, x, kernel, stride, padding)

    def backprop_max_pool2d(self, grad, saved):
        from .numpy import backprop_max_pool2d_slices

        if not (isinstance(saved, tuple) and saved and saved[0] == "slices"):
            return super().backprop_max_pool2d(grad, saved)
        return backprop_max_pool2d_slices(self._cupy, self, grad, saved)


_KERNELS = {  # name -> (inputs, outputs, body) of a cupy.ElementwiseKernel
    "relu": ("T x", "T y", "y = x < (T)0 ? (T)0 : x"),
    "backprop_relu": ("T g, T y", "T dx", "dx = y > (T)0 ? g : (T)0"),
    "sub_scaled": ("T g, T alpha", "T p", "p -= alpha * g"),
    "exp_shifted": ("T z, T top", "T e", "e = exp(z - top)"),
    "ce_loss": ("T total, T picked, T top", "T loss", "loss = log(total) - (picked - top)"),
    "ce_grad": ("T e, T total, int64 label, int64 n_classes", "T g",
                "g = e / total - (label == (long long)(i % n_classes) ? (T)1 : (T)0)"),
}


class _CudaGraphStep:
    """A function recorded once as a CUDA graph, replayed by calling this object."""

    def __init__(self, backend, fn):
        cupy = backend._cupy
        gemm = backend._direct_gemm()
        if backend._capture_stream is None:  # one capture stream per backend, as torch
            backend._capture_stream = cupy.cuda.Stream(non_blocking=True)
        self.stream = backend._capture_stream
        self.pool = cupy.cuda.MemoryPool()
        gemm.prepare(self.stream)
        backend._capturing += 1
        try:
            with self.stream, cupy.cuda.using_allocator(self.pool.malloc):
                self.stream.begin_capture()
                try:
                    self.result = fn()
                except BaseException:
                    with contextlib.suppress(Exception):
                        self.stream.end_capture()
                    raise
                self.graph = self.stream.end_capture()
        finally:
            backend._capturing -= 1
        self._current_stream = cupy.cuda.get_current_stream

    def __call__(self):
        self.graph.launch(self._current_stream())
        return self.result


class _DirectGemm:
    """cuBLAS's GemmEx through ctypes on a handle of its own, for use inside a stream
    capture, with the arguments CuPy's `tensordot_core` passes for a 2-d product
    (operand order, transposes, leading dimensions, compute type, algorithm), so
    the result is the one `a @ b` gives (a 1 x 1 output too, which eager CuPy may
    compute another way). Empty products are zeros, without cuBLAS. Other products
    (not 2-d, integer, mixed dtypes) raise: CuPy's `a @ b` cannot run in a capture.
    With `out`, it computes out = alpha * a @ b + beta * out in place (`add_product`).

    The handle runs on the current stream (bound again when that changes) and has
    one workspace of its own (`WORKSPACE_BYTES` from CuPy's pool, kept), set again
    after each stream change, as PyTorch does: otherwise cuBLAS allocates a
    workspace per stream outside CuPy's pool.
    """

    WORKSPACE_BYTES = 32 * 2**20  # PyTorch's default on recent GPUs (:4096:8)

    _TYPES = {"float16": ("CUDA_R_16F", 2), "float32": ("CUDA_R_32F", 0),
              "float64": ("CUDA_R_64F", 1)}

    def __init__(self, cupy):
        from cupy_backends.cuda.libs import cublas

        self.cupy, self.cublas = cupy, cublas
        probe = cupy.ones((2, 2), dtype=cupy.float32)
        (probe @ probe).sum()  # loads libcublas into the process
        lib = ctypes.CDLL(_loaded_library("libcublas.so"))
        i, p = ctypes.c_int, ctypes.c_void_p
        self._call = _function(lib, "cublasGemmEx", [p, i, i, i, i, i, p, p, i, i, p, i, i, p, p, i, i, i, i])
        self._set_stream = _function(lib, "cublasSetStream_v2", [p, p])
        self._set_workspace = _function(lib, "cublasSetWorkspace_v2", [p, p, ctypes.c_size_t])
        self._workspace = cupy.empty(self.WORKSPACE_BYTES, dtype=cupy.uint8)
        handle = ctypes.c_void_p()
        _check(_function(lib, "cublasCreate_v2", [ctypes.POINTER(p)])(ctypes.byref(handle)),
               "cublasCreate")
        self.handle = handle.value  # kept for the process: graphs use its workspace
        self._scalar = {"f": ctypes.c_float, "d": ctypes.c_double}
        self._scalars = {kind: (t(1.0), t(0.0)) for kind, t in self._scalar.items()}
        self._cc = int(cupy.cuda.Device().compute_capability)
        self._stream = None  # the stream the handle is bound to

    def bind(self, stream) -> None:
        """Point the handle at `stream`, then at its one workspace."""
        _check(self._set_stream(self.handle, stream.ptr), "cublasSetStream")
        _check(self._set_workspace(self.handle, self._workspace.data.ptr,
                                   self._workspace.nbytes), "cublasSetWorkspace")
        self._stream = stream.ptr

    def prepare(self, stream):
        """Bind the handle to `stream` and run one product there, outside capture."""
        self.bind(stream)
        with stream:
            a = self.cupy.ones((8, 8), dtype=self.cupy.float32)
            self(a, a)
        stream.synchronize()

    def _compute(self, dtype):
        """(cuBLAS compute type, scalar kind) CuPy would use for `dtype`."""
        cublas = self.cublas
        mode = "COMPUTE_TYPE_DEFAULT"
        with contextlib.suppress(Exception):
            from cupy._core import _routines_linalg as rl

            mode = rl.compute_type_to_str(rl.get_compute_type(dtype))
        if dtype.char == "d":
            name = "CUBLAS_COMPUTE_64F_PEDANTIC" if mode == "COMPUTE_TYPE_PEDANTIC" else "CUBLAS_COMPUTE_64F"
            return getattr(cublas, name, 71 if "PEDANTIC" in name else 70), "d"
        if mode == "COMPUTE_TYPE_PEDANTIC":
            return getattr(cublas, "CUBLAS_COMPUTE_32F_PEDANTIC", 69), "f"
        if mode == "COMPUTE_TYPE_TF32" and dtype.char == "f":
            return getattr(cublas, "CUBLAS_COMPUTE_32F_FAST_TF32", 77), "f"
        return getattr(cublas, "CUBLAS_COMPUTE_32F", 68), "f"

    def __call__(self, a, b, out=None, alpha: float = 1.0, beta: float = 0.0):
        cupy = self.cupy
        dtype = a.dtype
        n, k = a.shape if a.ndim == 2 else (0, 0)
        m = b.shape[1] if b.ndim == 2 else 0
        if (a.ndim != 2 or b.ndim != 2 or b.dtype != dtype or dtype.name not in self._TYPES
                or b.shape[0] != k):
            msg = (f"backend 'cupy': a captured step can only multiply 2-d float16, float32 "
                   f"or float64 matrices of one dtype and matching inner sizes, got "
                   f"{getattr(a, 'dtype', '?')} {tuple(a.shape)} @ {getattr(b, 'dtype', '?')} "
                   f"{tuple(b.shape)} (cuBLAS through CuPy cannot run while a stream "
                   "captures); train with capture=False")
            raise RuntimeError(msg)
        if out is not None and (out.shape != (n, m) or out.dtype != dtype
                                or not out.flags.c_contiguous):
            msg = (f"backend 'cupy': a product into an array needs a C-contiguous {dtype} "
                   f"array of shape {(n, m)}, got {out.dtype} {tuple(out.shape)}")
            raise ValueError(msg)
        if n * m * k == 0:
            if out is None:
                return cupy.zeros((n, m), dtype=dtype)
            if beta != 1.0:
                out *= beta
            return out
        stream = cupy.cuda.get_current_stream()
        if stream.ptr != self._stream:
            self.bind(stream)
        size = dtype.itemsize
        # CuPy's dot: A^T (k, n) and B (k, m) made cuBLAS-contiguous, C^T = B^T A computed
        if a.flags.c_contiguous:
            trans_a, lda = 0, max(a.strides[0] // size, k)
        elif a.flags.f_contiguous:
            trans_a, lda = 1, a.strides[1] // size
        else:
            a = cupy.asfortranarray(a)
            trans_a, lda = 1, a.strides[1] // size
        if b.flags.f_contiguous:
            trans_b, ldb = 1, max(b.strides[1] // size, k)
        elif b.flags.c_contiguous:
            trans_b, ldb = 0, b.strides[0] // size
        else:
            b = cupy.ascontiguousarray(b)
            trans_b, ldb = 0, b.strides[0] // size
        c = cupy.empty((n, m), dtype=dtype) if out is None else out
        type_name, type_value = self._TYPES[dtype.name]
        cuda_type = getattr(cupy.cuda.runtime, type_name, type_value)
        compute, kind = self._compute(dtype)
        one, zero = self._scalars[kind]
        if out is not None:  # host scalars: cuBLAS reads them during the call
            one, zero = self._scalar[kind](alpha), self._scalar[kind](beta)
        tensor_op = self._cc >= 80 or (self._cc >= 70 and dtype.char == "e")
        algo = (getattr(self.cublas, "CUBLAS_GEMM_DEFAULT_TENSOR_OP", 99) if tensor_op
                else getattr(self.cublas, "CUBLAS_GEMM_DEFAULT", -1))
        status = self._call(
            self.handle, trans_b, trans_a, m, n, k, ctypes.addressof(one),
            b.data.ptr, cuda_type, ldb, a.data.ptr, cuda_type, lda,
            ctypes.addressof(zero), c.data.ptr, cuda_type, m, compute, algo)
        _check(status, f"cublasGemmEx of ({n}, {k}) @ ({k}, {m}) {dtype}")
        return c


def _function(lib, name: str, argtypes):
    """`lib.name` with its C signature: int status, `argtypes`."""
    f = getattr(lib, name)
    f.restype, f.argtypes = ctypes.c_int, argtypes
    return f


def _check(status: int, what: str) -> None:
    if status != 0:
        msg = f"backend 'cupy': {what} failed with cuBLAS status {status}"
        raise RuntimeError(msg)


def _loaded_library(prefix: str) -> str:
    """The path of the loaded shared library whose file name starts with `prefix`."""
    with contextlib.suppress(OSError), open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            if os.path.basename(path).startswith(prefix):
                return path
    for version in ("13", "12", "11"):
        with contextlib.suppress(OSError):
            ctypes.CDLL(f"{prefix}.{version}")
            return f"{prefix}.{version}"
    msg = f"backend 'cupy': cannot find {prefix} to capture matrix products in a CUDA graph"
    raise RuntimeError(msg)


def load():
    return CupyBackend()
