"""Datasets, batches and scaling: host arrays in, batches on the model's backend out."""
from __future__ import annotations

import math

from array_api_compat import array_namespace

from ._validate import integer
from .backends import get_backend, host_rng, to_host


class Dataset:
    """Features X and targets y, kept on the host; moved to a backend once per
    (backend, dtype) and indexed there.

    Shape: X (n, ...), y (n,) or (n, k). Integer targets (class labels) stay
    integer; float targets take the model's dtype.
    Checked once, here: equal lengths and finite features.

    Attributes: label_range, (smallest, largest) integer target, read here from the
    host data (None for float targets or no samples): the Trainer checks it against
    the model's outputs instead of reading every batch's labels back from the device.
    target_range: (smallest, largest) target as floats, for any numeric targets (the
    Trainer lets BinaryCrossEntropy skip its per-batch range check when it is in [0, 1]).
    """

    def __init__(self, X, y):
        X, y = to_host(X), to_host(y)
        if X.ndim < 1 or y.ndim < 1 or X.shape[0] != y.shape[0]:
            msg = (
                f"Dataset: X and y must have the same number of samples, got X {X.shape} "
                f"and y {y.shape}"
            )
            raise ValueError(msg)
        xp = array_namespace(X)
        if xp.isdtype(X.dtype, "real floating"):
            finite = xp.all(xp.reshape(xp.isfinite(X), (X.shape[0], math.prod(X.shape[1:]))), axis=1)
            if not bool(xp.all(finite)):
                rows = [int(i) for i in xp.nonzero(~finite)[0][:5]]
                msg = f"Dataset: X holds NaN or infinite values (rows {rows}...); clean or impute them first"
                raise ValueError(msg)
        elif not xp.isdtype(X.dtype, ("integral", "bool")):
            msg = f"Dataset: X must be numeric, got dtype {X.dtype}"
            raise TypeError(msg)
        yp = array_namespace(y)
        self._y_integer = yp.isdtype(y.dtype, "integral")
        self.label_range = self.target_range = None
        if self._y_integer and y.shape[0]:
            self.label_range = (int(yp.min(y)), int(yp.max(y)))
        if y.shape[0] and yp.isdtype(y.dtype, ("integral", "real floating", "bool")):
            self.target_range = (float(yp.min(y)), float(yp.max(y)))
        self.X, self.y = X, y
        self._cache: dict = {}

    def __len__(self) -> int:
        return self.X.shape[0]

    def __getitem__(self, i):
        return self.X[i], self.y[i]

    def on(self, backend, dtype: str = "float32"):
        """(X, y) on `backend`, X cast to `dtype`; moved once and cached."""
        check_training_dtype("Dataset", dtype)
        backend = get_backend(backend)
        key = (backend.name, dtype)
        if key not in self._cache:
            y_dtype = "int64" if self._y_integer else dtype
            self._cache[key] = (backend.asarray(self.X, dtype=dtype),
                                backend.asarray(self.y, dtype=y_dtype))
        return self._cache[key]

    def __repr__(self):
        return f"Dataset(X {self.X.shape} {self.X.dtype}, y {self.y.shape} {self.y.dtype})"


class DataLoader:
    """Mini-batches of a Dataset on a backend.

    Args:
        dataset: a `Dataset`.
        batch_size: samples per batch; the last batch may be smaller unless drop_last.
        shuffle: a new order each epoch from the seeded host generator, the same
            on every backend.
        backend, dtype: where batches go; default: the current backend, float32.
            `Trainer` sends them to its model's backend and dtype.
        generator: this loader's own random stream for shuffling: an int seed, or a
            NumPy `Generator`; default: the seeded host generator (`backendnn.seed`)
            shared by everything. Two loaders with their own generators (two models
            trained at once in two threads) each shuffle the same way every run.

    Yields: (x (batch, ...), y (batch, ...)) arrays of the backend.
    """

    def __init__(self, dataset: Dataset, batch_size: int = 32, shuffle: bool = False,
                 drop_last: bool = False, *, backend=None, dtype: str = "float32",
                 generator=None):
        if not isinstance(dataset, Dataset):
            dataset = Dataset(*dataset)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            msg = f"DataLoader: `batch_size` must be a positive int, got {batch_size!r}"
            raise ValueError(msg)
        check_training_dtype("DataLoader", dtype)
        self.dataset, self.batch_size = dataset, batch_size
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.backend, self.dtype = backend, dtype
        self.generator = _generator(generator)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        return self.batches(self.backend, self.dtype)

    def batches(self, backend=None, dtype: str | None = None, *, shard=None):
        """Iterate over the batches of one epoch on `backend` in `dtype`.

        `shard=(rank, size)`: yield only rank's part of each batch, rows
        [rank * b // size, (rank + 1) * b // size) of a batch of b (parts differ by
        at most one row; a last batch smaller than `size` leaves some parts empty).
        Every rank draws the same seeded order, so the parts of all ranks together
        are exactly the one-process batches: `batch_size` stays the global batch."""
        backend = get_backend(backend)
        rank, size = self._shard(shard)
        X, y = self.dataset.on(backend, dtype or self.dtype)
        xp, n, bs = backend.xp, len(self.dataset), self.batch_size
        stop = n - n % bs if self.drop_last else n
        order = None
        if self.shuffle:
            perm = backend.permutation(n) if self.generator is None else \
                self.generator.permutation(n)
            order = backend.asarray(perm)
        for i in range(0, stop, bs):
            j = min(i + bs, n)
            if size > 1:
                i, j = i + rank * (j - i) // size, i + (rank + 1) * (j - i) // size
            if order is not None:
                idx = order[i:j]
                yield xp.take(X, idx, axis=0), xp.take(y, idx, axis=0)
            else:
                yield X[i:j, ...], y[i:j, ...]

    def batch_sizes(self) -> list[int]:
        """The size of each (global) batch of an epoch, in order."""
        n, bs = len(self.dataset), self.batch_size
        stop = n - n % bs if self.drop_last else n
        return [min(bs, n - i) for i in range(0, stop, bs)]

    def _shard(self, shard) -> tuple[int, int]:
        if shard is None:
            return 0, 1
        rank, size = (integer("DataLoader.batches", f"shard[{k}]", v, minimum=m)
                      for k, (v, m) in enumerate(zip(shard, (0, 1))))
        if rank >= size:
            msg = f"DataLoader.batches: `shard` rank {rank} must be below the size {size}"
            raise ValueError(msg)
        check_global_batch("DataLoader", self.batch_size, size)
        return rank, size

    def __repr__(self):
        return (f"DataLoader({self.dataset!r}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last})")


