"""The backend-parity battery: same seed, same numbers, on every backend.

    from backendnn import parity
    report = parity.run("torch")
    report.passed, report.failures     # False if any case failed; the failed CaseResults
    print(report)                      # the table `python -m backendnn parity` prints

NumPy in float64 is the reference. Components (`COMPONENTS`, in order):
  layers      forward and backward of every layer, random shapes (batch 1, odd
              sizes) and large magnitudes (sigmoid at ±100, logits 1e4 apart);
  losses      the same for every loss;
  optimizers  three steps of every optimiser from the same gradients;
  training    same seed -> same initial weights and batch order; a few epochs of
              the digits MLP: per-epoch losses and final weights;
  dtype       float32 stays float32 end to end, float64 stays float64;
  device      outputs on their input's device; models and batches moved to every
              other available backend and back, bit for bit;
  overhead    a training step's time against the same step written directly in
              the backend's namespace (informational, never fails).
Tolerances: `backendnn.parity.tolerances.TOLERANCES`, each with its reason.
What is covered: `backendnn.parity.cases` (LAYER_CASES, LOSS_CASES, OPTIMIZER_CASES);
how each component runs: `backendnn.parity.battery`. Backend authors:
`backendnn.testing.check_backend`.
"""
from __future__ import annotations

from ..backends import _base
from .battery import BATTERY, Context
from .report import CaseResult, Report
from .tolerances import TOLERANCES, Tolerance

__all__ = ["run", "COMPONENTS", "Report", "CaseResult", "TOLERANCES", "Tolerance"]

COMPONENTS = tuple(BATTERY)


def run(backend, *, components=None, seed: int = 0, epochs: int = 3) -> Report:
    """Run the parity battery on `backend` (a registered name or a Backend).

    Args:
        components: names from COMPONENTS to run (default: all).
        seed: seeds every case; the host generator is restored afterwards.
        epochs: epochs of the whole training runs.

    Returns a `Report`: one row per case; `report.passed` is False if any failed.
    Raises the registry's errors for a backend that is unknown or cannot run here.
    """
    chosen = COMPONENTS if components is None else tuple(components)
    unknown = [c for c in chosen if c not in BATTERY]
    if unknown:
        msg = f"parity.run: unknown components {unknown}; choose from {list(COMPONENTS)}"
        raise ValueError(msg)
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        msg = f"parity.run: `epochs` must be a positive int, got {epochs!r}"
        raise ValueError(msg)
    ctx = Context(backend, seed=seed, epochs=epochs)
    b = ctx.backend
    version = b.version()
    report = Report(b.name, f"{b.name}{'' if version == '?' else ' ' + version} on {b.device}")
    with _base.random_state_kept(b):
        for name in chosen:
            report.results += BATTERY[name](ctx)
    return report
