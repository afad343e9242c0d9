"""Trainer callbacks: early stopping, checkpoint on best, CSV log, layer statistics, plots."""
import csv
import math
import sys

import numpy as np
import pytest

import backendnn
from backendnn import (
    SGD,
    BatchNorm1d,
    CrossEntropy,
    DataLoader,
    Dataset,
    Linear,
    ReLU,
    Sequential,
    Trainer,
    accuracy,
)
from backendnn.callbacks import Callback, CSVLogger, EarlyStopping, LayerStats, ModelCheckpoint
from backendnn.checkpoint import load, read_metadata, restore
from backendnn.plotting import plot_history, plot_layer_stats, plot_weight_images

PNG = b"\x89PNG\r\n\x1a\n"


def data(n=64, seed=5):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = (X[:, 0] - X[:, 1] > 0).astype(np.int64)
    return X, y


def make_trainer(backend, callbacks=(), val=True, extra_layers=(), lr=0.1):
    X, y = data()
    layers = [Linear(4, 8, backend=backend), ReLU(backend=backend),
              *[make(backend) for make in extra_layers], Linear(8, 2, backend=backend)]
    model = Sequential(layers, CrossEntropy(backend=backend))
    train_dl = DataLoader(Dataset(X[:48], y[:48]), batch_size=16, shuffle=True)
    val_dl = DataLoader(Dataset(X[48:], y[48:]), batch_size=16) if val else None
    return Trainer(model, SGD(model, lr=lr, momentum=0.9), train_dl, val_dl, metric=accuracy,
                   progress=False, callbacks=callbacks)


class Recorder(Callback):
    """Logs each hook call and keeps a host copy of the weights at every epoch end."""

    def __init__(self):
        self.calls, self.weights = [], []

    def on_train_begin(self, trainer):
        self.calls.append("train_begin")

    def on_epoch_begin(self, trainer, epoch):
        self.calls.append(f"begin {epoch}")

    def on_epoch_end(self, trainer, logs):
        self.calls.append(f"end {logs['epoch']} (trainer at {trainer.epoch})")
        self.weights.append([np.array(trainer.model.backend.to_numpy(p.value))
                             for p in trainer.model.parameters()])

    def on_train_end(self, trainer):
        self.calls.append("train_end")


def test_trainer_calls_every_hook_in_order(backend):
    rec = Recorder()
    trainer = make_trainer(backend, [rec])
    trainer.train(2, log_level=0)
    assert rec.calls == ["train_begin", "begin 0", "end 0 (trainer at 1)", "begin 1",
                         "end 1 (trainer at 2)", "train_end"]


def test_train_end_is_called_when_training_fails():
    class Boom(Callback):
        def on_epoch_end(self, trainer, logs):
            raise RuntimeError("boom")

    rec = Recorder()
    with pytest.raises(RuntimeError, match="boom"):
        make_trainer("numpy", [Boom(), rec]).train(3, log_level=0)
    assert rec.calls[-1] == "train_end"


# --- EarlyStopping -------------------------------------------------------------------

class FakeTrainer:
    def __init__(self):
        self.stop_training = False


def feed(cb, key, values):
    """Call `cb` with one history row per value; return the epochs at which it stopped."""
    trainer = FakeTrainer()
    cb.on_train_begin(trainer)
    for epoch, v in enumerate(values):
        cb.on_epoch_end(trainer, {"epoch": epoch, key: v})
        if trainer.stop_training:
            return epoch
    return None


@pytest.mark.parametrize("values, patience, min_delta, stop", [
    ([1.0, 0.9, 0.95, 0.96, 0.97], 2, 0.0, 3),
    ([1.0, 0.9, 0.95, 0.8, 0.85, 0.86], 2, 0.0, 5),
    ([1.0, 0.9, 0.89, 0.88, 0.87], 2, 0.05, 3),
    ([1.0, 1.1], 0, 0.0, 1),
    ([1.0, 0.9, 0.8, 0.7], 1, 0.0, None),
    ([math.nan, 1.0, 0.9], 2, 0.0, None),
    ([1.0, math.nan, math.nan], 2, 0.0, 2),
])
def test_early_stopping_counts_epochs_without_improvement(values, patience, min_delta, stop):
    cb = EarlyStopping("val_loss", patience=patience, min_delta=min_delta)
    assert feed(cb, "val_loss", values) == stop


