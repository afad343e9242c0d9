"""Dataset, DataLoader, scaling, Trainer and accuracy."""
import math
import re

import numpy as np
import pytest
from conftest import host

import backendnn
from backendnn import (
    SGD,
    BinaryCrossEntropy,
    DataLoader,
    Dataset,
    Linear,
    Sequential,
    Sigmoid,
    StandardScaler,
    Trainer,
    accuracy,
    normalize,
)



def blobs(rng, n=40, d=3):
    """Two separable clusters: X (n, d) float64, y (n,) int64 in {0, 1}."""
    y = np.arange(n) % 2
    X = rng.normal(size=(n, d)) + 3.0 * (2 * y[:, None] - 1)
    return X, y


# --- Dataset / DataLoader -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batches_on_backend_in_dtype(backend, rng, dtype):
    X, y = blobs(rng, n=10)
    dl = DataLoader(Dataset(X, y), batch_size=4)
    batches = list(dl.batches(backend, dtype))
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3), (4, 3), (2, 3)]
    for x, yb in batches:
        assert backend.owns(x) and backend.owns(yb)
        assert x.dtype == backend.dtype(dtype)
        assert backend.xp.isdtype(yb.dtype, "integral")
    np.testing.assert_array_equal(np.concatenate([host(backend, x) for x, _ in batches]),
                                  X.astype(dtype))
    np.testing.assert_array_equal(np.concatenate([host(backend, b) for _, b in batches]), y)


def test_float_targets_take_model_dtype(backend, rng):
    X = rng.normal(size=(6, 2))
    y = rng.normal(size=(6, 1))
    x_b, y_b = next(iter(DataLoader(Dataset(X, y), batch_size=6).batches(backend, "float32")))
    assert y_b.dtype == backend.dtype("float32")
    assert tuple(y_b.shape) == (6, 1)


def test_iterating_uses_current_backend(backend, rng):
    X, y = blobs(rng, n=6)
    dl = DataLoader(Dataset(X, y), batch_size=3)
    with backendnn.use_backend(backend):
        x, _ = next(iter(dl))
    assert backend.owns(x) and x.dtype == backend.dtype("float32")


def test_shuffle_order_same_on_every_backend(backend):
    n = 23
    X = np.arange(n, dtype=np.float64)[:, None]
    y = np.arange(n)
    dl = DataLoader(Dataset(X, y), batch_size=5, shuffle=True)

    def epoch_orders(b):
        backendnn.seed(42)
        return [np.concatenate([host(b, yb) for _, yb in dl.batches(b)]) for _ in range(2)]

    ours = epoch_orders(backend)
    reference = epoch_orders(backendnn.backends.get("numpy"))
    for order, ref in zip(ours, reference):
        np.testing.assert_array_equal(order, ref)
        assert sorted(order) == list(range(n))
    assert not np.array_equal(ours[0], np.arange(n))
    assert not np.array_equal(ours[0], ours[1])  # a new order every epoch
    first_x = np.concatenate([host(backend, xb)[:, 0] for xb, _ in dl.batches(backend)])
    assert sorted(first_x) == list(range(n))  # X and y are shuffled together


@pytest.mark.parametrize("drop_last, sizes", [(False, [4, 4, 2]), (True, [4, 4])])
@pytest.mark.parametrize("shuffle", [False, True])
def test_drop_last_and_len(backend, rng, drop_last, sizes, shuffle):
    X, y = blobs(rng, n=10)
    dl = DataLoader(Dataset(X, y), batch_size=4, shuffle=shuffle, drop_last=drop_last)
    assert len(dl) == len(sizes)
    assert [x.shape[0] for x, _ in dl.batches(backend)] == sizes
    assert len(Dataset(X, y)) == 10


def test_dataset_accepts_backend_arrays(backend, rng):
    X, y = blobs(rng, n=8)
    ds = Dataset(backend.asarray(X), backend.asarray(y))
    np.testing.assert_array_equal(ds.X, X)
    x_b, y_b = next(iter(DataLoader(ds, batch_size=8).batches(backend)))
    np.testing.assert_allclose(host(backend, x_b), X.astype(np.float32))


# --- scaling ------------------------------------------------------------------------------

