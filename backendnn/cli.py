"""Command line: `backendnn <verb>` or `python -m backendnn <verb>`."""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import traceback
import warnings

from . import backends
from ._table import render


class UsageError(ValueError):
    """A mistake of the user's (a flag, a file, the data): one line on stderr, exit 2."""


def _fail(msg: str):
    raise UsageError(msg)


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
    print(render(rows))
    return 0


def _read_npz(path: str):
    arrays = backends.load_npz(path)
    for x_key, y_key in (("X", "y"), ("x", "y"), ("data", "target"), ("X", "labels")):
        if x_key in arrays and y_key in arrays:
            return arrays[x_key], arrays[y_key], None
    for x_key in ("X", "x", "data"):
        if x_key in arrays:
            return arrays[x_key], None, None
    msg = f"{path}: expected arrays 'X' and 'y' in the .npz file, found {sorted(arrays)}"
    raise ValueError(msg)


def _read_data(spec: str, target, *, with_target: bool = True):
    """(X, y, table) host arrays of a bundled dataset name or a .csv / .npz file
    (table: what read_csv read, with the column names; None for the others)."""
    from .data import read_csv

    if spec in ("digits", "breast_cancer"):
        if importlib.util.find_spec("sklearn") is None:
            _fail(f"--data {spec} needs scikit-learn: pip install scikit-learn "
                  "(or 'backendnn[examples]')")
        from sklearn import datasets

        X, y = getattr(datasets, f"load_{spec}")(return_X_y=True)
        return X, y, None
    if not os.path.isfile(spec):
        _fail(f"--data: {spec!r} is neither 'digits', 'breast_cancer' nor an existing file")
    if spec.endswith(".npz"):
        return _read_npz(spec)
    if spec.endswith(".csv"):
        table = read_csv(spec, target, with_target=with_target)
        return table.X, table.y, table
    _fail(f"--data: {spec!r} must be a .csv or .npz file")


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


# the largest number of distinct integer targets `--task auto` still takes for classes
MAX_AUTO_CLASSES = 20