def _generator(generator):
    """None, or a host generator with `permutation(n)` (an int seeds a new one of the
    host generator's kind)."""
    if generator is None or hasattr(generator, "permutation"):
        return generator
    seed = integer("DataLoader", "generator", generator, minimum=0)
    host = host_rng()
    return type(host)(type(host.bit_generator)(seed))


def check_global_batch(owner: str, batch_size: int, ranks: int) -> None:
    """ValueError when a global batch is too small to give each of `ranks` a part."""
    if batch_size < ranks:
        msg = (f"{owner}: the global batch size {batch_size} is smaller than the number of "
               f"ranks {ranks}: every rank needs a part of each batch; use a batch size "
               f">= {ranks} or fewer ranks")
        raise ValueError(msg)


TRAINING_DTYPES = ("float32", "float64")


def check_training_dtype(owner: str, dtype) -> None:
    """TypeError for a dtype backendnn does not train in (float16, bfloat16)."""
    name = dtype if isinstance(dtype, str) else str(dtype).rsplit(".", 1)[-1]
    if name in ("float16", "bfloat16"):
        msg = (f"{owner}: dtype {name} is not supported: backendnn trains in float32 or "
               f"float64 (half precision needs float32 master weights and loss scaling, "
               f"which it does not do yet); use dtype='float32'")
        raise TypeError(msg)


class StandardScaler:
    """Per-feature (x - mean) / std, fitted on training data only.

    Works on arrays of any Array API library; a constant feature gets std 1.
    Shape: X (n, n_features).
    """

    def fit(self, X):
        xp = array_namespace(X)
        self.mean_ = xp.mean(X, axis=0)
        std = xp.std(X, axis=0)
        self.scale_ = xp.where(std > 0, std, xp.ones_like(std))
        return self

    def transform(self, X):
        if not hasattr(self, "mean_"):
            msg = "StandardScaler.transform() called before fit(): fit on the training data first"
            raise RuntimeError(msg)
        return (X - self.mean_) / self.scale_

    def fit_transform(self, X):
        return self.fit(X).transform(X)


def normalize(X_train, *others):
    """Scale X_train and every other array by X_train's per-feature mean and std.

    As in seed 000, float arrays are scaled in place and returned
    (`X_train, X_val = normalize(X_train, X_val)`).
    """
    scaler = StandardScaler().fit(X_train)
    out = []
    for X in (X_train, *others):
        xp = array_namespace(X)
        if not xp.isdtype(X.dtype, "real floating"):
            msg = f"normalize: expected a float array, got dtype {X.dtype}; cast it first (e.g. X.astype(float))"
            raise TypeError(msg)
        X[...] = scaler.transform(X)
        out.append(X)
    return tuple(out)


# --- CSV files -----------------------------------------------------------------------

class Table:
    """What `read_csv` read: X (n, d) float64 host array; y (n,) host array (float64,
    or str for text labels) or None; feature_names and target_name (None without a
    header); target_index (the column of y, None without one)."""

    def __init__(self, X, y, feature_names, target_name, target_index):
        self.X, self.y = X, y
        self.feature_names, self.target_name = feature_names, target_name
        self.target_index = target_index


