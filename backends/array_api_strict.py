"""array-api-strict backend: the referee. Runs only what the standard defines."""
import numpy as np

from ._base import Backend, BackendNotInstalledError


class ArrayApiStrictBackend(Backend):
    name = "array_api_strict"
    library = "array-api-strict"
    extra = "strict"

    def _load(self):
        try:
            import array_api_strict
        except ImportError as e:
            msg = (
                "backend 'array_api_strict' needs the array-api-strict package: "
                "pip install 'backendnn[strict]'"
            )
            raise BackendNotInstalledError(msg) from e
        self._array_type = type(array_api_strict.asarray(0))
        return array_api_strict

    def owns(self, x) -> bool:
        return isinstance(x, self._array_type)

    def asarray(self, obj, dtype=None):
        if isinstance(obj, np.ndarray) or not hasattr(obj, "__dlpack__"):
            return self.xp.asarray(np.asarray(obj), dtype=self.dtype(dtype), device=self.device)
        return super().asarray(obj, dtype)

    def to_numpy(self, x):
        return np.from_dlpack(x) if self.owns(x) else super().to_numpy(x)


def load():
    return ArrayApiStrictBackend()
