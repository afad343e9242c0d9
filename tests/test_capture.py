"""Capturing the training step (Trainer(capture=True), Backend.capture_step) and the
training loop's label check without device read-backs.

On the CPU backends capture is a no-op (the portable fallback); the Trainer's
static-buffer machinery runs through `GraphLike`, a NumPy backend whose capture
behaves as a CUDA graph seen from Python. Real CUDA graphs: the cuda-marked tests.
"""
import numpy as np
import pytest

import backendnn
from backendnn import (
    SGD,
    Adam,
    BatchNorm1d,
    CrossEntropy,
    DataLoader,
    Dataset,
    Dropout,
    Linear,
    ReLU,
    Sequential,
    StepLR,
    Trainer,
)
from backendnn import backends
from backendnn.backends.numpy import NumpyBackend
from conftest import cuda


class GraphLike(NumpyBackend):
    """NumPy whose `capture_step` behaves as a CUDA graph seen from Python: capturing
    runs nothing, a replay runs the step on whatever its buffers hold, and every
    replay returns the same output array, overwritten."""

    name = "graph_like"
    can_capture = True

    def __init__(self):
        super().__init__()
        self.captures = 0
        self.replays = 0

    def capture_step(self, fn):
        self.captures += 1
        out = []

        def replay():
            value = fn()
            if out:
                out[0][...] = value
            else:
                out.append(np.array(value, copy=True))
            self.replays += 1
            return out[0]

        return replay


@pytest.fixture
def graph_like():
    backends.register("graph_like", GraphLike)
    try:
        yield backends.get("graph_like")
    finally:
        backends.unregister("graph_like")


def data(n=50, d=6, classes=3, seed=7):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.integers(0, classes, n)


def mlp(backend, d=6, classes=3, extra=()):
    layers = [Linear(d, 16, backend=backend), ReLU(backend=backend), *extra,
              Linear(16, classes, backend=backend)]
    return Sequential(layers, CrossEntropy(backend=backend))


def run(backend, *, capture, epochs=3, batch_size=8, optim=None, extra=(), **kw):
    """Train a seeded MLP; returns (history losses, host parameters, trainer)."""
    backendnn.seed(3)
    model = mlp(backend, extra=extra)
    opt = (optim or (lambda m: SGD(m, lr=0.1, momentum=0.9)))(model)
    X, y = data()
    dl = DataLoader(Dataset(X, y), batch_size=batch_size, shuffle=True)
    trainer = Trainer(model, opt, dl, capture=capture, **kw)
    history = trainer.train(epochs, log_level=0)
    params = [np.array(backend.to_numpy(p.value), copy=True) for p in model.parameters()]
    return history.loss, params, trainer


def assert_same_run(a, b):
    assert a[0] == b[0]
    for pa, pb in zip(a[1], b[1]):
        np.testing.assert_array_equal(pa, pb)
    assert a[2].optimizer.step_count == b[2].optimizer.step_count


# --- the portable fallback ---------------------------------------------------------------

def test_capture_is_a_no_op_where_the_backend_cannot(backend):
    if backend.can_capture:
        pytest.skip(f"{backend.name} captures: see the cuda tests")
    assert backend.capture_step(print) is print
    captured = run(backend, capture=True)
    assert captured[2]._captured is None
    assert_same_run(captured, run(backend, capture=False))


def test_capture_must_be_a_bool():
    model = mlp("numpy")
    with pytest.raises(TypeError, match="capture"):
        Trainer(model, SGD(model, lr=0.1), DataLoader(Dataset(*data())), capture="yes")


# --- the static-buffer machinery, through GraphLike ----------------------------------------

def test_replays_give_the_uncaptured_trajectory(graph_like):
    captured = run(graph_like, capture=True)
    assert_same_run(captured, run(backends.get("numpy"), capture=False))
    # 50 samples in batches of 8: 6 full batches an epoch, the partial one uncaptured;
    # two uncaptured warm-up steps, then one capture replayed for every full batch
    assert graph_like.captures == 1
    assert graph_like.replays == 3 * 6 - 2
    assert captured[2]._captured.replays == graph_like.replays


