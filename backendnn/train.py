"""The training loop: `Trainer` and the per-epoch `History` it returns."""
from __future__ import annotations

import contextlib
import math
import sys
import warnings

from tqdm.auto import tqdm

from ._validate import boolean, integer
from .capture import CapturedStep
from .data import check_global_batch
from .layers import Sigmoid
from .metrics import metric_name
from .optim import ChainedScheduler, clip_grad_norm


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class History(list):
    """One dict per epoch: epoch, loss, and with a validation loader val_loss and
    val_<metric> for each metric, named after it (val_accuracy, val_r2, ...); with
    `Trainer(train_metric=True)` also <metric> on the training set; "lr" with a
    scheduler, "skipped" with on_nonfinite="skip_batch". No column without a metric.

    `column("val_metric")` (and `row["val_metric"]` on the rows a Trainer writes)
    still finds the one validation metric, under the name of earlier versions."""

    def column(self, key: str) -> list:
        if key == "val_metric" and not any(key in row for row in self):
            key = self._only_val_metric() or key
        return [row.get(key) for row in self]

    def _only_val_metric(self):
        names = {k for row in self for k in row if k.startswith("val_") and k != "val_loss"}
        return names.pop() if len(names) == 1 else None

    @property
    def loss(self) -> list:
        return self.column("loss")

    @property
    def val_loss(self) -> list:
        return self.column("val_loss")

    @property
    def val_metric(self) -> list:
        """The one validation metric's column (whatever its name)."""
        return self.column("val_metric")

    @property
    def metrics(self) -> list[str]:
        """The names of the recorded metrics (accuracy, ...), without prefixes."""
        names = []
        for row in self:
            names += [k[4:] for k in row if k.startswith("val_") and k != "val_loss"
                      and k[4:] not in names]
        return names

    def plot(self, path=None, **kw):
        """Loss and metric curves against the epoch, written to `path` as PNG when
        given; returns the matplotlib Figure (needs `pip install 'backendnn[plot]'`)."""
        from .plotting import plot_history

        return plot_history(self, path, **kw)


class _Row(dict):
    """A history row; the old key "val_metric" reads its one validation metric."""

    def __missing__(self, key):
        if key == "val_metric":
            names = [k for k in self if k.startswith("val_") and k != "val_loss"]
            if len(names) == 1:
                return self[names[0]]
        raise KeyError(key)


