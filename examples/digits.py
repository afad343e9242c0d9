"""Seed 002 on backendnn: handwritten digit recognition on scikit-learn's 8x8 digits.

Two networks on the same split:
- Nielsen's: MLP([64, 30, 10]) with a sigmoid after every layer and mean squared error
  on one-hot targets, plain SGD on mini-batches of 10, 30 epochs (his chapter 1 recipe);
- a ReLU network, Linear(64,128)-ReLU-Linear(128,10), with CrossEntropy on the logits
  and SGD with momentum.

    python examples/digits.py                       # auto: CuPy on a CUDA GPU, else NumPy
    python examples/digits.py --backend torch --epochs 10 --log-level 5
    python examples/digits.py --inspect             # + the ReLU network's first-layer
                                                    #   weights as 8x8 images, layer stats

Nielsen's cost is 1/2 ||a - y||^2 (gradient a - y) with learning rate 3.0; backendnn's
MeanSquaredError is the mean over the 10 outputs (gradient 2 (a - y) / 10), so the
same step needs lr = 3.0 * 10 / 2 = 15.
"""
from __future__ import annotations

import argparse
import os
import time

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import backendnn
from backendnn import (
    MLP,
    SGD,
    CrossEntropy,
    DataLoader,
    Dataset,
    Linear,
    ReLU,
    Sequential,
    Trainer,
    accuracy,
)
from backendnn.callbacks import LayerStats
from backendnn.plotting import plot_weight_images

EPOCHS = 30


def load_data():
    """Pixels scaled to [0, 1], a stratified 80/20 split fixed by random_state=0.

    Returns X_train (1437, 64), X_test (360, 64) float64 and y_train, y_test int labels.
    """
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    return train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)


def one_hot(y, n_classes: int = 10):
    """Integer labels (n,) -> float one-hot rows (n, n_classes), on the host."""
    return (y[:, None] == list(range(n_classes))).astype("float64")


def fit(name, model, optimizer, train_dl, test_dl, epochs: int, log_level: int, callbacks=()):
    """Train and return (test accuracy, seconds); `name` heads the epoch lines."""
    if log_level and epochs:
        print(name)
    trainer = Trainer(model, optimizer, train_dl, test_dl, metric=accuracy, callbacks=callbacks)
    start = time.perf_counter()
    trainer.train(epochs, log_level=log_level)
    _, test_acc = trainer.evaluate(test_dl)
    return test_acc, time.perf_counter() - start


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="auto",
                        help="backend name (numpy, torch, cupy, array_api_strict) or auto")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="epochs per network")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and batch order")
    parser.add_argument("--log-level", type=int, default=0,
                        help="print a summary line every N epochs (0: only the results)")
    parser.add_argument("--inspect", nargs="?", const="digits_weights.png", metavar="PNG",
                        help="save the ReLU network's first-layer weights as 8x8 images to PNG "
                             "(default digits_weights.png) and its per-layer statistics to "
                             "PNG's name + '_layers.png'; needs matplotlib")
    return parser


def main(argv=None) -> dict:
    """Run the example; return the test accuracies and the backend used."""
    args = build_parser().parse_args(argv)
    backend = backendnn.get_backend(args.backend)
    X_train, X_test, y_train, y_test = load_data()
    rows = []
    results = {"backend": backend.name, "epochs": args.epochs}
    print(f"digits (8x8): {len(y_train)} train / {len(y_test)} test images; "
          f"backend {backend.name}, {args.epochs} epochs")

    with backendnn.use_backend(backend):
        backendnn.seed(args.seed)
        model = MLP([64, 30, 10], "sigmoid", "mse")
        train_dl = DataLoader(Dataset(X_train, one_hot(y_train)), batch_size=10, shuffle=True)
        test_dl = DataLoader(Dataset(X_test, one_hot(y_test)), batch_size=256)
        name = "Nielsen  64-30-10 sigmoid, MSE, SGD lr=15 batch 10"
        acc, sec = fit(name, model, SGD(model, lr=15.0), train_dl, test_dl, args.epochs,
                       args.log_level)
        results["nielsen"] = acc
        rows.append((name, acc, sec))

        backendnn.seed(args.seed)
        model = Sequential([Linear(64, 128), ReLU(), Linear(128, 10)], CrossEntropy())
        train_dl = DataLoader(Dataset(X_train, y_train), batch_size=32, shuffle=True)
        test_dl = DataLoader(Dataset(X_test, y_test), batch_size=256)
        name = "ReLU     64-128-10, CrossEntropy, SGD lr=0.05 momentum 0.9 batch 32"
        stats = [LayerStats()] if args.inspect else []
        acc, sec = fit(name, model, SGD(model, lr=0.05, momentum=0.9), train_dl, test_dl,
                       args.epochs, args.log_level, callbacks=stats)
        results["relu"] = acc
        rows.append((name, acc, sec))

    width = max(len(r[0]) for r in rows)
    print(f"{'network'.ljust(width)}  test acc  seconds")
    for name, acc, sec in rows:
        print(f"{name.ljust(width)}  {acc:8.4f}  {sec:7.2f}")
    if args.inspect:
        results["inspect"] = inspect(model, stats[0], args.inspect)
    return results


def inspect(model, stats, path: str) -> list[str]:
    """Save what the network learnt: each first-layer unit's 64 weights as an 8x8
    image (`path`), and the per-layer statistics over the epochs; return both paths."""
    stem, ext = os.path.splitext(path)
    layers_path = f"{stem}_layers{ext or '.png'}"
    plot_weight_images(model.layers[0].weights, path, image_shape=(8, 8), max_images=128,
                       title="first layer: the 64 weights of each hidden unit as an 8x8 image")
    if stats.rows:
        stats.plot(layers_path)
        print(stats.summary())
    print(f"first-layer weights: {path}; layer statistics: {layers_path}")
    return [path, layers_path]


if __name__ == "__main__":
    main()