def _prepare_data(args) -> _Prepared:
    """Check the flags, read the data, choose the task and layer sizes, split and scale.
    The same on every rank: the seeded split and order need no communication."""
    from array_api_compat import array_namespace

    from .data import DataLoader, Dataset, StandardScaler

    checks = ((args.epochs >= 0, "--epochs must be >= 0"),
              (args.batch_size >= 1, "--batch-size must be >= 1"),
              (0 <= args.val_fraction < 1, "--val-fraction must be in [0, 1)"),
              (args.lr is None or args.lr > 0, f"--lr must be a positive number, got {args.lr}"),
              (args.log_every >= 0, "--log-every must be >= 0"),
              (not (args.plot and args.epochs == 0),
               "--plot needs at least one epoch to plot (--epochs 0 given)"))
    for ok, msg in checks:
        if not ok:
            _fail(f"backendnn train: {msg}")
    _check_optional(args)
    backends.get_backend(args.backend)  # a bad name or $BACKENDNN_BACKEND stops here
    backends.seed(args.seed)
    X, y, table = _read_data(args.data, args.target)
    if y is None:
        _fail(f"backendnn train: {args.data} has no targets (y)")
    X, y = backends.to_host(X), backends.to_host(y)
    if X.shape[0] == 0:
        _fail(f"backendnn train: {args.data} holds no samples")
    xp = array_namespace(X)
    X = xp.reshape(xp.astype(X, xp.float64), (X.shape[0], -1))
    text = y.dtype.kind in "USO"
    labels = sorted(set(y.tolist())) if y.ndim == 1 else []
    task, why = args.task, "--task"
    if task == "classify" and y.ndim != 1:
        _fail(f"backendnn train: --task classify needs one target column, got y of shape {y.shape}")
    if text and task == "regress":
        _fail(f"backendnn train: --task regress needs numeric targets; {args.data} has text labels")
    if task == "auto":
        integral = all(float(v).is_integer() for v in labels) if not text else False
        if text:
            task, why = "classify", "auto: the targets are text labels"
        elif labels and integral and len(labels) <= MAX_AUTO_CLASSES:
            task, why = "classify", (f"auto: {len(labels)} distinct integer targets, at most "
                                     f"{MAX_AUTO_CLASSES}")
        else:
            task = "regress"
            why = ("auto: " + (f"{len(labels)} distinct integer targets, more than "
                               f"{MAX_AUTO_CLASSES}" if labels and integral
                               else "non-integer targets"))
    n_out = len(labels) if task == "classify" else (1 if y.ndim == 1 else y.shape[1])
    try:
        sizes = ([int(v) for v in args.layers.split(",")] if args.layers
                 else [X.shape[1], 32, n_out])
    except ValueError:
        _fail(f"--layers: expected sizes like 64,32,10, got {args.layers!r}")
    if len(sizes) < 2 or sizes[0] != X.shape[1] or min(sizes) < 1:
        _fail(f"--layers: the first size must be the number of input features, "
              f"{X.shape[1]}, and every size positive, got {args.layers!r}")
    binary = task == "classify" and sizes[-1] == 1 and len(labels) == 2
    if task == "classify" and not binary and sizes[-1] != len(labels):
        _fail(f"--layers: the last size must be the number of classes, {len(labels)} "
              f"(or 1 for two classes), got {sizes[-1]}")
    if task == "regress" and sizes[-1] != n_out:
        _fail(f"--layers: the last size must be the number of targets, {n_out}, got {sizes[-1]}")
    if task == "classify":
        index = {v: i for i, v in enumerate(labels)}
        y = backends.to_host([index[v] for v in y.tolist()])
    else:
        y = xp.astype(y, xp.float64)

    order = backends.host_rng().permutation(X.shape[0])
    n_val = int(round(args.val_fraction * X.shape[0]))
    if n_val >= X.shape[0]:
        _fail(f"backendnn train: --val-fraction {args.val_fraction} leaves no training "
              f"samples of {X.shape[0]}; use a smaller fraction")
    val, train = order[:n_val], order[n_val:]
    scaler = StandardScaler().fit(X[train])
    X = scaler.transform(X) if args.scale else X
    target_scaler = None
    if task == "regress" and args.scale_target:
        y2 = xp.reshape(y, (y.shape[0], -1))
        target_scaler = StandardScaler().fit(y2[train])
        y = xp.reshape(target_scaler.transform(y2), y.shape)
    train_dl = DataLoader(Dataset(X[train], y[train]), batch_size=args.batch_size, shuffle=True)
    val_dl = DataLoader(Dataset(X[val], y[val]), batch_size=512) if n_val else None
    return _Prepared(train_dl=train_dl, val_dl=val_dl, task=task, why=why, labels=labels,
                     sizes=sizes, binary=binary, scaler=scaler, target_scaler=target_scaler,
                     n_samples=X.shape[0], n_features=X.shape[1], n_train=len(train),
                     n_val=n_val, table=table)


def _check_optional(args) -> None:
    """Stop before training when a flag needs a package that is not installed."""
    needs = (("save", "safetensors", "io", "--save writes safetensors files"),
             ("plot", "matplotlib", "plot", "--plot draws with matplotlib"))
    for flag, module, extra, what in needs:
        if getattr(args, flag, None) and importlib.util.find_spec(module) is None:
            _fail(f"backendnn train: {what}, which is not installed: pip install "
                  f"'backendnn[{extra}]' (or pip install {module})")


def _in_units(fn, scaler, backend):
    """`fn` on predictions and targets put back in the targets' own units."""
    mean = backend.asarray(backends.to_host(scaler.mean_), dtype="float32")
    scale = backend.asarray(backends.to_host(scaler.scale_), dtype="float32")

    def metric(y_hat, y):
        xp = backend.xp
        y = xp.reshape(xp.astype(y, y_hat.dtype), y_hat.shape)
        return fn(y_hat * scale + mean, y * scale + mean)

    metric.__name__ = fn.__name__
    return metric


