"""Training safety: non-finite losses (rollback, skip), no per-step read-back, dtypes
refused, mismatched Trainer arguments, per-loader generators, History naming."""
import threading

import numpy as np
import pytest
from conftest import host

import backendnn
from backendnn import (
    MLP,
    SGD,
    Adam,
    DataLoader,
    Dataset,
    Linear,
    MeanSquaredError,
    NonFiniteLossError,
    Sequential,
    Trainer,
    accuracy,
)
from backendnn.metrics import f1, r2


MARK = 1e6


class NaNAt(MeanSquaredError):
    """MSE whose loss (and gradient) is NaN for a batch holding a target of MARK
    (a test helper: it reads the batch back)."""

    def forward(self, y_hat, y):
        loss = super().forward(y_hat, y)
        if np.any(host(self.backend, y) == MARK):
            self.diff = self.diff * float("nan")
            return loss * float("nan")
        return loss


def marked(y, batches, size=8):
    y = y.copy()
    for b in batches:
        y[b * size] = MARK
    return y


def regression(rng, n=80):
    X = rng.normal(size=(n, 3))
    return X, X @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=n)


def fitted(X, y, criterion, epochs=1, **kw):
    backendnn.seed(0)
    model = Sequential([Linear(3, 1)], criterion)
    trainer = Trainer(model, Adam(model, lr=0.05), DataLoader(Dataset(X, y), batch_size=8),
                      progress=False, **kw)
    return model, trainer


def weights(model):
    return [host(model.backend, v) for v in model.state_dict().values()]


def test_nan_raises_naming_the_batch_and_rolls_back(rng):
    X, y = regression(rng)
    model, trainer = fitted(X, marked(y, [6]), NaNAt(), check_every=4)
    with pytest.raises(NonFiniteLossError, match=r"epoch 0, batch 6.*just before that batch"):
        trainer.train(1, log_level=0)
    reference, ref_trainer = fitted(X[:48], y[:48], MeanSquaredError())  # 6 batches of 8
    ref_trainer.train(1, log_level=0)
    for got, want in zip(weights(model), weights(reference)):
        assert np.all(np.isfinite(got))
        np.testing.assert_array_equal(got, want)
    assert trainer.optimizer.step_count == 6


def test_skip_batch_undoes_only_that_batch(rng):
    X, y = regression(rng)
    model, trainer = fitted(X, marked(y, [2, 7]), NaNAt(), on_nonfinite="skip_batch",
                            check_every=5)
    with pytest.warns(RuntimeWarning, match="skipped 2 batches"):
        history = trainer.train(1, log_level=0)
    assert trainer.skipped == [(0, 2), (0, 7)] and history[0]["skipped"] == 2
    keep = np.r_[0:16, 24:56, 64:80]  # without batches 2 and 7
    reference, ref_trainer = fitted(X[keep], y[keep], MeanSquaredError())
    ref_trainer.train(1, log_level=0)
    for got, want in zip(weights(model), weights(reference)):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(history[0]["loss"], ref_trainer.history[0]["loss"], rtol=1e-6)


def test_losses_are_read_once_per_check_not_per_step(rng, monkeypatch):
    X, y = regression(rng, n=160)  # 20 batches
    model, trainer = fitted(X, y, MeanSquaredError(), check_every=10)
    backend, reads = model.backend, []
    real = backend.to_numpy
    monkeypatch.setattr(backend, "to_numpy", lambda x: reads.append(1) or real(x))
    trainer.train_one_epoch()
    assert len(reads) == 2


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_is_refused_up_front(dtype, rng):
    model = MLP([3, 4, 1], "relu", "mse")
    with pytest.raises(TypeError, match=f"{dtype} is not supported.*float32"):
        model.to("torch" if dtype == "bfloat16" else "numpy", dtype)
    assert model.dtype == "float32"
    X, y = regression(rng)
    with pytest.raises(TypeError, match=f"{dtype} is not supported"):
        DataLoader(Dataset(X, y), dtype=dtype)
    with pytest.raises(TypeError, match=f"{dtype} is not supported"):
        Dataset(X, y).on("numpy", dtype)


