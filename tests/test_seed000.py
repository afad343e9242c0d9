"""Seed 000 ("Neural Nets Aren't Black Boxes") on the breast-cancer data.

Its usage code runs unchanged with names imported from backendnn, on every backend;
and backendnn reproduces the seed's own NumPy classes (written out below in float64,
with the seed's batched outer product) fed the same initial weights and batches.
"""
import numpy as np
import pytest

import backendnn
from backendnn.backends import to_host

sklearn_datasets = pytest.importorskip("sklearn.datasets")
sklearn_model_selection = pytest.importorskip("sklearn.model_selection")

# The seed's usage code, verbatim (comments included), in the pieces it comes in.
DATA = """
X, y = load_breast_cancer(return_X_y=True)
X_train, X_val, y_train, y_val = train_test_split(X, y, test_size=0.2, random_state=9)
X_train, X_val = normalize(X_train, X_val)
# Prep datasets & dataloaders
train_ds = Dataset(X_train, y_train)
val_ds = Dataset(X_val, y_val)
batch_size = 64
train_dl = DataLoader(train_ds, batch_size=batch_size, shuffle=True)
val_dl = DataLoader(val_ds, batch_size=batch_size, shuffle=False)
# Number of input features
n_inp = X_train.shape[1]
"""
LOGISTIC = """
# Initialise layers and criterion
criterion = BinaryCrossEntropy()
layers = [Linear(n_inp, 1), Sigmoid()]
model = Sequential(layers, criterion)
# Initialise optimizer and trainer
optimizer = SGD(model, lr=0.1)
trainer = Trainer(model, optimizer, train_dl, val_dl, metric=accuracy)
"""
TWO_LAYER = """
# Initialise layers and criterion
criterion = BinaryCrossEntropy()
layers = [Linear(n_inp, 20), ReLU(), Linear(20, 1), Sigmoid()]
model = Sequential(layers, criterion)
# Initialise optimizer and trainer
optimizer = SGD(model, lr=0.1)
trainer = Trainer(model, optimizer, train_dl, val_dl, metric=accuracy)
"""
TRAIN = "trainer.train(5)"

NAMES = ("Dataset", "DataLoader", "BinaryCrossEntropy", "Linear", "Sigmoid", "ReLU",
         "Sequential", "SGD", "Trainer", "accuracy", "normalize")


def namespace(**overrides):
    ns = {name: getattr(backendnn, name) for name in NAMES}
    ns["load_breast_cancer"] = sklearn_datasets.load_breast_cancer
    ns["train_test_split"] = sklearn_model_selection.train_test_split
    ns.update(overrides)
    return ns


@pytest.mark.parametrize("network", [LOGISTIC, TWO_LAYER], ids=["logistic", "two_layer"])
def test_seed_usage_runs_unchanged(backend, capsys, network):
    ns = namespace()
    with backendnn.use_backend(backend):
        exec(DATA, ns)
        exec(network, ns)
        exec(TRAIN, ns)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5
    model, trainer = ns["model"], ns["trainer"]
    assert model.backend is backend
    assert all(backend.owns(p.value) for p in model.parameters())
    loss, acc = trainer.evaluate(ns["val_dl"])
    assert type(loss) is float and type(acc) is float
    assert acc >= 0.92
    assert trainer.history[-1]["loss"] < trainer.history[0]["loss"]


# --- the seed's classes, float64 NumPy ------------------------------------------------------

class SeedBinaryCrossEntropy:
    def __call__(self, y_hat, y):
        return self.forward(y_hat, y)

    def forward(self, y_hat, y):
        self.y_hat, self.y = y_hat.clip(min=1e-8, max=1 - 1e-8), y
        return -np.where(y == 1, np.log(self.y_hat), np.log(1 - self.y_hat))

    def backward(self):
        return (self.y_hat - self.y) / (self.y_hat * (1 - self.y_hat))


class SeedSigmoid:
    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        with np.errstate(over="ignore"):  # np.where evaluates both branches
            self.y_hat = np.where(x > 0, 1 / (1 + np.exp(-x)), np.exp(x) / (1 + np.exp(x)))
        return self.y_hat

    def backward(self, grad):
        return self.y_hat * (1 - self.y_hat) * grad


class SeedReLU:
    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        self.x = x
        return np.where(x > 0, x, 0)

    def backward(self, grad):
        return np.where(self.x > 0, grad, 0)


