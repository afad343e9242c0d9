"""What the parity battery covers: the case tables, their inputs, and the training setup.

A layer, loss or optimiser exported by `backendnn.layers`, `backendnn.losses` or
`backendnn.optim` joins the battery by itself when it builds with default arguments
and takes (batch, features) inputs; one that needs arguments, another input shape or
another mode joins with one line in LAYER_CASES, LOSS_CASES or OPTIMIZER_CASES.
A table line whose class does not exist (yet) is left out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .. import backends
from .. import layers as _layers
from .. import losses as _losses
from .. import optim as _optim
from ..layers import Layer, Linear, ReLU, Tanh
from ..losses import CrossEntropy, Loss, MeanSquaredError
from ..model import Sequential
from ..optim import Optimizer

SHAPES = ((1, 5), (7, 13), (32, 3))  # (batch, features): batch 1 and odd sizes
LARGE_SHAPE = (9, 11)


# --- host inputs (float64 NumPy arrays from a seeded generator) --------------------------
def normal_inputs(rng, shape):
    return rng.normal(0.0, 1.0, shape)


def large_inputs(rng, shape):
    """N(0, 1) with about half the entries scaled by 100, the first exactly 100 and the
    last exactly -100: saturated and ordinary values side by side."""
    x = rng.normal(0.0, 1.0, shape)
    x = x * (1.0 + 99.0 * (rng.random(shape) < 0.5))
    x[(0,) * len(shape)] = 100.0
    x[tuple(s - 1 for s in shape)] = -100.0
    return x


def spread_logits(rng, shape):
    """Logits 1e4 apart: exp of their differences underflows to exactly 0."""
    return rng.integers(-2, 3, shape) * 1e4 + rng.normal(0.0, 1.0, shape)


def _no_args(n):
    return ()


def _flat(batch, n):
    return (batch, n)


# --- layers ------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerCase:
    """How the battery builds and feeds one layer class of `backendnn.layers`.

    name: the class name; label: the row name (default: name).
    args(n): constructor arguments for n input features. shape(batch, n): input shape.
    train: run in training mode; False runs in eval mode, after one forward in training
    mode (which updates running statistics). min_batch: the smallest batch it takes.
    large(rng, shape): the large-magnitude input, described by large_label.
    tol: a key of `tolerances.TOLERANCES`.
    """

    name: str
    label: str = ""
    args: Callable = _no_args
    shape: Callable = _flat
    train: bool = True
    min_batch: int = 1
    large: Callable = large_inputs
    large_label: str = "x up to ±100"
    tol: str = "elementwise"

    @property
    def title(self) -> str:
        return self.label or self.name


LAYER_CASES = (
    LayerCase("Linear", args=lambda n: (n, 4), tol="matmul"),
    LayerCase("ReLU"),
    LayerCase("LeakyReLU"),
    LayerCase("Sigmoid"),
    LayerCase("Tanh"),
    LayerCase("Softmax", large=spread_logits, large_label="logits 1e4 apart"),
    LayerCase("Dropout", "Dropout (eval)", args=lambda n: (0.5,), train=False),
    # batch >= 3: at batch 2 the normalised values are ±1 and dL/dx is pure cancellation
    LayerCase("BatchNorm1d", "BatchNorm1d (train)", args=lambda n: (n,), min_batch=3,
              tol="normalization"),
    LayerCase("BatchNorm1d", "BatchNorm1d (eval)", args=lambda n: (n,), train=False,
              min_batch=3, tol="normalization"),
    LayerCase("LayerNorm", args=lambda n: (n,), tol="normalization"),
    LayerCase("Flatten", shape=lambda batch, n: (batch, 3, n)),
    LayerCase("Flatten", "Flatten (NCHW)", shape=lambda batch, n: (batch, 2, 3, n)),
    LayerCase("Identity"),
    # images (batch, C, H, n): n = the shape's feature count is the width
    LayerCase("Conv2d", "Conv2d (3x3, padding 1)", args=lambda n: (2, 3, 3, 1, 1),
              shape=lambda batch, n: (batch, 2, 4, n), tol="conv"),
    LayerCase("Conv2d", "Conv2d (groups 2, stride 2, dilation 2)",
              args=lambda n: (4, 6, (2, 3), 2, (1, 2), (1, 2), 2),
              shape=lambda batch, n: (batch, 4, 5, n), tol="conv"),
    LayerCase("MaxPool2d", args=lambda n: (2,), shape=lambda batch, n: (batch, 2, 4, n)),
    LayerCase("MaxPool2d", "MaxPool2d (3, stride 2, padding 1)", args=lambda n: (3, 2, 1),
              shape=lambda batch, n: (batch, 2, 5, n)),
    LayerCase("AvgPool2d", "AvgPool2d (3, stride 1, padding 1)", args=lambda n: (3, 1, 1),
              shape=lambda batch, n: (batch, 2, 5, n)),
    LayerCase("AdaptiveAvgPool2d", args=lambda n: (1,), shape=lambda batch, n: (batch, 2, 4, n)),
    LayerCase("BatchNorm2d", "BatchNorm2d (train)", args=lambda n: (n,),
              shape=lambda batch, n: (batch, n, 3, 2), tol="normalization"),
    LayerCase("BatchNorm2d", "BatchNorm2d (eval)", args=lambda n: (n,), train=False,
              shape=lambda batch, n: (batch, n, 3, 2), tol="normalization"),
    LayerCase("Dropout2d", "Dropout2d (eval)", args=lambda n: (0.5,), train=False,
              shape=lambda batch, n: (batch, n, 2, 2)),
)


# --- losses ------------------------------------------------------------------------------
def logits_labels(rng, shape, big):
    """Logits (batch, classes) and int64 labels (batch,)."""
    logits = spread_logits(rng, shape) if big else normal_inputs(rng, shape)
    return logits, rng.integers(0, shape[1], shape[0])


def probabilities(rng, shape, big):
    """Probabilities in (0, 1) and 0/1 targets; big: within 1e-6 of 0 and 1, inside the
    float32 clip of BinaryCrossEntropy (eps 1.2e-7, where float64 clips at 1e-8)."""
    p = (rng.choice([1e-6, 1e-3, 0.5, 1 - 1e-3, 1 - 1e-6], shape) if big
         else rng.uniform(0.02, 0.98, shape))
    return p, rng.integers(0, 2, shape) * 1.0


def values(rng, shape, big):
    """Real predictions and targets (regression), scaled by 1e3 when big."""
    scale = 1e3 if big else 1.0
    return rng.normal(0.0, scale, shape), rng.normal(0.0, scale, shape)


@dataclass(frozen=True)
class LossCase:
    """How the battery feeds one loss of `backendnn.losses`.

    inputs(rng, shape, big) -> (y_hat, y) float64 host arrays (y int64 for labels);
    shapes: y_hat shapes, batch 1 and odd sizes; large_shape, large_label: the
    large-magnitude case.
    """

    name: str
    inputs: Callable = values
    shapes: tuple = ((1, 1), (7,), (32, 3))
    large_shape: tuple = (9, 3)
    large_label: str = "values ~1e3"
    tol: str = "loss"


LOSS_CASES = (
    LossCase("CrossEntropy", logits_labels, shapes=((1, 2), (7, 3), (32, 10)),
             large_shape=LARGE_SHAPE, large_label="logits 1e4 apart"),
    LossCase("BinaryCrossEntropy", probabilities, large_label="p within 1e-6 of 0 and 1"),
    LossCase("MeanSquaredError", values),
)


# --- optimisers --------------------------------------------------------------------------
@dataclass(frozen=True)
class OptimizerCase:
    """One optimiser of `backendnn.optim` with its keyword arguments."""

    name: str
    kwargs: dict = field(default_factory=lambda: {"lr": 0.01})

    @property
    def title(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.kwargs.items())})"


OPTIMIZER_CASES = (
    OptimizerCase("SGD", {"lr": 0.1}),
    OptimizerCase("SGD", {"lr": 0.1, "momentum": 0.9}),
    OptimizerCase("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    OptimizerCase("SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01, "dampening": 0.1}),
    OptimizerCase("Adam", {"lr": 0.01}),
    OptimizerCase("Adam", {"lr": 0.01, "weight_decay": 0.01, "amsgrad": True}),
    OptimizerCase("AdamW", {"lr": 0.01, "weight_decay": 0.01}),
    OptimizerCase("RMSprop", {"lr": 0.01}),
    OptimizerCase("RMSprop", {"lr": 0.01, "momentum": 0.9, "centered": True}),
)
OPTIMIZER_STEPS = 3  # more than one, so momentum buffers and moment estimates are used


def small_model(backend, dtype="float32"):
    """Linear(6, 5), Tanh, Linear(5, 3) with MSE: the optimisers' parameters."""
    return Sequential([Linear(6, 5, backend=backend, dtype=dtype), Tanh(backend=backend),
                       Linear(5, 3, backend=backend, dtype=dtype)],
                      MeanSquaredError(backend=backend), backend=backend)