def test_early_stopping_mode_auto_maximises_metrics():
    assert EarlyStopping("val_metric").mode == "max"
    assert EarlyStopping("val_accuracy").mode == "max"
    assert EarlyStopping("val_loss").mode == "min"
    assert feed(EarlyStopping("val_metric", patience=1), "val_metric", [0.5, 0.6, 0.55]) == 2


def test_early_stopping_stops_the_trainer(backend):
    """Loss falls each epoch, so under mode='max' only epoch 0 is ever the best."""
    stop = EarlyStopping("loss", patience=2, mode="max")
    trainer = make_trainer(backend, [stop])
    history = trainer.train(10, log_level=0)
    assert len(history) == 3 and trainer.epoch == 3
    assert stop.best_epoch == 0 and stop.stopped_epoch == 2
    assert trainer.train(1, log_level=0) is history and len(history) == 4, "a new train call resumes"


def test_early_stopping_restores_the_best_weights(backend):
    rec = Recorder()
    stop = EarlyStopping("loss", patience=2, mode="max", restore_best_weights=True)
    trainer = make_trainer(backend, [rec, stop])
    trainer.train(10, log_level=0)
    best = rec.weights[0]
    now = [backend.to_numpy(p.value) for p in trainer.model.parameters()]
    for got, want in zip(now, best):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(rec.weights[-1][0], best[0])


def test_early_stopping_restores_the_best_buffers_too(backend):
    """BatchNorm's running statistics come back with the weights of the best epoch."""
    stats = []

    class Buffers(Callback):
        def on_epoch_end(self, trainer, logs):
            stats.append(backend.to_numpy(trainer.model.layers[2].running_mean).copy())

    stop = EarlyStopping("loss", patience=2, mode="max", restore_best_weights=True)
    trainer = make_trainer(backend, [Buffers(), stop],
                           extra_layers=[lambda b: BatchNorm1d(8, backend=b)])
    trainer.train(10, log_level=0)
    assert stop.stopped_epoch == 2 and not np.array_equal(stats[-1], stats[0])
    np.testing.assert_array_equal(backend.to_numpy(trainer.model.layers[2].running_mean), stats[0])


def test_monitoring_val_metric_without_a_metric_is_refused():
    trainer = make_trainer("numpy", [EarlyStopping("val_metric")])
    trainer.metric = None
    with pytest.raises(ValueError, match="Trainer has no metric"):
        trainer.train(1, log_level=0)


def test_monitoring_a_missing_value_lists_the_available_ones():
    trainer = make_trainer("numpy", [EarlyStopping("val_loss")], val=False)
    match = r"'val_loss' is not in the history row; available: \['epoch', 'loss'\].*validation loader"
    with pytest.raises(ValueError, match=match):
        trainer.train(1, log_level=0)


@pytest.mark.parametrize("kwargs, match", [
    ({"patience": -1}, "patience"),
    ({"patience": 1.5}, "patience"),
    ({"min_delta": -0.1}, "min_delta"),
    ({"mode": "up"}, "mode"),
])
def test_early_stopping_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EarlyStopping(**kwargs)


# --- ModelCheckpoint -----------------------------------------------------------------

