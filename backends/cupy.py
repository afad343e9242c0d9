"""CuPy backend: CUDA GPUs. Needs a usable CUDA device, not only the package."""
from ._base import Backend, BackendNotInstalledError, CUDADeviceError


class CupyBackend(Backend):
    name = "cupy"
    library = "cupy"
    extra = "cuda12"

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
        return isinstance(x, self._cupy.ndarray)

    def asarray(self, obj, dtype=None):
        cupy = self._cupy
        dt = self.dtype(dtype)
        if isinstance(obj, cupy.ndarray):
            return obj if dt is None else obj.astype(dt, copy=False)
        if hasattr(obj, "__dlpack__") and type(obj).__module__.startswith("torch") and obj.is_cuda:
            out = cupy.from_dlpack(obj)
            return out if dt is None else out.astype(dt, copy=False)
        return cupy.asarray(self._host(obj), dtype=dt)

    @staticmethod
    def _host(obj):
        from ._base import to_host

        return obj if not hasattr(obj, "__dlpack__") else to_host(obj)

    def to_numpy(self, x):
        return self._cupy.asnumpy(x) if isinstance(x, self._cupy.ndarray) else super().to_numpy(x)

    def device_bernoulli(self, p_keep, shape, dtype="float32"):
        """`random < p_keep` from a cupy.random Generator on the GPU, seeded with
        the `backendnn.seed` value."""
        cupy = self._cupy
        gen = self._device_generator(cupy.random.default_rng)
        u = gen.random(tuple(shape), dtype=cupy.float32)
        return (u < p_keep).astype(self.dtype(dtype))

    def synchronize(self):
        self._cupy.cuda.get_current_stream().synchronize()


def load():
    return CupyBackend()