class Trainer:
    """Trains a `Sequential` with an optimiser over a training DataLoader.

    Args:
        model, optimizer: the network (with its criterion) and what updates it (built
            over this model's parameters, or some of them).
        train_dl, val_dl: loaders of (x, y) batches; val_dl may be None. A DataLoader's
            batches go to the model's backend and dtype; any other iterable (a list of
            (x, y) pairs) must yield arrays of the model's backend, and is iterated once
            per epoch (a generator is used up after the first).
        metric: f(y_hat, y) -> 0-d array, e.g. `accuracy` (backendnn.metrics has
            top_k_accuracy, precision, recall, f1, roc_auc, mae, rmse, r2), a list of
            them, or a dict {name: f}; None: none. The History names each after the
            function ("val_accuracy"). Computed once over the whole validation set
            (its batches' outputs concatenated on the device), so F1, AUC and R² are
            exact, not averages of batches.
        train_metric: also record each metric on the training set at the end of each
            epoch (one more pass, in eval mode), as "accuracy", ... beside "loss".
        progress: show a tqdm bar; default: only when stderr is a terminal.
        callbacks: `Callback`s called around each epoch (backendnn.callbacks:
            EarlyStopping, ModelCheckpoint, CSVLogger, LayerStats); a callback
            sets `trainer.stop_training = True` to end `train` after the epoch.
        scheduler: a learning-rate schedule (backendnn.optim.StepLR, ...) or a list
            of them (chained), stepped once after each epoch; the epoch's rate is
            recorded in the history as "lr".
        max_grad_norm: clip the gradients to this global L2 norm before each step
            (`clip_grad_norm`); None: no clipping.
        on_nonfinite: what a NaN or infinite batch loss does. "raise" (default): stop
            with `NonFiniteLossError` naming the epoch and batch, the model (and
            optimiser) put back as they were just before that batch, all finite.
            "skip_batch": undo that batch's step, go on, and count it in the history's
            "skipped" column (with a warning).
        check_every: how many steps run between checks of the losses (one read-back
            from the device each time, and a device copy of the model and optimiser
            state, the last good state a non-finite loss rolls back to). Between
            checks nothing is read back; after a rollback the steps since the last
            check are run again, checked one by one.
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
            rank; a metric is the sample-weighted mean of each rank's); only rank 0
            prints and shows progress. An exception on one rank
            ends every rank (MPI_Abort) with that rank's error. None, or a size-1
            communicator: one process, as without it. Losses are checked once per
            epoch there; a non-finite one rolls back to the epoch's start and raises.

    Nothing is read back from the device between loss checks: integer labels of a
    `Dataset` are range-checked on the host (`Dataset.label_range`,
    `CrossEntropy.labels_known`) instead of batch by batch on the device.
    """

    def __init__(self, model, optimizer, train_dl, val_dl=None, metric=None, *,
                 train_metric: bool = False, progress: bool | None = None, callbacks=(),
                 scheduler=None, max_grad_norm: float | None = None,
                 on_nonfinite: str = "raise", check_every: int = 50,
                 capture: bool = False, comm=None):
        if not isinstance(capture, bool):
            msg = f"Trainer: `capture` must be True or False, got {capture!r}"
            raise TypeError(msg)
        _check_model(model, optimizer)
        if on_nonfinite not in ("raise", "skip_batch"):
            msg = f"Trainer: `on_nonfinite` must be 'raise' or 'skip_batch', got {on_nonfinite!r}"
            raise ValueError(msg)
        self.on_nonfinite = on_nonfinite
        self.check_every = integer("Trainer", "check_every", check_every, minimum=1)
        self.train_metric = boolean("Trainer", "train_metric", train_metric)
        self.comm, self._dp = comm, None
        if comm is not None:
            if not all(hasattr(comm, a) for a in ("rank", "size", "allreduce")):
                msg = ("Trainer: `comm` must be a communicator from "
                       f"backendnn.distributed.init(), got {type(comm).__name__}")
                raise TypeError(msg)
            if comm.size > 1:
                if on_nonfinite != "raise":
                    msg = "Trainer: on_nonfinite='skip_batch' is not supported with `comm`"
                    raise ValueError(msg)
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
        self.train_dl, self.val_dl = train_dl, val_dl
        self.metric = metric
        self.metrics = _metrics(metric)
        self.progress = (sys.stderr.isatty() if progress is None else progress) and self.is_main
        self.history = History()
        self.epoch = 0
        self.skipped: list[tuple[int, int]] = []  # (epoch, batch) undone by skip_batch

    @staticmethod
    def _data_parallel(model, optimizer, comm, train_dl, capture, max_grad_norm):
        from .distributed import DataParallel

        if capture and model.backend.can_capture:
            msg = ("Trainer: capture=True cannot be combined with `comm` of more than one "
                   "rank (the gradient allreduce runs outside the captured step)")
            raise ValueError(msg)
        batch_size = getattr(train_dl, "batch_size", None)
        if isinstance(batch_size, int):
            check_global_batch("Trainer", batch_size, comm.size)
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
        model = self.model
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
        bar = tqdm(total=_len(self.train_dl), desc=f"epoch {self.epoch}", leave=False,
                   disable=not self.progress, file=sys.stderr)
        with bar, self._labels_known(self.train_dl):
            if dp is not None:
                per_batch, n = self._epoch_data_parallel(dp, bar)
            else:
                per_batch, n = self._epoch_checked(step, bar)
            loss = sum(per_batch) / n if n else math.nan
            bar.set_postfix(loss=f"{loss:.4f}")
        return loss

    def _epoch_data_parallel(self, dp, bar):
        """One data-parallel epoch: losses read and checked once, at its end."""
        xp = self.model.backend.xp
        good = _Snapshot(self)
        losses, n = [], 0
        for x, y, start, n_global in self._parts(self.train_dl):
            losses.append(dp.step(x, y, start, n_global))
            n += x.shape[0]
            bar.update()
        self._no_batches(losses)
        per_batch = self.model.backend.to_numpy(xp.stack(losses)).tolist()
        per_batch, n = dp.reduce_losses(per_batch, n)
        bad = [i for i, v in enumerate(per_batch) if not math.isfinite(v)]
        if bad:
            good.restore()
            raise NonFiniteLossError(self._nonfinite(per_batch[bad[0]], bad[0],
                                                     "the start of the epoch"))
        return per_batch, n

    def _epoch_checked(self, step, bar):
        """One epoch, the losses read every `check_every` steps; a non-finite one rolls
        back to the last checked state and replays the steps since, one by one."""
        per_batch, sizes = [], []
        window, losses = [], []
        good = _Snapshot(self)
        count = 0
        for x, y, _, _ in self._parts(self.train_dl):
            losses.append(step(x, y))
            window.append((x, y))
            count += 1
            bar.update()
            if len(window) >= self.check_every:
                step = self._check(window, losses, per_batch, sizes, good, step, count - len(window))
                good = _Snapshot(self)
                window, losses = [], []
        if window:
            self._check(window, losses, per_batch, sizes, good, step, count - len(window))
        self._no_batches(range(count))
        return per_batch, sum(sizes)

    def _check(self, window, losses, per_batch, sizes, good, step, start: int):
        """Read the window's losses; on a non-finite one, roll back to `good` and replay.
        Returns the step function to go on with (uncaptured after a rollback)."""
        backend, xp = self.model.backend, self.model.backend.xp
        values = backend.to_numpy(xp.stack(losses)).tolist()
        if all(math.isfinite(v) for v in values):
            per_batch.extend(values)
            sizes.extend(x.shape[0] for x, _ in window)
            return step
        good.restore()
        self._captured = None  # its buffers may be stale after the restore
        for k, (x, y) in enumerate(window):
            before = _Snapshot(self) if self.on_nonfinite == "skip_batch" else good
            value = float(backend.to_numpy(self._step(x, y)))
            if math.isfinite(value):
                per_batch.append(value)
                sizes.append(x.shape[0])
                good = None if self.on_nonfinite == "skip_batch" else _Snapshot(self)
                continue
            before.restore()
            if self.on_nonfinite == "raise":
                raise NonFiniteLossError(self._nonfinite(value, start + k,
                                                         "just before that batch"))
            self.skipped.append((self.epoch, start + k))
        return self._step

    def _nonfinite(self, value, batch: int, where: str) -> str:
        return (f"training loss became {value} at epoch {self.epoch}, batch {batch}; the "
                f"model and optimiser are as they were {where} (all finite): lower the "
                "learning rate, scale the inputs and targets, clip the gradients "
                "(max_grad_norm), or check the data for NaN; "
                "Trainer(on_nonfinite='skip_batch') skips such batches")

    def _no_batches(self, losses) -> None:
        if not len(losses):
            msg = (f"Trainer: the training loader yielded no batches at epoch {self.epoch} "
                   "(empty dataset, drop_last with too few samples, or a generator "
                   "already used up: pass a list or a DataLoader)")
            raise ValueError(msg)

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
        """A context in which the criterion takes the target range that `dl`'s Dataset
        read on the host, instead of reading each batch back (a device sync per
        step): integer labels for CrossEntropy; targets in [0, 1] for
        BinaryCrossEntropy (on probabilities, when the last layer is a Sigmoid). A
        no-op for other loaders and criteria."""
        dataset = getattr(dl, "dataset", None)
        criterion = self.model.criterion
        label_range = getattr(dataset, "label_range", None)
        known = getattr(criterion, "labels_known", None)
        if label_range is not None and known is not None:
            return known(*label_range)
        target_range = getattr(dataset, "target_range", None)
        range_known = getattr(criterion, "range_known", None)
        if target_range is not None and range_known is not None:
            probabilities = getattr(criterion, "from_logits", True) or (
                self.model.layers and isinstance(self.model.layers[-1], Sigmoid))
            if probabilities and 0 <= target_range[0] and target_range[1] <= 1:
                return range_known()
        return contextlib.nullcontext()

    def train(self, n_epochs: int, log_level: int = 1) -> History:
        """Train for `n_epochs`, printing a summary every `log_level` epochs (0: silent).

        Returns the History: one dict per epoch (epoch, loss, val_loss, val_<metric>).
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
                skipped = len(self.skipped)
                loss = self.train_one_epoch()
                row = _Row(epoch=self.epoch, loss=loss)
                if self.on_nonfinite == "skip_batch":
                    row["skipped"] = len(self.skipped) - skipped
                    if row["skipped"]:
                        warnings.warn(f"Trainer: skipped {row['skipped']} batches with a "
                                      f"non-finite loss in epoch {self.epoch}",
                                      RuntimeWarning, stacklevel=3)
                if self.scheduler is not None:
                    row["lr"] = self.optimizer.param_groups[0]["lr"]
                    self.scheduler.step()
                if self._dp is not None:
                    self._dp.sync_buffers()
                if self.train_metric and self.metrics:
                    scores = self.evaluate_metrics(self.train_dl)
                    row.update((k, v) for k, v in scores.items() if k != "loss")
                if self.val_dl is not None:
                    scores = self.evaluate_metrics(self.val_dl)
                    row.update((f"val_{k}", v) for k, v in scores.items())
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
        """Mean per-sample loss and the (first) metric over `dl`, as floats (the
        metric is NaN without one); `evaluate_metrics` gives every metric by name."""
        scores = self.evaluate_metrics(dl)
        first = next(iter(self.metrics), None)
        return scores["loss"], (scores[first] if first is not None else math.nan)

    def evaluate_metrics(self, dl) -> dict:
        """{"loss": mean per-sample loss, name: value of each metric} over `dl`, as
        floats, in eval mode (each layer's mode put back after). Each metric is
        computed once on the concatenated outputs. With `comm`, over every rank's part
        of `dl`: the same numbers on every rank."""
        model, xp = self.model, self.model.backend.xp
        modes = [layer.training for layer in model.layers]  # each restored, not all as one
        model.eval()
        loss, n = 0.0, 0
        outs, ys = [], []
        try:
            with self._labels_known(dl):
                for x, y, _, _ in self._parts(dl):
                    if x.shape[0] == 0:
                        continue
                    y_hat = model(x)
                    loss = loss + xp.sum(model.criterion(y_hat, y))
                    if self.metrics:
                        outs.append(y_hat)
                        ys.append(y)
                    n += x.shape[0]
        finally:
            for layer, mode in zip(model.layers, modes):
                layer.train(mode)
        values = [loss]
        if outs:
            y_hat = outs[0] if len(outs) == 1 else xp.concat(outs, axis=0)
            y = ys[0] if len(ys) == 1 else xp.concat(ys, axis=0)
            values += [xp.astype(xp.asarray(fn(y_hat, y)), y_hat.dtype)
                       for fn in self.metrics.values()]
        host = model.backend.to_numpy(xp.stack([xp.asarray(v) for v in values])) \
            if outs else [float(loss)]
        values = [float(v) for v in (host.tolist() if hasattr(host, "tolist") else host)]
        if self._dp is not None:
            values = self._dp.reduce_sums([values[0]] + [v * n for v in values[1:]] + [n])
            n = int(round(values.pop()))
            values = [values[0]] + [v / n if n else math.nan for v in values[1:]]
        if n == 0:
            msg = "Trainer.evaluate: the loader yielded no batches"
            raise ValueError(msg)
        out = {"loss": values[0] / n}
        out.update(zip(self.metrics, values[1:]))
        return out


class _Snapshot:
    """A device copy of the model's and optimiser's state, to roll back to."""

    def __init__(self, trainer):
        model = trainer.model
        xp = model.backend.xp
        self.trainer = trainer
        self.model = {k: xp.asarray(v, copy=True) for k, v in model.state_dict().items()}
        optimizer = trainer.optimizer
        self.optimizer = optimizer.state_dict() if hasattr(optimizer, "state_dict") else None

    def restore(self) -> None:
        self.trainer.model.load_state_dict(self.model)
        if self.optimizer is not None:
            self.trainer.optimizer.load_state_dict(self.optimizer)


def _check_model(model, optimizer) -> None:
    """TypeError / ValueError for a model without criterion or a foreign optimiser."""
    if not hasattr(model, "criterion") or not hasattr(model, "parameters"):
        msg = f"Trainer: `model` must be a backendnn Sequential, got {type(model).__name__}"
        raise TypeError(msg)
    if model.criterion is None:
        msg = ("Trainer: the model has no criterion (loss) to train with: build it as "
               "Sequential(layers, criterion), e.g. Sequential(layers, CrossEntropy()), "
               "or set model.criterion")
        raise ValueError(msg)
    params = getattr(optimizer, "params", None)
    if params is None or not hasattr(optimizer, "step"):
        msg = f"Trainer: `optimizer` must be a backendnn Optimizer, got {type(optimizer).__name__}"
        raise TypeError(msg)
    mine = {(id(p.layer), p.name) for p in model.parameters()}
    foreign = [p for p in params if (id(p.layer), p.name) not in mine]
    if foreign:
        msg = (f"Trainer: the optimizer updates {len(foreign)} of its {len(params)} parameters "
               f"outside this model (first: {foreign[0]!r}): it was built for another model; "
               "build it over this one, e.g. SGD(model, lr=0.1)")
        raise ValueError(msg)


def _metrics(metric) -> dict:
    """{name: function} from None, a function, a list of them or a dict."""
    if metric is None:
        return {}
    if isinstance(metric, dict):
        items = list(metric.items())
    elif callable(metric):
        items = [(metric_name(metric), metric)]
    elif isinstance(metric, (list, tuple)):
        items = [(metric_name(m), m) for m in metric]
    else:
        msg = f"Trainer: `metric` must be a function, a list or a dict of them, got {metric!r}"
        raise TypeError(msg)
    out = {}
    for name, fn in items:
        if not callable(fn) or not isinstance(name, str):
            msg = f"Trainer: metric {name!r} must be a function f(y_hat, y), got {fn!r}"
            raise TypeError(msg)
        if name in out or name in ("loss", "epoch", "lr", "skipped"):
            msg = (f"Trainer: two metrics (or a metric and a history column) are named "
                   f"{name!r}; pass a dict {{name: function}} to name them")
            raise ValueError(msg)
        out[name] = fn
    return out


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
    parts = [f"epoch={row['epoch']:3d}"]
    for key, value in row.items():
        if key == "epoch":
            continue
        parts.append(f"{key}={value}" if isinstance(value, int) else f"{key}={value:.4g}"
                     if key == "lr" else f"{key}={value:.4f}")
    return " | ".join(parts)