def read_csv(path, target=None, *, with_target: bool = True) -> Table:
    """Read a CSV of numbers (and, in the target column, text labels) fast: pandas'
    reader when pandas is installed, else NumPy's C reader (`loadtxt`).

    A first row with a field that is not a number, where the second row has one
    (or with no number at all), is the header. `target`: the name or index of the
    target column (default: the last). With `with_target=False` (prediction) every
    column is a feature, except a column named `target` in the header.

    Errors (ValueError) name the file and the line as an editor shows it (1-based,
    the header counted): a wrong number of fields, a missing value, NaN or infinity,
    text in a feature column, a file without data rows.
    """
    import csv

    path = str(path)
    with open(path, newline="") as f:
        head = [row for _, row in zip(range(2), (r for r in csv.reader(f) if r))]
    if not head:
        msg = f"{path}: the CSV file is empty"
        raise ValueError(msg)
    first = head[0]
    second = head[1] if len(head) > 1 else None
    numeric = [_is_number(v) for v in first]
    header = not any(numeric) or (second is not None and any(
        not a and i < len(second) and _is_number(second[i]) for i, a in enumerate(numeric)))
    width = len(first)
    names = [v.strip() for v in first] if header else None
    if header and second is None:
        msg = f"{path}: the CSV file has a header but no data rows"
        raise ValueError(msg)
    col = _target_column(path, target, names, width, with_target)
    features = [i for i in range(width) if i != col]
    X, y = _parse(path, header, width, features, col)
    if X is None:
        _diagnose(path, header, width, features, col)  # raises with the line
        msg = f"{path}: cannot read the CSV file (not a table of numbers)"
        raise ValueError(msg)
    host = _host()
    bad_rows = ~host.all(host.isfinite(X), axis=1)
    if y is not None and y.dtype.kind == "f":
        bad_rows |= ~host.isfinite(y)
    if bad_rows.any():
        _diagnose(path, header, width, features, col)
        msg = f"{path}: NaN or infinite values in the CSV file"
        raise ValueError(msg)
    return Table(X, y, [names[i] for i in features] if names else None,
                 names[col] if names and col is not None else None, col)


def _host():
    """The host array namespace (NumPy, through its backend: the core imports no
    array library itself), for reading files."""
    return get_backend("numpy").xp


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _target_column(path, target, names, width, with_target):
    if not with_target:
        if target is not None and names and target in names:
            return names.index(target)
        return None
    if target is None:
        return width - 1
    if names is not None and target in names:
        return names.index(target)
    try:
        col = int(target)
    except (TypeError, ValueError):
        msg = f"{path}: no column named {target!r}; columns: {names}"
        raise ValueError(msg) from None
    if not -width <= col < width:
        msg = f"{path}: target column {col} is out of range for {width} columns"
        raise ValueError(msg)
    return col % width


def _parse(path, header, width, features, col):
    """(X, y) by a C reader, or (None, None) when the file is not a clean table."""
    host = _host()
    try:
        import pandas as pd
    except ImportError:
        pd = None
    if pd is not None:
        try:
            df = pd.read_csv(path, header=0 if header else None, skip_blank_lines=True,
                             low_memory=False)
            if df.shape[1] != width:
                return None, None
            X = df.iloc[:, features].to_numpy(dtype="float64")
            y = None
            if col is not None:
                s = df.iloc[:, col]
                y = s.to_numpy(dtype="float64") if s.dtype.kind in "iufb" else \
                    s.astype(str).to_numpy(dtype=str)
            return X, y
        except (ValueError, TypeError, pd.errors.ParserError):
            return None, None
    kw = {"delimiter": ",", "skiprows": 1 if header else 0, "comments": None, "ndmin": 2,
          "quotechar": "\""}
    try:
        data = host.loadtxt(path, dtype="float64", **kw)
        if data.shape[1] != width:
            return None, None
        return data[:, features], (data[:, col] if col is not None else None)
    except ValueError:
        if col is None:
            return None, None
    try:  # text labels: the features as numbers, the target as text
        X = host.loadtxt(path, dtype="float64", usecols=features, **kw)
        y = host.loadtxt(path, dtype=str, usecols=[col], **kw).reshape(-1)
        return X, y
    except ValueError:
        return None, None


def _diagnose(path, header, width, features, col) -> None:
    """Find the first bad line the slow way, and raise a ValueError naming it."""
    import csv

    names = None
    with open(path, newline="") as f:
        reader = csv.reader(f)
        for row in reader:
            line = reader.line_num
            if not row:
                continue
            if header and names is None:
                names = row
                continue
            if len(row) != width:
                msg = f"{path}, line {line}: {len(row)} fields, expected {width}"
                raise ValueError(msg)
            for i, value in enumerate(row):
                where = f"{path}, line {line}, column {i + 1}" + (
                    f" ({names[i].strip()!r})" if names else "")
                text = value.strip()
                if i == col and not _is_number(text) and text:
                    continue  # a text label
                if not text:
                    msg = f"{where}: missing value (empty field); fill it in or drop the row"
                    raise ValueError(msg)
                if not _is_number(text):
                    msg = f"{where}: {text!r} is not a number; every feature must be numeric"
                    raise ValueError(msg)
                number = float(text)
                if number != number or number in (float("inf"), float("-inf")):
                    msg = f"{where}: {text!r}; clean or impute it (NaN and infinity are refused)"
                    raise ValueError(msg)
