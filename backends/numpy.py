"""NumPy backend: the CPU default and the float64 reference of the parity suite.

NumPy 2 implements the Array API in its main namespace, so `xp` is `numpy` itself:
array-api-compat's wrapper would add a Python call to every operation.
"""
import numpy as np

from ._base import Backend


class NumpyBackend(Backend):
    name = "numpy"
    library = "numpy"
    extra = ""

    def _load(self):
        return np

    def _default_device(self):
        return "cpu"

    def owns(self, x) -> bool:
        return isinstance(x, np.ndarray)

    def asarray(self, obj, dtype=None):
        if isinstance(obj, np.ndarray) or not hasattr(obj, "__dlpack__"):
            return np.asarray(obj, dtype=self.dtype(dtype))
        return super().asarray(obj, dtype)

    def to_numpy(self, x):
        return np.asarray(x)


def load():
    return NumpyBackend()
