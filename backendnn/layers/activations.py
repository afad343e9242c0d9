"""Element-wise activations (and Softmax over the last axis). No parameters.

Each keeps what its derivative needs: the input for gates, the output where the
derivative is a function of it (sigmoid, tanh, softmax).
"""
from __future__ import annotations

from .._validate import number
from .base import Layer


class ReLU(Layer):
    """max(x, 0); the gradient passes where x > 0.  Shape: any -> same.

    Keeps its output y (y > 0 exactly where x > 0), which the next layer keeps
    anyway, so the input can be freed. The kernels are the backend's `relu` and
    `backprop_relu` (NumPy has a faster spelling than np.where). Inside a Sequential,
    after a layer that returns fresh arrays (Linear, Conv2d, ...), it writes into that
    layer's output and input gradient instead of new arrays (`relu_`,
    `backprop_relu_`), as `torch.nn.ReLU(inplace=True)` would; after a Linear it also
    adds that layer's bias, in the same pass (`bias_relu_`), and in backward sums that
    layer's bias gradient in the pass that masks the gradient (`backprop_relu_sum_`).
    """

    _takes_bias = True  # `_forward_with_bias`
    _gives_bias_grad = True  # `_backward_owned_sum`

    def forward(self, x):
        self.y = self.backend.relu(x)
        return self.y

    def _forward_owned(self, x):
        self.y = self.backend.relu_(x)
        return self.y

    def _forward_with_bias(self, x, bias):
        """forward(x + bias), where x is the previous layer's fresh product (owned)."""
        self.y = self.backend.bias_relu_(x, bias)
        return self.y

    def backward(self, grad):
        return self.backend.backprop_relu(grad, self._need(self.y))

    def _backward_owned(self, grad):
        return self.backend.backprop_relu_(grad, self._need(self.y))

    def _backward_owned_sum(self, grad):
        """(`_backward_owned(grad)`, its batch sum): the sum is the bias gradient of the
        Linear layer before this one, made in the same pass."""
        return self.backend.backprop_relu_sum_(grad, self._need(self.y))

    def _clear(self):
        self.y = None


class LeakyReLU(Layer):
    """x where x > 0, else negative_slope * x.  Shape: any -> same."""

    def __init__(self, negative_slope: float = 0.01, **kw):
        negative_slope = number("LeakyReLU", "negative_slope", negative_slope)
        super().__init__(**kw)
        self.negative_slope = negative_slope

    def forward(self, x):
        self.x = x
        return self.xp.where(x > 0, x, self.negative_slope * x)

    def backward(self, grad):
        x = self._need(self.x)
        return self.xp.where(x > 0, grad, self.negative_slope * grad)

    def _clear(self):
        self.x = None

    def config(self):
        return {"negative_slope": self.negative_slope}

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class Sigmoid(Layer):
    """1 / (1 + exp(-x)), computed from exp(-|x|) so no input overflows.

    Shape: any -> same. Derivative: y (1 - y).
    """

    def forward(self, x):
        xp = self.xp
        e = xp.exp(-xp.abs(x))
        r = 1.0 / (1.0 + e)
        self.y_hat = xp.where(x >= 0, r, e * r)
        return self.y_hat

    def backward(self, grad):
        y = self._need(self.y_hat)
        return y * (1.0 - y) * grad

    def _clear(self):
        self.y_hat = None


class Tanh(Layer):
    """tanh(x).  Shape: any -> same. Derivative: 1 - y²."""

    def forward(self, x):
        self.y = self.xp.tanh(x)
        return self.y

    def backward(self, grad):
        y = self._need(self.y)
        return (1.0 - y * y) * grad

    def _clear(self):
        self.y = None


class Softmax(Layer):
    """exp(x) / sum(exp(x)) over the last axis, shifted by the row max (stable for
    logits far apart).

    Shape: (..., n) -> (..., n). For training a classifier prefer `CrossEntropy`
    on the logits: it fuses log-softmax and is exact where this underflows.
    """

    def forward(self, x):
        xp = self.xp
        e = xp.exp(x - xp.max(x, axis=-1, keepdims=True))
        self.y = e / xp.sum(e, axis=-1, keepdims=True)
        return self.y

    def backward(self, grad):
        y = self._need(self.y)
        return y * (grad - self.xp.sum(grad * y, axis=-1, keepdims=True))

    def _clear(self):
        self.y = None
