"""RMSprop, step for step as `torch.optim.RMSprop`."""
from __future__ import annotations

from .optimizer import Optimizer, _check, _check_bool, _iadd, _imul, _isub


class RMSprop(Optimizer):
    """Gradient scaled by a running root mean square (Hinton, Lecture 6e,
    https://www.cs.toronto.edu/~tijmen/csc321/slides/lecture_slides_lec6.pdf):

        g = grad + weight_decay * p
        s = alpha * s + (1 - alpha) * g**2
        a = alpha * a + (1 - alpha) * g;  d = sqrt(s - a**2) + eps   (centered)
                                          d = sqrt(s) + eps          (otherwise)
        b = momentum * b + g / d;  p -= lr * b                       (momentum > 0)
        p -= lr * g / d                                              (otherwise)

    Args: torch.optim.RMSprop's names and defaults; options may differ per
    parameter group (see `Optimizer`).
    State per parameter: "step" (int), "square_avg", and "momentum_buffer" (with
    momentum), "grad_avg" (centered), each shaped like the parameter.
    """

    def __init__(self, model, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False):
        super().__init__(model, {"lr": lr, "alpha": alpha, "eps": eps,
                                 "weight_decay": weight_decay, "momentum": momentum,
                                 "centered": centered})

    def _check_group(self, group, owner):
        super()._check_group(group, owner)
        _check(owner, "alpha", group["alpha"], upper=1.0)
        _check(owner, "eps", group["eps"])
        _check(owner, "weight_decay", group["weight_decay"])
        _check(owner, "momentum", group["momentum"])
        _check_bool(owner, "centered", group["centered"])

    def _state_keys(self, group):
        keys = ("step", "square_avg")
        keys += ("momentum_buffer",) if group["momentum"] > 0 else ()
        return keys + (("grad_avg",) if group["centered"] else ())

    def _update(self, p, g, state, group, backend):
        xp, ip = backend.xp, backend.inplace
        alpha, momentum = group["alpha"], group["momentum"]
        if not state:
            state["step"] = 0
            state["square_avg"] = xp.zeros_like(p)
            if momentum > 0:
                state["momentum_buffer"] = xp.zeros_like(p)
            if group["centered"]:
                state["grad_avg"] = xp.zeros_like(p)
        state["step"] += 1
        if backend.fused_rmsprop(p, g, state["square_avg"], state.get("grad_avg"),
                                 state.get("momentum_buffer"), lr=group["lr"], alpha=alpha,
                                 eps=group["eps"], weight_decay=group["weight_decay"],
                                 momentum=momentum):
            return p  # the same operations as below, in one pass (backend kernel)
        if group["weight_decay"]:
            g = _iadd(p * group["weight_decay"], g, ip)
        g2 = _imul(g * g, 1.0 - alpha, ip)
        s = state["square_avg"] = _iadd(_imul(state["square_avg"], alpha, ip), g2, ip)
        if group["centered"]:
            # a + (1 - alpha) * (g - a), written as alpha * (a - g) + g: no temporary
            a = _isub(state["grad_avg"], g, ip)
            a = state["grad_avg"] = _iadd(_imul(a, alpha, ip), g, ip)
            d = xp.sqrt(_iadd(_imul(a * a, -1.0, ip), s, ip))
        else:
            d = xp.sqrt(s)
        d = _iadd(d, group["eps"], ip)
        if momentum > 0:
            b = _imul(state["momentum_buffer"], momentum, ip)
            b = state["momentum_buffer"] = _iadd(b, g / d, ip)
            return _isub(p, b * group["lr"], ip)
        return _isub(p, _imul(g / d, group["lr"], ip), ip)