def _train_model(args, data: _Prepared, comm=None) -> int:
    """Build the MLP and optimiser, train on `data`, report, plot and save (rank 0
    prints and writes; every rank trains its part of each batch)."""
    from . import optim
    from .checkpoint import save
    from .data import check_global_batch
    from .losses import BinaryCrossEntropy, CrossEntropy, MeanSquaredError
    from .metrics import accuracy, mae, r2, rmse
    from .model import MLP
    from .train import Trainer

    main = comm is None or comm.rank == 0
    say = print if main else (lambda *a, **k: None)
    backend = backends.get_backend(args.backend)
    task, labels, sizes = data.task, data.labels, data.sizes
    if comm is not None:
        try:
            check_global_batch("backendnn train: --batch-size", args.batch_size, comm.size)
        except ValueError as e:
            _fail(str(e))
    if data.binary:
        criterion = BinaryCrossEntropy(backend=backend)
    else:
        criterion = (CrossEntropy if task == "classify" else MeanSquaredError)(backend=backend)
    model = MLP(sizes, args.activation, criterion, backend=backend,
                output_activation="sigmoid" if data.binary else None)
    optimizer_cls = getattr(optim, _OPTIMIZERS[args.optimizer])
    lr = args.lr if args.lr is not None else (0.1 if args.optimizer == "sgd" else None)
    optimizer = optimizer_cls(model, **({} if lr is None else {"lr": lr}))
    if task == "classify":
        metric = {"accuracy": accuracy}
    elif data.target_scaler is not None:
        metric = {f.__name__: _in_units(f, data.target_scaler, backend) for f in (rmse, mae, r2)}
    else:
        metric = {"rmse": rmse, "mae": mae, "r2": r2}
    trainer = Trainer(model, optimizer, data.train_dl, data.val_dl, metric=metric,
                      progress=args.progress, comm=comm)

    ranks = f", {comm.size} ranks" if comm is not None and comm.size > 1 else ""
    say(f"data {args.data}: {data.n_samples} samples ({data.n_train} train, {data.n_val} "
        f"validation), {data.n_features} features, task {task}"
        + (f", {len(labels)} classes" if task == "classify" else "") + f" ({data.why})")
    if data.target_scaler is not None:
        say("targets standardised by the training split (mean "
            f"{_short(data.target_scaler.mean_)}, std {_short(data.target_scaler.scale_)}): "
            "losses are in standard units, rmse and mae in the targets' own")
    say(model.summary())
    say(f"optimizer {optimizer!r}, batch size {args.batch_size}, {args.epochs} epochs{ranks}")
    trainer.train(args.epochs, log_level=args.log_every)
    parts = []
    for name, dl in (("train", data.train_dl), ("validation", data.val_dl)):
        if dl is not None:
            scores = trainer.evaluate_metrics(dl)
            parts.append(f"{name} loss {scores.pop('loss'):.4f}" + "".join(
                f", {k} {v:.4f}" for k, v in scores.items()))
    say("final: " + " | ".join(parts))
    if args.plot:
        trainer.history.plot(args.plot)
        say(f"plot: {args.plot}")
    if args.save:
        if main:
            save(model, args.save, trainer=trainer, extra=_recipe(args, data))
        if comm is not None:
            comm.barrier()
        say(f"saved: {args.save}")
    return 0


def _short(values) -> str:
    values = backends.to_host(values).tolist()
    return ", ".join(f"{v:.4g}" for v in values) if len(values) > 1 else f"{values[0]:.4g}"


