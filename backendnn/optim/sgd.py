"""Stochastic gradient descent, with torch.optim.SGD's momentum, Nesterov and weight decay."""
from __future__ import annotations

from .optimizer import Optimizer, _check


class SGD(Optimizer):
    """p -= lr * d, with d built as in `torch.optim.SGD`:

        g = grad + weight_decay * p
        buf = g (first step), else momentum * buf + (1 - dampening) * g
        d = g + momentum * buf (nesterov), buf (momentum), or g (plain)

    Nesterov: Sutskever et al., 2013, http://proceedings.mlr.press/v28/sutskever13.html
    """

    def __init__(self, model, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False, dampening: float = 0.0):
        super().__init__(model, lr)
        name = type(self).__name__
        _check(name, "momentum", momentum)
        _check(name, "weight_decay", weight_decay)
        _check(name, "dampening", dampening, upper=1.0)
        if nesterov and (momentum <= 0 or dampening != 0):
            msg = f"{name}: nesterov=True needs momentum > 0 and dampening = 0"
            raise ValueError(msg)
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)
        self.nesterov, self.dampening = bool(nesterov), float(dampening)

    def _update(self, i, p, g):
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            state = self.state[i]
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = g * 1.0
            else:
                buf = self.momentum * buf + (1.0 - self.dampening) * g
            state["momentum_buffer"] = buf
            g = g + self.momentum * buf if self.nesterov else buf
        return self.lr * g

    def __repr__(self):
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, weight_decay={self.weight_decay}, "
                f"nesterov={self.nesterov})")