def test_replays_read_the_copied_batch_and_return_fresh_losses(graph_like):
    """Per-batch losses stay distinct although a replay always returns one array."""
    _, _, trainer = run(graph_like, capture=True, epochs=1)
    step = trainer._captured
    X, y = data()
    x1, y1 = (graph_like.asarray(a) for a in (X[:8].astype(np.float32), y[:8]))
    x2, y2 = (graph_like.asarray(a) for a in (X[8:16].astype(np.float32), y[8:16]))
    with trainer._labels_known(trainer.train_dl):
        first, second = step(x1, y1), step(x2, y2)
    assert first is not second and float(first) != float(second)
    np.testing.assert_array_equal(step.buffers[0], x2)


def test_a_changed_learning_rate_is_captured_again(graph_like):
    def schedule(opt):
        return StepLR(opt, step_size=1, gamma=0.5)

    runs = []
    for backend, capture in ((graph_like, True), (backends.get("numpy"), False)):
        backendnn.seed(3)
        model = mlp(backend)
        opt = SGD(model, lr=0.1, momentum=0.9)
        dl = DataLoader(Dataset(*data()), batch_size=8, shuffle=True)
        trainer = Trainer(model, opt, dl, scheduler=schedule(opt), capture=capture)
        losses = trainer.train(3, log_level=0).loss
        runs.append((losses, [backend.to_numpy(p.value) for p in model.parameters()], trainer))
    assert_same_run(*runs)
    assert graph_like.captures == 3  # one learning rate per epoch


class ReplaceWeights(backendnn.Callback):
    """Swaps the first layer's weights for a copy after each epoch (as restoring a
    checkpoint does)."""

    def on_epoch_end(self, trainer, logs):
        layer = trainer.model.layers[0]
        layer.weights = trainer.model.backend.xp.asarray(layer.weights, copy=True)


def test_replaced_arrays_are_captured_again(graph_like):
    captured = run(graph_like, capture=True, callbacks=[ReplaceWeights()])
    assert_same_run(captured, run(backends.get("numpy"), capture=False, callbacks=[ReplaceWeights()]))
    assert graph_like.captures == 3


def test_clipping_inside_the_captured_step(graph_like):
    captured = run(graph_like, capture=True, max_grad_norm=0.5)
    assert_same_run(captured, run(backends.get("numpy"), capture=False, max_grad_norm=0.5))


def test_capture_refuses_host_numbers_that_change_each_step(graph_like):
    with pytest.raises(ValueError, match=r"capture=True.*'step'.*Adam's step count.*capture=False"):
        run(graph_like, capture=True, optim=lambda m: Adam(m, lr=1e-3))


def test_capture_refuses_buffers_replaced_each_step(graph_like):
    with pytest.raises(ValueError, match=r"running_mean.*in place.*capture=False"):
        run(graph_like, capture=True, extra=(BatchNorm1d(16, backend=graph_like),))


def test_captured_dropout_draws_new_masks_each_replay(graph_like):
    """Dropout's Philox counter lives on the device and advances inside the step:
    replays give the uncaptured trajectory, one mask per step."""
    captured = run(graph_like, capture=True, extra=(Dropout(0.3, backend=graph_like),))
    assert graph_like.captures == 1 and graph_like.replays == 3 * 6 - 2
    assert graph_like.device_rng_state() == {"generator": "philox4x32-10", "seed": 3,
                                             "counter": 3 * 7}
    assert_same_run(captured, run(backends.get("numpy"), capture=False,
                                  extra=(Dropout(0.3, backend="numpy"),)))


def test_a_new_seed_is_captured_again(graph_like):
    """The Philox key (the seed) is baked into a capture; reseeding recaptures, and
    the counter restarts in the array the graph reads."""
    backendnn.seed(3)
    model = mlp(graph_like, extra=(Dropout(0.3, backend=graph_like),))
    trainer = Trainer(model, SGD(model, lr=0.1), DataLoader(Dataset(*data()), batch_size=8),
                      capture=True)
    trainer.train(1, log_level=0)
    _, counter = graph_like.random_stream()
    backendnn.seed(4)
    trainer.train(1, log_level=0)
    assert graph_like.captures == 2
    assert graph_like.random_stream() == (4, counter) and int(counter) == 7


def test_capture_refuses_host_random_numbers(graph_like, monkeypatch):
    def host_dropout(p_keep, shape, dtype="float32", **kw):
        u = backends.host_rng().random(tuple(shape))
        return graph_like.asarray(u < p_keep, dtype=dtype)

    monkeypatch.setattr(graph_like, "device_bernoulli", host_dropout)
    with pytest.raises(ValueError, match=r"host random generator.*on the device.*capture=False"):
        run(graph_like, capture=True, extra=(Dropout(0.3, backend=graph_like),))


