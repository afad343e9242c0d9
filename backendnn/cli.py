"""Command line: `backendnn <verb>` or `python -m backendnn <verb>`."""
from __future__ import annotations

import argparse
import csv
import os
import sys

from . import backends


def _backends_table(args) -> int:
    rows = [("backend", "version", "device", "status")]
    for name in backends.registered():
        try:
            b = backends.get(name)
            rows.append((name, b.version(), str(b.device), "available"))
        except backends.BackendError as e:
            rows.append((name, "-", "-", f"unavailable: {e}"))
        except Exception as e:  # a broken plugin must not hide the others
            rows.append((name, "-", "-", f"failed to load: {type(e).__name__}: {e}"))
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3])
    return 0


def _read_csv(path: str, target):
    """(X rows, y values, feature names) from a CSV file; a first row that is not all
    numbers is the header. `target`: the column name or index of y (default: last)."""
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f) if row]
    if not rows:
        msg = f"{path}: the CSV file is empty"
        raise ValueError(msg)
    header = None
    try:
        [float(v) for v in rows[0]]
    except ValueError:
        header, rows = rows[0], rows[1:]
    width = len(header or rows[0])
    if target is None:
        col = width - 1
    elif header is not None and target in header:
        col = header.index(target)
    else:
        try:
            col = int(target)
        except ValueError:
            msg = f"{path}: no column named {target!r}; columns: {header}"
            raise ValueError(msg) from None
        if not -width <= col < width:
            msg = f"{path}: target column {col} is out of range for {width} columns"
            raise ValueError(msg)
        col %= width
    X, y = [], []
    for n, row in enumerate(rows, start=2 if header else 1):
        if len(row) != width:
            msg = f"{path}, line {n}: {len(row)} fields, expected {width}"
            raise ValueError(msg)
        try:
            values = [float(v) for v in row]
        except ValueError as e:
            msg = f"{path}, line {n}: {e}; every field must be a number"
            raise ValueError(msg) from None
        y.append(values.pop(col))
        X.append(values)
    return X, y


def _read_npz(path: str):
    arrays = backends.load_npz(path)
    for x_key, y_key in (("X", "y"), ("x", "y"), ("data", "target"), ("X", "labels")):
        if x_key in arrays and y_key in arrays:
            return arrays[x_key], arrays[y_key]
    msg = f"{path}: expected arrays 'X' and 'y' in the .npz file, found {sorted(arrays)}"
    raise ValueError(msg)


def _read_data(spec: str, target):
    """(X, y) host arrays of a bundled dataset name or a .csv / .npz file."""
    if spec in ("digits", "breast_cancer"):
        try:
            from sklearn import datasets
        except ImportError as e:
            msg = (f"--data {spec} needs scikit-learn: pip install scikit-learn "
                   "(or 'backendnn[examples]')")
            raise SystemExit(msg) from e
        return getattr(datasets, f"load_{spec}")(return_X_y=True)
    if not os.path.isfile(spec):
        msg = f"--data: {spec!r} is neither 'digits', 'breast_cancer' nor an existing file"
        raise SystemExit(msg)
    if spec.endswith(".npz"):
        return _read_npz(spec)
    if spec.endswith(".csv"):
        return _read_csv(spec, target)
    msg = f"--data: {spec!r} must be a .csv or .npz file"
    raise SystemExit(msg)


def _train(args) -> int:
    """`backendnn train`: read and split the data, then train (data-parallel under an
    MPI launcher: `mpiexec -n 4 backendnn train ...`, `--batch-size` the global batch)."""
    from . import distributed

    comm = distributed.init()
    prepared = _prepare_data(args)
    return _train_model(args, prepared, comm)