def _recipe(args, data) -> dict:
    """What `backendnn predict` needs to apply what training applied, JSON-able."""
    def scale(scaler):
        if scaler is None:
            return None
        return {"mean": backends.to_host(scaler.mean_).tolist(),
                "std": backends.to_host(scaler.scale_).tolist()}

    table = data.table
    return {"data": args.data, "task": data.task,
            "classes": data.labels if data.task == "classify" else None,
            "binary": data.binary,
            "scale": scale(data.scaler) if args.scale else None,
            "target_scale": scale(data.target_scaler),
            "features": table.feature_names if table is not None else None,
            "target": table.target_name if table is not None else None,
            "n_features": data.n_features}


def _predict(args) -> int:
    """`backendnn predict`: apply a model saved by `train --save` to new data, with the
    same feature scaling, target units and class labels; CSV out."""
    from array_api_compat import array_namespace

    from .checkpoint import load, read_metadata

    if importlib.util.find_spec("safetensors") is None:
        _fail("backendnn predict: reading models needs safetensors, which is not installed: "
              "pip install 'backendnn[io]'")
    if not os.path.isfile(args.model):
        _fail(f"--model: {args.model!r} is not an existing file")
    recipe = read_metadata(args.model).get("extra") or {}
    if "task" not in recipe:
        _fail(f"backendnn predict: {args.model} was not written by `backendnn train --save` "
              "(no feature scaling or classes recorded); use Sequential.predict in Python")
    model = load(args.model, backend=args.backend)
    X, _, table = _read_data(args.data, recipe.get("target"), with_target=False)
    X = backends.to_host(X)
    xp = array_namespace(X)
    X = xp.reshape(xp.astype(X, xp.float64), (X.shape[0], -1))
    want = recipe.get("n_features")
    if want is not None and X.shape[1] != want:
        names = recipe.get("features")
        _fail(f"backendnn predict: {args.data} has {X.shape[1]} feature columns, the model "
              f"takes {want}" + (f" ({', '.join(names)})" if names else ""))
    if recipe.get("scale"):
        X = (X - xp.asarray(recipe["scale"]["mean"])) / xp.asarray(recipe["scale"]["std"])
    out = model.predict(X, batch_size=args.batch_size)
    header, rows = _predictions(recipe, out)
    lines = [",".join(header)] + [",".join(_cell(v) for v in row) for row in rows]
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        print(f"predictions: {args.out} ({len(rows)} rows)")
    else:
        sys.stdout.write(text)
    return 0


def _predictions(recipe, out):
    """(header, rows) of the prediction CSV: the class (as in the training CSV) and its
    probability, or the regressed values in the targets' own units."""
    import math

    target = recipe.get("target") or "prediction"
    if recipe["task"] == "classify":
        classes = recipe["classes"]
        rows = []
        for o in out.tolist():
            if recipe.get("binary"):
                p1 = o[0]
                k, p = (1, p1) if p1 > 0.5 else (0, 1 - p1)
            else:
                top = max(o)
                e = [math.exp(v - top) for v in o]
                k = max(range(len(o)), key=o.__getitem__)
                p = e[k] / sum(e)
            rows.append((classes[k], p))
        return [target, "probability"], rows
    values = out.tolist()
    ts = recipe.get("target_scale")
    if ts:
        values = [[v * s + m for v, s, m in zip(row, ts["std"], ts["mean"])] for row in values]
    names = [target] if len(values[0]) == 1 else [f"{target}_{k}" for k in range(len(values[0]))]
    return names, values


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.7g}"
    text = str(v)
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


_OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop"}


