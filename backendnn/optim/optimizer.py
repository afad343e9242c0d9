"""The `Optimizer` base: parameter groups, lazily made per-parameter state, state_dict."""
from __future__ import annotations

import numbers

from ..backends import get_backend
from ..layers.base import Param


class Optimizer:
    """Updates every `Param` of a model from the gradients its backward left.

    Args:
        params: a model or layer (anything with `parameters()`), an iterable of
            `Param`s, or a list of parameter groups: dicts with a "params" entry
            (model, layer or Params) and per-group options overriding the defaults,
            as torch.optim's param groups:
            `Adam([{"params": body}, {"params": head, "lr": 1e-2}], lr=1e-3)`.
        defaults: each option's value for groups that do not set it (lr included);
            a number is taken as {"lr": number}.

    Attributes:
        param_groups: list of dicts, the options of each group and its "params"
            (a list of `Param`); schedulers and users change "lr" here.
        params: every `Param`, groups concatenated, in a fixed order.
        state: list aligned with `params`; per-parameter dicts made on first step.
        lr: the first group's learning rate; setting it sets every group's.

    Subclasses check their options in `_check_group(group, owner)` and write
    `_update(p, g, state, group, backend)`, which returns the parameter's new value
    (p itself, updated in place, where `backend.inplace`). Hyperparameters and step
    counts stay Python numbers on the host: a step never reads a value back from the
    device.
    """

    def __init__(self, params, defaults: dict | float):
        self.model = params
        self.defaults = dict(defaults) if isinstance(defaults, dict) else {"lr": defaults}
        self.param_groups = []
        seen = set()
        specs = self._group_specs(params)
        for k, spec in enumerate(specs):
            owner = type(self).__name__ + (f" (parameter group {k})" if len(specs) > 1 else "")
            self.param_groups.append(self._make_group(k, spec, seen, owner))
        self.params = [p for group in self.param_groups for p in group["params"]]
        if not self.params:
            msg = f"{type(self).__name__}: the model has no parameters to optimise"
            raise ValueError(msg)
        self.state: list[dict] = [{} for _ in self.params]
        self._where: list = [None] * len(self.params)
        self.step_count = 0

    # --- construction --------------------------------------------------------------
    def _group_specs(self, params) -> list[dict]:
        if isinstance(params, dict):
            return [params]
        if hasattr(params, "parameters"):
            return [{"params": params}]
        try:
            items = list(params)
        except TypeError:
            msg = (f"{type(self).__name__}: expected a model, a list of Params or a list of "
                   f"parameter-group dicts, got {type(params).__name__}")
            raise TypeError(msg) from None
        if items and all(isinstance(item, dict) for item in items):
            return items
        if any(isinstance(item, dict) for item in items):
            msg = f"{type(self).__name__}: mix of parameter-group dicts and Params; pass one kind"
            raise TypeError(msg)
        return [{"params": items}]

    def _make_group(self, k: int, spec: dict, seen: set, owner: str) -> dict:
        name = type(self).__name__
        if "params" not in spec:
            msg = f"{name}: parameter group {k} has no 'params' entry (got keys {sorted(spec)})"
            raise ValueError(msg)
        unknown = set(spec) - set(self.defaults) - {"params", "initial_lr"}
        if unknown:
            msg = (f"{name}: parameter group {k} has unknown options {sorted(unknown)}; "
                   f"valid options: {sorted(self.defaults)}")
            raise ValueError(msg)
        params = spec["params"]
        params = list(params.parameters() if hasattr(params, "parameters") else
                      [params] if isinstance(params, Param) else params)
        for p in params:
            if not isinstance(p, Param):
                msg = (f"{name}: parameter group {k} holds a {type(p).__name__}, not a backendnn "
                       "Param; pass model.parameters() or the model itself")
                raise TypeError(msg)
            key = (id(p.layer), p.name)
            if key in seen:
                msg = f"{name}: {p!r} appears in more than one parameter group"
                raise ValueError(msg)
            seen.add(key)
        group = {key: _plain(v) for key, v in {**self.defaults, **spec}.items() if key != "params"}
        self._check_group(group, owner)
        group["params"] = params
        return group

    def _check_group(self, group: dict, owner: str) -> None:
        """Refuse invalid options of one group; subclasses extend it."""
        _check(owner, "lr", group["lr"])

    # --- the update ----------------------------------------------------------------
    def step(self) -> None:
        """One update of every parameter from its current gradient."""
        self.step_count += 1
        i = 0
        for group in self.param_groups:
            for param in group["params"]:
                self._apply(i, param, group)
                i += 1

    def _apply(self, i: int, param, group: dict) -> None:
        """Update parameter `i` (`param`, of `group`) from its gradient."""
        layer = param.layer
        state = self.state[i]
        if state and self._where[i] != (layer.backend, layer.dtype):
            self._move_state(i, layer.backend, layer.dtype)
        self._where[i] = (layer.backend, layer.dtype)
        if self._add_grad_product(param, group):
            return
        grad = param.grad
        if grad is None:
            msg = (
                f"{type(self).__name__}.step(): {param!r} has no gradient; "
                "call model.backward() after the loss and before step()"
            )
            raise RuntimeError(msg)
        param.value = self._update(param.value, grad, state, group, layer.backend)

    def _add_grad_product(self, param, group: dict) -> bool:
        """Where the update is p -= lr * grad and the gradient is still an unmade
        product (`ProductGrad`): make the update inside that product and return True.
        Optimisers whose update is not that return False."""
        return False

    # --- the step inside backward (Sequential.backward(optimizer=...)) --------------
    # The same updates as step(), each made as soon as its layer's backward has left the
    # gradients (still in cache); so nothing may read or change gradients in between.
    def _begin_step(self) -> None:
        self.step_count += 1
        self._pending = dict(self._by_layer())

    def _by_layer(self) -> dict:
        """{id(layer): [(index, Param, group)]}, made again whenever the groups' params
        change (a new list, or one changed in place)."""
        key = tuple(tuple(map(id, group["params"])) for group in self.param_groups)
        cached = self.__dict__.get("_layer_index")
        if cached is None or cached[0] != key:
            index, i = {}, 0
            for group in self.param_groups:
                for param in group["params"]:
                    index.setdefault(id(param.layer), []).append((i, param, group))
                    i += 1
            cached = self._layer_index = (key, index)
        return cached[1]

    def _step_layer(self, layer) -> None:
        """Update `layer`'s parameters (those this optimiser holds) now."""
        for i, param, group in self._pending.pop(id(layer), ()):
            self._apply(i, param, group)

    def _end_step(self) -> None:
        """Update the parameters of layers the backward pass did not reach."""
        pending, self._pending = self._pending, {}
        for entries in pending.values():
            for i, param, group in entries:
                self._apply(i, param, group)

    def _update(self, p, g, state: dict, group: dict, backend):
        raise NotImplementedError

    def zero_grad(self) -> None:
        """Forget the gradients (backward overwrites them anyway; kept for torch habits)."""
        for param in self.params:
            setattr(param.layer, param.grad_name, None)

    # --- hyperparameters -------------------------------------------------------------
    @property
    def lr(self) -> float:
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        value = _plain(value)
        _check(type(self).__name__, "lr", value)
        for group in self.param_groups:
            group["lr"] = value

    def __getattr__(self, name):
        defaults = self.__dict__.get("defaults", {})
        groups = self.__dict__.get("param_groups")
        if name in defaults and groups:
            return groups[0][name]
        msg = f"{type(self).__name__!r} object has no attribute {name!r}"
        raise AttributeError(msg)

    # --- state -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The optimiser's state as plain nested dicts, for checkpoints.

        Layout:
            {"optimizer": class name (str),
             "step_count": int, the number of step() calls,
             "state": {i: {name: array or int}} for each parameter index i (int,
                 the position in `params`) that has state yet; arrays are copies on
                 the parameter's backend, shaped like the parameter, e.g. Adam's
                 {"step": 3, "exp_avg": ..., "exp_avg_sq": ...},
             "param_groups": [{option: value, ..., "params": [i, ...]}]}
        Option values are Python numbers, bools and tuples (Adam's betas).
        """
        state = {}
        for i, entry in enumerate(self.state):
            if entry:
                xp = self.params[i].layer.backend.xp
                state[i] = {k: (v if _is_scalar(v) else xp.asarray(v, copy=True))
                            for k, v in entry.items()}
        groups, i = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            groups.append({**{k: v for k, v in group.items() if k != "params"},
                           "params": list(range(i, i + n))})
            i += n
        return {"optimizer": type(self).__name__, "step_count": self.step_count,
                "state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Take the state `state_dict()` gave (possibly from another backend: arrays of
        any library or NumPy are copied onto each parameter's backend and dtype).

        Raises ValueError naming the parameter and shapes when the state does not fit.
        """
        name = type(self).__name__
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            msg = (f"{name}.load_state_dict: expected a dict with 'state' and 'param_groups' "
                   f"(from state_dict()), got {type(state_dict).__name__}")
            raise ValueError(msg)
        saved_name = state_dict.get("optimizer", name)
        if saved_name != name:
            msg = f"{name}.load_state_dict: the state is of a {saved_name}; build a {saved_name} to load it"
            raise ValueError(msg)
        groups = list(state_dict["param_groups"])
        sizes = [len(g["params"]) for g in self.param_groups]
        saved_sizes = [len(g.get("params", ())) for g in groups]
        if sizes != saved_sizes:
            msg = (f"{name}.load_state_dict: the state has parameter groups of sizes {saved_sizes}, "
                   f"this optimiser {sizes}; build it over the same model and groups")
            raise ValueError(msg)
        new_groups = []
        for k, (group, saved) in enumerate(zip(self.param_groups, groups)):
            options = {key: _plain(v) for key, v in saved.items() if key != "params"}
            unknown = set(options) - set(self.defaults) - {"initial_lr"}
            if unknown:
                msg = f"{name}.load_state_dict: parameter group {k} has unknown options {sorted(unknown)}"
                raise ValueError(msg)
            merged = {**group, **options}
            self._check_group(merged, f"{name}.load_state_dict (parameter group {k})")
            new_groups.append(merged)
        new_state = [{} for _ in self.params]
        for key, entry in dict(state_dict["state"]).items():
            i = int(key)
            if not 0 <= i < len(self.params):
                msg = f"{name}.load_state_dict: state for parameter {i}, but there are {len(self.params)}"
                raise ValueError(msg)
            new_state[i] = self._load_entry(i, entry, new_groups)
        for group, merged in zip(self.param_groups, new_groups):
            group.update(merged)
        self.state = new_state
        self._where = [(p.layer.backend, p.layer.dtype) if s else None
                       for p, s in zip(self.params, new_state)]
        self.step_count = int(state_dict.get("step_count", 0))

    def _load_entry(self, i: int, entry: dict, groups: list) -> dict:
        name, param = type(self).__name__, self.params[i]
        group = groups[self._group_index(i)]
        missing = set(self._state_keys(group)) - set(entry)
        if missing:
            msg = (f"{name}.load_state_dict: the state of parameter {i} {param!r} lacks "
                   f"{sorted(missing)} (has {sorted(entry)})")
            raise ValueError(msg)
        backend, dtype = param.layer.backend, param.layer.dtype
        out = {}
        for key, value in entry.items():
            if key == "step":
                out[key] = int(value)
                continue
            shape = tuple(getattr(value, "shape", ()))
            if shape != param.shape:
                msg = (f"{name}.load_state_dict: state {key!r} of parameter {i} {param!r} has "
                       f"shape {shape}, expected {param.shape}")
                raise ValueError(msg)
            out[key] = backend.xp.asarray(backend.asarray(value, dtype=dtype), copy=True)
        return out

    def _group_index(self, i: int) -> int:
        for k, group in enumerate(self.param_groups):
            i -= len(group["params"])
            if i < 0:
                return k
        raise IndexError(i)

    def _state_keys(self, group: dict) -> tuple[str, ...]:
        """The names every per-parameter state holds once made (checked on load)."""
        return ()

    def to(self, backend, dtype: str | None = None):
        """Move the state arrays to `backend` (and `dtype`); step() also moves them
        by itself when the model moved. Returns self."""
        backend = get_backend(backend)
        for i, param in enumerate(self.params):
            if self.state[i]:
                self._move_state(i, backend, dtype or param.layer.dtype)
        return self

    def _move_state(self, i: int, backend, dtype: str) -> None:
        state = self.state[i]
        for key, value in state.items():
            if not _is_scalar(value):
                state[key] = backend.asarray(value, dtype=dtype)
        self._where[i] = (backend, dtype)

    def __repr__(self):
        options = ", ".join(f"{k}={v!r}" for k, v in self.param_groups[0].items()
                            if k in self.defaults)
        extra = f", groups={len(self.param_groups)}" if len(self.param_groups) > 1 else ""
        return f"{type(self).__name__}({options}{extra})"


def _is_scalar(value) -> bool:
    return isinstance(value, (int, float, bool))


def _plain(value):
    """An option as a Python value: lists (from JSON) as tuples, and NumPy or other
    real scalars as Python int or float, which never promote float32 arrays."""
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return value
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _check(owner: str, name: str, value, *, lower: float = 0.0, upper: float | None = None,
           strict: bool = False, upper_strict: bool = False) -> None:
    """Refuse a hyperparameter outside [lower, upper] (open ends where strict)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value > lower if strict else value >= lower)
    ok = ok and (upper is None or (value < upper if upper_strict else value <= upper))
    if not ok:
        bound = f"{'>' if strict else '>='} {lower}"
        if upper is not None:
            bound += f" and {'<' if upper_strict else '<='} {upper}"
        msg = f"{owner}: `{name}` must be a number {bound}, got {value!r}"
        raise ValueError(msg)


def _check_bool(owner: str, name: str, value) -> None:
    if not isinstance(value, bool):
        msg = f"{owner}: `{name}` must be True or False, got {value!r}"
        raise TypeError(msg)


# In-place arithmetic where the backend allows it, else a new array: `a = _imul(a, s, ip)`.
def _imul(a, b, inplace):
    if inplace:
        a *= b
        return a
    return a * b


def _iadd(a, b, inplace):
    if inplace:
        a += b
        return a
    return a + b


def _isub(a, b, inplace):
    if inplace:
        a -= b
        return a
    return a - b


def _idiv(a, b, inplace):
    if inplace:
        a /= b
        return a
    return a / b