class _Prepared:
    """What `_prepare_data` read: the loaders, the task and how features were scaled."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def _prepare_data(args) -> _Prepared:
    """Check the flags, read the data, choose the task and layer sizes, split and scale.
    The same on every rank: the seeded split and order need no communication."""
    from array_api_compat import array_namespace

    from .data import DataLoader, Dataset, StandardScaler

    checks = ((args.epochs >= 0, "--epochs must be >= 0"),
              (args.batch_size >= 1, "--batch-size must be >= 1"),
              (0 <= args.val_fraction < 1, "--val-fraction must be in [0, 1)"))
    for ok, msg in checks:
        if not ok:
            raise SystemExit(f"backendnn train: {msg}")
    backends.seed(args.seed)
    try:
        X, y = _read_data(args.data, args.target)
    except (OSError, ValueError) as e:
        raise SystemExit(f"backendnn train: {e}") from None
    X, y = backends.to_host(X), backends.to_host(y)
    xp = array_namespace(X)
    X = xp.reshape(xp.astype(X, xp.float64), (X.shape[0], -1))
    labels = sorted(set(y.tolist())) if y.ndim == 1 else []
    task = args.task
    if task == "classify" and y.ndim != 1:
        msg = f"backendnn train: --task classify needs one target column, got y of shape {y.shape}"
        raise SystemExit(msg)
    if task == "auto":
        integral = all(float(v).is_integer() for v in labels)
        task = "classify" if labels and integral and len(labels) <= 100 else "regress"
    n_out = len(labels) if task == "classify" else (1 if y.ndim == 1 else y.shape[1])
    try:
        sizes = ([int(v) for v in args.layers.split(",")] if args.layers
                 else [X.shape[1], 32, n_out])
    except ValueError:
        raise SystemExit(f"--layers: expected sizes like 64,32,10, got {args.layers!r}") from None
    if len(sizes) < 2 or sizes[0] != X.shape[1] or min(sizes) < 1:
        msg = (f"--layers: the first size must be the number of input features, "
               f"{X.shape[1]}, and every size positive, got {args.layers!r}")
        raise SystemExit(msg)
    binary = task == "classify" and sizes[-1] == 1 and len(labels) == 2
    if task == "classify" and not binary and sizes[-1] != len(labels):
        msg = (f"--layers: the last size must be the number of classes, {len(labels)} "
               f"(or 1 for two classes), got {sizes[-1]}")
        raise SystemExit(msg)
    if task == "regress" and sizes[-1] != n_out:
        msg = f"--layers: the last size must be the number of targets, {n_out}, got {sizes[-1]}"
        raise SystemExit(msg)
    if task == "classify":
        index = {v: i for i, v in enumerate(labels)}
        y = backends.to_host([index[v] for v in y.tolist()])

    order = backends.host_rng().permutation(X.shape[0])
    n_val = int(round(args.val_fraction * X.shape[0]))
    if n_val >= X.shape[0]:
        msg = (f"backendnn train: --val-fraction {args.val_fraction} leaves no training "
               f"samples of {X.shape[0]}; use a smaller fraction")
        raise SystemExit(msg)
    val, train = order[:n_val], order[n_val:]
    scaler = StandardScaler().fit(X[train])
    X = scaler.transform(X) if args.scale else X
    train_dl = DataLoader(Dataset(X[train], y[train]), batch_size=args.batch_size, shuffle=True)
    val_dl = DataLoader(Dataset(X[val], y[val]), batch_size=512) if n_val else None
    return _Prepared(train_dl=train_dl, val_dl=val_dl, task=task, labels=labels, sizes=sizes,
                     binary=binary, scaler=scaler, n_samples=X.shape[0], n_features=X.shape[1],
                     n_train=len(train), n_val=n_val)


def _train_model(args, data: _Prepared, comm=None) -> int:
    """Build the MLP and optimiser, train on `data`, report, plot and save (rank 0
    prints and writes; every rank trains its part of each batch)."""
    from . import optim
    from .checkpoint import save
    from .losses import BinaryCrossEntropy, CrossEntropy, MeanSquaredError
    from .metrics import accuracy
    from .model import MLP
    from .train import Trainer

    main = comm is None or comm.rank == 0
    say = print if main else (lambda *a, **k: None)
    backend = backends.get_backend(args.backend)
    task, labels, sizes = data.task, data.labels, data.sizes
    if comm is not None and comm.size > args.batch_size:
        msg = (f"backendnn train: --batch-size {args.batch_size} (the global batch) is "
               f"smaller than the number of ranks {comm.size}; use --batch-size >= {comm.size}")
        raise SystemExit(msg)
    if data.binary:
        criterion = BinaryCrossEntropy(backend=backend)
    else:
        criterion = (CrossEntropy if task == "classify" else MeanSquaredError)(backend=backend)
    model = MLP(sizes, args.activation, criterion, backend=backend,
                output_activation="sigmoid" if data.binary else None)
    optimizer_cls = getattr(optim, _OPTIMIZERS[args.optimizer])
    lr = args.lr if args.lr is not None else (0.1 if args.optimizer == "sgd" else None)
    optimizer = optimizer_cls(model, **({} if lr is None else {"lr": lr}))
    metric = accuracy if task == "classify" else None
    trainer = Trainer(model, optimizer, data.train_dl, data.val_dl, metric=metric,
                      progress=args.progress, comm=comm)

    ranks = f", {comm.size} ranks" if comm is not None and comm.size > 1 else ""
    say(f"data {args.data}: {data.n_samples} samples ({data.n_train} train, {data.n_val} "
        f"validation), {data.n_features} features, task {task}"
        + (f", {len(labels)} classes" if task == "classify" else ""))
    say(model.summary())
    say(f"optimizer {optimizer!r}, batch size {args.batch_size}, {args.epochs} epochs{ranks}")
    trainer.train(args.epochs, log_level=args.log_every)
    parts = []
    for name, dl in (("train", data.train_dl), ("validation", data.val_dl)):
        if dl is not None:
            loss, score = trainer.evaluate(dl)
            parts.append(f"{name} loss {loss:.4f}" + (f", accuracy {score:.4f}" if metric else ""))
    say("final: " + " | ".join(parts))
    if args.plot:
        trainer.history.plot(args.plot)
        say(f"plot: {args.plot}")
    if args.save:
        scaler = data.scaler
        extra = {"data": args.data, "task": task, "classes": labels if task == "classify" else None,
                 "scale": ({"mean": scaler.mean_.tolist(), "std": scaler.scale_.tolist()}
                           if args.scale else None)}
        if main:
            save(model, args.save, trainer=trainer, extra=extra)
        if comm is not None:
            comm.barrier()
        say(f"saved: {args.save}")
    return 0


_OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop"}


def _add_train(verbs) -> None:
    from . import optim
    from .model import ACTIVATIONS

    p = verbs.add_parser(
        "train", help="train an MLP on a bundled dataset or a CSV / .npz file",
        description=(
            "Train a multilayer perceptron: Linear layers of the --layers sizes with an "
            "activation between them; integer targets are classes (cross-entropy on the "
            "logits, accuracy), other targets are regressed (mean squared error). Features "
            "are standardised by the training split's statistics."))
    p.add_argument("--data", required=True,
                   help="digits, breast_cancer (scikit-learn), a .csv file (last column or "
                        "--target is y) or a .npz file with arrays X and y")
    p.add_argument("--target", help="CSV: the name or index of the target column (default: last)")
    p.add_argument("--task", choices=("auto", "classify", "regress"), default="auto")
    p.add_argument("--layers", help="sizes from inputs to outputs, e.g. 64,32,10 "
                                    "(default: n_features,32,n_outputs)")
    p.add_argument("--activation", choices=sorted(k for k in ACTIVATIONS if k != "softmax"),
                   default="relu")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--backend", default=None, help="backend name or auto (default: "
                   f"${backends.ENV_VAR} or numpy)")
    p.add_argument("--optimizer", default="sgd",
                   choices=[k for k, v in _OPTIMIZERS.items() if hasattr(optim, v)])
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: 0.1 for "
                   "sgd, else the optimiser's torch default)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="samples per step; under mpiexec, the global batch shared by the ranks")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of the samples held out for validation")
    p.add_argument("--no-scale", dest="scale", action="store_false",
                   help="do not standardise the features")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, weights and batches")
    p.add_argument("--log-every", type=int, default=1, help="print a line every N epochs (0: none)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show the progress bar of each epoch (default: when stderr is a terminal)")
    p.add_argument("--save", help="write the trained model (a resumable checkpoint) here")
    p.add_argument("--plot", help="write the loss and metric curves to this PNG")
    p.set_defaults(func=_train)


def _parity(args) -> int:
    """The parity battery on each named backend (default: each registered one that runs
    here), a table per backend; 1 if any case failed or a named backend cannot run."""
    from . import parity

    failed, verdicts = False, []
    for name in args.backend or backends.registered():
        try:
            backends.get(name)
        except backends.BackendUnavailableError as e:
            failed = failed or bool(args.backend)
            verdicts.append(f"{name} {'NOT RUN' if args.backend else 'skipped'} ({e})")
            continue
        except Exception as e:  # an unknown name, a broken plugin
            failed = True
            verdicts.append(f"{name} FAILED to load ({type(e).__name__}: {e})")
            continue
        report = parity.run(name, components=args.component, seed=args.seed, epochs=args.epochs)
        print(report.format(only_failures=args.failures_only), end="\n\n")
        failed = failed or not report.passed
        verdicts.append(f"{name} {'passed' if report.passed else 'FAILED'}")
    print("parity: " + "; ".join(verdicts))
    return 1 if failed else 0


def _add_parity(verbs) -> None:
    from .parity import COMPONENTS

    p = verbs.add_parser(
        "parity", help="run the backend-parity battery against NumPy float64",
        description=("Compare every layer, loss, optimiser and a whole training run on each "
                     "backend with NumPy float64; check dtypes, devices and moves between "
                     "backends; time a step against a native loop. Exits 1 on any failure."))
    p.add_argument("--backend", action="append", metavar="NAME",
                   help="a backend to check (repeatable; default: every one that runs here)")
    p.add_argument("--component", action="append", choices=COMPONENTS,
                   help="run only this part of the battery (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed of every case's data and weights")
    p.add_argument("--epochs", type=int, default=3, help="epochs of the whole training runs")
    p.add_argument("--failures-only", action="store_true", help="print only the failed cases")
    p.set_defaults(func=_parity)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backendnn", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("backends", help="list registered backends and whether they run here")
    p.set_defaults(func=_backends_table)
    _add_train(verbs)
    _add_parity(verbs)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
