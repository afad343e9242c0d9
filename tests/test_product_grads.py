"""Gradients left as unmade products (`ProductGrad`): Linear's grad_w = x.T @ dL/dy is
made when first read, and plain SGD adds -lr * x.T @ dL/dy into the weights as one
product where the backend can (`Backend.add_product`). Readers and optimisers see the
numbers of a gradient made in backward, on every backend."""
import tracemalloc

import numpy as np
import pytest
from conftest import host

import backendnn as bn

N_IN, N_HID, N_OUT = 256, 160, 5  # 40,960 first-layer weights: past the NumPy backend's bound


def _net(backend, dtype="float32"):
    bn.seed(3)
    layers = [bn.Linear(N_IN, N_HID, backend=backend, dtype=dtype), bn.ReLU(backend=backend),
              bn.Linear(N_HID, N_OUT, backend=backend, dtype=dtype)]
    return bn.Sequential(layers, bn.CrossEntropy(backend=backend))


def _batch(backend, seed=0, n=12, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return (backend.asarray(rng.normal(size=(n, N_IN)).astype(dtype)),
            backend.asarray(rng.integers(0, N_OUT, n)))


def _spy(monkeypatch, backend):
    """The products `add_product` made (True results), counted."""
    made = []
    add = backend.add_product

    def spy(*args):
        ok = add(*args)
        made.append(ok)
        return ok

    monkeypatch.setattr(backend, "add_product", spy)
    return made


@pytest.fixture(autouse=True)
def _small_products_too(monkeypatch):
    """Backends that add products only into large parameters (CuPy) add them into
    these small ones too, so that the path is tested."""
    from backendnn.backends.cupy import CupyBackend

    monkeypatch.setattr(CupyBackend, "add_product_min", 0)


def _fuses(backend, dtype="float32"):
    return backend.can_add_product((N_IN, N_HID), backend.dtype(dtype))


def _ulps(dtype, ref):
    """A few units in the last place of the largest weight: one rounding apart."""
    return 4 * np.finfo(dtype).eps * np.abs(ref).max()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sgd_inside_the_product_equals_the_step_from_a_made_gradient(backend, dtype,
                                                                     monkeypatch):
    made = _spy(monkeypatch, backend)
    ref, fused = _net(backend, dtype), _net(backend, dtype)
    opt_ref, opt = bn.SGD(ref, lr=0.5), bn.SGD(fused, lr=0.5)
    for step in range(3):
        x, y = _batch(backend, step, dtype=np.dtype(dtype))
        ref.criterion(ref(x), y)
        ref.backward()
        grads = [host(backend, p.grad) for p in ref.parameters()]  # read: made now
        opt_ref.step()
        fused.criterion(fused(x), y)
        fused.backward()
        opt.step()
        # after the step the gradient still reads as backward left it
        for g, p in zip(grads, fused.parameters()):
            np.testing.assert_array_equal(host(backend, p.grad), g)
        for a, b in zip(ref.parameters(), fused.parameters()):
            want = host(backend, a.value)
            np.testing.assert_allclose(host(backend, b.value), want, rtol=0,
                                       atol=_ulps(dtype, want))
    assert sum(made) == (3 if _fuses(backend, dtype) else 0)


@pytest.fixture
def numpy_fuses():
    backend = bn.backends.get("numpy")
    if not _fuses(backend):
        pytest.skip("this NumPy's BLAS cannot add a product into an array (or BACKENDNN_BLAS=0)")
    return backend


def _trained(backend, opt_fn, read_grads=False, clip=None):
    net = _net(backend)
    opt = opt_fn(net)
    for step in range(2):
        x, y = _batch(backend, step)
        net.criterion(net(x), y)
        net.backward()
        if read_grads:
            [p.grad for p in net.parameters()]
        if clip is not None:
            bn.clip_grad_norm(net.parameters(), clip)
        opt.step()
    return [p.value.copy() for p in net.parameters()]


@pytest.mark.parametrize("make", [
    lambda m: bn.SGD(m, lr=0.2, momentum=0.9),
    lambda m: bn.SGD(m, lr=0.2, weight_decay=0.1),
    lambda m: bn.Adam(m, lr=1e-2),
], ids=["momentum", "weight_decay", "adam"])
def test_other_updates_read_the_made_gradient(numpy_fuses, monkeypatch, make):
    """An update other than p -= lr * grad makes the gradient and is unchanged, bit for
    bit, from one that read every gradient first."""
    made = _spy(monkeypatch, numpy_fuses)
    got = _trained(numpy_fuses, make)
    want = _trained(numpy_fuses, make, read_grads=True)
    assert not any(made)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_clipping_reads_the_gradients_so_no_product_is_added(numpy_fuses, monkeypatch):
    made = _spy(monkeypatch, numpy_fuses)
    got = _trained(numpy_fuses, lambda m: bn.SGD(m, lr=0.2), clip=0.01)
    want = _trained(numpy_fuses, lambda m: bn.SGD(m, lr=0.2), read_grads=True, clip=0.01)
    assert not any(made)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_a_gradient_lives_until_the_next_forward(numpy_fuses):
    net = _net(numpy_fuses)
    first = net.layers[0]
    opt = bn.SGD(net, lr=0.1)
    x, y = _batch(numpy_fuses)
    x2, _ = _batch(numpy_fuses, 1)

    # not used by an optimiser: made at the next forward, as backward left it
    net.criterion(net(x), y)
    net.backward()
    net(x2)
    want = first.grad_w
    assert want is not None and want.shape == (N_IN, N_HID)
    check = _net(numpy_fuses)
    check.criterion(check(x), y)
    check.backward()
    np.testing.assert_array_equal(want, check.layers[0].grad_w)

    # used inside SGD's product: readable until the next forward, None after it
    net.criterion(net(x), y)
    net.backward()
    opt.step()
    assert first.grad_w is not None
    net.criterion(net(x), y)
    net.backward()
    opt.step()
    net(x2)
    assert first.grad_w is None
    assert first.grad_b is not None  # a plain gradient, kept as before


def test_a_batch_larger_than_the_outputs_is_not_held(numpy_fuses, monkeypatch):
    """batch > n_out (a classifier after convolutions): the input would outweigh the
    weights, so backward makes grad_w at once and lets the input go; changing the
    batch afterwards changes nothing."""
    made = _spy(monkeypatch, numpy_fuses)
    net = _net(numpy_fuses)
    x, y = _batch(numpy_fuses, n=N_HID + 1)
    net.criterion(net(x), y)
    net.backward()
    x[...] = 0
    check = _net(numpy_fuses)
    x2, _ = _batch(numpy_fuses, n=N_HID + 1)
    check.criterion(check(x2), y)
    check.backward()
    np.testing.assert_array_equal(net.layers[0].grad_w, check.layers[0].grad_w)
    bn.SGD(net, lr=0.1).step()
    assert not any(made)


def test_zero_grad_drops_an_unmade_gradient(numpy_fuses):
    net = _net(numpy_fuses)
    opt = bn.SGD(net, lr=0.1)
    x, y = _batch(numpy_fuses)
    net.criterion(net(x), y)
    net.backward()
    before = net.layers[0].weights.copy()
    opt.zero_grad()
    with pytest.raises(RuntimeError, match="has no gradient"):
        opt.step()
    np.testing.assert_array_equal(net.layers[0].weights, before)


def test_add_product_refuses_what_it_cannot_add_in_place(numpy_fuses):
    """Other dtypes, a parameter that is not one contiguous writable array, or one that
    overlaps an operand: False, and the parameter unchanged (the optimiser then makes
    the gradient and updates as usual)."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(4, 5)).astype(np.float32)
    p = rng.normal(size=(6, 5)).astype(np.float32)
    before = p.copy()
    frozen = p.copy()
    frozen.flags.writeable = False
    square = rng.normal(size=(6, 6)).astype(np.float32)
    for args in [(p, a.astype(np.float64), b), (p.astype(np.float64), a, b),
                 (np.asfortranarray(p), a, b), (frozen, a, b),
                 (square, square, np.eye(6, dtype=np.float32)),
                 (p, a[:, ::2], b[::2])]:
        assert numpy_fuses.add_product(*args, -0.5) is False
    np.testing.assert_array_equal(p, before)
    assert numpy_fuses.add_product(p, a, b, np.float32(-0.5)) is True  # a NumPy scalar lr
    np.testing.assert_allclose(p, before - 0.5 * (a @ b), rtol=1e-5, atol=1e-6)


def test_add_product_adds_in_place_or_refuses(backend):
    """On every backend that adds products: p += alpha * a @ b in place; mixed dtypes,
    a parameter that is not C-contiguous, or one that overlaps an operand: False, and
    the parameter unchanged."""
    if not _fuses(backend):
        pytest.skip(f"backend {backend.name!r} does not add products into parameters")
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(4, 5)).astype(np.float32)
    p = rng.normal(size=(6, 5)).astype(np.float32)
    want = p - 0.5 * (a.astype(np.float64) @ b)
    square = backend.asarray(rng.normal(size=(6, 6)).astype(np.float32))
    P, A, B = backend.asarray(p.copy()), backend.asarray(a), backend.asarray(b)
    for args in [(P, backend.asarray(a.astype(np.float64)), B),
                 (backend.asarray(p.astype(np.float64)), A, B),
                 (backend.asarray(np.ascontiguousarray(p.T)).T, A, B),
                 (square, square, backend.asarray(np.eye(6, dtype=np.float32)))]:
        assert backend.add_product(*args, -0.5) is False
    np.testing.assert_array_equal(host(backend, P), p)
    assert backend.add_product(P, A, B, -0.5) is True
    np.testing.assert_allclose(host(backend, P), want, rtol=1e-5, atol=1e-5)
    # an operand that is a transposed view, as Linear's x.T
    Q, A_t = backend.asarray(p.copy()), backend.asarray(np.ascontiguousarray(a.T)).T
    assert backend.add_product(Q, A_t, B, -0.5) is True
    np.testing.assert_allclose(host(backend, Q), host(backend, P), rtol=1e-6, atol=1e-6)


def test_the_step_writes_no_weight_gradient(numpy_fuses):
    """Backward and plain SGD's step allocate less than the first layer's weights: its
    gradient is never written out."""
    net = _net(numpy_fuses)
    opt = bn.SGD(net, lr=0.1)
    x, y = _batch(numpy_fuses)
    for _ in range(2):
        net.criterion(net(x), y)
        net.backward()
        opt.step()
    net.criterion(net(x), y)
    tracemalloc.start()
    try:
        net.backward()
        opt.step()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < net.layers[0].weights.nbytes // 2, peak
