"""Callbacks the `Trainer` calls around each epoch: early stopping, checkpoints, a CSV
log, and `LayerStats`, which records what every layer does.

    trainer = Trainer(model, opt, train_dl, val_dl, metric=accuracy, callbacks=[
        EarlyStopping(patience=5), ModelCheckpoint("best.safetensors"),
        CSVLogger("history.csv"), LayerStats()])

Each epoch-end hook gets the epoch's history row (`logs`: epoch, loss, val_loss,
val_accuracy, ...) after `trainer.epoch` has moved on to the next epoch, so a
checkpoint written there resumes at the next epoch. Values are read from the
device once per epoch, never per batch.
"""
from __future__ import annotations

import csv
import math
import os

from ._table import render
from .data import Dataset
from .layers import ReLU

__all__ = ["Callback", "EarlyStopping", "ModelCheckpoint", "CSVLogger", "LayerStats"]


class Callback:
    """Hooks called by `Trainer.train`; override the ones you need.

    Setting `trainer.stop_training = True` ends training after the current epoch.
    """

    def on_train_begin(self, trainer) -> None:
        """Before the first epoch of a `train` call."""

    def on_epoch_begin(self, trainer, epoch: int) -> None:
        """Before epoch `epoch` (counted from 0 over the trainer's life)."""

    def on_epoch_end(self, trainer, logs: dict) -> None:
        """After an epoch, its history row in `logs` (already in `trainer.history`)."""

    def on_train_end(self, trainer) -> None:
        """After the last epoch of a `train` call, early stop or not."""


_HIGHER_IS_BETTER = ("acc", "metric", "f1", "auc", "precision", "recall", "r2")


class _Monitor(Callback):
    """Shared by callbacks that watch one value of the history row."""

    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0):
        if mode not in ("auto", "min", "max"):
            msg = f"{type(self).__name__}: `mode` must be 'auto', 'min' or 'max', got {mode!r}"
            raise ValueError(msg)
        if not isinstance(min_delta, (int, float)) or isinstance(min_delta, bool) or min_delta < 0:
            msg = f"{type(self).__name__}: `min_delta` must be a number >= 0, got {min_delta!r}"
            raise ValueError(msg)
        if mode == "auto":
            mode = "max" if any(w in monitor for w in _HIGHER_IS_BETTER) else "min"
        self.monitor, self.mode, self.min_delta = monitor, mode, float(min_delta)
        self.best = None

    def _value(self, logs: dict, trainer=None) -> float:
        if self.monitor == "val_metric" and getattr(trainer, "metric", False) is None:
            msg = (f"{type(self).__name__}: monitors 'val_metric', but the Trainer has no "
                   "metric: pass metric= to the Trainer (then monitor e.g. 'val_accuracy'), or "
                   "monitor 'val_loss'")
            raise ValueError(msg)
        if self.monitor == "val_metric" and self.monitor not in logs:
            named = [k for k in logs if k.startswith("val_") and k != "val_loss"]
            if len(named) == 1:  # the name of earlier versions for the one metric
                return float(logs[named[0]])
        if self.monitor not in logs:
            hint = " (pass a validation loader to the Trainer)" if self.monitor.startswith("val_") else ""
            msg = (
                f"{type(self).__name__}: monitored value {self.monitor!r} is not in the "
                f"history row; available: {sorted(logs)}{hint}"
            )
            raise ValueError(msg)
        return float(logs[self.monitor])

    def _improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


