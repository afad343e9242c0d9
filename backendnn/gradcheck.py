"""Check backward against central finite differences in float64."""
from __future__ import annotations

import copy
import random

from .backends import random_state_kept


def gradcheck(model, x, y, *, eps: float = 1e-5, max_checks: int = 30, seed: int = 0,
              mode: str = "train") -> dict:
    """Worst relative error of backward's gradients against finite differences.

    A float64 copy of `model` on its own backend is used, so the model is untouched;
    the random generators (host, and the backend's device one) are restored after,
    so calling gradcheck does not change a later training run.
    For each parameter (named "<index>.<Layer>.<attr>") and for the input ("input"),
    up to `max_checks` entries are perturbed by ±eps (1e-5 balances the float64
    rounding of the loss, which grows as 1/eps, against the truncation error, which
    grows as eps²); the error is
    max |analytic - numeric| / max(max |numeric|, 1e-8) over those entries.
    Every gradient, parameters' and input's, is that of the batch-mean loss.

    `mode` is the mode the copy is checked in: "train" (default) checks the
    gradients training uses — BatchNorm on batch statistics, each Dropout with one
    mask (drawn from the backend's generator on the first pass, then held via
    `hold_mask`); "eval" checks inference behaviour (Dropout the identity,
    BatchNorm on its running statistics).

    Returns: {name: worst relative error}.
    """
    if mode not in ("train", "eval"):
        msg = f"gradcheck: `mode` must be 'train' or 'eval', got {mode!r}"
        raise ValueError(msg)
    backend = model.backend
    with random_state_kept(backend):
        return _gradcheck(copy.deepcopy(model).to(backend, "float64"), x, y, eps=eps,
                          max_checks=max_checks, seed=seed, mode=mode)


def _gradcheck(model, x, y, *, eps, max_checks, seed, mode) -> dict:
    backend = model.backend
    xp = backend.xp
    x = xp.asarray(backend.asarray(x, dtype="float64"), copy=True)
    y = backend.asarray(y)
    if xp.isdtype(y.dtype, "real floating"):
        y = xp.astype(y, xp.float64)
    model.train(mode == "train")
    for layer in model.layers:
        if hasattr(layer, "hold_mask"):
            layer.hold_mask = mode == "train"

    def mean_loss():
        return float(xp.mean(model.loss(x, y)))

    model.loss(x, y)
    input_grad = model.backward(input_grad=True)
    analytic = {"input": (x, input_grad)}
    for i, layer in enumerate(model.layers):
        for p in layer.parameters():
            analytic[f"{i}.{type(layer).__name__}.{p.name}"] = (p.value, p.grad * 1.0)

    rng = random.Random(seed)
    report = {}
    for name, (array, grad) in analytic.items():
        shape = tuple(array.shape)
        count = 1
        for s in shape:
            count *= s
        flat = range(count) if count <= max_checks else rng.sample(range(count), max_checks)
        worst_diff = worst_ref = 0.0
        for k in flat:
            index = _unravel(k, shape)
            old = float(array[index])
            array[index] = old + eps
            plus = mean_loss()
            array[index] = old - eps
            minus = mean_loss()
            array[index] = old
            numeric = (plus - minus) / (2 * eps)
            worst_diff = max(worst_diff, abs(float(grad[index]) - numeric))
            worst_ref = max(worst_ref, abs(numeric))
        report[name] = worst_diff / max(worst_ref, 1e-8)
    return report


def _unravel(k: int, shape: tuple) -> tuple:
    index = []
    for s in reversed(shape):
        index.append(k % s)
        k //= s
    return tuple(reversed(index))
