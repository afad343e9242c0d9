"""The training loop: `Trainer` and the per-epoch `History` it returns."""
from __future__ import annotations

import contextlib
import math
import sys

from tqdm.auto import tqdm

from .capture import CapturedStep
from .optim import ChainedScheduler, clip_grad_norm


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class History(list):
    """One dict per epoch: epoch, loss, and with a validation loader val_loss, val_metric."""

    def column(self, key: str) -> list:
        return [row.get(key) for row in self]

    @property
    def loss(self) -> list:
        return self.column("loss")

    @property
    def val_loss(self) -> list:
        return self.column("val_loss")

    @property
    def val_metric(self) -> list:
        return self.column("val_metric")

    def plot(self, path=None, **kw):
        """Loss and metric curves against the epoch, written to `path` as PNG when
        given; returns the matplotlib Figure (needs `pip install 'backendnn[plot]'`)."""
        from .plotting import plot_history

        return plot_history(self, path, **kw)


class Trainer:
    """Trains a `Sequential` with an optimiser over a training DataLoader.

    Args:
        model, optimizer: the network (with its criterion) and what updates it.
        train_dl, val_dl: loaders of (x, y) batches; val_dl may be None. A DataLoader's
            batches go to the model's backend and dtype; any other iterable (a list of
            (x, y) pairs) must yield arrays of the model's backend, and is iterated once
            per epoch (a generator is used up after the first).
        metric: f(y_hat, y) -> 0-d array or float, e.g. `accuracy`; may be None.
        progress: show a tqdm bar; default: only when stderr is a terminal.
        callbacks: `Callback`s called around each epoch (backendnn.callbacks:
            EarlyStopping, ModelCheckpoint, CSVLogger, LayerStats); a callback
            sets `trainer.stop_training = True` to end `train` after the epoch.
        scheduler: a learning-rate schedule (backendnn.optim.StepLR, ...) or a list
            of them (chained), stepped once after each epoch; the epoch's rate is
            recorded in the history as "lr".
        max_grad_norm: clip the gradients to this global L2 norm before each step
            (`clip_grad_norm`); None: no clipping.
        capture: capture the whole step (forward, loss, backward, clipping, update)
            once and replay it for every full-size batch, on backends that can
            (`Backend.can_capture`: CuPy, as a CUDA graph; elsewhere it does
            nothing). Same results as capture=False; the step must update state in
            place and draw no random numbers, as `backendnn.capture.CapturedStep` explains.
        comm: a communicator from `backendnn.distributed.init()`: train data-parallel
            over its ranks (`backendnn.distributed.DataParallel`): parameters and
            buffers broadcast from rank 0 at the start of `train`, each rank a part of
            every global batch (a DataLoader's `batch_size` is the global batch),
            gradients summed over ranks weighted by sample counts (the one-process
            gradient), losses and metrics reduced (History is the same on every
            rank); only rank 0 prints and shows progress. An exception on one rank
            ends every rank (MPI_Abort) with that rank's error. None, or a size-1
            communicator: one process, as without it.

    The loss is read back from the device once per epoch, where it is also checked:
    a NaN or infinite batch loss stops training with the epoch and batch it came from.
    Nothing else is read back during training: integer labels of a `Dataset` are
    range-checked on the host (`Dataset.label_range`, `CrossEntropy.labels_known`)
    instead of batch by batch on the device.
    """

    def __init__(self, model, optimizer, train_dl, val_dl=None, metric=None, *,
                 progress: bool | None = None, callbacks=(), scheduler=None,
                 max_grad_norm: float | None = None, capture: bool = False, comm=None):
        if not isinstance(capture, bool):
            msg = f"Trainer: `capture` must be True or False, got {capture!r}"
            raise TypeError(msg)
        self.comm, self._dp = comm, None
        if comm is not None:
            if not all(hasattr(comm, a) for a in ("rank", "size", "allreduce")):
                msg = ("Trainer: `comm` must be a communicator from "
                       f"backendnn.distributed.init(), got {type(comm).__name__}")
                raise TypeError(msg)
            if comm.size > 1:
                self._dp = self._data_parallel(model, optimizer, comm, train_dl, capture,
                                               max_grad_norm)
        self.is_main = comm is None or comm.rank == 0
        self.capture = capture
        self._captured = None
        self.model, self.optimizer = model, optimizer
        self.scheduler = _scheduler(scheduler)
        self.max_grad_norm = max_grad_norm
        self.callbacks = list(callbacks or ())
        self.stop_training = False
        self.train_dl, self.val_dl, self.metric = train_dl, val_dl, metric
        self.progress = (sys.stderr.isatty() if progress is None else progress) and self.is_main
        self.history = History()
        self.epoch = 0

    @staticmethod
    def _data_parallel(model, optimizer, comm, train_dl, capture, max_grad_norm):
        from .distributed import DataParallel

        if capture and model.backend.can_capture:
            msg = ("Trainer: capture=True cannot be combined with `comm` of more than one "
                   "rank (the gradient allreduce runs outside the captured step)")
            raise ValueError(msg)
        batch_size = getattr(train_dl, "batch_size", None)
        if isinstance(batch_size, int) and batch_size < comm.size:
            msg = (f"Trainer: the global batch size {batch_size} is smaller than the number "
                   f"of ranks {comm.size}: every rank needs a part of each batch; use "
                   f"batch_size >= {comm.size} or fewer ranks")
            raise ValueError(msg)
        return DataParallel(model, optimizer, comm, max_grad_norm=max_grad_norm)

    def _parts(self, dl):
        """(x, y, start, n_global) per batch: this rank's part under `comm`, else all."""
        if self._dp is not None:
            return self._dp.batches(self, dl)
        return ((x, y, 0, None) for x, y in self._batches(dl))

    def _batches(self, dl):
        batches = getattr(dl, "batches", None)
        if batches is None:
            return iter(dl)
        return batches(self.model.backend, self.model.dtype)

    def train_one_epoch(self) -> float:
        """Train for one epoch; return the mean per-sample training loss."""
        model, xp = self.model, self.model.backend.xp
        dp = self._dp
        step = self._step
        if dp is not None:
            step = dp.step
            dp.max_grad_norm = self.max_grad_norm
        elif self.capture and model.backend.can_capture:
            if self._captured is None or self._captured.backend is not model.backend:
                self._captured = CapturedStep(self)
            step = self._captured
            step.stale = step.replay is not None  # evaluate() may have rebound caches
        model.train()
        losses, n = [], 0
        bar = tqdm(total=_len(self.train_dl), desc=f"epoch {self.epoch}", leave=False,
                   disable=not self.progress, file=sys.stderr)
        with bar, self._labels_known(self.train_dl):
            for x, y, start, n_global in self._parts(self.train_dl):
                losses.append(step(x, y) if dp is None else step(x, y, start, n_global))
                n += x.shape[0]
                bar.update()
            if not losses:
                msg = (f"Trainer: the training loader yielded no batches at epoch {self.epoch} "
                       "(empty dataset, drop_last with too few samples, or a generator "
                       "already used up: pass a list or a DataLoader)")
                raise ValueError(msg)
            per_batch = model.backend.to_numpy(xp.stack(losses)).tolist()
            if dp is not None:
                per_batch, n = dp.reduce_losses(per_batch, n)
            bad = [i for i, v in enumerate(per_batch) if not math.isfinite(v)]
            if bad:
                msg = (
                    f"training loss became {per_batch[bad[0]]} at epoch {self.epoch}, batch "
                    f"{bad[0]}: lower the learning rate, scale the inputs, or check the data "
                    "for NaN"
                )
                raise NonFiniteLossError(msg)
            loss = sum(per_batch) / n
            bar.set_postfix(loss=f"{loss:.4f}")
        return loss

    def _step(self, x, y):
        """One training step, uncaptured; returns the batch's summed loss, 0-d."""
        model = self.model
        loss = model.backend.xp.sum(model.criterion(model(x), y))
        model.backward()
        if self.max_grad_norm is not None:
            clip_grad_norm(model, self.max_grad_norm)
        self.optimizer.step()
        return loss

    def _labels_known(self, dl):
        """A context in which the criterion takes the label range that `dl`'s Dataset
        read on the host, instead of reading each batch's labels back (a device sync
        per step); a no-op for other loaders and criteria."""
        label_range = getattr(getattr(dl, "dataset", None), "label_range", None)
        known = getattr(self.model.criterion, "labels_known", None)
        if label_range is None or known is None:
            return contextlib.nullcontext()
        return known(*label_range)

    def train(self, n_epochs: int, log_level: int = 1) -> History:
        """Train for `n_epochs`, printing a summary every `log_level` epochs (0: silent).

        Returns the History: one dict per epoch (epoch, loss, val_loss, val_metric).
        """
        if not isinstance(n_epochs, int) or n_epochs < 0:
            msg = f"Trainer.train: `n_epochs` must be a non-negative int, got {n_epochs!r}"
            raise ValueError(msg)
        self.stop_training = False
        try:
            if self._dp is not None:
                self._dp.setup()
            for cb in self.callbacks:
                cb.on_train_begin(self)
            self._train(n_epochs, log_level)
        except BaseException as e:
            if self._dp is not None and not isinstance(e, KeyboardInterrupt):
                self.comm.fail(e)  # ends every rank: none waits for this one forever
            raise
        return self.history

    def _train(self, n_epochs: int, log_level: int) -> None:
        try:
            for _ in range(n_epochs):
                for cb in self.callbacks:
                    cb.on_epoch_begin(self, self.epoch)
                loss = self.train_one_epoch()
                row = {"epoch": self.epoch, "loss": loss}
                if self.scheduler is not None:
                    row["lr"] = self.optimizer.param_groups[0]["lr"]
                    self.scheduler.step()
                if self._dp is not None:
                    self._dp.sync_buffers()
                if self.val_dl is not None:
                    row["val_loss"], row["val_metric"] = self.evaluate(self.val_dl)
                self.history.append(row)
                if log_level and (self.epoch + 1) % log_level == 0 and self.is_main:
                    print(_format(row))
                self.epoch += 1
                for cb in self.callbacks:
                    cb.on_epoch_end(self, row)
                if self.stop_training:
                    break
        finally:
            for cb in self.callbacks:
                cb.on_train_end(self)

    def evaluate(self, dl) -> tuple[float, float]:
        """Mean per-sample loss and the sample-weighted metric over `dl`, as floats
        (metric is NaN without a metric function). With `comm`, over every rank's
        part of `dl`: the same numbers on every rank."""
        model, xp = self.model, self.model.backend.xp
        modes = [layer.training for layer in model.layers]  # each restored, not all as one
        model.eval()
        loss = metric = 0.0
        n = 0
        try:
            with self._labels_known(dl):
                for x, y, _, _ in self._parts(dl):
                    if x.shape[0] == 0:
                        continue
                    y_hat = model(x)
                    loss = loss + xp.sum(model.criterion(y_hat, y))
                    if self.metric is not None:
                        metric = metric + x.shape[0] * self.metric(y_hat, y)
                    n += x.shape[0]
        finally:
            for layer, mode in zip(model.layers, modes):
                layer.train(mode)
        loss, metric = float(loss), float(metric)
        if self._dp is not None:
            loss, metric, n = self._dp.reduce_sums([loss, metric, n])
        if n == 0:
            msg = "Trainer.evaluate: the loader yielded no batches"
            raise ValueError(msg)
        return loss / n, (metric / n if self.metric is not None else math.nan)


def _scheduler(scheduler):
    """None, a schedule, or a list of schedules as one ChainedScheduler."""
    if scheduler is None or hasattr(scheduler, "step"):
        return scheduler
    if isinstance(scheduler, (list, tuple)):
        return ChainedScheduler(scheduler) if len(scheduler) != 1 else scheduler[0]
    msg = f"Trainer: `scheduler` must be a schedule (with step()) or a list of them, got {scheduler!r}"
    raise TypeError(msg)


def _len(dl):
    try:
        return len(dl)
    except TypeError:
        return None


def _format(row: dict) -> str:
    parts = [f"epoch={row['epoch']:3d}", f"loss={row['loss']:.4f}"]
    for key in ("val_loss", "val_metric"):
        if key in row:
            parts.append(f"{key}={row[key]:.4f}")
    return " | ".join(parts)
