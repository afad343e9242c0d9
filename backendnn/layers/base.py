"""The `Layer` base class and `Param`, the handle optimisers update through."""
from __future__ import annotations

import contextlib
import functools
import inspect
import math
import warnings
from contextvars import ContextVar

from ..backends import get_backend


class ShapeError(ValueError):
    """An input whose shape a layer cannot take; `Sequential` adds the layer's index."""


class NotReadyError(RuntimeError):
    """`backward()` called before the forward pass it needs."""


class Param:
    """One trainable array of a layer, with its gradient, seen by optimisers.

    `value` reads and writes the layer's attribute (so `layer.weights` stays the
    array users see); `grad` is the gradient `backward` left, or None.
    """

    __slots__ = ("layer", "name", "grad_name")

    def __init__(self, layer, name: str, grad_name: str):
        self.layer, self.name, self.grad_name = layer, name, grad_name

    @property
    def value(self):
        return getattr(self.layer, self.name)

    @value.setter
    def value(self, array):
        setattr(self.layer, self.name, array)

    @property
    def grad(self):
        return getattr(self.layer, self.grad_name, None)

    def add_grad_product(self, alpha: float) -> bool:
        """value += alpha * grad in place, made as one matrix product, where the gradient
        is still an unmade product (`ProductGrad`) and the backend can add a product into
        an array; False otherwise (nothing changed)."""
        unmade = self.layer._unmade(self.grad_name)
        if unmade is None or not self.layer.backend.add_product(self.value, unmade.a,
                                                                unmade.b, alpha):
            return False
        unmade.used = True
        return True

    @property
    def shape(self) -> tuple:
        return tuple(self.value.shape)

    @property
    def size(self) -> int:
        return math.prod(self.value.shape)

    def __repr__(self):
        return f"Param({type(self.layer).__name__}.{self.name}, shape={self.shape})"


class ProductGrad:
    """A parameter gradient that backward may leave unmade as a product a @ b (Linear's
    grad_w = x.T @ dL/dy), on backends that can add a product into an array in place
    (`Backend.can_add_product`).

    Read, it is made then (one matmul) and kept, so every reader sees the usual array.
    Plain SGD's step (p -= lr * grad) instead adds -lr * a @ b into the parameter as one
    product (`Param.add_grad_product`): no gradient array is written, and no second
    pass over the parameter reads it back. Until the layer's next forward pass the
    gradient stays readable; a gradient an optimiser has used that way reads None
    after it, one nobody used is made then (`Layer._settle_products`). Setting a value
    replaces the unmade product. The layer holds a and b until then: between backward
    and the optimiser's step, the batch must not be changed in place, as between
    forward and backward. A layer with one calls `_settle_products` in its forward.
    """

    def __set_name__(self, owner, name):
        self.name, self.slot = name, "_" + name

    def __get__(self, layer, owner=None):
        if layer is None:
            return self
        unmade = layer._unmade(self.name)
        if unmade is not None:
            del layer._products[self.name]
            layer.__dict__[self.slot] = layer.backend.matmul(unmade.a, unmade.b)
        return layer.__dict__.get(self.slot)

    def __set__(self, layer, value):
        if layer._unmade(self.name) is not None:
            del layer._products[self.name]
        layer.__dict__[self.slot] = value


class _Unmade:
    """A gradient a @ b not made yet; `used`: an optimiser has added it into its
    parameter."""

    __slots__ = ("a", "b", "used")

    def __init__(self, a, b):
        self.a, self.b, self.used = a, b, False


