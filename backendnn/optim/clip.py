"""Gradient clipping by global norm, without reading anything back from the device."""
from __future__ import annotations

import math
import numbers

from ..layers.base import Param


def clip_grad_norm(params, max_norm: float, norm_type: float = 2.0, *, eps: float = 1e-6):
    """Scale every gradient by min(1, max_norm / (total_norm + eps)), in place where
    the backend allows, as `torch.nn.utils.clip_grad_norm_`.

    Args:
        params: a model or layer (anything with `parameters()`) or an iterable of
            `Param`s; parameters without a gradient are skipped.
        max_norm: the largest global norm the gradients keep (> 0).
        norm_type: p of the p-norm (> 0), or math.inf for the largest |gradient|.

    Returns the global norm of all gradients before clipping, the p-norm of the
    per-parameter p-norms, as a 0-d array on the backend: the scaling is always
    applied (a factor of 1 when the norm is below max_norm), so nothing waits for
    the device. `float(norm)` reads it (and syncs): do that at log time.
    """
    params = list(params.parameters() if hasattr(params, "parameters") else params)
    if not params or not all(isinstance(p, Param) for p in params):
        kinds = sorted({type(p).__name__ for p in params}) or ["nothing"]
        msg = ("clip_grad_norm: `params` must be a model, a layer or backendnn Params, "
               f"got {', '.join(kinds)}")
        raise TypeError(msg)
    ok = isinstance(max_norm, numbers.Real) and not isinstance(max_norm, bool) and max_norm > 0
    if not ok:
        msg = f"clip_grad_norm: `max_norm` must be a number > 0, got {max_norm!r}"
        raise ValueError(msg)
    max_norm = float(max_norm)  # a NumPy float64 would make the scale factor float64
    ok = isinstance(norm_type, (int, float)) and not isinstance(norm_type, bool) and norm_type > 0
    if not ok:
        msg = f"clip_grad_norm: `norm_type` must be a number > 0 or math.inf, got {norm_type!r}"
        raise ValueError(msg)
    backends = {id(p.layer.backend): p.layer.backend for p in params}
    if len(backends) > 1:
        names = sorted(b.name for b in backends.values())
        msg = f"clip_grad_norm: the parameters live on several backends ({names}); move the model to one"
        raise ValueError(msg)
    backend = params[0].layer.backend
    xp = backend.xp
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        dtype = backend.dtype(params[0].layer.dtype)
        return xp.zeros((), dtype=dtype, device=backend.device)
    norms = [_norm(xp, p.grad, norm_type) for p in with_grad]
    total = _norm(xp, xp.stack(norms), norm_type) if len(norms) > 1 else norms[0]
    total = xp.asarray(total)  # NumPy reductions give scalars; a 0-d array everywhere
    coef = max_norm / (total + eps)
    coef = xp.minimum(coef, xp.ones_like(coef))
    for p in with_grad:
        grad = p.grad
        if backend.inplace:
            grad *= coef
        else:
            setattr(p.layer, p.grad_name, grad * coef)
    return total


def _norm(xp, x, p: float):
    """The p-norm of every element of `x`, a 0-d array."""
    linalg = getattr(xp, "linalg", None)
    if linalg is not None and hasattr(linalg, "vector_norm"):
        return linalg.vector_norm(x, ord=p)
    a = xp.abs(x)
    if p == math.inf:
        return xp.max(a)
    return xp.sum(a**p) ** (1.0 / p)
