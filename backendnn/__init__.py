"""backendnn: neural networks with explicit backprop, written once against the
Python Array API, trained on NumPy, CuPy, PyTorch or any registered backend.

    >>> from backendnn import Linear, ReLU, Sigmoid, BinaryCrossEntropy, Sequential, SGD
    >>> model = Sequential([Linear(30, 20), ReLU(), Linear(20, 1), Sigmoid()],
    ...                    BinaryCrossEntropy())
"""
from ._checkout import extend_path as _extend_path

_extend_path(__path__, __path__[0])

from . import backends  # noqa: E402
from .backends import (  # noqa: E402
    get_backend,
    seed,
    set_backend,
    use_backend,
)
from .data import DataLoader, Dataset, StandardScaler, normalize  # noqa: E402
from .gradcheck import gradcheck  # noqa: E402
from .layers import (  # noqa: E402
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Dropout2d,
    Flatten,
    Identity,
    Layer,
    LayerNorm,
    LeakyReLU,
    Linear,
    MaxPool2d,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from .losses import (  # noqa: E402
    BinaryCrossEntropy,
    CrossEntropy,
    HuberLoss,
    L1Loss,
    Loss,
    MeanSquaredError,
)
from .metrics import accuracy  # noqa: E402
from .model import MLP, Sequential  # noqa: E402
from . import init  # noqa: E402
from .optim import (  # noqa: E402
    SGD,
    Adam,
    AdamW,
    ChainedScheduler,
    CosineAnnealingLR,
    ExponentialLR,
    LinearLR,
    LinearWarmup,
    Optimizer,
    RMSprop,
    StepLR,
    clip_grad_norm,
)
from .train import History, NonFiniteLossError, Trainer  # noqa: E402
from . import callbacks, checkpoint  # noqa: E402
from .callbacks import (  # noqa: E402
    Callback,
    CSVLogger,
    EarlyStopping,
    LayerStats,
    ModelCheckpoint,
)
from .checkpoint import CheckpointError, load, restore, save  # noqa: E402

__version__ = "0.2.0"

__all__ = [
    "backends",
    "get_backend",
    "set_backend",
    "use_backend",
    "seed",
    "Layer",
    "Linear",
    "ReLU",
    "LeakyReLU",
    "Sigmoid",
    "Tanh",
    "Softmax",
    "Dropout",
    "BatchNorm1d",
    "LayerNorm",
    "Flatten",
    "Identity",
    "Conv2d",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "BatchNorm2d",
    "Dropout2d",
    "Loss",
    "BinaryCrossEntropy",
    "MeanSquaredError",
    "CrossEntropy",
    "L1Loss",
    "HuberLoss",
    "Sequential",
    "MLP",
    "Optimizer",
    "SGD",
    "Adam",
    "AdamW",
    "RMSprop",
    "clip_grad_norm",
    "StepLR",
    "ExponentialLR",
    "CosineAnnealingLR",
    "LinearLR",
    "LinearWarmup",
    "ChainedScheduler",
    "init",
    "Dataset",
    "DataLoader",
    "StandardScaler",
    "normalize",
    "Trainer",
    "History",
    "NonFiniteLossError",
    "callbacks",
    "Callback",
    "EarlyStopping",
    "ModelCheckpoint",
    "CSVLogger",
    "LayerStats",
    "checkpoint",
    "save",
    "load",
    "restore",
    "CheckpointError",
    "accuracy",
    "gradcheck",
    "parity",
]


def __getattr__(name):
    """`backendnn.parity` (the backend-parity battery) and `backendnn.testing` load on first use."""
    if name in ("parity", "testing"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    msg = f"module 'backendnn' has no attribute {name!r}"
    raise AttributeError(msg)