class Layer:
    """Base class: `forward(x)` keeps what `backward(grad)` needs; `backward` returns dL/dx.

    The state protocol (what checkpoints, `to()`, EarlyStopping, capture and the
    parity battery read, and nothing else):
        `named_parameters()`  [(name, Param)], trainable arrays with their gradients;
        `named_buffers()`     [(name, array)], arrays that move with the model but are
                              not trained (running statistics);
        `config()`            the constructor arguments, a JSON-able dict;
        `state_shapes()`      {name: shape} of every parameter and buffer, computed
                              from the configuration alone (checkpoints check a file
                              against it before allocating anything).
    The defaults read the declarations `param_names` (with the matching gradient
    attributes in `grad_names`) and `buffer_names`; a layer whose arrays depend on
    its options (BatchNorm without affine) sets them per instance.

    The gradient convention, one for every layer: `backward(grad)` receives the
    gradient of the *batch-mean* loss with respect to this layer's output (the loss
    divides by the batch, as torch's reduction="mean"), returns the same for its
    input, and leaves parameter gradients (`grad_w`, ...) as plain sums over the
    batch of `grad` times the local derivative: no layer divides by the batch size.
    A layer class says so with `grad_reduction = "sum"` (every built-in layer
    does). A layer class of your own with parameters that does not is taken to be
    written for backendnn 0.1, whose layers averaged their parameter gradients over
    the batch: its parameter gradients are multiplied by the batch size after its
    backward, with a FutureWarning, so that it still trains as it did.

    Layers take `xp`, device and dtype from their backend and never import an
    array library.

    Temporaries: `_fresh_output` says that `forward` returns a new array that the
    layer keeps no reference to (nor to any part of it), `_fresh_input_grad` the same
    of `backward`'s result. Sequential then hands that array to the next layer's
    `_forward_owned` (the previous layer's `_backward_owned`), which may write its
    result into it: ReLU does, as PyTorch's `ReLU(inplace=True)`, saving an array and
    a pass over memory. Likewise a layer with `_bias_to_next` (Linear) leaves its bias
    to a next layer with `_takes_bias` (ReLU), which adds it in its own pass, and in
    backward such a ReLU (`_gives_bias_grad`) sums the gradient it masks for a layer
    with `_takes_bias_grad` before it. A subclass that overrides forward (backward)
    without saying so again is taken not to return fresh arrays, nor to hand its bias
    or bias gradient on.
    """

    param_names: tuple[str, ...] = ()
    grad_names: tuple[str, ...] = ()
    buffer_names: tuple[str, ...] = ()
    grad_reduction: str | None = None  # "sum": written for the convention above
    _fresh_output = False
    _fresh_input_grad = False
    _bias_to_next = False  # `_forward_product(x)`: forward without adding `bias`
    _takes_bias = False  # `_forward_with_bias(x, bias)`: forward(x + bias), x owned
    _gives_bias_grad = False  # `_backward_owned_sum(grad)`: (input grad, its batch sum)
    _takes_bias_grad = False  # `_backward_with_bias_grad(grad, bias_grad, input_grad)`

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for method, flag in (("forward", "_fresh_output"), ("backward", "_fresh_input_grad"),
                             ("forward", "_bias_to_next"), ("forward", "_takes_bias"),
                             ("backward", "_takes_bias_grad"),
                             ("backward", "_gives_bias_grad")):
            if method in cls.__dict__ and flag not in cls.__dict__:
                setattr(cls, flag, False)
        reset = cls.__dict__.get("reset_parameters")
        if reset is not None and not getattr(reset, "_deferrable", False):
            cls.reset_parameters = _deferrable(reset)
        if cls.__module__.startswith("backendnn.") and "grad_reduction" not in cls.__dict__:
            cls.grad_reduction = "sum"
        if cls.grad_reduction is None:
            for name in ("backward", "backward_params"):
                method = cls.__dict__.get(name)
                if method is not None and not getattr(method, "_rescaled", False):
                    setattr(cls, name, _batch_mean_layer(method))

    def __init__(self, *, backend=None, dtype: str = "float32"):
        self.backend = get_backend(backend)
        self.dtype = _dtype_name(dtype)
        self.training = True
        self._clear()

    @property
    def xp(self):
        """The backend's Array API namespace."""
        return self.backend.xp

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, grad):
        raise NotImplementedError

    def named_parameters(self) -> list[tuple[str, Param]]:
        """[(attribute name, Param)] of this layer's trainable arrays, in a fixed order."""
        return [(n, Param(self, n, g)) for n, g in zip(self.param_names, self.grad_names)]

    def named_buffers(self) -> list[tuple[str, object]]:
        """[(attribute name, array)] of the arrays that move with the layer but are not
        trained (running statistics); a buffer not made yet (None) is left out."""
        return [(n, getattr(self, n)) for n in self.buffer_names
                if getattr(self, n, None) is not None]

    def parameters(self) -> list[Param]:
        """This layer's trainable arrays, in a fixed order."""
        return [p for _, p in self.named_parameters()]

    def state_arrays(self) -> list[tuple[str, object]]:
        """[(name, array)]: parameters, then buffers (what a checkpoint stores)."""
        return [(n, p.value) for n, p in self.named_parameters()] + self.named_buffers()

    def config(self) -> dict:
        """The constructor arguments that rebuild this layer, JSON-able (backend and
        dtype excluded: the model sets them). Layers with arguments override this.

        A layer class written before this protocol, with constructor arguments but
        no config(), still saves: its arguments are read from attributes of the same
        names, with a DeprecationWarning."""
        names = _init_arguments(type(self))
        if not names:
            return {}
        warnings.warn(
            f"{type(self).__name__} has constructor arguments {names} but no config(): "
            f"they are read from attributes of the same names; define "
            f"{type(self).__name__}.config() returning them (this fallback will go)",
            DeprecationWarning, stacklevel=2)
        missing = [n for n in names if not hasattr(self, n)]
        if missing:
            msg = (f"cannot record the constructor argument `{missing[0]}` of "
                   f"{type(self).__name__}: define {type(self).__name__}.config() returning "
                   "its constructor arguments")
            raise TypeError(msg)
        return {n: getattr(self, n) for n in names}

    def state_shapes(self) -> dict | None:
        """{name: shape} of the parameters and buffers this configuration makes, or
        None when the layer cannot tell without building them (checked after)."""
        if not (self.param_names or self.buffer_names):
            return {}
        return None

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def eval(self):
        return self.train(False)

    def to(self, backend, dtype: str | None = None):
        """Move parameters and buffers to `backend` (and `dtype`); drops forward caches.

        Arrays moved to another backend are copies: a zero-copy DLPack move would let
        the in-place optimiser steps here write into the arrays left behind."""
        backend = get_backend(backend)
        dtype = self.dtype if dtype is None else _dtype_name(dtype)
        copy = backend is not self.backend
        for name, value in self.state_arrays():
            value = backend.asarray(value, dtype=dtype)
            setattr(self, name, backend.xp.asarray(value, copy=True) if copy else value)
        for _, param in self.named_parameters():
            setattr(self, param.grad_name, None)
        self.backend, self.dtype = backend, dtype
        self._clear()
        return self

    def _clear(self) -> None:
        """Forget what the last forward pass kept."""

    def _forward_owned(self, x):
        """`forward(x)` where x is a temporary nothing else holds (the previous layer's
        fresh output): a layer may write its result into it."""
        return self.forward(x)

    def _backward_owned(self, grad):
        """`backward(grad)` where grad is such a temporary (the next layer's fresh
        input gradient)."""
        return self.backward(grad)

    def _backward_and_free(self, grad, input_grad: bool = True, owned: bool = False):
        """The model's backward step for this layer: `backward(grad)` (`_backward_owned`
        where `owned` says that grad is a temporary), or where no input gradient is
        wanted only the parameter gradients (`backward_params`, if the layer has it;
        returns None); then what forward kept is forgotten, as PyTorch frees saved
        tensors, so activations do not outlive the step."""
        if input_grad:
            grad = self._backward_owned(grad) if owned else self.backward(grad)
        else:
            getattr(self, "backward_params", self.backward)(grad)
            grad = None
        self._clear()
        return grad

    def _leave_product(self, grad_name: str, a, b) -> None:
        """Leave the gradient `grad_name` (a ProductGrad) as the unmade product a @ b."""
        setattr(self, grad_name, None)
        self.__dict__.setdefault("_products", {})[grad_name] = _Unmade(a, b)

    def _unmade(self, grad_name: str):
        """The `_Unmade` gradient `grad_name`, or None where it is made (or absent)."""
        pending = self.__dict__.get("_products")
        return pending.get(grad_name) if pending else None

    def _settle_products(self) -> None:
        """Before a forward pass: drop the unmade gradients an optimiser has added into
        its parameters (they read None from now on) and make the others, so that the
        last backward's arrays are not held past this pass."""
        for name, unmade in list(self.__dict__.get("_products", {}).items()):
            if unmade.used:
                setattr(self, name, None)
            else:
                getattr(self, name)

    def _need(self, value, what: str = "forward"):
        if value is None:
            msg = (f"{type(self).__name__}.backward() called without a {what}() to use: run "
                   "a forward pass first (each backward pass uses up the forward pass before it)")
            raise NotReadyError(msg)
        return value

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


