"""Bad input gives a clear error; nothing is silently wrong."""
import numpy as np
import pytest
from conftest import host

import backendnn
from backendnn import (
    MLP,
    SGD,
    BinaryCrossEntropy,
    CrossEntropy,
    DataLoader,
    Dataset,
    LeakyReLU,
    Linear,
    MeanSquaredError,
    NonFiniteLossError,
    ReLU,
    Sequential,
    Sigmoid,
    Softmax,
    Tanh,
    Trainer,
    accuracy,
)
from backendnn import backends
from backendnn.layers import NotReadyError

OTHERS = ("numpy", "array_api_strict", "torch")



def get_or_skip(name):
    try:
        return backends.get(name)
    except backends.BackendUnavailableError as e:
        pytest.skip(str(e))


def binary_model(backend, n_inp=4):
    with backendnn.use_backend(backend):
        return Sequential([Linear(n_inp, 3), ReLU(), Linear(3, 1), Sigmoid()], BinaryCrossEntropy())


# --- shapes -------------------------------------------------------------------------------

def test_feature_count_mismatch_names_layer_and_shapes(backend):
    model = binary_model(backend)
    x = backend.asarray(np.zeros((5, 3), dtype=np.float32))
    with pytest.raises(ValueError) as info:
        model(x)
    msg = str(info.value)
    assert "layer 0 (Linear)" in msg
    assert "(batch, 4)" in msg and "(5, 3)" in msg


def test_mismatch_deeper_in_the_stack(backend):
    with backendnn.use_backend(backend):
        model = Sequential([Linear(4, 3), Tanh(), Linear(5, 2)], MeanSquaredError())
    with pytest.raises(ValueError) as info:
        model(backend.asarray(np.zeros((6, 4), dtype=np.float32)))
    msg = str(info.value)
    assert "layer 2 (Linear)" in msg and "(batch, 5)" in msg and "(6, 3)" in msg


def test_input_of_wrong_rank(backend):
    model = binary_model(backend)
    with pytest.raises(ValueError, match=r"layer 0 \(Linear\).*\(5, 2, 2\)"):
        model(backend.asarray(np.zeros((5, 2, 2), dtype=np.float32)))


@pytest.mark.parametrize("make", [BinaryCrossEntropy, MeanSquaredError])
def test_targets_n_against_predictions_n_by_1_are_aligned(backend, rng, make):
    y_hat_np = rng.uniform(0.1, 0.9, (6, 1)).astype(np.float32)
    y_np = rng.integers(0, 2, 6).astype(np.float32)
    loss_fn = make(backend=backend)
    column = host(backend, loss_fn(backend.asarray(y_hat_np), backend.asarray(y_np[:, None])))
    grad_column = host(backend, loss_fn.backward())
    flat = loss_fn(backend.asarray(y_hat_np), backend.asarray(y_np))
    assert tuple(flat.shape) == (6,)
    np.testing.assert_array_equal(host(backend, flat), column)
    np.testing.assert_array_equal(host(backend, loss_fn.backward()), grad_column)
    assert tuple(loss_fn.backward().shape) == (6, 1)


