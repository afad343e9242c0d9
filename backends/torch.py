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
        if hasattr(obj, "__dlpack__") and not hasattr(obj, "__array_interface__"):
            try:  # another library's array: DLPack, no copy where the devices allow
                return torch.from_dlpack(obj).to(device=self.device, dtype=dt)
            except (BufferError, RuntimeError, TypeError, ValueError):
                obj = to_host(obj)
        return torch.asarray(obj, dtype=dt, device=self.device)

    def converts(self, x) -> bool:
        return isinstance(x, self._torch.Tensor)

    def to_numpy(self, x):
        return x.detach().cpu().numpy() if isinstance(x, self._torch.Tensor) else to_host(x)

    # --- kernels: torch's own ops, called directly (array-api-compat's wrappers add a
    # Python layer to each call, and the portable spellings take more kernels) ---------
    def relu(self, x):
        """torch.relu: one kernel, NaN kept."""
        return self._torch.relu(x)

    def backprop_relu(self, grad, y):
        """grad where y > 0, else 0: aten's threshold_backward, the one fused kernel
        autograd's ReLU uses (half the time of `where(y > 0, ...)`, which makes a mask
        first). A NaN output passes its gradient, as in torch."""
        return self._torch.ops.aten.threshold_backward(grad, y, 0)

    def relu_(self, x):
        """torch.relu_: into x."""
        return self._torch.relu_(x)

    def backprop_relu_(self, grad, y):
        """threshold_backward written into grad."""
        if grad.shape != y.shape or grad.dtype != y.dtype:
            return self.backprop_relu(grad, y)
        return self._torch.ops.aten.threshold_backward.grad_input(grad, y, 0, grad_input=grad)

    def batch_sum(self, g):
        return g.sum(0)

    def sub_scaled(self, p, g, alpha):
        """p.sub_(g, alpha=alpha): one fused in-place kernel (p -= alpha * g)."""
        return p.sub_(g, alpha=alpha)

    def softmax_cross_entropy(self, logits, labels):
        """torch's fused kernels: log_softmax, nll_loss for the loss, and the gradient
        softmax - one_hot as exp(log_softmax) with -1 scattered at each label."""
        torch = self._torch
        if logits.ndim != 2 or not logits.is_floating_point() or labels.ndim != 1:
            return super().softmax_cross_entropy(logits, labels)
        if labels.dtype != torch.int64:  # nll_loss and scatter_add_ index with int64
            labels = labels.long()
        log_p = torch.log_softmax(logits, 1)
        loss = torch.nn.functional.nll_loss(log_p, labels, reduction="none")
        grad = log_p.exp_()
        grad.scatter_add_(1, labels.unsqueeze(1), self._minus_ones(logits.shape[0], grad))
        return loss, grad

    def _minus_ones(self, n: int, like):
        """A kept (n, 1) tensor of -1 in `like`'s dtype and device."""
        key = (n, like.dtype, like.device)
        cache = self.__dict__.setdefault("_minus_ones_cache", {})
        out = cache.get(key)
        if out is None:
            out = cache[key] = self._torch.full((n, 1), -1.0, dtype=like.dtype,
                                                device=like.device)
        return out

    # Dropout masks: the portable Philox code (Backend.device_bernoulli) in int64,
    # as torch lacks uint64 shifts and comparisons; the same bits on CPU and CUDA.
    philox_wide = False

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


def load():
    return TorchBackend()
