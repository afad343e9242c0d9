"""Every tolerance of the parity battery, in one table.

A case compares a backend's arrays with NumPy float64 computing from the same
values (parameters and inputs drawn once, rounded to the backend's dtype, then
widened to float64 for the reference), so what remains is the backend's own
rounding. An array passes when

    max |actual - reference| <= rtol * max(max |reference|, floor)

a normwise bound: an element far smaller than the array's largest (a sigmoid at
-100, a softmax probability of exp(-1e4)) is judged at the array's scale, where a
relative error per element would be meaningless. `floor` is the scale below which
an error is judged absolutely: the battery's data is of order 1 by construction
(N(0, 1) inputs and upstream gradients, weights within ±1/sqrt(n), probabilities),
and a result that happens to be small there (the gradient of a well-classified
sample, 1 - tanh² at saturation, a bias that started at zero) carries the absolute
rounding of the order-1 values it came from.

float32 has eps = 1.2e-7. Each float32 entry sits about ten times above the worst
error seen on numpy, array_api_strict and torch CPU over 16 to 60 seeds (noted
beside it), and far below what a real fault gives: an `exp` off by 1e-4 moves a
sigmoid by 2.5e-5 and a cross-entropy by 1e-4 of its scale.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    """An array passes when max |actual - reference| <= rtol * max(max |reference|, floor).

    floor: the scale below which an error is judged absolutely (0: always relative).
    """

    rtol: float
    floor: float = 0.0

    def relative(self, max_abs: float, scale: float) -> float:
        """The error relative to max(scale, floor): what is held to `rtol`."""
        denominator = max(scale, self.floor)
        if denominator > 0:
            return max_abs / denominator
        return 0.0 if max_abs == 0 else float("inf")

    def allows(self, max_abs: float, scale: float) -> bool:
        return self.relative(max_abs, scale) <= self.rtol


TOLERANCES: dict[str, Tolerance] = {
    # Moves between backends, and the same seed's weights and batch order: copies and
    # casts of the same host draws, never arithmetic, so bit for bit.
    "exact": Tolerance(0.0),
    # Element-wise activations (ReLU, Sigmoid, Tanh, Softmax, Dropout in eval mode,
    # Flatten, ...): one libm call and a few flops per element, a few ulps each; the
    # derivatives taken from the output (y(1 - y), 1 - y²) lose absolute precision
    # where the activation saturates, hence floor 1. Seen: 3.3e-7 (Softmax backward).
    "elementwise": Tolerance(3e-6, floor=1.0),
    # Linear: sums of n products whose order differs between BLAS libraries (and
    # GPUs), error ~ sqrt(n) eps. Seen: 2.7e-7 at n <= 13.
    "matmul": Tolerance(5e-6, floor=1.0),
    # Conv2d: as Linear, sums of C/groups·kh·kw products (forward, dL/dx: of
    # O/groups·kh·kw) in an order each backend's im2col, BLAS or oneDNN picks; the
    # weight gradient sums batch·Ho·Wo products. Seen: 6.7e-7 (seed 0 only, the
    # grouped case's backward on numpy, array_api_strict and torch CPU).
    "conv": Tolerance(1e-5, floor=1.0),
    # BatchNorm1d, LayerNorm: x - mean divided by the standard deviation, so the error
    # grows with |x| / std, large when a few features lie close together (the
    # battery's 3-feature shape); the backward subtracts two sums more.
    # Seen: 6.5e-6 (LayerNorm forward, 60 seeds).
    "normalization": Tolerance(1e-4, floor=1.0),
    # A layer the case table does not know (it joined by discovery): the loosest
    # per-layer bound, until it gets its own line in cases.LAYER_CASES.
    "layer": Tolerance(1e-4, floor=1.0),
    # Losses: a log-sum-exp, or a log and a division per element, and a mean over
    # outputs. Seen: 1.9e-7 (MeanSquaredError of values ~1e3).
    "loss": Tolerance(2e-6, floor=1.0),
    # Three optimiser steps on parameters of order 1 with steps of order lr: the
    # parameter's own rounding, plus a few ulps of each step (Adam's sqrt and
    # division). Seen: 1.2e-7.
    "optimizer": Tolerance(1e-6, floor=1.0),
    # Three epochs of the digits MLP (171 SGD-momentum steps) in float32 against the
    # same run in float64 (and against NumPy's float32 run): rounding compounds along
    # the trajectory. Seen: 2.5e-6 for the final weights, 7.4e-8 for the epoch
    # losses (means over 1797 samples, so rounding averages out), over 16 seeds on
    # numpy, array_api_strict and torch. Judged relative to each whole array.
    "train_weights": Tolerance(2e-5),
    "train_loss": Tolerance(1e-6),
    # A float64 model on the backend against NumPy float64: only summation order
    # differs. Seen: 5.4e-16; a backend computing float64 in float32 fails at once.
    "float64": Tolerance(1e-12, floor=1.0),
}


def tolerance(key: str) -> Tolerance:
    """The tolerance named `key` (a key of TOLERANCES)."""
    try:
        return TOLERANCES[key]
    except KeyError:
        msg = f"unknown parity tolerance {key!r}; known: {', '.join(TOLERANCES)}"
        raise KeyError(msg) from None