class SeedLinear:
    """The seed's Linear, given its initial weights instead of drawing them."""

    def __init__(self, weights, bias):
        self.weights, self.bias = weights, bias

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        self.x = x
        return x @ self.weights + self.bias

    def backward(self, grad):
        self.grad_w = (self.x[:, :, None] @ grad[:, None, :]).mean(axis=0)
        self.grad_b = grad.mean(axis=0)
        return grad @ self.weights.T


class SeedSequential:
    def __init__(self, layers, criterion):
        self.layers, self.criterion = layers, criterion

    def __call__(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self):
        grad = self.criterion.backward()
        for layer in self.layers[::-1]:
            grad = layer.backward(grad)


class SeedSGD:
    def __init__(self, model, lr):
        self.model, self.lr = model, lr

    def step(self):
        for layer in self.model.layers:
            if isinstance(layer, SeedLinear):
                layer.weights -= self.lr * layer.grad_w
                layer.bias -= self.lr * layer.grad_b


def seed_accuracy(y_hat, y):
    return np.mean((y_hat > 0.5) == y)


class SeedTrainer:
    """The seed's Trainer over given lists of batches, returning its numbers."""

    def __init__(self, model, optimizer, metric):
        self.model, self.optimizer, self.metric = model, optimizer, metric

    def train_one_epoch(self, batches):
        loss, n = 0, 0
        for x, y in batches:
            y_hat = self.model(x)
            batch_loss = self.model.criterion(y_hat, y).sum()
            self.model.backward()
            self.optimizer.step()
            loss += batch_loss
            n += len(y)
        return loss / n

    def evaluate(self, batches):
        loss, metric, n = 0, 0, 0
        for x, y in batches:
            y_hat = self.model(x)
            batch_loss = self.model.criterion(y_hat, y).sum()
            batch_metric = self.metric(y_hat, y)
            metric += len(y) * batch_metric
            loss += batch_loss
            n += len(y)
        return loss / n, metric / n


class RecordingLoader(backendnn.DataLoader):
    """A DataLoader that keeps a host float64 copy of every batch it yields, per epoch;
    targets as columns (batch, 1), the shape of the seed's predictions."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.epochs = []

    def batches(self, backend=None, dtype=None):
        record = []
        self.epochs.append(record)
        for x, y in super().batches(backend, dtype):
            record.append((np.array(to_host(x), dtype=np.float64),
                           np.array(to_host(y), dtype=np.float64).reshape(-1, 1)))
            yield x, y


@pytest.mark.parametrize("network", [LOGISTIC, TWO_LAYER], ids=["logistic", "two_layer"])
def test_reproduces_the_seed_classes(backend, capsys, network):
    ns = namespace(DataLoader=RecordingLoader)
    with backendnn.use_backend(backend):
        exec(DATA, ns)
        exec(network, ns)
        model = ns["model"]
        initial = [np.array(to_host(p.value), dtype=np.float64) for p in model.parameters()]
        exec(TRAIN, ns)
    history = ns["trainer"].history

    layers = []
    weights = iter(initial)
    for layer in model.layers:
        kind = type(layer).__name__
        layers.append(SeedLinear(next(weights), next(weights)) if kind == "Linear"
                      else {"ReLU": SeedReLU, "Sigmoid": SeedSigmoid}[kind]())
    reference = SeedSequential(layers, SeedBinaryCrossEntropy())
    seed_trainer = SeedTrainer(reference, SeedSGD(reference, lr=0.1), seed_accuracy)
    train_epochs, val_epochs = ns["train_dl"].epochs, ns["val_dl"].epochs
    assert len(train_epochs) == len(val_epochs) == 5
    assert [len(e) for e in train_epochs] == [8] * 5  # 455 samples in batches of 64

    for e in range(5):
        loss = seed_trainer.train_one_epoch(train_epochs[e])
        val_loss, val_metric = seed_trainer.evaluate(val_epochs[e])
        row = history[e]
        np.testing.assert_allclose(row["loss"], loss, rtol=1e-5)
        np.testing.assert_allclose(row["val_loss"], val_loss, rtol=1e-5)
        assert abs(row["val_metric"] - val_metric) <= 1 / 114 + 1e-12
    final = [a for layer in layers if isinstance(layer, SeedLinear) for a in (layer.weights, layer.bias)]
    for p, ref in zip(model.parameters(), final):
        np.testing.assert_allclose(to_host(p.value), ref, rtol=1e-5, atol=1e-6)
    # the batches were shuffled, and differently each epoch
    firsts = [e[0][1][:, 0] for e in train_epochs]
    assert not np.array_equal(firsts[0], firsts[1])