# --- whole training runs -------------------------------------------------------------------
TRAIN = {"sizes": (64, 32, 10), "batch_size": 32, "lr": 0.05, "momentum": 0.9}
_DATA: dict = {}


def digits(hx):
    """scikit-learn's 8×8 digits (1797 samples), standardised and rounded to float32 on
    the host, with int64 labels; Gaussian blobs of the same shape where scikit-learn
    is missing. `hx`: the host namespace. Returns (X, y, name)."""
    if "digits" not in _DATA:
        try:
            from sklearn.datasets import load_digits

            X, y = load_digits(return_X_y=True)
            name = "digits"
        except ImportError:
            backends.seed(0)
            rng = backends.host_rng()
            y = rng.integers(0, 10, 1797)
            X = rng.normal(0.0, 1.0, (10, 64))[y] + rng.normal(0.0, 1.0, (1797, 64))
            name = "blobs (no scikit-learn)"
        X = hx.asarray(X, dtype=hx.float64)
        std = hx.std(X, axis=0)
        X = (X - hx.mean(X, axis=0)) / hx.where(std > 0, std, 1.0)
        _DATA["digits"] = (hx.astype(X, hx.float32), hx.astype(hx.asarray(y), hx.int64), name)
    return _DATA["digits"]


def mlp(backend, dtype="float32"):
    """The digits MLP: Linear 64-32, ReLU, Linear 32-10, cross-entropy on the logits."""
    n_in, hidden, n_out = TRAIN["sizes"]
    return Sequential([Linear(n_in, hidden, backend=backend, dtype=dtype), ReLU(backend=backend),
                       Linear(hidden, n_out, backend=backend, dtype=dtype)],
                      CrossEntropy(backend=backend), backend=backend)


