"""A small convolutional network on scikit-learn's 8x8 digits, on any backend.

The split of examples/digits.py (stratified 80/20, random_state=0), each image as a
(1, 8, 8) NCHW tensor with pixels in [0, 1], and

    Conv2d(1, 32, 3, padding=1) - BatchNorm2d - ReLU
    Conv2d(32, 32, 3, padding=1) - BatchNorm2d - ReLU - MaxPool2d(2)
    Flatten - Linear(512, 10)

with CrossEntropy on the logits, Adam (lr 2e-3, halved every 10 epochs), batch 32.

    python examples/digits_cnn.py                   # auto: CuPy on a CUDA GPU, else NumPy
    python examples/digits_cnn.py --backend torch --epochs 10 --log-level 1
"""
from __future__ import annotations

import argparse
import time

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import backendnn
from backendnn import (
    Adam,
    BatchNorm2d,
    Conv2d,
    CrossEntropy,
    DataLoader,
    Dataset,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
    StepLR,
    Trainer,
    accuracy,
)

EPOCHS = 20


def load_data():
    """The digits split of examples/digits.py, as images: X_train (1437, 1, 8, 8),
    X_test (360, 1, 8, 8) float64 in [0, 1], and integer labels."""
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).reshape(-1, 1, 8, 8)
    return train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)


def build_model(width: int = 32) -> Sequential:
    """The CNN above, on the current backend."""
    return Sequential([
        Conv2d(1, width, 3, padding=1), BatchNorm2d(width), ReLU(),
        Conv2d(width, width, 3, padding=1), BatchNorm2d(width), ReLU(), MaxPool2d(2),
        Flatten(), Linear(width * 16, 10),
    ], CrossEntropy())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="auto",
                        help="backend name (numpy, torch, cupy, array_api_strict) or auto")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="training epochs")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and batch order")
    parser.add_argument("--log-level", type=int, default=0,
                        help="print a summary line every N epochs (0: only the results)")
    return parser


def main(argv=None) -> dict:
    """Run the example; return the test accuracy, the seconds and the backend used."""
    args = build_parser().parse_args(argv)
    backend = backendnn.get_backend(args.backend)
    X_train, X_test, y_train, y_test = load_data()
    print(f"digits (8x8x1 images): {len(y_train)} train / {len(y_test)} test; "
          f"backend {backend.name}, {args.epochs} epochs")
    with backendnn.use_backend(backend):
        backendnn.seed(args.seed)
        model = build_model()
        train_dl = DataLoader(Dataset(X_train, y_train), batch_size=32, shuffle=True,
                              drop_last=True)
        test_dl = DataLoader(Dataset(X_test, y_test), batch_size=360)
        optimizer = Adam(model, lr=2e-3)
        trainer = Trainer(model, optimizer, train_dl, test_dl, metric=accuracy,
                          scheduler=StepLR(optimizer, step_size=10, gamma=0.5))
        start = time.perf_counter()
        trainer.train(args.epochs, log_level=args.log_level)
        _, test_acc = trainer.evaluate(test_dl)
        seconds = time.perf_counter() - start
    name = "CNN  conv32-bn-relu x2, maxpool2, linear 512-10; Adam batch 32"
    print(f"{'network'.ljust(len(name))}  test acc  seconds")
    print(f"{name}  {test_acc:8.4f}  {seconds:7.2f}")
    return {"backend": backend.name, "cnn": test_acc, "seconds": seconds}


if __name__ == "__main__":
    main()