def test_normalize_uses_training_statistics_only(rng):
    X_train = rng.normal(5.0, 3.0, (30, 4))
    X_val = rng.normal(-2.0, 0.5, (10, 4))
    mu, sd = X_train.mean(axis=0), X_train.std(axis=0)
    expected_val = (X_val - mu) / sd
    a, b = normalize(X_train, X_val)
    assert a is X_train and b is X_val  # in place, as in the seed
    np.testing.assert_allclose(X_train.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(X_train.std(axis=0), 1.0, rtol=1e-12)
    np.testing.assert_allclose(X_val, expected_val, rtol=1e-12)
    assert np.all(np.abs(X_val.mean(axis=0)) > 0.5)  # not fitted on the validation set


def test_normalize_constant_feature(rng):
    X_train = rng.normal(size=(10, 3))
    X_train[:, 1] = 7.0
    X_val = rng.normal(size=(4, 3))
    normalize(X_train, X_val)
    assert np.all(np.isfinite(X_train)) and np.all(np.isfinite(X_val))
    np.testing.assert_array_equal(X_train[:, 1], 0.0)


def test_normalize_refuses_integer_arrays(rng):
    with pytest.raises(TypeError, match="float"):
        normalize(rng.integers(0, 5, (6, 2)))


def test_standard_scaler_on_backend(backend, rng):
    X_train = rng.normal(2.0, 4.0, (20, 3))
    X_test = rng.normal(size=(5, 3))
    X_train[:, 2] = 1.5
    scaler = StandardScaler().fit(backend.asarray(X_train, dtype="float32"))
    out = scaler.transform(backend.asarray(X_test, dtype="float32"))
    assert backend.owns(out) and out.dtype == backend.dtype("float32")
    mu, sd = X_train.mean(axis=0), X_train.std(axis=0)
    sd[2] = 1.0
    np.testing.assert_allclose(host(backend, out), (X_test - mu) / sd, rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="fit"):
        StandardScaler().transform(backend.asarray(X_test))


# --- Trainer ------------------------------------------------------------------------------

def make_trainer(backend, rng, n=40, **kw):
    X, y = blobs(rng, n=n)
    train_dl = DataLoader(Dataset(X, y), batch_size=8, shuffle=True)
    val_dl = DataLoader(Dataset(X[:16], y[:16]), batch_size=8)
    with backendnn.use_backend(backend):
        model = Sequential([Linear(3, 1), Sigmoid()], BinaryCrossEntropy())
    return Trainer(model, SGD(model, lr=0.1), train_dl, val_dl, metric=accuracy, **kw)


def test_train_returns_history(backend, rng, capsys):
    trainer = make_trainer(backend, rng)
    history = trainer.train(4, log_level=0)
    assert len(history) == 4
    assert [row["epoch"] for row in history] == [0, 1, 2, 3]
    for key in ("loss", "val_loss", "val_metric"):
        values = [row[key] for row in history]
        assert all(type(v) is float and math.isfinite(v) for v in values)
    assert history.loss == [row["loss"] for row in history]
    assert history.loss[-1] < history.loss[0]
    assert history.val_metric[-1] >= 0.9
    assert trainer.train(1, log_level=0)[-1]["epoch"] == 4  # epochs continue


def test_epoch_loss_is_mean_of_losses_before_each_step(backend, rng):
    """Seed 000's train_one_epoch: per-sample losses summed before each step, over n."""
    X, y = blobs(rng, n=20)
    with backendnn.use_backend(backend):
        model = Sequential([Linear(3, 1), Sigmoid()], BinaryCrossEntropy())
    dl = DataLoader(Dataset(X, y), batch_size=8)
    w = host(backend, model.layers[0].weights).astype(np.float64)
    b = host(backend, model.layers[0].bias).astype(np.float64)
    total = 0.0
    for i in range(0, 20, 8):
        xb, yb = X[i:i + 8].astype(np.float32), y[i:i + 8, None]
        p = 1 / (1 + np.exp(-(xb @ w + b)))
        total += -np.where(yb == 1, np.log(p), np.log(1 - p)).sum()
        g = p - yb
        w -= 0.1 * xb.T @ g / len(xb)
        b -= 0.1 * g.mean(axis=0)
    trainer = Trainer(model, SGD(model, lr=0.1), dl, None, metric=None)
    history = trainer.train(1, log_level=0)
    np.testing.assert_allclose(history[0]["loss"], total / 20, rtol=1e-5)
    assert "val_loss" not in history[0]


@pytest.mark.parametrize("epochs, log_level, lines", [(3, 1, 3), (4, 2, 2), (3, 0, 0), (2, 5, 0)])
def test_log_level_printing(backend, rng, capsys, epochs, log_level, lines):
    trainer = make_trainer(backend, rng)
    history = trainer.train(epochs, log_level=log_level)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == lines
    for line, row in zip(out, history[log_level - 1::log_level] if log_level else []):
        numbers = [float(s) for s in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", line)]
        assert row["epoch"] in numbers
        for key in ("loss", "val_loss", "val_accuracy"):
            assert key in line
            assert any(abs(v - row[key]) <= 1e-3 for v in numbers)


def test_default_log_level_prints_every_epoch(backend, rng, capsys):
    make_trainer(backend, rng).train(2)
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_progress_bar_quiet_when_not_a_terminal(backend, rng, capsys):
    trainer = make_trainer(backend, rng)
    assert trainer.progress is False  # capsys's stderr is not a terminal
    trainer.train(2, log_level=0)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_progress_bar_when_asked(backend, rng, capsys):
    make_trainer(backend, rng, progress=True).train(1, log_level=0)
    assert "epoch 0" in capsys.readouterr().err


def test_evaluate_returns_python_floats(backend, rng):
    trainer = make_trainer(backend, rng)
    loss, metric = trainer.evaluate(trainer.val_dl)
    assert type(loss) is float and type(metric) is float
    assert loss > 0 and 0.0 <= metric <= 1.0
    X, y = trainer.val_dl.dataset.X, trainer.val_dl.dataset.y
    w = host(trainer.model.backend, trainer.model.layers[0].weights).astype(np.float64)
    p = 1 / (1 + np.exp(-(X.astype(np.float32) @ w)))[:, 0]
    np.testing.assert_allclose(loss, np.mean(-np.where(y == 1, np.log(p), np.log(1 - p))), rtol=1e-5)
    np.testing.assert_allclose(metric, np.mean((p > 0.5) == y), rtol=1e-6)


def test_evaluate_restores_each_layers_mode(backend, rng):
    """A layer the user froze in eval mode must not switch the others off after evaluate."""
    X, y = blobs(rng, n=16)
    with backendnn.use_backend(backend):
        model = Sequential([Linear(3, 4), backendnn.BatchNorm1d(4), backendnn.Dropout(0.5),
                            Linear(4, 1), Sigmoid()], BinaryCrossEntropy())
    model.layers[1].eval()
    dl = DataLoader(Dataset(X, y), batch_size=8)
    modes = [layer.training for layer in model.layers]
    Trainer(model, SGD(model, lr=0.1), dl, progress=False).evaluate(dl)
    assert [layer.training for layer in model.layers] == modes == [True, False, True, True, True]


# --- accuracy -----------------------------------------------------------------------------

def test_accuracy_binary(backend):
    p = np.array([[0.9], [0.2], [0.6], [0.4], [0.51]], dtype=np.float32)
    y = np.array([1, 0, 0, 0, 1])
    for y_in in (y, y[:, None], y.astype(np.float32), y[:, None].astype(np.float32)):
        acc = accuracy(backend.asarray(p), backend.asarray(y_in))
        assert tuple(acc.shape) == ()
        assert acc.dtype == backend.dtype("float32")
        assert float(acc) == pytest.approx(0.8)
    flat = accuracy(backend.asarray(p[:, 0]), backend.asarray(y))
    assert float(flat) == pytest.approx(0.8)


def test_accuracy_multiclass_labels_and_one_hot(backend, rng):
    logits = rng.normal(size=(12, 4)).astype(np.float32)
    labels = rng.integers(0, 4, 12)
    labels[:6] = logits[:6].argmax(axis=1)
    expected = np.mean(logits.argmax(axis=1) == labels)
    by_label = accuracy(backend.asarray(logits), backend.asarray(labels))
    by_one_hot = accuracy(backend.asarray(logits), backend.asarray(np.eye(4, dtype=np.float32)[labels]))
    by_column = accuracy(backend.asarray(logits), backend.asarray(labels[:, None]))
    assert float(by_label) == pytest.approx(expected)
    assert float(by_one_hot) == pytest.approx(expected)
    assert float(by_column) == pytest.approx(expected)  # (batch, 1) labels, as CrossEntropy takes
    assert expected >= 0.5


def test_accuracy_refuses_mismatched_shapes(backend):
    with pytest.raises(ValueError, match="shape"):
        accuracy(backend.asarray(np.zeros((4, 3), dtype=np.float32)), backend.asarray(np.zeros(5)))