def test_a_failed_capture_says_what_to_do(graph_like, monkeypatch):
    def fail(fn):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graph_like, "capture_step", fail)
    with pytest.raises(RuntimeError, match=r"capturing the training step.*graph_like.*capture=False"):
        run(graph_like, capture=True)


# --- labels: checked on the host, never read back in the training loop ------------------

def test_dataset_records_the_label_range():
    X, _ = data(n=5)
    assert Dataset(X, np.array([2, 0, 4, 1, 3])).label_range == (0, 4)
    assert Dataset(X, np.linspace(0, 1, 5)).label_range is None
    assert Dataset(X[:0], np.zeros(0, dtype=np.int64)).label_range is None


@pytest.fixture
def bounds_reads(monkeypatch):
    """Counts CrossEntropy's read-backs of the label range from the device."""
    calls = []
    original = CrossEntropy._label_bounds

    def spy(self, y):
        calls.append(tuple(y.shape))
        return original(self, y)

    monkeypatch.setattr(CrossEntropy, "_label_bounds", spy)
    return calls


def test_trainer_never_reads_dataset_labels_back(backend, bounds_reads):
    backendnn.seed(0)
    model = mlp(backend)
    X, y = data()
    train = DataLoader(Dataset(X, y), batch_size=8, shuffle=True)
    val = DataLoader(Dataset(X[:20], y[:20]), batch_size=8)
    Trainer(model, SGD(model, lr=0.1), train, val).train(2, log_level=0)
    assert bounds_reads == []
    logits, labels = model(backend.asarray(X[:4], dtype="float32")), backend.asarray(y[:4])
    model.criterion(logits, labels)
    # direct calls keep the check, where the fused kernel does not make it itself
    assert bounds_reads == ([] if backend.checks_labels(logits, labels) else [(4,)])


def test_other_loaders_keep_the_per_batch_check(backend, bounds_reads):
    model = mlp(backend)
    X, y = data(n=16)
    batches = [(backend.asarray(X[i:i + 8], dtype="float32"), backend.asarray(y[i:i + 8]))
               for i in (0, 8)]
    Trainer(model, SGD(model, lr=0.1), batches).train(1, log_level=0)
    kernel = backend.checks_labels(model(batches[0][0]), batches[0][1])
    assert bounds_reads == ([] if kernel else [(8,), (8,)])


def test_labels_outside_the_outputs_stop_training_before_any_update(backend, bounds_reads):
    model = mlp(backend, classes=3)
    before = [np.array(backend.to_numpy(p.value), copy=True) for p in model.parameters()]
    X, _ = data()
    y = np.arange(50) % 5  # five classes, three outputs
    trainer = Trainer(model, SGD(model, lr=0.1), DataLoader(Dataset(X, y), batch_size=8))
    with pytest.raises(ValueError, match=r"\[0, 3\) for 3 classes.*dataset's labels range from 0 to 4"):
        trainer.train(1, log_level=0)
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(backend.to_numpy(p.value), b)
    assert bounds_reads == []


def test_negative_dataset_labels_are_refused(backend):
    model = mlp(backend)
    X, _ = data(n=6)
    dl = DataLoader(Dataset(X, np.array([0, 1, -1, 2, 0, 1])), batch_size=3)
    with pytest.raises(ValueError, match="from -1 to 2"):
        Trainer(model, SGD(model, lr=0.1), dl).train(1, log_level=0)