def _init_arguments(cls) -> list[str]:
    """The named constructor arguments of a layer class, backend and dtype excluded."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return [p.name for p in params if p.name not in ("backend", "dtype")
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


_WARNED: set = set()


def _batch_mean_layer(backward):
    """Wrap the backward of a layer class written for backendnn 0.1 (parameter
    gradients as batch means): multiply its parameter gradients by the batch size,
    so they are sums as the loss now divides by the batch, and warn once per class."""
    @functools.wraps(backward)
    def wrapper(self, grad, *args, **kwargs):
        if self.__dict__.get("_rescaling"):  # a subclass's backward calling this one
            return backward(self, grad, *args, **kwargs)
        self._rescaling = True
        try:
            out = backward(self, grad, *args, **kwargs)
        finally:
            self._rescaling = False
        params = self.named_parameters()
        if params and getattr(grad, "ndim", 0):
            cls = type(self)
            if cls not in _WARNED:
                _WARNED.add(cls)
                warnings.warn(
                    f"{cls.__name__} does not declare grad_reduction = \"sum\": it is taken to "
                    "average its parameter gradients over the batch, as layers did in "
                    "backendnn 0.1, and they are multiplied by the batch size after its "
                    "backward (the loss now divides by the batch). Sum over the batch "
                    f"instead and set {cls.__name__}.grad_reduction = \"sum\"",
                    FutureWarning, stacklevel=2)
            n = grad.shape[0]
            for _, param in params:
                g = param.grad
                if g is not None:
                    setattr(self, param.grad_name, g * n)
        return out

    wrapper._rescaled = True
    return wrapper


_DEFER = ContextVar("backendnn_defer_init", default=False)


def _deferrable(reset):
    """Wrap a layer's `reset_parameters` so that `deferred_init()` can build layers
    without allocating their arrays (a checkpoint checks their shapes first)."""
    @functools.wraps(reset)
    def wrapper(self, *args, **kwargs):
        if _DEFER.get():
            return None
        return reset(self, *args, **kwargs)

    wrapper._deferrable = True
    return wrapper


@contextlib.contextmanager
def deferred_init():
    """Layers built inside skip `reset_parameters`: no parameter is allocated."""
    token = _DEFER.set(True)
    try:
        yield
    finally:
        _DEFER.reset(token)


def _dtype_name(dtype) -> str:
    name = dtype if isinstance(dtype, str) else str(dtype).rsplit(".", 1)[-1]
    if name not in ("float16", "float32", "float64", "bfloat16"):
        msg = f"`dtype` must be a floating dtype name such as 'float32', got {dtype!r}"
        raise TypeError(msg)
    return name