class EarlyStopping(_Monitor):
    """Stop training when `monitor` has not improved for `patience` epochs.

    Args:
        monitor: a key of the history row ("val_loss", "val_accuracy", "loss", ...;
            "val_metric" finds the one validation metric whatever its name).
        patience: epochs without improvement before stopping.
        min_delta: the least change that counts as an improvement.
        mode: "min", "max", or "auto" (max for accuracy, f1, auc, precision, recall,
            r2 and "val_metric"; else min).
        restore_best_weights: on stopping, put back the weights and buffers (running
            statistics) of the best epoch (kept as device copies, no host transfer).

    Attributes: best, best_epoch, stopped_epoch (None unless it stopped training).
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 mode: str = "auto", restore_best_weights: bool = False):
        super().__init__(monitor, mode, min_delta)
        if not isinstance(patience, int) or isinstance(patience, bool) or patience < 0:
            msg = f"EarlyStopping: `patience` must be a non-negative int, got {patience!r}"
            raise ValueError(msg)
        self.patience, self.restore_best_weights = patience, bool(restore_best_weights)
        self.on_train_begin(None)

    def on_train_begin(self, trainer):
        self.best = self.best_epoch = self.stopped_epoch = None
        self.wait = 0
        self._weights = None

    def on_epoch_end(self, trainer, logs):
        value = self._value(logs, trainer)
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, logs.get("epoch"), 0
            if self.restore_best_weights:
                self._weights = _snapshot(trainer.model)
            return
        self.wait += 1
        if self.wait >= self.patience:
            trainer.stop_training = True
            self.stopped_epoch = logs.get("epoch")
            if self._weights is not None:
                trainer.model.load_state_dict(self._weights)

    def __repr__(self):
        return (f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, "
                f"min_delta={self.min_delta}, mode={self.mode!r})")


class ModelCheckpoint(_Monitor):
    """Save a resumable checkpoint (model, optimiser, trainer, RNG) at epoch ends.

    Args:
        path: the file; may hold format fields of the history row,
            e.g. "ckpt-{epoch:03d}.safetensors".
        monitor, mode: what "best" means (as in `EarlyStopping`).
        save_best_only: save only when `monitor` improves (default); False saves
            every epoch.

    Attributes: best, last_path (the file written last, or None).

    Data-parallel (`Trainer(comm=...)`): rank 0 alone writes, then every rank waits
    for the file (a barrier), so any rank may load it; last_path is set on every rank.
    """

    def __init__(self, path, monitor: str = "val_loss", save_best_only: bool = True,
                 mode: str = "auto"):
        super().__init__(monitor, mode)
        self.path, self.save_best_only = os.fspath(path), bool(save_best_only)
        self.last_path = None

    def on_train_begin(self, trainer):
        """A trainer resumed from a checkpoint brings its history: the best value so far
        comes from it, so the first resumed epoch does not overwrite a better file."""
        if self.best is None and self.save_best_only:
            for row in trainer.history:
                value = row.get(self.monitor)
                if isinstance(value, (int, float)) and self._improved(float(value)):
                    self.best = float(value)

    def on_epoch_end(self, trainer, logs):
        from .checkpoint import save

        if self.save_best_only:
            value = self._value(logs, trainer)
            if not self._improved(value):
                return
            self.best = value
        path = self.path.format(**logs)
        if getattr(trainer, "is_main", True):
            save(trainer.model, path, trainer=trainer)
        comm = getattr(trainer, "comm", None)
        if comm is not None:
            comm.barrier()
        self.last_path = path

    def __repr__(self):
        return (f"ModelCheckpoint({self.path!r}, monitor={self.monitor!r}, "
                f"save_best_only={self.save_best_only})")


def _snapshot(model) -> dict:
    """A device copy of `model.state_dict()`."""
    xp = model.backend.xp
    return {k: xp.asarray(v, copy=True) for k, v in model.state_dict().items()}


class CSVLogger(Callback):
    """Write the history to a CSV file, one row per epoch, flushed as it goes.

    Args:
        path: the CSV file; its columns are the keys of the first row.
        append: add to an existing file (resumed training) instead of replacing it.
        separator: the field delimiter.

    Data-parallel (`Trainer(comm=...)`): only rank 0 opens and writes the file.
    """

    def __init__(self, path, append: bool = False, separator: str = ","):
        self.path, self.append, self.separator = os.fspath(path), bool(append), separator
        self._file = self._writer = None

    def on_train_begin(self, trainer):
        self._close()
        self._fields = None
        if not getattr(trainer, "is_main", True):
            return
        if self.append and os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            with open(self.path, newline="") as f:
                self._fields = next(csv.reader(f, delimiter=self.separator), None)
        self._file = open(self.path, "a" if self.append else "w", newline="")
        self.append = True

    def on_epoch_end(self, trainer, logs):
        if not getattr(trainer, "is_main", True):
            return
        if self._file is None:
            self.on_train_begin(trainer)
        if self._writer is None:
            header = self._fields is None
            self._fields = self._fields or list(logs)
            self._writer = csv.DictWriter(self._file, self._fields, delimiter=self.separator,
                                          extrasaction="ignore")
            if header:
                self._writer.writeheader()
        self._writer.writerow(logs)
        self._file.flush()

    def on_train_end(self, trainer):
        self._close()

    def _close(self):
        if self._file is not None:
            self._file.close()
        self._file = self._writer = None

    def __repr__(self):
        return f"CSVLogger({self.path!r})"


class LayerStats(Callback):
    """Record, every `every` epochs, what each layer does on a fixed probe batch.

    At the end of an epoch the model runs forward and backward on the probe
    batch in eval mode (no dropout mask is drawn, no running statistic moves, so
    training follows the same trajectory with or without this callback), and
    records for each layer i, in `rows` (one dict per layer and epoch):

        epoch, layer (i), kind (class name),
        out_mean, out_std: of the layer's output over the probe batch,
        grad_rms: root mean square of dL/d(output) per sample,
        dead_fraction: for ReLU, the fraction of units zero for every probe sample,
        <param>_norm, <param>_grad_norm: Frobenius norms of each parameter and of
            its batch-mean gradient (weights_norm, weights_grad_norm, bias_norm, ...).

    All values are gathered on the device and read back in one transfer per epoch.

    Args:
        data: (X, y) host arrays or a `Dataset` for the probe; default: the first
            `n_samples` of the validation loader's dataset, else the training one.
        n_samples: the probe batch size.
        every: record every `every` epochs.

    Data-parallel (`Trainer(comm=...)`): only rank 0 records (the model is the same
    on every rank); `rows` stays empty on the others.
    """

    def __init__(self, data=None, n_samples: int = 256, every: int = 1):
        for name, value in (("n_samples", n_samples), ("every", every)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                msg = f"LayerStats: `{name}` must be a positive int, got {value!r}"
                raise ValueError(msg)
        if data is not None and not isinstance(data, Dataset):
            data = Dataset(*data)
        self.data, self.n_samples, self.every = data, n_samples, every
        self.rows: list[dict] = []

    def on_epoch_end(self, trainer, logs):
        epoch = logs.get("epoch", trainer.epoch - 1)
        if (epoch + 1) % self.every == 0 and getattr(trainer, "is_main", True):
            self.rows.extend(self.record(trainer.model, *self._probe(trainer), epoch=epoch))

    def record(self, model, x, y, *, epoch=None) -> list[dict]:
        """Run the probe batch (x, y) through `model`; return one stats dict per layer."""
        xp = model.backend.xp
        dtype = model.backend.dtype(model.dtype)
        modes = [layer.training for layer in model.layers]
        model.eval()
        try:
            outputs = []
            h = model._input(x)
            for layer in model.layers:
                h = layer.forward(h)
                outputs.append(h)
            model.criterion(h, y)
            grad = model.criterion.backward()
            grads = [None] * len(model.layers)
            for i in range(len(model.layers) - 1, -1, -1):
                grads[i] = grad
                grad = model.layers[i].backward(grad)
        finally:
            for layer, mode in zip(model.layers, modes):
                layer.train(mode)

        def flat(a):
            a = xp.astype(a, dtype) if a.dtype != dtype else a
            return xp.reshape(a, (a.shape[0], -1)) if a.ndim != 2 else a

        def norm(a):
            return xp.sqrt(xp.sum(a * a))

        keys, values = [], []
        for i, (layer, out, g) in enumerate(zip(model.layers, outputs, grads)):
            out, g = flat(out), flat(g)
            stats = {"out_mean": xp.mean(out), "out_std": xp.std(out),
                     "grad_rms": xp.sqrt(xp.mean(g * g))}
            if isinstance(layer, ReLU):
                dead = xp.all(out <= 0, axis=0)
                stats["dead_fraction"] = xp.mean(xp.astype(dead, dtype))
            for p in layer.parameters():
                stats[f"{p.name}_norm"] = norm(xp.astype(p.value, dtype))
                if p.grad is not None:
                    stats[f"{p.name}_grad_norm"] = norm(xp.astype(p.grad, dtype))
            for key, value in stats.items():
                keys.append((i, key))
                values.append(value)
        numbers = model.backend.to_numpy(xp.stack(values)).tolist()
        rows = [{"epoch": epoch, "layer": i, "kind": type(layer).__name__}
                for i, layer in enumerate(model.layers)]
        for (i, key), v in zip(keys, numbers):
            rows[i][key] = v
        return rows

    def _probe(self, trainer):
        model = trainer.model
        data = self.data
        if data is None:
            for dl in (trainer.val_dl, trainer.train_dl):
                if isinstance(getattr(dl, "dataset", None), Dataset):
                    data = dl.dataset
                    break
        if data is None:
            msg = ("LayerStats: the loaders have no backendnn Dataset to take a probe batch "
                   "from; pass LayerStats(data=(X, y))")
            raise ValueError(msg)
        X, y = data.on(model.backend, model.dtype)
        n = min(self.n_samples, X.shape[0])
        return X[:n, ...], y[:n, ...]

    def column(self, key: str, layer: int) -> list:
        """`key` of layer `layer` over the recorded epochs (None where missing)."""
        return [row.get(key) for row in self.rows if row["layer"] == layer]

    @property
    def epochs(self) -> list:
        return sorted({row["epoch"] for row in self.rows})

    def summary(self, epoch: int | None = None) -> str:
        """A table of the stats of `epoch` (default: the last recorded)."""
        if not self.rows:
            return "LayerStats: nothing recorded yet"
        epoch = self.rows[-1]["epoch"] if epoch is None else epoch
        rows = [r for r in self.rows if r["epoch"] == epoch]
        cols = ["out_mean", "out_std", "grad_rms", "dead_fraction", "weights_norm",
                "weights_grad_norm"]
        cols = [c for c in cols if any(c in r for r in rows)]
        table = [["layer", *cols]] + [
            [f"{r['layer']} {r['kind']}", *(f"{r[c]:.3g}" if c in r else "-" for c in cols)]
            for r in rows]
        return f"epoch {epoch}\n" + render(table)

    def plot(self, path=None):
        """Plot the recorded stats per layer over epochs; see `plotting.plot_layer_stats`."""
        from .plotting import plot_layer_stats

        return plot_layer_stats(self, path)

    def __repr__(self):
        return f"LayerStats(n_samples={self.n_samples}, every={self.every})"