@pytest.mark.parametrize("make", [BinaryCrossEntropy, MeanSquaredError])
@pytest.mark.parametrize("y_hat_shape, y_shape", [
    ((6, 1), (6, 2)),
    ((6, 1), (7,)),
    ((6, 1), (1,)),
    ((6, 2), (6,)),
    ((6, 3), (3,)),
    ((6, 1), (6, 1, 1)),
])
def test_other_target_mismatches_are_refused(backend, rng, make, y_hat_shape, y_shape):
    y_hat = backend.asarray(rng.uniform(0.1, 0.9, y_hat_shape).astype(np.float32))
    y = backend.asarray(rng.integers(0, 2, y_shape).astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        make(backend=backend)(y_hat, y)


@pytest.mark.parametrize("make", [BinaryCrossEntropy, MeanSquaredError])
def test_targets_n_by_1_against_predictions_n(backend, rng, make):
    """Either aligned to the (n,) result or refused; never an (n, n) broadcast."""
    y_hat_np = rng.uniform(0.1, 0.9, 5).astype(np.float32)
    y_np = rng.integers(0, 2, 5).astype(np.float32)
    loss_fn = make(backend=backend)
    expected = host(backend, loss_fn(backend.asarray(y_hat_np), backend.asarray(y_np)))
    try:
        got = loss_fn(backend.asarray(y_hat_np), backend.asarray(y_np[:, None]))
    except ValueError as e:
        assert "shape" in str(e)
    else:
        np.testing.assert_array_equal(host(backend, got), expected)


def test_model_with_targets_n_trains_like_n_by_1(backend, rng):
    X = rng.normal(size=(12, 4))
    y = rng.integers(0, 2, 12)
    histories = []
    for targets in (y, y[:, None]):
        backendnn.seed(5)
        model = binary_model(backend)
        dl = DataLoader(Dataset(X, targets), batch_size=4)
        histories.append(Trainer(model, SGD(model, lr=0.1), dl, dl, accuracy).train(2, log_level=0))
    assert histories[0] == histories[1]


# --- labels -------------------------------------------------------------------------------

@pytest.mark.parametrize("labels", [[0, 1, 3, 2], [0, -1, 1, 2]])
def test_cross_entropy_labels_out_of_range(backend, labels):
    logits = backend.asarray(np.zeros((4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        CrossEntropy(backend=backend)(logits, backend.asarray(np.array(labels)))


def test_cross_entropy_non_integer_labels(backend):
    logits = backend.asarray(np.zeros((4, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="integer"):
        CrossEntropy(backend=backend)(logits, backend.asarray(np.array([0.0, 1.0, 2.0, 1.0])))


def test_cross_entropy_targets_of_another_width_refused(backend):
    """One-hot or soft targets must have one column per class."""
    logits = backend.asarray(np.zeros((4, 3), dtype=np.float32))
    one_hot = backend.asarray(np.eye(2, dtype=np.float32)[[0, 1, 1, 0]])
    with pytest.raises(ValueError, match=r"\(4, 2\).*\(4, 3\)"):
        CrossEntropy(backend=backend)(logits, one_hot)


def test_cross_entropy_wrong_number_of_labels(backend):
    logits = backend.asarray(np.zeros((4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        CrossEntropy(backend=backend)(logits, backend.asarray(np.array([0, 1, 2])))


# --- arrays of another backend ------------------------------------------------------------

@pytest.mark.parametrize("other", OTHERS)
def test_input_from_another_backend_is_refused(backend, other):
    if other == backend.name:
        pytest.skip("same backend")
    source = get_or_skip(other)
    model = binary_model(backend)
    x = source.asarray(np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(TypeError) as info:
        model(x)
    msg = str(info.value)
    assert repr(backend.name) in msg and other in msg
    assert "model.to" in msg and "asarray" in msg


@pytest.mark.parametrize("other", OTHERS)
def test_targets_from_another_backend_are_refused(backend, other):
    if other == backend.name:
        pytest.skip("same backend")
    source = get_or_skip(other)
    model = binary_model(backend)
    y_hat = model(backend.asarray(np.zeros((2, 4), dtype=np.float32)))
    with pytest.raises(TypeError) as info:
        model.criterion(y_hat, source.asarray(np.zeros((2, 1), dtype=np.float32)))
    msg = str(info.value)
    assert repr(backend.name) in msg and other in msg and "asarray" in msg


# --- order of calls -----------------------------------------------------------------------

def test_model_backward_before_forward(backend):
    model = binary_model(backend)
    with pytest.raises(NotReadyError, match="first"):
        model.backward()
    assert issubclass(NotReadyError, RuntimeError)


def test_model_backward_after_forward_without_loss(backend):
    model = binary_model(backend)
    model(backend.asarray(np.zeros((2, 4), dtype=np.float32)))
    with pytest.raises(NotReadyError):
        model.backward()


@pytest.mark.parametrize("make", [lambda: Linear(3, 2), ReLU, LeakyReLU, Sigmoid, Tanh, Softmax])
def test_layer_backward_before_forward(backend, make):
    with backendnn.use_backend(backend):
        layer = make()
    with pytest.raises(NotReadyError, match="forward"):
        layer.backward(backend.asarray(np.ones((2, 2), dtype=np.float32)))


@pytest.mark.parametrize("make", [BinaryCrossEntropy, MeanSquaredError, CrossEntropy])
def test_loss_backward_before_call(backend, make):
    with pytest.raises(NotReadyError):
        make(backend=backend).backward()


def test_backward_without_criterion(backend):
    with backendnn.use_backend(backend):
        model = Sequential([Linear(2, 1)])
    with pytest.raises(RuntimeError, match="criterion"):
        model.backward()


# --- non-finite losses --------------------------------------------------------------------

def regression(backend, X, y, batch_size=4):
    with backendnn.use_backend(backend):
        model = Sequential([Linear(X.shape[1], 1)], MeanSquaredError())
    dl = DataLoader(Dataset(X, y), batch_size=batch_size)
    return Trainer(model, SGD(model, lr=0.01), dl, None, None)


@pytest.mark.filterwarnings("ignore:.*(overflow|invalid value):RuntimeWarning")
def test_infinite_loss_names_epoch_and_batch(backend, rng):
    X = rng.normal(size=(12, 2))
    X[9, 0] = 1e30  # finite in float32; its square is not
    trainer = regression(backend, X, rng.normal(size=(12, 1)))
    with pytest.raises(NonFiniteLossError, match=r"epoch 0\b.*batch 2\b"):
        trainer.train(3, log_level=0)


@pytest.mark.filterwarnings("ignore:.*(overflow|invalid value):RuntimeWarning")
def test_non_finite_loss_in_a_later_epoch(backend, rng):
    X = rng.normal(size=(12, 2))
    trainer = regression(backend, X, rng.normal(size=(12, 1)))
    trainer.train(2, log_level=0)
    X_bad = X.copy()
    X_bad[5, 1] = -1e30
    trainer.train_dl = DataLoader(Dataset(X_bad, rng.normal(size=(12, 1))), batch_size=4)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2\b.*batch 1\b") as info:
        trainer.train(1, log_level=0)
    assert isinstance(info.value, FloatingPointError)
    assert len(trainer.history) == 2


@pytest.mark.filterwarnings("ignore:.*(overflow|invalid value):RuntimeWarning")
def test_nan_from_divergence_stops_training(backend, rng):
    X = rng.normal(size=(16, 3)) * 100
    y = rng.normal(size=(16, 1)) * 100
    trainer = regression(backend, X, y)
    trainer.optimizer = SGD(trainer.model, lr=10.0)
    with pytest.raises(NonFiniteLossError, match=r"epoch \d+.*batch \d+"):
        trainer.train(50, log_level=0)


# --- bad arguments ------------------------------------------------------------------------

@pytest.mark.parametrize("args, error", [((0, 3), ValueError), ((3, -1), ValueError),
                                         ((2.5, 3), TypeError), ((True, 3), TypeError),
                                         (("3", 2), TypeError)])
def test_linear_bad_sizes(backend, args, error):
    """A wrong type is a TypeError, a wrong value a ValueError, each naming the argument."""
    with pytest.raises(error, match="n_inp|n_out"):
        Linear(*args, backend=backend)


def test_numpy_integers_are_ints(backend):
    layer = Linear(np.int64(3), np.int32(2), backend=backend)
    assert (layer.n_inp, layer.n_out) == (3, 2) and type(layer.n_inp) is int


def test_layer_bad_dtype(backend):
    with pytest.raises(TypeError, match="dtype"):
        Linear(2, 2, backend=backend, dtype="int32")


@pytest.mark.parametrize("kwargs, error, match", [
    ({"sizes": [3]}, ValueError, "sizes"),
    ({"sizes": [3, 0]}, ValueError, "sizes"),
    ({"sizes": [3, 2], "activation": "swish"}, ValueError, "swish"),
    ({"sizes": [3, 2], "loss": "hinge"}, ValueError, "hinge"),
    ({"sizes": [3, 2], "activation": 3}, TypeError, "activation"),
    ({"sizes": [3, 2], "loss": ReLU}, TypeError, "loss"),
])
def test_mlp_bad_arguments(backend, kwargs, error, match):
    with pytest.raises(error, match=match):
        MLP(backend=backend, **kwargs)


def test_sequential_bad_items(backend):
    with backendnn.use_backend(backend):
        with pytest.raises(TypeError, match="item 1"):
            Sequential([Linear(2, 2), lambda x: x], MeanSquaredError())
        with pytest.raises(TypeError, match="criterion"):
            Sequential([Linear(2, 2)], lambda y_hat, y: y_hat)


@pytest.mark.parametrize("batch_size", [0, -2, 2.5, True])
def test_dataloader_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(Dataset(np.zeros((4, 2)), np.zeros(4)), batch_size=batch_size)


def test_sgd_bad_learning_rate(backend):
    with pytest.raises(ValueError, match="lr"):
        SGD(binary_model(backend), lr=-1.0)


@pytest.mark.parametrize("n_epochs", [-1, 2.5, "3"])
def test_train_bad_epochs(backend, rng, n_epochs):
    trainer = regression(backend, rng.normal(size=(8, 2)), rng.normal(size=(8, 1)))
    with pytest.raises(ValueError, match="n_epochs"):
        trainer.train(n_epochs)


def test_seed_must_be_non_negative_int():
    for bad in (-1, 1.5, "3"):
        with pytest.raises(TypeError, match="seed"):
            backendnn.seed(bad)


# --- data ---------------------------------------------------------------------------------

def test_dataset_length_mismatch():
    with pytest.raises(ValueError, match=r"\(5, 2\).*\(4,\)"):
        Dataset(np.zeros((5, 2)), np.zeros(4))


def test_dataset_refuses_nan_features():
    X = np.zeros((6, 2))
    X[4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        Dataset(X, np.zeros(6))


@pytest.mark.parametrize("n, drop_last", [(0, False), (3, True)])
def test_empty_loader(backend, n, drop_last):
    with backendnn.use_backend(backend):
        model = Sequential([Linear(2, 1)], MeanSquaredError())
    dl = DataLoader(Dataset(np.zeros((n, 2)), np.zeros((n, 1))), batch_size=4, drop_last=drop_last)
    assert len(dl) == 0
    trainer = Trainer(model, SGD(model, lr=0.1), dl, None, None)
    with pytest.raises(ValueError, match="no batches"):
        trainer.train(1, log_level=0)
    with pytest.raises(ValueError, match="no batches"):
        trainer.evaluate(dl)


@pytest.mark.parametrize("in_step", [False, True])
def test_backward_frees_the_forward_pass_and_a_second_one_is_refused(backend, in_step):
    """Activations do not outlive backward (as PyTorch's saved tensors); a second
    backward without a new forward pass is refused with what to do."""
    model = binary_model(backend)
    x = backend.asarray(np.ones((3, 4), dtype=np.float32))
    y = backend.asarray(np.array([[0.0], [1.0], [1.0]], dtype=np.float32))
    optimizer = SGD(model.parameters(), lr=0.1) if in_step else None
    model.loss(x, y)
    model.backward(optimizer=optimizer)
    assert all(getattr(layer, name, None) is None for layer in model.layers
               for name in ("x", "y", "y_hat"))
    with pytest.raises(NotReadyError, match="run a forward pass first"):
        model.backward()
    model.loss(x, y)
    model.backward()


@pytest.mark.parametrize("check_labels", [True, False])
def test_cross_entropy_reads_labels_once_where_the_kernel_checks_them(numpy_kernels,
                                                                       monkeypatch,
                                                                       check_labels):
    """NumPy with Numba: the fused kernel refuses labels out of range, so the loss does
    not take their minimum and maximum first; a bad label still gets the message that
    names the range. Without Numba (NumPy's spelling wraps negative labels around) the
    loss checks them first."""
    loss = CrossEntropy(backend="numpy", check_labels=check_labels)
    logits = np.zeros((4, 3), dtype=np.float32)
    calls = []
    bounds = loss._label_bounds
    monkeypatch.setattr(loss, "_label_bounds", lambda y: calls.append(1) or bounds(y))
    loss(logits, np.array([0, 1, 2, 1]))
    kernel = numpy_kernels == "numba"
    assert len(calls) == (0 if kernel or not check_labels else 1)
    if check_labels or kernel:
        with pytest.raises(ValueError, match=r"\[0, 3\).* from -1 to 2"):
            loss(logits, np.array([0, -1, 1, 2]))
