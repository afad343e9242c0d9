"""Models: `Sequential` (a list of layers and a loss) and `MLP` (seed 001's network)."""
from __future__ import annotations

import copy
import json

from ._table import render
from .backends import get_backend, to_host
from .data import check_training_dtype
from .layers import Layer, LeakyReLU, Linear, ReLU, ShapeError, Sigmoid, Softmax, Tanh
from .layers.base import _dtype_name
from .losses import BinaryCrossEntropy, CrossEntropy, HuberLoss, L1Loss, Loss, MeanSquaredError
from .losses.base import _same_backend


class Sequential:
    """Layers applied in order, with the loss criterion that starts backprop.

    Args:
        layers: list of `Layer`s.
        criterion: a `Loss` (needed for `backward`).
        backend: where the model computes; default: the backend of the first layer.
            Layers built elsewhere are moved here.

    Shape: x (batch, n_in) -> y_hat (batch, n_out). Inputs of another float dtype are
    cast to the model's dtype once, here; arrays of another backend are refused.
    """

    def __init__(self, layers, criterion: Loss | None = None, *, backend=None):
        self.layers = _distinct(list(layers))
        if criterion is not None and not isinstance(criterion, Loss):
            msg = f"Sequential: `criterion` must be a backendnn Loss, got {type(criterion).__name__}"
            raise TypeError(msg)
        self.criterion = criterion
        if backend is None and self.layers:
            backend = self.layers[0].backend
        self.backend = get_backend(backend)
        dtypes = {layer.dtype for layer in self.layers if layer.state_arrays()}
        if len(dtypes) > 1:
            msg = (f"Sequential: the layers' parameters have different dtypes {sorted(dtypes)}; "
                   "build them with one dtype, or call model.to(backend, dtype) on a model "
                   "built from one")
            raise TypeError(msg)
        self.dtype = dtypes.pop() if dtypes else "float32"
        check_training_dtype("Sequential", self.dtype)
        self._move(self.backend, self.dtype)

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        """Pass a mini-batch through every layer, returning the last layer's output."""
        x = self._input(x)
        layers = self.layers
        owned = False  # the caller's input is never written
        after = None  # a layer whose bias the next one adds (Linear before ReLU)
        for i, layer in enumerate(layers):
            try:
                if after is not None:
                    x = layer._forward_with_bias(x, after.bias)
                elif (layer._bias_to_next and i + 1 < len(layers)
                        and layers[i + 1]._takes_bias):
                    x = layer._forward_product(x)
                    after = layer
                    continue
                else:
                    x = layer._forward_owned(x) if owned else layer.forward(x)
            except ShapeError as e:
                msg = f"layer {i} ({type(layer).__name__}): {e}"
                raise ShapeError(msg) from None
            after = None
            owned = layer._fresh_output
        return x

    def loss(self, x, y):
        """Per-sample loss of the batch: criterion(forward(x), y)."""
        return self._criterion()(self.forward(x), y)

    def backward(self, *, input_grad: bool = False, optimizer=None):
        """Backpropagate the criterion's gradient through every layer, last to first.

        The first layer skips the input gradient (nothing needs it) unless
        `input_grad=True`, which returns dL/dx, shape of the input.

        Each layer forgets what its forward pass kept as soon as its backward has used
        it (as PyTorch frees saved tensors), so activations do not outlive the step:
        a second backward() needs a new forward pass. The exception: a gradient left
        as an unmade product (`Linear.grad_w` on the NumPy backend, see
        `layers.base.ProductGrad`) holds its layer's input and dL/dy until it is read
        or until the layer's next forward pass, so the batch must not be changed in
        place before `optimizer.step()`.

        With an `optimizer`, its step is made inside the pass: each layer's parameters
        are updated as soon as that layer's backward has left their gradients (while
        they are still in cache), the same values as `backward()` then
        `optimizer.step()`. Use it only where nothing reads or changes the gradients
        between the two (no gradient clipping, no callback reading them).
        """
        grad = self._criterion().backward()
        if optimizer is not None:
            optimizer._begin_step()
        try:
            for i, grad in self._backpropagate(grad, input_grad):
                if optimizer is not None:
                    optimizer._step_layer(self.layers[i])
            if optimizer is not None:
                optimizer._end_step()
        finally:
            if optimizer is not None:
                optimizer._pending = {}
        return grad if input_grad else None

    def _backpropagate(self, grad, input_grad: bool = False):
        """Yield (i, dL/d input of layer i) after each layer's backward, last layer to
        first (None for the first layer unless `input_grad`), each layer's cache freed;
        a layer's fresh input gradient goes to the layer before as its own temporary.
        The loop of `backward` and of DataParallel's."""
        layers = self.layers
        owned = False  # the criterion keeps its gradient
        bias_grad = None  # what a ReLU summed for the Linear before it
        for i in range(len(layers) - 1, -1, -1):
            layer = layers[i]
            if bias_grad is not None:
                grad = layer._backward_with_bias_grad(grad, bias_grad, i > 0 or input_grad)
                bias_grad = None
            elif owned and i > 0 and layer._gives_bias_grad and layers[i - 1]._takes_bias_grad:
                grad, bias_grad = layer._backward_owned_sum(grad)
                layer._clear()
            else:
                grad = layer._backward_and_free(grad, i > 0 or input_grad, owned)
            owned = layer._fresh_input_grad
            yield i, grad

    def predict(self, X, batch_size: int | None = None):
        """The model's outputs for `X` as a host NumPy array, in eval mode (Dropout off,
        running statistics used; each layer's mode is put back after the call).

        Args:
            X: samples (n, ...): a list, a NumPy or pandas object, or an array of any
                backend; cast to the model's dtype on its backend.
            batch_size: samples per forward pass (bounds the memory); None: all at once.

        Returns: (n, n_out) outputs in the model's dtype, read back once: logits or
        probabilities, whatever the last layer gives (argmax them for class indices).
        """
        from ._validate import integer

        if batch_size is not None:
            batch_size = integer("Sequential.predict", "batch_size", batch_size, minimum=1)
        backend, xp = self.backend, self.backend.xp
        if not backend.owns(X):
            X = to_host(X)
        if not getattr(X, "ndim", 0):
            msg = f"Sequential.predict: expected samples (n, ...), got {type(X).__name__} of shape ()"
            raise ShapeError(msg)
        n = X.shape[0]
        if n == 0:
            msg = "Sequential.predict: X holds no samples"
            raise ValueError(msg)
        step = batch_size or n
        modes = [layer.training for layer in self.layers]
        self.eval()
        try:
            outs = [self.forward(backend.asarray(X[i:i + step, ...], dtype=self.dtype))
                    for i in range(0, n, step)]
        finally:
            for layer, mode in zip(self.layers, modes):
                layer.train(mode)
                layer._clear()
        return backend.to_numpy(outs[0] if len(outs) == 1 else xp.concat(outs, axis=0))

    def parameters(self) -> list:
        """Every trainable `Param` of every layer, in layer order."""
        return [p for layer in self.layers for p in layer.parameters()]

    def named_parameters(self) -> list[tuple[str, object]]:
        """[("layers.<i>.<name>", Param)] in layer order."""
        return [(f"layers.{i}.{n}", p) for i, layer in enumerate(self.layers)
                for n, p in layer.named_parameters()]

    def named_buffers(self) -> list[tuple[str, object]]:
        """[("layers.<i>.<name>", array)] of the running statistics, in layer order."""
        return [(f"layers.{i}.{n}", b) for i, layer in enumerate(self.layers)
                for n, b in layer.named_buffers()]

    def state_dict(self) -> dict:
        """{"layers.<i>.<name>": array}, each layer's parameters then its buffers, in
        layer order: the tensor names checkpoint files use. The arrays are the
        model's own (not copies): copy them to keep a snapshot."""
        return {f"layers.{i}.{n}": v for i, layer in enumerate(self.layers)
                for n, v in layer.state_arrays()}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Set parameters and buffers from `state` (arrays of any backend or NumPy,
        copied onto this model's backend and dtype).

        Everything is checked before anything changes: a shape mismatch is always
        refused, naming the tensor and both shapes; with `strict`, so are a missing
        and an unexpected key. Gradients and forward caches are dropped."""
        if not isinstance(state, dict):
            msg = f"load_state_dict: expected a dict of arrays (from state_dict()), got {type(state).__name__}"
            raise TypeError(msg)
        mine = self.state_dict()
        missing = [k for k in mine if k not in state]
        unexpected = [k for k in state if k not in mine]
        if strict and (missing or unexpected):
            parts = ([f"missing {missing}"] if missing else []) + \
                    ([f"unexpected {unexpected}"] if unexpected else [])
            msg = (f"load_state_dict: the state does not fit this model: {'; '.join(parts)}; "
                   "pass strict=False to load the keys both have")
            raise KeyError(msg)
        for key, value in state.items():
            if key in mine:
                got, want = tuple(getattr(value, "shape", ())), tuple(mine[key].shape)
                if got != want:
                    msg = f"load_state_dict: tensor {key!r} has shape {got}, but the model's is {want}"
                    raise ShapeError(msg)
        xp, backend = self.backend.xp, self.backend
        values = {k: xp.asarray(backend.asarray(v, dtype=self.dtype), copy=True)
                  for k, v in state.items() if k in mine}
        for key, value in values.items():
            _, i, name = key.split(".", 2)
            layer = self.layers[int(i)]
            setattr(layer, name, value)
        for layer in self.layers:
            for _, param in layer.named_parameters():
                setattr(layer, param.grad_name, None)
            layer._clear()

    def config(self) -> dict:
        """What rebuilds this model without its arrays, JSON-able: its class, dtype,
        each layer's class, module and `config()`, and the criterion's."""
        spec = {"class": type(self).__qualname__, "dtype": self.dtype,
                "layers": [describe(layer) for layer in self.layers],
                "criterion": None if self.criterion is None else describe(self.criterion)}
        if hasattr(self, "sizes"):
            spec["sizes"] = list(self.sizes)
        return spec

    def n_params(self) -> int:
        return sum(p.size for p in self.parameters())

    def train(self, mode: bool = True):
        for layer in self.layers:
            layer.train(mode)
        return self

    def eval(self):
        return self.train(False)

    @property
    def training(self) -> bool:
        return all(layer.training for layer in self.layers)

    def to(self, backend, dtype: str | None = None):
        """Move every parameter and buffer to `backend` (a name or Backend), and to
        `dtype` if given (float32 or float64). Values are kept bit for bit. A dtype the
        backend lacks, and float16 / bfloat16, raise TypeError before anything moves."""
        backend = get_backend(backend)
        dtype = self.dtype if dtype is None else _dtype_name(dtype)
        backend.dtype(dtype)
        check_training_dtype("Sequential.to", dtype)
        self._move(backend, dtype)
        self.backend, self.dtype = backend, dtype
        return self

    def _move(self, backend, dtype):
        for layer in self.layers:
            if layer.backend is not backend or layer.dtype != dtype:
                layer.to(backend, dtype)
        if self.criterion is not None and self.criterion.backend is not backend:
            self.criterion.to(backend)

    def _criterion(self) -> Loss:
        if self.criterion is None:
            msg = "this Sequential has no criterion: build it as Sequential(layers, criterion)"
            raise RuntimeError(msg)
        return self.criterion

    def _input(self, x):
        backend = self.backend
        if not backend.owns(x):
            x = _same_backend(backend, x, "the input")
        dtype = backend.dtype(self.dtype)
        return x if x.dtype == dtype else backend.xp.astype(x, dtype)

    def summary(self) -> str:
        """A table of layers with their parameter shapes and counts."""
        rows = [("#", "layer", "parameters", "count")]
        for i, layer in enumerate(self.layers):
            params = layer.parameters()
            shapes = ", ".join(f"{p.name}{p.shape}" for p in params) or "-"
            rows.append((str(i), repr(layer), shapes, f"{sum(p.size for p in params):,}"))
        total = (f"total: {self.n_params():,} parameters ({self.dtype}) on {self.backend.name}; "
                 f"criterion: {self.criterion!r}")
        return render(rows) + "\n" + total

    def __repr__(self):
        inner = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return (
            f"{type(self).__name__}({inner}\n  criterion: {self.criterion!r}\n)"
            f"  # {self.n_params():,} parameters, {self.dtype}, {self.backend.name}"
        )


def describe(obj) -> dict:
    """A layer's or loss's class, module and `config()`, checked to be JSON-able."""
    config = dict(obj.config())
    try:
        json.dumps(config)
    except (TypeError, ValueError) as e:
        msg = f"the config() of {type(obj).__name__} is not JSON-able ({e}): {config!r}"
        raise TypeError(msg) from None
    return {"class": type(obj).__qualname__, "module": type(obj).__module__, "config": config}


def _distinct(layers: list) -> list:
    """The layers, each object at one position.

    A layer without parameters or buffers used again (`r = ReLU()` at two places)
    gets its own copy at the later positions: its forward cache would otherwise be
    overwritten before backward reads it. One with parameters or buffers is
    refused: sharing weights between positions is not supported."""
    seen = {}
    out = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            msg = f"Sequential: item {i} is {type(layer).__name__}, not a backendnn Layer"
            raise TypeError(msg)
        first = seen.setdefault(id(layer), i)
        if first != i:
            if layer.state_arrays():
                msg = (f"Sequential: the same {type(layer).__name__} object is at positions "
                       f"{first} and {i}; a layer with parameters or buffers can be used once "
                       f"(weight tying is not supported): build a separate "
                       f"{type(layer).__name__} for position {i}")
                raise ValueError(msg)
            layer = copy.copy(layer)
            layer._clear()
        out.append(layer)
    return out


ACTIVATIONS = {
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "softmax": Softmax,
}
LOSSES = {
    "mse": MeanSquaredError,
    "mean_squared_error": MeanSquaredError,
    "bce": BinaryCrossEntropy,
    "binary_cross_entropy": BinaryCrossEntropy,
    "cross_entropy": CrossEntropy,
    "ce": CrossEntropy,
    "l1": L1Loss,
    "huber": HuberLoss,
}


def _make(spec, table: dict, kind: str, base: type, backend):
    """An instance from a name, a class or an instance (copied per use for activations)."""
    if isinstance(spec, str):
        try:
            spec = table[spec.lower()]
        except KeyError:
            msg = f"unknown {kind} {spec!r}; choose one of {sorted(table)}, or pass a class or instance"
            raise ValueError(msg) from None
    if isinstance(spec, type) and issubclass(spec, base):
        return spec(backend=backend)
    if isinstance(spec, base):
        return spec
    msg = f"{kind} must be a name, a {base.__name__} subclass or instance, got {spec!r}"
    raise TypeError(msg)


class MLP(Sequential):
    """Seed 001's network: Linear layers of the given sizes, the activation after
    every one of them (the last included), and a loss.

    Args:
        sizes: [n_in, hidden..., n_out].
        activation: a name ("sigmoid", "relu", "tanh", "leaky_relu", "softmax"), a
            Layer class, or an instance (copied to each position).
        loss: a name ("mse", "bce", "cross_entropy"), a Loss class or instance.
        output_activation: after the last Linear: "same" (the seed's choice: the
            hidden activation), None (raw outputs, e.g. logits for "cross_entropy"),
            or another activation spec.

    Example:
        >>> MLP([64, 30, 10], "sigmoid", "mse")   # Nielsen's digits network
        >>> MLP([64, 64, 10], "relu", "cross_entropy", output_activation=None)
    """

    def __init__(self, sizes, activation="sigmoid", loss="mse", *, output_activation="same",
                 backend=None, dtype: str = "float32"):
        sizes = list(sizes)
        if len(sizes) < 2 or not all(isinstance(n, int) and n > 0 for n in sizes):
            msg = f"MLP: `sizes` must list at least two positive ints, got {sizes!r}"
            raise ValueError(msg)
        backend = get_backend(backend)
        layers = []
        last = activation if isinstance(output_activation, str) and output_activation == "same" \
            else output_activation
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(Linear(n_in, n_out, backend=backend, dtype=dtype))
            spec = activation if i < len(sizes) - 2 else last
            if spec is not None:
                layers.append(self._activation(spec, backend))
        super().__init__(layers, _make(loss, LOSSES, "loss", Loss, backend), backend=backend)
        self.sizes = sizes

    @staticmethod
    def _activation(spec, backend):
        if isinstance(spec, Layer):
            clone = copy.copy(spec)
            clone._clear()
            return clone
        return _make(spec, ACTIVATIONS, "activation", Layer, backend)

    def forward_pass(self, x):
        """Seed 001's forward pass: a single sample (n,) is taken as a batch of one."""
        if getattr(x, "ndim", None) == 1 or (isinstance(x, (list, tuple)) and x and
                                              not isinstance(x[0], (list, tuple))):
            x = self.backend.xp.reshape(self._input(x), (1, -1))
        return self.forward(x)

    def backprop(self, x, y):
        """Seed 001's backprop: gradients of the loss summed over the batch.

        Returns (w_grads, b_grads), lists in layer order (first layer first; the
        seed builds them last layer first). Also leaves each layer's grad_w and
        grad_b (batch means) in place.
        """
        x = self._input(x)
        if x.ndim == 1:
            x = self.backend.xp.reshape(x, (1, -1))
        self.criterion(self.forward(x), y)
        self.backward()
        n = x.shape[0]
        linears = [layer for layer in self.layers if isinstance(layer, Linear)]
        return [l.grad_w * n for l in linears], [l.grad_b * n for l in linears]
