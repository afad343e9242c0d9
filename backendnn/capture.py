"""A Trainer's step captured by its backend (a CUDA graph on CuPy) and replayed."""
from __future__ import annotations

from .backends import host_rng


class CapturedStep:
    """The Trainer's step captured by the backend (`Backend.capture_step`) and replayed.

    A replay reads its input from static buffers, so each batch of the captured shape
    is first copied into them; batches of another shape (the last, partial one) run
    uncaptured. A graph keeps reading the arrays and host numbers it was captured
    with, so before capturing come two uncaptured steps: the first makes the
    optimiser's lazy state, the second checks that the step updates parameters,
    optimiser state and layer buffers in place, keeps per-parameter host numbers
    fixed (Adam's step count is not) and draws no host random numbers. Dropout is
    welcome: its masks come from the backend's Philox stream, whose counter lives on
    the device and advances in each replay.
    The options of the optimiser and `max_grad_norm` are baked into a capture, and the
    arrays it updates, and the mask stream's seed (the Philox key): when one changes
    (a schedule; weights restored from a checkpoint; `backendnn.seed`), the step is
    captured again. Host bookkeeping a replay skips (`optimizer.step_count`) is kept
    here.

    Call with a batch (x, y); returns the batch's summed loss, a 0-d array.
    """

    def __init__(self, trainer):
        self.trainer = trainer
        self.backend = trainer.model.backend
        self.replay = self.key = self.signature = self.buffers = None
        self.warmed = 0  # uncaptured steps of the captured shape so far
        self.captures = self.replays = 0
        self.bindings = []  # (object, its attributes) as the capture left them
        self.stale = False  # an uncaptured pass may have rebound those attributes

    def __call__(self, x, y):
        trainer = self.trainer
        signature = (tuple(x.shape), x.dtype, tuple(y.shape), y.dtype)
        if self.signature is None:
            self.signature = signature
        if signature != self.signature:
            self.stale = self.replay is not None
            return trainer._step(x, y)
        if self.warmed < 2:
            self.warmed += 1
            return trainer._step(x, y) if self.warmed == 1 else self._checked_step(x, y)
        optimizer = trainer.optimizer
        count = optimizer.step_count
        key = _capture_key(trainer)
        if self.replay is None or key != self.key:
            self._capture(x, y, key)
        elif self.stale:
            for obj, attributes in self.bindings:
                obj.__dict__.update(attributes)
        self.stale = False
        bx, by = self.buffers
        bx[...] = x
        by[...] = y
        loss = self.replay()
        self.replays += 1
        optimizer.step_count = count + 1
        return self.backend.xp.asarray(loss, copy=True)

    def _capture(self, x, y, key):
        trainer, backend = self.trainer, self.backend
        if self.buffers is None:
            xp = backend.xp
            self.buffers = (xp.asarray(x, copy=True), xp.asarray(y, copy=True))
        bx, by = self.buffers
        previous = self.replay  # kept alive until the new capture ends
        try:
            self.replay = backend.capture_step(lambda: trainer._step(bx, by))
        except Exception as e:
            msg = (
                f"Trainer(capture=True): capturing the training step on backend "
                f"{backend.name!r} failed: {e}. A captured step may not read values back "
                "from the device or draw random numbers; train with capture=False"
            )
            raise RuntimeError(msg) from e
        del previous
        self.key = key
        self.captures += 1
        model = trainer.model
        self.bindings = [(obj, dict(vars(obj))) for obj in (*model.layers, model.criterion)]

    def _checked_step(self, x, y):
        """An uncaptured step that refuses what a captured one would get wrong."""
        trainer = self.trainer
        before = _step_state(trainer)
        rng = host_rng()
        rng_state = rng.bit_generator.state
        loss = trainer._step(x, y)
        if host_rng() is not rng or rng.bit_generator.state != rng_state:
            problem = ("draws from the seeded host random generator each step; a captured "
                       "graph would replay the same numbers (draw on the device, as "
                       "Dropout does with backend.device_bernoulli)")
        else:
            problem = _changed(before, _step_state(trainer))
        if problem:
            msg = f"Trainer(capture=True): the training step {problem}: train with capture=False"
            raise ValueError(msg)
        return loss


def _capture_key(trainer) -> tuple:
    """What a captured step bakes in: the optimiser's options and max_grad_norm (host
    numbers), the mask stream's seed (its key; asking for it also resets the stream's
    counter after a `seed()` call, here, outside any capture), and which arrays hold
    the parameters, optimiser state and buffers (replaced by a checkpoint's restore,
    say)."""
    optimizer = trainer.optimizer
    stream_seed, _ = trainer.model.backend.random_stream()
    groups = tuple(tuple((k, v) for k, v in group.items() if k != "params")
                   for group in optimizer.param_groups)
    arrays = [id(p.value) for p in optimizer.params]
    arrays += [id(v) for state in optimizer.state for v in state.values()
               if not isinstance(v, (bool, int, float))]
    arrays += [id(buffer) for _, buffer in trainer.model.named_buffers()]
    return groups, trainer.max_grad_norm, stream_seed, tuple(arrays)


def _step_state(trainer) -> dict:
    """What the step must leave in place: name -> array (compared by identity) or
    host number (compared by value)."""
    model, optimizer = trainer.model, trainer.optimizer
    state = {}
    for i, param in enumerate(optimizer.params):
        state[f"parameter {i} ({param!r})"] = param.value
        for key, value in optimizer.state[i].items():
            state[f"optimiser state {key!r} of parameter {i} ({param!r})"] = value
    for name, buffer in model.named_buffers():
        state[f"buffer {name!r}"] = buffer
    return state


def _changed(before: dict, after: dict) -> str:
    """Why `after` breaks a capture of the step that led from `before`, or ""."""
    for name in [*before, *(k for k in after if k not in before)]:
        old, new = before.get(name), after.get(name)
        if isinstance(old, (bool, int, float)) or isinstance(new, (bool, int, float)):
            if old != new:
                return (f"changes {name} on the host ({old} -> {new}); a captured graph "
                        "would freeze it (Adam's step count)")
        elif old is not new:
            return (f"replaces {name} with a new array; a captured graph would keep using "
                    "the old one (parameters, optimiser state and buffers must be updated "
                    "in place; BatchNorm's running statistics are not)")
    return ""