def test_model_checkpoint_saves_only_improvements(tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr("backendnn.checkpoint.save",
                        lambda model, path, trainer=None: saved.append(path))
    cb = ModelCheckpoint(str(tmp_path / "ckpt-{epoch:02d}.safetensors"))
    trainer = FakeTrainer()
    trainer.model = None
    for epoch, v in enumerate([1.0, 0.8, 0.9, 0.7, 0.75]):
        cb.on_epoch_end(trainer, {"epoch": epoch, "val_loss": v})
    assert [p.rsplit("/", 1)[1] for p in saved] == [
        "ckpt-00.safetensors", "ckpt-01.safetensors", "ckpt-03.safetensors"]
    assert cb.best == 0.7 and cb.last_path == saved[-1]


def test_model_checkpoint_writes_a_resumable_checkpoint_of_the_best_epoch(backend, tmp_path):
    path = tmp_path / "best.safetensors"
    cb = ModelCheckpoint(path, monitor="loss", mode="max")   # keeps epoch 0's model
    rec = Recorder()
    trainer = make_trainer(backend, [cb, rec])
    trainer.train(3, log_level=0)
    meta = read_metadata(path)
    assert meta["trainer"]["epoch"] == 1 and len(meta["trainer"]["history"]) == 1
    model = load(path, backend=backend)
    for got, want in zip(model.parameters(), rec.weights[0]):
        np.testing.assert_array_equal(backend.to_numpy(got.value), want)
    resumed = make_trainer(backend)
    restore(path, trainer=resumed)
    assert resumed.epoch == 1


def test_a_resumed_model_checkpoint_keeps_the_best_file(backend, tmp_path):
    """After a resume, an epoch worse than the history's best does not overwrite it."""
    path = tmp_path / "best.safetensors"
    trainer = make_trainer(backend, [ModelCheckpoint(path, monitor="loss", mode="max")])
    trainer.train(2, log_level=0)
    assert read_metadata(path)["trainer"]["epoch"] == 1
    resumed = make_trainer(backend, [ModelCheckpoint(path, monitor="loss", mode="max")])
    restore(path, trainer=resumed)
    resumed.train(2, log_level=0)
    assert read_metadata(path)["trainer"]["epoch"] == 1


def test_model_checkpoint_every_epoch(tmp_path):
    cb = ModelCheckpoint(tmp_path / "e{epoch}.safetensors", save_best_only=False)
    make_trainer("numpy", [cb], val=False).train(2, log_level=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e0.safetensors", "e1.safetensors"]


# --- CSVLogger ----------------------------------------------------------------------

def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_logger_writes_the_history(backend, tmp_path):
    path = tmp_path / "log.csv"
    trainer = make_trainer(backend, [CSVLogger(path)])
    history = trainer.train(3, log_level=0)
    rows = read_csv(path)
    assert list(rows[0]) == ["epoch", "loss", "val_loss", "val_accuracy"]
    assert [{k: float(v) for k, v in row.items()} for row in rows] == history


def test_csv_logger_appends_on_resume_and_replaces_otherwise(tmp_path):
    path = tmp_path / "log.csv"
    make_trainer("numpy", [CSVLogger(path)]).train(2, log_level=0)
    trainer = make_trainer("numpy", [CSVLogger(path, append=True)])
    trainer.train(1, log_level=0)
    trainer.train(1, log_level=0)
    assert [row["epoch"] for row in read_csv(path)] == ["0", "1", "0", "1"]
    make_trainer("numpy", [CSVLogger(path)]).train(1, log_level=0)
    assert len(read_csv(path)) == 1


# --- LayerStats ---------------------------------------------------------------------

def test_layer_stats_match_a_numpy_computation(backend):
    stats = LayerStats(n_samples=10)
    trainer = make_trainer(backend, [stats])
    trainer.train(2, log_level=0)
    assert stats.epochs == [0, 1]
    rows = [r for r in stats.rows if r["epoch"] == 1]
    assert [(r["layer"], r["kind"]) for r in rows] == [(0, "Linear"), (1, "ReLU"), (2, "Linear")]

    X, y = data()
    x = X[48:58].astype(np.float32)
    w0, b0, w2, b2 = (backend.to_numpy(p.value).astype(np.float64)
                      for p in trainer.model.parameters())
    h0 = x @ w0 + b0
    h1 = np.maximum(h0, 0)
    h2 = h1 @ w2 + b2
    p = np.exp(h2 - h2.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g2 = (p - np.eye(2)[y[48:58]]) / len(x)  # the gradient of the batch-mean loss
    g1 = g2 @ w2.T
    g0 = g1 * (h0 > 0)
    rtol = 1e-4
    np.testing.assert_allclose(rows[0]["out_std"], h0.std(), rtol=rtol)
    np.testing.assert_allclose(rows[1]["out_mean"], h1.mean(), rtol=rtol)
    np.testing.assert_allclose(rows[2]["grad_rms"], np.sqrt((g2 ** 2).mean()), rtol=rtol)
    np.testing.assert_allclose(rows[0]["grad_rms"], np.sqrt((g0 ** 2).mean()), rtol=rtol)
    np.testing.assert_allclose(rows[1]["dead_fraction"], np.mean(np.all(h1 <= 0, axis=0)))
    np.testing.assert_allclose(rows[2]["weights_norm"], np.linalg.norm(w2), rtol=rtol)
    np.testing.assert_allclose(rows[0]["weights_grad_norm"],
                               np.linalg.norm(x.T @ g0), rtol=rtol, atol=1e-7)
    assert "weights_norm" not in rows[1]


def test_dead_relus_are_counted(backend):
    stats = LayerStats()
    trainer = make_trainer(backend, [stats], lr=0.0)
    first = trainer.model.layers[0]
    first.bias = backend.asarray(np.full(8, -100.0), dtype="float32")
    trainer.train(1, log_level=0)
    relu = stats.rows[1]
    assert relu["kind"] == "ReLU" and relu["dead_fraction"] == 1.0
    assert stats.rows[0]["weights_grad_norm"] == 0.0


def test_layer_stats_do_not_change_the_trajectory(backend):
    """The probe runs in eval mode: no dropout mask drawn, no running statistic moved."""
    extra = [lambda b: backendnn.Dropout(0.3, backend=b)] if hasattr(backendnn, "Dropout") else []
    backendnn.seed(1)
    plain = make_trainer(backend, extra_layers=extra)
    plain.train(3, log_level=0)
    backendnn.seed(1)
    inspected = make_trainer(backend, [LayerStats()], extra_layers=extra)
    inspected.train(3, log_level=0)
    assert inspected.history == plain.history
    assert inspected.model.training


def test_layer_stats_restore_each_layers_mode(backend):
    trainer = make_trainer(backend, extra_layers=[lambda b: backendnn.Dropout(0.3, backend=b)])
    model = trainer.model
    model.layers[0].eval()
    modes = [layer.training for layer in model.layers]
    X, y = data(8)
    LayerStats().record(model, *Dataset(X, y).on(model.backend))
    assert [layer.training for layer in model.layers] == modes == [False, True, True, True]


def test_layer_stats_every_and_explicit_probe(tmp_path):
    X, y = data(20, seed=9)
    stats = LayerStats(data=(X, y), n_samples=5, every=2)
    make_trainer("numpy", [stats]).train(4, log_level=0)
    assert stats.epochs == [1, 3]
    assert "dead_fraction" in stats.summary() and stats.summary().startswith("epoch 3")


def test_layer_stats_refuse_bad_arguments():
    with pytest.raises(ValueError, match="n_samples"):
        LayerStats(n_samples=0)
    with pytest.raises(ValueError, match="every"):
        LayerStats(every=0)


# --- plots --------------------------------------------------------------------------

def test_history_plot_writes_a_png(tmp_path):
    trainer = make_trainer("numpy")
    history = trainer.train(3, log_level=0)
    fig = history.plot(tmp_path / "history.png")
    assert (tmp_path / "history.png").read_bytes()[:8] == PNG
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "val_accuracy"]
    lines = {line.get_label(): line.get_ydata() for line in fig.axes[0].get_lines()}
    np.testing.assert_array_equal(lines["val_loss"], history.val_loss)


def test_layer_stats_plot_and_weight_images_write_pngs(tmp_path):
    stats = LayerStats()
    trainer = make_trainer("numpy", [stats])
    trainer.train(2, log_level=0)
    fig = stats.plot(tmp_path / "stats.png")
    assert (tmp_path / "stats.png").read_bytes()[:8] == PNG
    assert [ax.get_title() for ax in fig.axes] == [
        "output std", "RMS of dL/d(output)", "norm of weight gradient", "dead ReLU fraction"]
    fig = plot_weight_images(trainer.model.layers[0].weights, tmp_path / "w.png", image_shape=(2, 2))
    assert (tmp_path / "w.png").read_bytes()[:8] == PNG and len(fig.axes) == 8


def test_plot_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="history is empty"):
        plot_history([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="nothing recorded"):
        plot_layer_stats(LayerStats())
    with pytest.raises(ValueError, match=r"\(64, n_units\) for 8x8 images, got \(4, 8\)"):
        plot_weight_images(np.zeros((4, 8)))


def test_missing_matplotlib_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'backendnn\[plot\]'"):
        plot_history([{"epoch": 0, "loss": 1.0}])


def test_digits_example_inspect_saves_weight_images_and_layer_stats(tmp_path, capsys):
    pytest.importorskip("sklearn")
    import importlib.util
    from pathlib import Path

    script = Path(backendnn.__file__).resolve().parent.parent / "examples" / "digits.py"
    spec = importlib.util.spec_from_file_location("example_digits_inspect", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    png = tmp_path / "w.png"
    result = module.main(["--backend", "numpy", "--epochs", "1", "--inspect", str(png)])
    assert result["inspect"] == [str(png), str(tmp_path / "w_layers.png")]
    for path in result["inspect"]:
        assert Path(path).read_bytes()[:8] == PNG
    out = capsys.readouterr().out
    assert "dead_fraction" in out and "first-layer weights: " in out