def test_labels_known_is_scoped(backend):
    ce = CrossEntropy(backend=backend)
    logits = backend.asarray(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(KeyError):
        with ce.labels_known(0, 2):
            with ce.labels_known(0, 1):
                raise KeyError("inner")
    assert ce._known_range is None
    with pytest.raises(ValueError, match="from 0 to 3"):
        ce(logits, backend.asarray(np.array([0, 3])))


# --- CuPy: real CUDA graphs -------------------------------------------------------------

@cuda
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cupy_captured_products_match_matmul(dtype):
    """Inside a capture, Linear's products go to cuBLAS directly, bit for bit `a @ b`."""
    be = backends.get("cupy")
    rng = np.random.default_rng(0)
    layouts = {
        "c": lambda a: a,
        "f": lambda a: be._cupy.asfortranarray(a),
        "strided": lambda a: be._cupy.repeat(a, 2, axis=1)[:, ::2],
    }
    for n, k, m in [(32, 64, 48), (256, 784, 512), (7, 5, 3), (1, 9, 4), (5, 1, 6)]:
        for la in layouts.values():
            for lb in layouts.values():
                a = la(be.asarray(rng.normal(size=(n, k)), dtype=dtype))
                b = lb(be.asarray(rng.normal(size=(k, m)), dtype=dtype))
                expected = be.to_numpy(a @ b)
                replay = be.capture_step(lambda a=a, b=b: be.matmul(a, b))
                np.testing.assert_array_equal(be.to_numpy(replay()), expected)


@cuda
def test_cupy_replay_reads_its_buffers_again():
    be = backends.get("cupy")
    x = be.asarray(np.ones((4, 3), dtype=np.float32))
    w = be.asarray(np.arange(6, dtype=np.float32).reshape(3, 2))
    replay = be.capture_step(lambda: be.xp.sum(be.relu(be.matmul(x, w) - 3.0)))
    assert float(replay()) == pytest.approx(float(np.maximum(np.ones((4, 3)) @ np.arange(6).reshape(3, 2) - 3, 0).sum()))
    x[...] = 2.0
    assert float(replay()) == pytest.approx(float(np.maximum(2 * np.ones((4, 3)) @ np.arange(6).reshape(3, 2) - 3, 0).sum()))


@cuda
def test_cupy_captured_training_is_the_uncaptured_training():
    be = backends.get("cupy")
    captured = run(be, capture=True)
    assert_same_run(captured, run(be, capture=False))
    assert captured[2]._captured.captures == 1
    assert captured[2]._captured.replays == 3 * 6 - 2


@cuda
def test_cupy_captured_training_with_a_schedule_and_clipping():
    be = backends.get("cupy")

    def go(capture):
        backendnn.seed(3)
        model = mlp(be)
        opt = SGD(model, lr=0.1, momentum=0.9)
        dl = DataLoader(Dataset(*data()), batch_size=8, shuffle=True)
        trainer = Trainer(model, opt, dl, scheduler=StepLR(opt, 1, gamma=0.5),
                          max_grad_norm=0.5, capture=capture)
        losses = trainer.train(3, log_level=0).loss
        return losses, [be.to_numpy(p.value) for p in model.parameters()], trainer

    captured = go(True)
    assert_same_run(captured, go(False))
    assert captured[2]._captured.captures == 3


@cuda
def test_cupy_captured_dropout_is_the_uncaptured_dropout():
    be = backends.get("cupy")
    captured = run(be, capture=True, extra=(Dropout(0.3, backend=be),))
    assert_same_run(captured, run(be, capture=False, extra=(Dropout(0.3, backend=be),)))
    assert captured[2]._captured.replays == 3 * 6 - 2
    assert be.device_rng_state()["counter"] == 3 * 7


@cuda
def test_cupy_training_steps_never_synchronize():
    cupyx = pytest.importorskip("cupyx")
    be = backends.get("cupy")
    model = mlp(be)
    trainer = Trainer(model, SGD(model, lr=0.1), DataLoader(Dataset(*data()), batch_size=8))
    batches = list(trainer._batches(trainer.train_dl))
    with cupyx.allow_synchronize(False), trainer._labels_known(trainer.train_dl):
        for x, y in batches:
            trainer._step(x, y)


@cuda
def test_cupy_replays_restore_what_the_capture_bound():
    """After an uncaptured step (the partial batch), a replay's results are again
    what layer and loss attributes show, as after an uncaptured step."""
    be = backends.get("cupy")
    _, _, trainer = run(be, capture=True, epochs=1)  # ends with the partial batch
    step = trainer._captured
    arrays = [(obj, name, value) for obj, attributes in step.bindings
              for name, value in attributes.items() if isinstance(value, be.module.ndarray)]
    assert arrays, "the captured step left no array on its layers or loss"
    rebound = [name for obj, name, value in arrays if vars(obj).get(name) is not value]
    assert rebound, "the partial batch's uncaptured step rebound nothing: nothing checked"
    X, y = data()
    x, yb = be.asarray(X[:8], dtype="float32"), be.asarray(y[:8])
    with trainer._labels_known(trainer.train_dl):
        step(x, yb)
    for obj, name, value in arrays:
        assert vars(obj).get(name) is value, f"{obj!r}.{name} is not the replay's array"
    np.testing.assert_array_equal(be.to_numpy(step.buffers[0]), X[:8].astype(np.float32))
