"""`to_host` asks the backend that owns an array to convert it; nothing is special-cased
by module name."""
import numpy as np
from backendnn import backends
from backendnn.backends import to_host


def test_each_backends_arrays_come_home_through_it(backend, rng):
    a = rng.normal(size=(3, 2)).astype(np.float32)
    x = backend.asarray(a)
    assert backend.converts(x)
    np.testing.assert_array_equal(to_host(x), a)


def test_a_torch_tensor_that_requires_grad(torch):
    backends.get("torch")
    t = torch.ones(2, 3, requires_grad=True) * 2
    np.testing.assert_array_equal(to_host(t), np.full((2, 3), 2.0, np.float32))


def test_a_plugin_backend_converts_its_own_arrays():
    class Box:
        def __init__(self, values):
            self.values = values

    class BoxBackend(backends.Backend):
        name = "box"

        def _load(self):
            return np

        def _default_device(self):
            return "cpu"

        def owns(self, x):
            return isinstance(x, Box)

        def to_numpy(self, x):
            return np.asarray(x.values) if isinstance(x, Box) else to_host(x)

    BoxBackend()
    np.testing.assert_array_equal(to_host(Box([1.0, 2.0])), [1.0, 2.0])


def test_lists_and_scalars_still_work():
    np.testing.assert_array_equal(to_host([[1, 2]]), [[1, 2]])
    assert to_host(3.5) == 3.5
