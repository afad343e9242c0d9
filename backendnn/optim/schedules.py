"""Learning-rate schedules with torch.optim.lr_scheduler's semantics.

Each schedule changes the "lr" of every parameter group of any backendnn optimiser.
Construction applies epoch 0's rate; each `step()` (once per epoch, after the
epoch's optimiser steps; `Trainer(..., scheduler=...)` does it) moves to the next.
Updates are multiplicative on the current rate, as torch's, so schedules compose:
several schedules on one optimiser, stepped together (`ChainedScheduler`, or a list
given to the Trainer), multiply their factors, e.g. a linear warm-up over a cosine
decay. All arithmetic is on Python floats: nothing touches the device.

    opt = SGD(model, lr=0.1)
    sched = ChainedScheduler([LinearWarmup(opt, warmup_epochs=5),
                              CosineAnnealingLR(opt, T_max=50)])
"""
from __future__ import annotations

import math

from .._validate import integer, number

__all__ = [
    "LRScheduler",
    "StepLR",
    "ExponentialLR",
    "CosineAnnealingLR",
    "LinearLR",
    "LinearWarmup",
    "ChainedScheduler",
]


class LRScheduler:
    """Base class: subclasses write `_next_lrs()` (the multiplicative update from
    the current rates, torch's `get_lr`) and `_closed_form()` (the rates at
    `last_epoch` from `base_lrs` alone).

    Attributes:
        optimizer: what it schedules (anything with `param_groups`).
        base_lrs: each group's rate when the first schedule was attached
            (kept in the group as "initial_lr", as torch does).
        last_epoch: the epoch whose rate is applied now (0 after construction).
    """

    def __init__(self, optimizer):
        groups = getattr(optimizer, "param_groups", None)
        if not isinstance(groups, list) or not all(isinstance(g, dict) and "lr" in g for g in groups):
            msg = (f"{type(self).__name__}: expected an optimiser with `param_groups` "
                   f"(a backendnn Optimizer), got {type(optimizer).__name__}")
            raise TypeError(msg)
        self.optimizer = optimizer
        for group in groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in groups]
        self.last_epoch = -1
        self._initial = True
        self.step()
        self._initial = False

    def step(self) -> None:
        """Advance one epoch and set each group's learning rate."""
        self.last_epoch += 1
        lrs = self._next_lrs()
        lrs = [float(lr) for lr in lrs]  # a NumPy gamma must not make the rate float64
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = lrs

    def get_lr(self) -> list[float]:
        """This schedule's rate for each group at `last_epoch`, in closed form from
        `base_lrs` (equal to `get_last_lr()` when it is the only schedule)."""
        return self._closed_form()

    def get_last_lr(self) -> list[float]:
        """The rates the last `step()` (or construction) set."""
        return list(self._last_lr)

    def _current(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def _next_lrs(self) -> list[float]:
        raise NotImplementedError

    def _closed_form(self) -> list[float]:
        raise NotImplementedError

    options: tuple[str, ...] = ()  # the constructor's hyperparameters, saved with the state

    def state_dict(self) -> dict:
        """Plain Python values: `last_epoch`, `base_lrs`, `last_lr` (the rates the last
        step set) and the schedule's options (`options`)."""
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs),
                "last_lr": list(self._last_lr),
                **{name: getattr(self, name) for name in self.options}}

    def load_state_dict(self, state: dict) -> None:
        """Take what `state_dict()` gave; the optimiser's rates come from its own state.
        Entries are checked before anything changes."""
        name = type(self).__name__
        if isinstance(state, dict) and "_last_lr" in state:  # written by backendnn 0.1
            state = {("last_lr" if k == "_last_lr" else k): v
                     for k, v in state.items() if k != "_initial"}
        expected = {"last_epoch", "base_lrs", "last_lr", *self.options}
        if not isinstance(state, dict) or set(state) != expected:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            msg = (f"{name}.load_state_dict: expected the entries {sorted(expected)} of "
                   f"{name}.state_dict(), got {got}")
            raise ValueError(msg)
        n = len(self.optimizer.param_groups)
        for key in ("base_lrs", "last_lr"):
            value = state[key]
            if not isinstance(value, (list, tuple)) or len(value) != n:
                msg = f"{name}.load_state_dict: `{key}` must list {n} rates, got {value!r}"
                raise ValueError(msg)
        last_epoch = integer(name, "last_epoch", state["last_epoch"], minimum=0)
        base = [number(name, "base_lrs", v, low=0.0) for v in state["base_lrs"]]
        last = [number(name, "last_lr", v, low=0.0) for v in state["last_lr"]]
        for option in self.options:
            setattr(self, option, state[option])
        self.last_epoch, self.base_lrs, self._last_lr = last_epoch, base, last

    def __repr__(self):
        options = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.options)
        return f"{type(self).__name__}({options})"


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (epoch // step_size): decay by `gamma` every `step_size` epochs."""

    options = ("step_size", "gamma")

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1):
        _positive_int(self, "step_size", step_size)
        _number(self, "gamma", gamma, lower=0.0, strict=True)
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer)

    def _next_lrs(self):
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._current()
        return [lr * self.gamma for lr in self._current()]

    def _closed_form(self):
        return [base * self.gamma ** (self.last_epoch // self.step_size) for base in self.base_lrs]


class ExponentialLR(LRScheduler):
    """lr = base_lr * gamma ** epoch."""

    options = ("gamma",)

    def __init__(self, optimizer, gamma: float):
        _number(self, "gamma", gamma, lower=0.0, strict=True)
        self.gamma = gamma
        super().__init__(optimizer)

    def _next_lrs(self):
        if self._initial:
            return self._current()
        return [lr * self.gamma for lr in self._current()]

    def _closed_form(self):
        return [base * self.gamma**self.last_epoch for base in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2, from
    base_lr at epoch 0 to eta_min at epoch T_max, then back up (no restarts:
    SGDR, Loshchilov & Hutter, 2017, https://arxiv.org/abs/1608.03983). Computed
    recursively from the current rate, as torch does, so it composes.
    """

    options = ("T_max", "eta_min")

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0):  # noqa: N803 (torch's name)
        _positive_int(self, "T_max", T_max)
        _number(self, "eta_min", eta_min, lower=0.0)
        self.T_max, self.eta_min = T_max, eta_min
        super().__init__(optimizer)

    def _next_lrs(self):
        epoch, t_max, eta_min = self.last_epoch, self.T_max, self.eta_min
        if self._initial:
            return self._current()
        if (epoch - 1 - t_max) % (2 * t_max) == 0:
            return [lr + (base - eta_min) * (1 - math.cos(math.pi / t_max)) / 2
                    for lr, base in zip(self._current(), self.base_lrs)]
        ratio = (1 + math.cos(math.pi * epoch / t_max)) / (1 + math.cos(math.pi * (epoch - 1) / t_max))
        return [ratio * (lr - eta_min) + eta_min for lr in self._current()]

    def _closed_form(self):
        c = (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
        return [self.eta_min + (base - self.eta_min) * c for base in self.base_lrs]


class LinearLR(LRScheduler):
    """lr = base_lr * factor, the factor going linearly from `start_factor` at
    epoch 0 to `end_factor` at epoch `total_iters`, then kept (torch's LinearLR)."""

    options = ("start_factor", "end_factor", "total_iters")

    def __init__(self, optimizer, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
                 total_iters: int = 5):
        _number(self, "start_factor", start_factor, lower=0.0, strict=True, upper=1.0)
        _number(self, "end_factor", end_factor, lower=0.0, upper=1.0)
        _positive_int(self, "total_iters", total_iters)
        self.start_factor, self.end_factor, self.total_iters = start_factor, end_factor, total_iters
        super().__init__(optimizer)

    def _next_lrs(self):
        start, end, total, epoch = self.start_factor, self.end_factor, self.total_iters, self.last_epoch
        if epoch == 0:
            return [lr * start for lr in self._current()]
        if epoch > total:
            return self._current()
        factor = 1.0 + (end - start) / (total * start + (epoch - 1) * (end - start))
        return [lr * factor for lr in self._current()]

    def _closed_form(self):
        span = self.end_factor - self.start_factor
        factor = self.start_factor + span * min(self.total_iters, self.last_epoch) / self.total_iters
        return [base * factor for base in self.base_lrs]


class LinearWarmup(LinearLR):
    """Linear warm-up: lr rises from base_lr * start_factor at epoch 0 to base_lr at
    epoch `warmup_epochs`, then stays (torch's LinearLR with end_factor=1). Chain it
    with a decay (`ChainedScheduler`) for warm-up then decay.
    """

    def __init__(self, optimizer, warmup_epochs: int = 5, start_factor: float = 1.0 / 3):
        _positive_int(self, "warmup_epochs", warmup_epochs)
        super().__init__(optimizer, start_factor=start_factor, end_factor=1.0,
                         total_iters=warmup_epochs)


class ChainedScheduler:
    """Several schedules on the same optimiser, stepped together: their factors
    multiply (torch's ChainedScheduler). `Trainer(scheduler=[...])` builds one."""

    def __init__(self, schedulers):
        self.schedulers = list(schedulers)
        if not self.schedulers or not all(isinstance(s, LRScheduler) for s in self.schedulers):
            msg = ("ChainedScheduler: expected a non-empty list of schedules, got "
                   f"{[type(s).__name__ for s in self.schedulers]}")
            raise TypeError(msg)
        self.optimizer = self.schedulers[0].optimizer
        if any(s.optimizer is not self.optimizer for s in self.schedulers):
            msg = "ChainedScheduler: all schedules must drive the same optimiser"
            raise ValueError(msg)

    def step(self) -> None:
        for scheduler in self.schedulers:
            scheduler.step()

    def get_last_lr(self) -> list[float]:
        return self.schedulers[-1].get_last_lr()

    def get_lr(self) -> list[float]:
        """The rates of the chain at this epoch (those the last step set)."""
        return self.get_last_lr()

    @property
    def last_epoch(self) -> int:
        return self.schedulers[0].last_epoch

    def state_dict(self) -> dict:
        return {"schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state: dict) -> None:
        saved = list(state.get("schedulers", ()))
        if len(saved) != len(self.schedulers):
            msg = (f"ChainedScheduler.load_state_dict: the state holds {len(saved)} schedules, "
                   f"this chain {len(self.schedulers)}")
            raise ValueError(msg)
        for scheduler, entry in zip(self.schedulers, saved):
            scheduler.load_state_dict(entry)

    def __repr__(self):
        return f"ChainedScheduler({self.schedulers!r})"


def _positive_int(owner, name: str, value) -> int:
    return integer(type(owner).__name__, name, value, minimum=1)


def _number(owner, name: str, value, *, lower: float, strict: bool = False,
            upper: float | None = None) -> float:
    return number(type(owner).__name__, name, value, low=lower, high=upper, low_open=strict)
