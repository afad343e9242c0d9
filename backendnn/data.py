"""Datasets, batches and scaling: host arrays in, batches on the model's backend out."""
from __future__ import annotations

import math

from array_api_compat import array_namespace

from ._validate import integer
from .backends import get_backend, to_host


class Dataset:
    """Features X and targets y, kept on the host; moved to a backend once per
    (backend, dtype) and indexed there.

    Shape: X (n, ...), y (n,) or (n, k). Integer targets (class labels) stay
    integer; float targets take the model's dtype.
    Checked once, here: equal lengths and finite features.

    Attributes: label_range, (smallest, largest) integer target, read here from the
    host data (None for float targets or no samples): the Trainer checks it against
    the model's outputs instead of reading every batch's labels back from the device.
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
        self.label_range = None
        if self._y_integer and y.shape[0]:
            self.label_range = (int(yp.min(y)), int(yp.max(y)))
        self.X, self.y = X, y
        self._cache: dict = {}

    def __len__(self) -> int:
        return self.X.shape[0]

    def __getitem__(self, i):
        return self.X[i], self.y[i]

    def on(self, backend, dtype: str = "float32"):
        """(X, y) on `backend`, X cast to `dtype`; moved once and cached."""
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

    Yields: (x (batch, ...), y (batch, ...)) arrays of the backend.
    """

    def __init__(self, dataset: Dataset, batch_size: int = 32, shuffle: bool = False,
                 drop_last: bool = False, *, backend=None, dtype: str = "float32"):
        if not isinstance(dataset, Dataset):
            dataset = Dataset(*dataset)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            msg = f"DataLoader: `batch_size` must be a positive int, got {batch_size!r}"
            raise ValueError(msg)
        self.dataset, self.batch_size = dataset, batch_size
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.backend, self.dtype = backend, dtype

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
        order = backend.asarray(backend.permutation(n)) if self.shuffle else None
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
        if self.batch_size < size:
            msg = (f"DataLoader: the global `batch_size` {self.batch_size} is smaller than "
                   f"the number of ranks {size}: every rank needs a part of each batch; "
                   f"use batch_size >= {size} or fewer ranks")
            raise ValueError(msg)
        return rank, size

    def __repr__(self):
        return (f"DataLoader({self.dataset!r}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last})")


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
