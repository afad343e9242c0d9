"""PyTorch backend: torch tensors through array-api-compat's torch namespace.

The device is CUDA when torch sees one, else the CPU.
"""
from ._base import Backend, BackendNotInstalledError, to_host


class TorchBackend(Backend):
    name = "torch"
    library = "torch"
    extra = "torch"

    def _load(self):
        try:
            import torch
        except ImportError as e:
            msg = "backend 'torch' needs PyTorch: pip install 'backendnn[torch]'"
            raise BackendNotInstalledError(msg) from e
        import array_api_compat.torch as xp

        self._torch = torch
        return xp

    def _default_device(self):
        torch = self._torch
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def _module(self):
        return self._torch

    def owns(self, x) -> bool:
        return isinstance(x, self._torch.Tensor) and x.device.type == self.device.type

    def asarray(self, obj, dtype=None):
        torch = self._torch
        dt = self.dtype(dtype)
        if isinstance(obj, torch.Tensor):
            return obj.to(device=self.device, dtype=dt if dt is not None else obj.dtype)
        if hasattr(obj, "__dlpack__") and type(obj).__module__.startswith("cupy"):
            try:
                return torch.from_dlpack(obj).to(device=self.device, dtype=dt)
            except (BufferError, RuntimeError, TypeError):
                pass
        if hasattr(obj, "__dlpack__") and not hasattr(obj, "__array_interface__"):
            obj = to_host(obj)
        return torch.asarray(obj, dtype=dt, device=self.device)

    def converts(self, x) -> bool:
        return isinstance(x, self._torch.Tensor)

    def to_numpy(self, x):
        return x.detach().cpu().numpy() if isinstance(x, self._torch.Tensor) else to_host(x)

    def device_bernoulli(self, p_keep, shape, dtype="float32"):
        """`rand < p_keep` from a torch.Generator on the device, seeded with the
        `backendnn.seed` value (CPU and CUDA generators give different masks)."""
        torch = self._torch
        gen = self._device_generator(self._make_generator)
        u = torch.rand(tuple(shape), generator=gen, device=self.device, dtype=torch.float32)
        return (u < p_keep).to(self.dtype(dtype))

    def _make_generator(self, seed):
        return self._torch.Generator(device=self.device).manual_seed(seed)

    def device_rng_state(self):
        """The torch.Generator's `get_state()` bytes (base64), its seed and device
        type: CPU (Mersenne Twister, 5056 bytes) and CUDA (seed and offset) states
        do not fit each other's generators."""
        return self._device_rng_snapshot(self.device.type, _generator_bytes)

    def set_device_rng_state(self, state):
        """`set_state` on a generator made from the state's seed (see Backend)."""
        return self._device_rng_resume(state, self.device.type, self._make_generator,
                                       self._put_generator_bytes)

    def _put_generator_bytes(self, generator, raw: bytes) -> None:
        torch = self._torch
        size = generator.get_state().numel()
        if len(raw) != size:
            msg = (
                f"backend 'torch': the saved {self.device.type} generator state has {len(raw)} "
                f"bytes, this torch {torch.__version__} generator needs {size}; the masks "
                "cannot be resumed exactly: restore with rng=False or retrain from the seed"
            )
            raise ValueError(msg)
        generator.set_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))

    def synchronize(self):
        if self.device.type == "cuda":
            self._torch.cuda.synchronize()

    # --- convolution and pooling: torch's own kernels (oneDNN on CPU, cuDNN on CUDA) ---
    def conv2d(self, x, weights, bias, stride, padding, dilation, groups, workspace=None):
        """torch.nn.functional.conv2d; asymmetric padding is applied first with F.pad."""
        F = self._torch.nn.functional
        pt, pb, pl, pr = padding
        if pt == pb and pl == pr:
            xin, pad = x, (pt, pl)
        else:
            xin, pad = F.pad(x, (pl, pr, pt, pb)), (0, 0)
        y = F.conv2d(xin, weights, bias, stride, pad, dilation, groups)
        return y, (xin, weights, bias is not None, stride, pad, dilation, groups,
                   padding, tuple(x.shape))

    def backprop_conv2d(self, grad, saved, input_grad=True):
        """aten's convolution_backward, the kernel autograd calls."""
        xin, weights, has_bias, stride, pad, dilation, groups, padding, x_shape = saved
        bias_sizes = [weights.shape[0]] if has_bias else None
        gx, gw, gb = self._torch.ops.aten.convolution_backward(
            grad.contiguous(), xin, weights, bias_sizes, list(stride), list(pad),
            list(dilation), False, [0, 0], groups, [input_grad, True, has_bias])
        if input_grad and tuple(gx.shape) != x_shape:
            gx = self._crop(gx, x_shape, padding)
        return gx, gw, gb

    def max_pool2d(self, x, kernel, stride, padding, workspace=None):
        """torch.nn.functional.max_pool2d with its indices."""
        y, idx = self._torch.nn.functional.max_pool2d(
            x, kernel, stride, (padding[0], padding[2]), return_indices=True)
        return y, (x, idx, kernel, stride, (padding[0], padding[2]))

    def backprop_max_pool2d(self, grad, saved):
        x, idx, kernel, stride, pad = saved
        return self._torch.ops.aten.max_pool2d_with_indices_backward(
            grad, x, list(kernel), list(stride), list(pad), [1, 1], False, idx)

    def avg_pool2d(self, x, kernel, stride, padding, workspace=None):
        """torch.nn.functional.avg_pool2d (padding counted)."""
        pad = (padding[0], padding[2])
        y = self._torch.nn.functional.avg_pool2d(x, kernel, stride, pad)
        return y, (x, kernel, stride, pad)

    def backprop_avg_pool2d(self, grad, saved):
        x, kernel, stride, pad = saved
        return self._torch.ops.aten.avg_pool2d_backward(
            grad, x, list(kernel), list(stride), list(pad), False, True, None)


def _generator_bytes(generator) -> bytes:
    return generator.get_state().numpy().tobytes()


def load():
    return TorchBackend()
