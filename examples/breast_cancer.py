"""Seed 000 on backendnn: logistic regression as a network, then a two-layer ReLU
network, on scikit-learn's breast cancer data, against scikit-learn's LogisticRegression.

    python examples/breast_cancer.py                    # auto: CuPy on a CUDA GPU, else NumPy
    python examples/breast_cancer.py --backend torch --epochs 20 --log-level 1

The split (test_size=0.2, random_state=9) and the scaling are the seed's; both
networks see the same initial draw and batch order for a given --seed, on any backend.
"""
from __future__ import annotations

import argparse
import time

from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

import backendnn
from backendnn import (
    SGD,
    BinaryCrossEntropy,
    DataLoader,
    Dataset,
    Linear,
    ReLU,
    Sequential,
    Sigmoid,
    Trainer,
    accuracy,
    normalize,
)

EPOCHS = 20
LR = 0.1
BATCH_SIZE = 64


def load_data():
    """The seed's split, scaled by the training set's statistics.

    Returns X_train (455, 30), X_val (114, 30) float64 and y_train, y_val int labels.
    """
    X, y = load_breast_cancer(return_X_y=True)
    X_train, X_val, y_train, y_val = train_test_split(X, y, test_size=0.2, random_state=9)
    X_train, X_val = normalize(X_train, X_val)
    return X_train, X_val, y_train, y_val


def train(name, layers, train_dl, val_dl, epochs: int, lr: float, log_level: int):
    """Train `Sequential(layers, BCE)` with SGD; return (validation accuracy, seconds).
    `name` heads the epoch lines."""
    if log_level and epochs:
        print(name)
    model = Sequential(layers, BinaryCrossEntropy())
    trainer = Trainer(model, SGD(model, lr=lr), train_dl, val_dl, metric=accuracy)
    start = time.perf_counter()
    trainer.train(epochs, log_level=log_level)
    _, val_acc = trainer.evaluate(val_dl)
    return val_acc, time.perf_counter() - start


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="auto",
                        help="backend name (numpy, torch, cupy, array_api_strict) or auto")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="epochs per network")
    parser.add_argument("--lr", type=float, default=LR, help="SGD learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and batch order")
    parser.add_argument("--log-level", type=int, default=0,
                        help="print a summary line every N epochs (0: only the results)")
    return parser


def main(argv=None) -> dict:
    """Run the example; return the validation accuracies and the backend used."""
    args = build_parser().parse_args(argv)
    backend = backendnn.get_backend(args.backend)
    X_train, X_val, y_train, y_val = load_data()
    train_dl = DataLoader(Dataset(X_train, y_train), batch_size=BATCH_SIZE, shuffle=True)
    val_dl = DataLoader(Dataset(X_val, y_val), batch_size=BATCH_SIZE)
    n_inp = X_train.shape[1]

    results = {"backend": backend.name, "epochs": args.epochs}
    rows = []
    print(f"breast cancer: {len(y_train)} train / {len(y_val)} validation samples; "
          f"backend {backend.name}, {args.epochs} epochs, SGD lr={args.lr}, batch {BATCH_SIZE}")

    with backendnn.use_backend(backend):
        backendnn.seed(args.seed)
        name = "logistic network  Linear(30,1)-Sigmoid"
        acc, sec = train(name, [Linear(n_inp, 1), Sigmoid()], train_dl, val_dl,
                         args.epochs, args.lr, args.log_level)
        results["logistic"] = acc
        rows.append((name, acc, sec))

        backendnn.seed(args.seed)
        name = "two-layer network Linear(30,20)-ReLU-Linear(20,1)-Sigmoid"
        acc, sec = train(name, [Linear(n_inp, 20), ReLU(), Linear(20, 1), Sigmoid()],
                         train_dl, val_dl, args.epochs, args.lr, args.log_level)
        results["relu"] = acc
        rows.append((name, acc, sec))

    start = time.perf_counter()
    sk = LogisticRegression(random_state=9).fit(X_train, y_train)
    results["sklearn"] = float(sk.score(X_val, y_val))
    rows.append(("scikit-learn LogisticRegression(random_state=9)", results["sklearn"],
                 time.perf_counter() - start))

    width = max(len(r[0]) for r in rows)
    print(f"{'model'.ljust(width)}  val acc  seconds")
    for name, acc, sec in rows:
        print(f"{name.ljust(width)}  {acc:7.4f}  {sec:7.2f}")
    return results


if __name__ == "__main__":
    main()
