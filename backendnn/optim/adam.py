"""Adam and AdamW, step for step as `torch.optim.Adam` / `torch.optim.AdamW`."""
from __future__ import annotations

from .optimizer import Optimizer, _check, _check_bool, _iadd, _idiv, _imul, _isub


class Adam(Optimizer):
    """Adaptive moments (Kingma & Ba, 2014, https://arxiv.org/abs/1412.6980):

        g = grad + weight_decay * p                 (Adam: L2 penalty in the gradient)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        v_hat = max(v_hat, v) with amsgrad, else v  (Reddi et al., 2018,
                                                     https://openreview.net/forum?id=ryQu7f-RZ)
        p -= lr / (1 - beta1**t) * m / (sqrt(v_hat) / sqrt(1 - beta2**t) + eps)

    Args: torch.optim.Adam's names and defaults; options may differ per parameter
    group (see `Optimizer`).
    State per parameter: "step" (int), "exp_avg", "exp_avg_sq", and with amsgrad
    "max_exp_avg_sq", each shaped like the parameter.
    """

    decoupled = False

    def __init__(self, model, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False):
        super().__init__(model, {"lr": lr, "betas": betas, "eps": eps,
                                 "weight_decay": weight_decay, "amsgrad": amsgrad})

    def _check_group(self, group, owner):
        super()._check_group(group, owner)
        betas = group["betas"]
        if isinstance(betas, list):
            group["betas"] = betas = tuple(betas)
        if not isinstance(betas, tuple) or len(betas) != 2:
            msg = f"{owner}: `betas` must be a pair (beta1, beta2), got {betas!r}"
            raise ValueError(msg)
        for k, beta in enumerate(betas):
            _check(owner, f"betas[{k}]", beta, upper=1.0, upper_strict=True)
        _check(owner, "eps", group["eps"])
        _check(owner, "weight_decay", group["weight_decay"])
        _check_bool(owner, "amsgrad", group["amsgrad"])

    def _state_keys(self, group):
        keys = ("step", "exp_avg", "exp_avg_sq")
        return keys + ("max_exp_avg_sq",) if group["amsgrad"] else keys

    def _update(self, p, g, state, group, backend):
        xp, ip = backend.xp, backend.inplace
        lr, (beta1, beta2), weight_decay = group["lr"], group["betas"], group["weight_decay"]
        if not state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(p)
            state["exp_avg_sq"] = xp.zeros_like(p)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = xp.zeros_like(p)
        step = state["step"] = state["step"] + 1
        step_size = lr / (1.0 - beta1**step)
        root2 = (1.0 - beta2**step) ** 0.5
        if backend.fused_adam(p, g, state["exp_avg"], state["exp_avg_sq"],
                              state.get("max_exp_avg_sq"), beta1=beta1, beta2=beta2,
                              eps=group["eps"], weight_decay=weight_decay,
                              decoupled=self.decoupled, decay=1.0 - lr * weight_decay,
                              step_size=step_size, root2=root2):
            return p  # the same operations as below, in one pass (backend kernel)
        if weight_decay:
            if self.decoupled:
                p = _imul(p, 1.0 - lr * weight_decay, ip)
            else:
                g = _iadd(p * weight_decay, g, ip)
        # m + (1 - beta1) * (g - m), written as beta1 * (m - g) + g: no temporary
        m = _isub(state["exp_avg"], g, ip)
        m = _iadd(_imul(m, beta1, ip), g, ip)
        state["exp_avg"] = m
        g2 = _imul(g * g, 1.0 - beta2, ip)
        v = state["exp_avg_sq"] = _iadd(_imul(state["exp_avg_sq"], beta2, ip), g2, ip)
        if group["amsgrad"]:
            v = state["max_exp_avg_sq"] = xp.maximum(state["max_exp_avg_sq"], v)
        denom = _idiv(xp.sqrt(v), root2, ip)
        denom = _iadd(denom, group["eps"], ip)
        return _isub(p, _imul(m / denom, step_size, ip), ip)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019,
    https://arxiv.org/abs/1711.05101): p *= 1 - lr * weight_decay before the Adam
    step, instead of adding weight_decay * p to the gradient.

    Args: torch.optim.AdamW's names and defaults (weight_decay=1e-2).
    """

    decoupled = True

    def __init__(self, model, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False):
        super().__init__(model, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad)
