"""Sequential.predict, and PyTorch interop (from_torch / to_torch) against torch itself."""
import numpy as np
import pytest
from conftest import host

import backendnn
from backendnn import (
    MLP,
    BatchNorm1d,
    CrossEntropy,
    Dropout,
    Linear,
    ReLU,
    Sequential,
)
from backendnn.interop import InteropError, from_torch, to_torch


def small_model(backend):
    return Sequential([Linear(5, 8, backend=backend), BatchNorm1d(8, backend=backend), ReLU(),
                       Dropout(0.5), Linear(8, 3, backend=backend)], CrossEntropy())


def test_predict_is_eval_mode_batched_host_numpy(backend, rng):
    model = small_model(backend)
    model.layers[3].train(True)
    model.layers[1].train(False)  # each layer's own mode comes back, not one for all
    X = rng.normal(size=(23, 5))  # float64, cast to the model's dtype
    out = model.predict(X)
    assert isinstance(out, np.ndarray) and out.shape == (23, 3) and out.dtype == np.float32
    np.testing.assert_allclose(model.predict(X, batch_size=4), out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.predict(X.tolist(), batch_size=np.int64(7)), out,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.predict(backend.asarray(X, dtype="float32")), out,
                               rtol=1e-5, atol=1e-6)
    assert [layer.training for layer in model.layers] == [True, False, True, True, True]
    model.eval()
    np.testing.assert_allclose(host(backend, model(backend.asarray(X, dtype="float32"))), out,
                               rtol=1e-5, atol=1e-6)


def test_predict_accepts_other_backends_and_checks_its_arguments(torch, rng):
    model = MLP([4, 6, 2], "relu", "cross_entropy", output_activation=None)
    X = rng.normal(size=(9, 4)).astype(np.float32)
    np.testing.assert_allclose(model.predict(torch.tensor(X)), model.predict(X), rtol=1e-6)
    with pytest.raises(ValueError, match="batch_size"):
        model.predict(X, batch_size=0)
    with pytest.raises(TypeError, match="batch_size"):
        model.predict(X, batch_size=2.5)
    with pytest.raises(ValueError, match="no samples"):
        model.predict(np.zeros((0, 4)))


def torch_mlp(torch):
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.LeakyReLU(0.1),
                        nn.Sequential(nn.Dropout(0.3), nn.Linear(16, 8, bias=False)),
                        nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 4), nn.Softmax(dim=1))
    with torch.no_grad():  # running statistics that are not the defaults
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
        net[4].weight.uniform_(0.5, 1.5)
        net[4].bias.uniform_(-1, 1)
    return net.eval()


def torch_cnn(torch):
    nn = torch.nn
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, stride=1, padding="same",
                                                    groups=2, bias=False),
                        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(6 * 2 * 2, 3))
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    return net.eval()


@pytest.mark.parametrize("make, shape", [(torch_mlp, (10, 6)), (torch_cnn, (5, 2, 8, 8))])
def test_from_torch_agrees_with_torch(backend, torch, rng, make, shape):
    net = make(torch)
    x = rng.normal(size=shape).astype(np.float32)
    model = from_torch(net, backend=backend)
    assert model.backend is backend and model.dtype == "float32"
    assert not model.training
    want = net(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(model.predict(x), want, rtol=1e-5, atol=1e-5)
    back = to_torch(model)
    np.testing.assert_allclose(back(torch.tensor(x)).detach().numpy(), want, rtol=1e-5, atol=1e-5)
    assert not back.training


def test_linear_layout_is_transposed_and_gradients_agree(torch, rng):
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    model = from_torch(net, CrossEntropy())
    np.testing.assert_array_equal(host(model.backend, model.layers[0].weights),
                                  net[0].weight.detach().numpy().T)
    x = rng.normal(size=(7, 3)).astype(np.float32)
    y = rng.integers(0, 2, 7)
    model.loss(model.backend.asarray(x), model.backend.asarray(y))
    model.backward()
    loss = torch.nn.functional.cross_entropy(net(torch.tensor(x)), torch.tensor(y))
    loss.backward()
    np.testing.assert_allclose(host(model.backend, model.layers[0].grad_w),
                               net[0].weight.grad.numpy().T, rtol=1e-5, atol=1e-6)


def test_round_trip_from_backendnn_keeps_training_mode_and_dtype(torch, rng):
    backendnn.seed(3)
    model = MLP([4, 7, 3], "relu", "cross_entropy", output_activation=None, dtype="float64")
    back = to_torch(model)
    assert back.training and back[0].weight.dtype == torch.float64
    again = from_torch(back)
    assert again.dtype == "float64"
    x = rng.normal(size=(6, 4))
    np.testing.assert_allclose(again.predict(x), model.predict(x), rtol=1e-12)


def test_unsupported_modules_are_named(torch):
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.GELU())
    with pytest.raises(InteropError, match=r"module 1 \(GELU.*supported: .*Linear"):
        from_torch(net)
    with pytest.raises(InteropError, match="ceil_mode"):
        from_torch(torch.nn.MaxPool2d(2, ceil_mode=True))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        from_torch([1, 2])