def test_trainer_names_a_missing_criterion_and_a_foreign_optimizer(rng):
    X, y = regression(rng)
    dl = DataLoader(Dataset(X, y))
    model = Sequential([Linear(3, 1)])
    with pytest.raises(ValueError, match="no criterion"):
        Trainer(model, SGD(model, lr=0.1), dl)
    model = MLP([3, 4, 1], "relu", "mse")
    other = MLP([3, 4, 1], "relu", "mse")
    with pytest.raises(ValueError, match="built for another model"):
        Trainer(model, SGD(other, lr=0.1), dl)
    with pytest.raises(TypeError, match="Optimizer"):
        Trainer(model, "sgd", dl)
    Trainer(model, SGD(model.layers[0], lr=0.1), dl)  # some of the model's parameters: fine


def test_loader_generators_are_per_loader_and_thread_safe(rng):
    X, y = regression(rng, n=64)
    ds = Dataset(X, y)

    def orders(seed, out):
        dl = DataLoader(ds, batch_size=64, shuffle=True, generator=seed)
        for _ in range(30):
            out.append(host(backendnn.backends.get("numpy"), next(iter(dl))[1]))
            backendnn.seed(len(out))  # the shared generator changes under it

    runs = [[], [], []]
    threads = [threading.Thread(target=orders, args=(s, r)) for s, r in zip((7, 7, 8), runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_array_equal(np.array(runs[0]), np.array(runs[1]))
    assert not np.array_equal(runs[0][0], runs[2][0])
    assert not np.array_equal(runs[0][0], runs[0][1])  # a new order each epoch
    with pytest.raises(ValueError, match="generator"):
        DataLoader(ds, generator=-1)


def blobs(rng, n=60):
    y = np.arange(n) % 2
    return rng.normal(size=(n, 3)) + 2.0 * (2 * y[:, None] - 1), y


def test_history_names_metrics_and_records_the_training_metric(rng):
    X, y = blobs(rng)
    backendnn.seed(0)
    model = MLP([3, 4, 2], "relu", "cross_entropy", output_activation=None)
    dl = DataLoader(Dataset(X, y), batch_size=16)
    trainer = Trainer(model, SGD(model, lr=0.1), dl, dl, metric=[accuracy, f1],
                      train_metric=True, progress=False)
    history = trainer.train(2, log_level=0)
    assert list(history[0]) == ["epoch", "loss", "accuracy", "f1", "val_loss",
                                "val_accuracy", "val_f1"]
    assert history.metrics == ["accuracy", "f1"]
    assert history[1]["accuracy"] == history[1]["val_accuracy"]  # the same data here
    loss, acc = trainer.evaluate(dl)
    assert acc == pytest.approx(history[1]["val_accuracy"])


def test_no_metric_no_column_and_old_names_still_read(rng, tmp_path):
    pytest.importorskip("matplotlib")
    X, y = regression(rng)
    model, trainer = fitted(X, y, MeanSquaredError())
    trainer.val_dl = trainer.train_dl
    history = trainer.train(2, log_level=0)
    assert list(history[0]) == ["epoch", "loss", "val_loss"]
    assert trainer.evaluate(trainer.val_dl)[1] != trainer.evaluate(trainer.val_dl)[1]  # NaN
    fig = history.plot()
    assert len(fig.axes) == 1
    model, trainer = fitted(X, y, MeanSquaredError(), metric={"R2": r2})
    trainer.val_dl = trainer.train_dl
    history = trainer.train(1, log_level=0)
    assert history[0]["val_metric"] == history[0]["val_R2"] == history.val_metric[0]
    with pytest.raises(ValueError, match="named 'r2'"):
        Trainer(model, SGD(model, lr=0.1), trainer.train_dl, metric=[r2, r2])


def test_bce_range_check_is_skipped_for_a_checked_dataset(rng, monkeypatch):
    """Targets in [0, 1] and a Sigmoid last layer: no per-step range read-back."""
    X, y = blobs(rng)
    backendnn.seed(0)
    model = MLP([3, 4, 1], "relu", "bce", output_activation="sigmoid")
    trainer = Trainer(model, SGD(model, lr=0.1), DataLoader(Dataset(X, y.astype(float)),
                                                            batch_size=10), progress=False)
    backend, reads = model.backend, []
    real = backend.to_numpy
    monkeypatch.setattr(backend, "to_numpy", lambda x: reads.append(1) or real(x))
    trainer.train_one_epoch()
    assert len(reads) == 1
    bad = Trainer(model, SGD(model, lr=0.1), DataLoader(Dataset(X, 2.0 * y), batch_size=10))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\]"):
        bad.train_one_epoch()