def _add_train(verbs) -> None:
    from . import optim
    from .model import ACTIVATIONS

    p = verbs.add_parser(
        "train", help="train an MLP on a bundled dataset or a CSV / .npz file",
        description=(
            "Train a multilayer perceptron: Linear layers of the --layers sizes with an "
            "activation between them. --task auto: text labels, and integer targets with at "
            f"most {MAX_AUTO_CLASSES} distinct values, are classes (cross-entropy on the "
            "logits, accuracy); other targets are regressed (mean squared error on "
            "targets standardised by the training split; rmse, mae and r2 reported in the "
            "targets' own units). The choice is printed. Features are standardised by the "
            "training split's statistics. --save keeps all of it with the model, for "
            "`backendnn predict`."))
    p.add_argument("--data", required=True,
                   help="digits, breast_cancer (scikit-learn), a .csv file (last column or "
                        "--target is y) or a .npz file with arrays X and y")
    p.add_argument("--target", help="CSV: the name or index of the target column (default: last)")
    p.add_argument("--task", choices=("auto", "classify", "regress"), default="auto",
                   help=f"auto (default): classify text labels and integer targets with at "
                        f"most {MAX_AUTO_CLASSES} distinct values, else regress")
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
    p.add_argument("--no-scale-target", dest="scale_target", action="store_false",
                   help="regression: do not standardise the targets")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, weights and batches")
    p.add_argument("--log-every", type=int, default=1, help="print a line every N epochs (0: none)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show the progress bar of each epoch (default: when stderr is a terminal)")
    p.add_argument("--save", help="write the trained model (a resumable checkpoint, with "
                   "the scaling and class labels predict needs) here; needs "
                   "'backendnn[io]' (safetensors)")
    p.add_argument("--plot", help="write the loss and metric curves to this PNG; needs "
                   "'backendnn[plot]' (matplotlib)")
    _add_debug(p)
    p.set_defaults(func=_train)


def _add_debug(p) -> None:
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the full traceback of an error")


def _add_predict(verbs) -> None:
    p = verbs.add_parser(
        "predict", help="apply a model saved by `train --save` to a CSV / .npz file",
        description=("Predict with a model saved by `backendnn train --save`: the features "
                     "are scaled as in training; classes come back as they were in the "
                     "training CSV (text or numbers) with their probability; regressed "
                     "values in the targets' own units. A column named like the training "
                     "target is ignored. Writes CSV to --out, or to stdout."))
    p.add_argument("--model", required=True, help="a .safetensors file from train --save")
    p.add_argument("--data", required=True, help="a .csv (features, with or without the "
                   "target column) or .npz (array X) file")
    p.add_argument("--out", help="write the predictions here (default: stdout)")
    p.add_argument("--backend", default=None, help="backend name or auto")
    p.add_argument("--batch-size", type=int, default=4096, help="samples per forward pass")
    _add_debug(p)
    p.set_defaults(func=_predict)


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
    _add_predict(verbs)
    _add_parity(verbs)
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error")
    return parser


# a user's mistake (a flag, a file, the data, the environment) is one line and exit 2
_USER_ERRORS = (UsageError, ValueError, TypeError, OSError, ImportError, FloatingPointError,
                KeyError, backends.BackendError)


def main(argv=None) -> int:
    """Run one verb; an error is one line on stderr (exit 2 for a user's mistake, 1
    for anything else), or its traceback with --debug."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            if not getattr(args, "debug", False):  # a diverging run is reported once, below
                warnings.filterwarnings("ignore", r"(overflow|invalid value|divide by zero)",
                                        RuntimeWarning)
            return args.func(args)
    except Exception as e:
        if getattr(args, "debug", False):
            raise
        prog = f"backendnn {getattr(args, 'verb', '')}".strip()
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, KeyError):
            text = str(e.args[0]) if e.args else text
        if isinstance(e, UsageError):
            print(f"{text if text.startswith('backendnn') else prog + ': ' + text}",
                  file=sys.stderr)
            return 2
        if isinstance(e, _USER_ERRORS):
            print(f"{prog}: error: {text}", file=sys.stderr)
            return 2
        print(f"{prog}: internal error: {type(e).__name__}: {text} (run again with --debug "
              "for the traceback, and report it)", file=sys.stderr)
        if os.environ.get("BACKENDNN_DEBUG"):
            traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
