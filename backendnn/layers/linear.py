"""The affine layer."""
from __future__ import annotations

from .. import init as _init
from .._validate import integer
from .base import Layer, ProductGrad, ShapeError


class Linear(Layer):
    """Affine map: y = x @ weights + bias.

    Args:
        n_inp, n_out: input and output features.
        init: the weights' initialiser, a name of `backendnn.init.INITIALIZERS`
            ("default", "xavier_uniform", "kaiming_normal", ...) or a callable
            f(shape, *, backend, dtype) -> array. Default: the seed's uniform.
        backend, dtype: where the parameters live (default: the current backend, float32).

    Shape: x (batch, n_inp) -> y (batch, n_out).
    Attributes: weights (n_inp, n_out), from `init` (default: uniform in
        ±1/sqrt(n_inp)) drawn from the seeded host generator; bias (n_out,), zeros.
        `init` keeps a name (a callable not in INITIALIZERS is recorded as "default").
    After backward: grad_w = x.T @ grad and grad_b = the batch sum of grad, shaped
        like weights and bias (grad is already that of the batch-mean loss). On the
        NumPy backend, where the batch is at most n_out, grad_w is made when first
        read, and plain SGD adds it into the weights inside its product instead (see
        `ProductGrad`).
    Inside a Sequential, a ReLU right after it adds the bias in its own pass over the
    product (`Backend.bias_relu_`), and sums grad_b in its own pass over dL/dy
    (`Backend.backprop_relu_sum_`): one pass each way instead of two.

    Example:
        >>> Linear(30, 1)(x).shape   # x (64, 30)
        (64, 1)
    """

    param_names = ("weights", "bias")
    grad_names = ("grad_w", "grad_b")
    _fresh_output = _fresh_input_grad = True  # matmul results, not kept
    _bias_to_next = True  # `_forward_product` leaves the bias to a ReLU after it
    _takes_bias_grad = True  # `_backward_with_bias_grad`: grad_b from that ReLU
    grad_w = ProductGrad()

    def __init__(self, n_inp: int, n_out: int, *, init="default", backend=None,
                 dtype: str = "float32"):
        n_inp = integer("Linear", "n_inp", n_inp, minimum=1)
        n_out = integer("Linear", "n_out", n_out, minimum=1)
        super().__init__(backend=backend, dtype=dtype)
        self.n_inp, self.n_out = n_inp, n_out
        self._init_fn = _init.get(init)
        self.init = _init.name_of(init)
        self.x = None
        self.grad_w = self.grad_b = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights from the initialiser (default: uniform in ±1/sqrt(n_inp)), bias zero."""
        shape = (self.n_inp, self.n_out)
        weights = self._init_fn(shape, backend=self.backend, dtype=self.dtype)
        # a user's initialiser may return NumPy float64 or the torch layout (n_out, n_inp)
        weights = self.backend.asarray(weights, dtype=self.dtype)
        if tuple(weights.shape) != shape:
            fn = getattr(self._init_fn, "__name__", repr(self._init_fn))
            msg = (f"Linear: the initialiser {fn} returned weights of shape "
                   f"{tuple(weights.shape)}, expected {shape} (n_inp, n_out)")
            raise ValueError(msg)
        self.weights = weights
        self.bias = self.xp.zeros((self.n_out,), dtype=self.backend.dtype(self.dtype),
                                  device=self.backend.device)

    def forward(self, x):
        y = self._forward_product(x)
        if self.backend.inplace:  # y is new: add the bias without a second array
            y += self.bias
            return y
        return y + self.bias

    def _forward_product(self, x):
        """forward(x) without the bias: x @ weights, a new array."""
        if x.ndim != 2 or x.shape[1] != self.n_inp:
            msg = f"expected input (batch, {self.n_inp}), got shape {tuple(x.shape)}"
            raise ShapeError(msg)
        if self.__dict__.get("_products"):
            self._settle_products()
        self.x = x
        return self.backend.matmul(x, self.weights)

    def _param_grads(self, grad, bias_grad=None):
        x = self._need(self.x)
        self.grad_w = self.grad_b = None  # free last step's before making this step's
        # unmade only where the weights are at least as large as the input it holds
        # (batch <= n_out): after convolutions the input is the larger, and holding it
        # through the rest of backward would cost more memory than the gradient saves
        if (x.shape[0] <= self.n_out
                and self.backend.can_add_product(self.weights.shape, self.weights.dtype)):
            self._leave_product("grad_w", x.T, grad)
        else:
            self.grad_w = self.backend.matmul(x.T, grad)
        self.grad_b = self.backend.batch_sum(grad) if bias_grad is None else bias_grad

    def backward(self, grad):
        self._param_grads(grad)
        return self.backend.matmul(grad, self.weights.T)

    def backward_params(self, grad) -> None:
        self._param_grads(grad)

    def _backward_with_bias_grad(self, grad, bias_grad, input_grad: bool = True):
        """`_backward_and_free(grad, input_grad)` with grad_b given: the batch sum of
        grad, which the ReLU after this layer made in its own pass over grad."""
        self._param_grads(grad, bias_grad)
        grad = self.backend.matmul(grad, self.weights.T) if input_grad else None
        self._clear()
        return grad

    def _clear(self):
        self.x = None

    def config(self):
        return {"n_inp": self.n_inp, "n_out": self.n_out, "init": self.init}

    def state_shapes(self):
        return {"weights": (self.n_inp, self.n_out), "bias": (self.n_out,)}

    def extra_repr(self):
        return f"{self.n_inp}, {self.n_out}"
