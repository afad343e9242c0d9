"""Stochastic gradient descent, with torch.optim.SGD's momentum, Nesterov and weight decay."""
from __future__ import annotations

from .optimizer import Optimizer, _check, _check_bool, _iadd, _imul, _isub


class SGD(Optimizer):
    """p -= lr * d, with d built as in `torch.optim.SGD`:

        g = grad + weight_decay * p
        buf = g (first step), else momentum * buf + (1 - dampening) * g
        d = g + momentum * buf (nesterov), buf (momentum), or g (plain)

    Options may differ per parameter group (see `Optimizer`).
    State per parameter: "momentum_buffer" (with momentum).
    Nesterov: Sutskever et al., 2013, http://proceedings.mlr.press/v28/sutskever13.html
    """

    def __init__(self, model, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False, dampening: float = 0.0):
        super().__init__(model, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                                 "nesterov": nesterov, "dampening": dampening})

    def _check_group(self, group, owner):
        super()._check_group(group, owner)
        _check(owner, "momentum", group["momentum"])
        _check(owner, "weight_decay", group["weight_decay"])
        _check(owner, "dampening", group["dampening"], upper=1.0)
        _check_bool(owner, "nesterov", group["nesterov"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            msg = f"{owner}: nesterov=True needs momentum > 0 and dampening = 0"
            raise ValueError(msg)

    def _state_keys(self, group):
        return ("momentum_buffer",) if group["momentum"] else ()

    def _add_grad_product(self, param, group):
        """Plain SGD: p -= lr * (a @ b) as one product, the gradient never written."""
        return (not group["momentum"] and not group["weight_decay"]
                and param.add_grad_product(-group["lr"]))

    def _update(self, p, g, state, group, backend):
        ip = backend.inplace
        momentum, weight_decay = group["momentum"], group["weight_decay"]
        buf = state.get("momentum_buffer")
        if (buf is not None or not momentum) and backend.fused_sgd(
                p, g, buf, lr=group["lr"], momentum=momentum, dampening=group["dampening"],
                weight_decay=weight_decay, nesterov=group["nesterov"]):
            return p  # the same operations as below, in one pass (backend kernel)
        owned = False  # whether g is a temporary of ours, free to scale in place
        if weight_decay:
            g, owned = _iadd(p * weight_decay, g, ip), True
        if momentum:
            if buf is None:
                buf = g if owned else backend.xp.asarray(g, copy=True)
            else:
                buf = _imul(buf, momentum, ip)
                dampening = group["dampening"]
                buf = _iadd(buf, g * (1.0 - dampening) if dampening else g, ip)
            state["momentum_buffer"] = buf
            if group["nesterov"]:
                g, owned = _iadd(buf * momentum, g, ip), True
            else:
                g, owned = buf, False
        if owned:
            return _isub(p, _imul(g, group["lr"], ip), ip)
        return backend.sub_scaled(p, g, group["lr"])  # g is the user's: not scaled in place
