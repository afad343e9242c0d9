"""The `Optimizer` base: a flat list of parameters, lazily made per-parameter state."""
from __future__ import annotations


class Optimizer:
    """Updates every `Param` of a model from the gradients its backward left.

    Subclasses check their hyperparameters in `__init__` and write `_update(i, p, g)`,
    which returns the step to subtract from parameter `i` (value `p`, gradient `g`)
    and may keep arrays in `self.state[i]`. The optimiser never asks what kind of
    layer holds a parameter.
    """

    def __init__(self, model, lr: float):
        params = model.parameters() if hasattr(model, "parameters") else list(model)
        if not params:
            msg = f"{type(self).__name__}: the model has no parameters to optimise"
            raise ValueError(msg)
        _check(type(self).__name__, "lr", lr, lower=0.0, strict=False)
        self.model = model
        self.params = params
        self.lr = float(lr)
        self.state: list[dict] = [{} for _ in params]
        self.step_count = 0

    def step(self) -> None:
        """One update of every parameter from its current gradient."""
        self.step_count += 1
        for i, param in enumerate(self.params):
            grad = param.grad
            if grad is None:
                msg = (
                    f"{type(self).__name__}.step(): {param!r} has no gradient; "
                    "call model.backward() after the loss and before step()"
                )
                raise RuntimeError(msg)
            value = param.value
            delta = self._update(i, value, grad)
            if param.layer.backend.inplace:
                value -= delta
            else:
                value = value - delta
            param.value = value

    def _update(self, i: int, p, g):
        raise NotImplementedError

    def zero_grad(self) -> None:
        """Forget the gradients (backward overwrites them anyway; kept for torch habits)."""
        for param in self.params:
            setattr(param.layer, param.grad_name, None)

    def __repr__(self):
        return f"{type(self).__name__}(lr={self.lr})"


def _check(owner: str, name: str, value, *, lower: float = 0.0, upper: float | None = None,
           strict: bool = False) -> None:
    """Refuse a hyperparameter outside [lower, upper] (or (lower, upper] if strict)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value > lower if strict else value >= lower)
    ok = ok and (upper is None or value <= upper)
    if not ok:
        bound = f"{'>' if strict else '>='} {lower}" + (f" and <= {upper}" if upper is not None else "")
        msg = f"{owner}: `{name}` must be a number {bound}, got {value!r}"
        raise ValueError(msg)