# --- discovery ---------------------------------------------------------------------------
def _exported(module, base, method):
    """(name, class) of each concrete subclass of `base` that `module` exports."""
    for name in getattr(module, "__all__", dir(module)):
        cls = getattr(module, name, None)
        if (isinstance(cls, type) and issubclass(cls, base) and cls is not base
                and getattr(cls, method) is not getattr(base, method)):
            yield name, cls


def _with_table(table, module, base, method, default):
    out = [(c, getattr(module, c.name)) for c in table if hasattr(module, c.name)]
    known = {c.name for c, _ in out}
    return out + [(default(n), cls) for n, cls in _exported(module, base, method)
                  if n not in known]


def layer_cases() -> list:
    """(LayerCase, class) for each LAYER_CASES line whose class exists, then each other
    layer of backendnn.layers with a default case."""
    return _with_table(LAYER_CASES, _layers, Layer, "forward",
                       lambda n: LayerCase(n, tol="layer"))


def loss_cases() -> list:
    """(LossCase, class), as layer_cases."""
    return _with_table(LOSS_CASES, _losses, Loss, "forward", LossCase)


def optimizer_cases() -> list:
    """(OptimizerCase, class), as layer_cases."""
    return _with_table(OPTIMIZER_CASES, _optim, Optimizer, "_update", OptimizerCase)
