"""The parity battery: what each case builds, feeds and compares.

The tables at the top say what is covered: a layer, loss or optimiser added to
`backendnn.layers`, `backendnn.losses` or `backendnn.optim` joins by itself when it
builds with default arguments, and with one line here when it needs arguments,
another input shape or another mode.

Every numeric case draws its data on the seeded host generator, rounds it to the
backend's dtype, and compares with NumPy float64 computing from those same values
(parameters copied from the backend's layer and widened), so the only difference
left is the backend's arithmetic.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable

from array_api_compat import device as device_of

from .. import backends, layers as _layers, losses as _losses, optim as _optim
from ..data import DataLoader, Dataset
from ..layers import Layer, Linear, ReLU, Tanh
from ..losses import CrossEntropy, Loss, MeanSquaredError
from ..model import Sequential
from ..optim import SGD, Optimizer
from ..train import Trainer
from .report import FAIL, INFO, PASS, SKIP, CaseResult
from .tolerances import Tolerance, tolerance

# --- inputs ---------------------------------------------------------------------------
SHAPES = ((1, 5), (7, 13), (32, 3))  # (batch, features): batch 1 and odd sizes
LARGE_SHAPE = (9, 11)


def _normal(rng, shape):
    return rng.normal(0.0, 1.0, shape)


def _large(rng, shape):
    """N(0, 1) with about half the entries scaled by 100, the first exactly 100 and the
    last exactly -100: saturated and ordinary values side by side."""
    x = rng.normal(0.0, 1.0, shape)
    x = x * (1.0 + 99.0 * (rng.random(shape) < 0.5))
    x[(0,) * len(shape)] = 100.0
    x[tuple(s - 1 for s in shape)] = -100.0
    return x


def _spread(rng, shape):
    """Logits 1e4 apart: exp of their differences underflows to exactly 0."""
    return rng.integers(-2, 3, shape) * 1e4 + rng.normal(0.0, 1.0, shape)


def _no_args(n):
    return ()


def _flat(batch, n):
    return (batch, n)


# --- the case tables ------------------------------------------------------------------
@dataclass(frozen=True)
class LayerCase:
    """How the battery builds and feeds one layer class of `backendnn.layers`.

    name: the class name; label: the row name (default: name).
    args(n): constructor arguments for n input features.
    shape(batch, n): the input shape. train: run in training mode; False runs in
    eval mode after one forward in training mode (which updates running statistics).
    min_batch: smallest batch the layer takes in this mode. large(rng, shape): the
    large-magnitude input (float64 host). tol: a key of `tolerances.TOLERANCES`.
    """

    name: str
    label: str = ""
    args: Callable = _no_args
    shape: Callable = _flat
    train: bool = True
    min_batch: int = 1
    large: Callable = _large
    tol: str = "elementwise"

    @property
    def title(self) -> str:
        return self.label or self.name


LAYER_CASES = (
    LayerCase("Linear", args=lambda n: (n, 4), tol="matmul"),
    LayerCase("ReLU"),
    LayerCase("LeakyReLU"),
    LayerCase("Sigmoid"),
    LayerCase("Tanh"),
    LayerCase("Softmax", large=_spread),
    LayerCase("Dropout", "Dropout (eval)", args=lambda n: (0.5,), train=False),
    LayerCase("BatchNorm1d", "BatchNorm1d (train)", args=lambda n: (n,), min_batch=3,
              tol="normalization"),
    LayerCase("BatchNorm1d", "BatchNorm1d (eval)", args=lambda n: (n,), train=False,
              min_batch=2, tol="normalization"),
    LayerCase("LayerNorm", args=lambda n: (n,), tol="normalization"),
    LayerCase("Flatten", shape=lambda batch, n: (batch, 3, n)),
    LayerCase("Identity"),
)


def _logits_labels(rng, shape, large):
    """Logits (batch, classes) and int64 labels (batch,)."""
    logits = _spread(rng, shape) if large else _normal(rng, shape)
    return logits, rng.integers(0, shape[1], shape[0])


def _probabilities(rng, shape, large):
    """Probabilities in (0, 1) and 0/1 targets; large: 1e-6 from the ends, inside the
    float32 clip of BinaryCrossEntropy (eps 1.2e-7, where float64 clips at 1e-8)."""
    p = (rng.choice([1e-6, 1e-3, 0.5, 1 - 1e-3, 1 - 1e-6], shape) if large
         else rng.uniform(0.02, 0.98, shape))
    return p, rng.integers(0, 2, shape) * 1.0


def _values(rng, shape, large):
    """Real predictions and targets (regression), scaled by 1e3 when large."""
    scale = 1e3 if large else 1.0
    return rng.normal(0.0, scale, shape), rng.normal(0.0, scale, shape)


@dataclass(frozen=True)
class LossCase:
    """How the battery feeds one loss of `backendnn.losses`.

    inputs(rng, shape, large) -> (y_hat, y) float64 host arrays (y int64 for labels);
    shapes: y_hat shapes, batch 1 and odd sizes; large_shape: shape of the large case.
    """

    name: str
    inputs: Callable = _values
    shapes: tuple = ((1, 1), (7,), (32, 3))
    large_shape: tuple = (9, 3)
    tol: str = "loss"


LOSS_CASES = (
    LossCase("CrossEntropy", _logits_labels, shapes=((1, 2), (7, 3), (32, 10)),
             large_shape=LARGE_SHAPE),
    LossCase("BinaryCrossEntropy", _probabilities),
    LossCase("MeanSquaredError", _values),
)


@dataclass(frozen=True)
class OptimizerCase:
    """One optimiser of `backendnn.optim` with its keyword arguments."""

    name: str
    kwargs: dict = field(default_factory=lambda: {"lr": 0.01})

    @property
    def title(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.kwargs.items())})"


OPTIMIZER_CASES = (
    OptimizerCase("SGD", {"lr": 0.1}),
    OptimizerCase("SGD", {"lr": 0.1, "momentum": 0.9}),
    OptimizerCase("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    OptimizerCase("SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01, "dampening": 0.1}),
    OptimizerCase("Adam", {"lr": 0.01}),
    OptimizerCase("Adam", {"lr": 0.01, "weight_decay": 0.01}),
    OptimizerCase("AdamW", {"lr": 0.01, "weight_decay": 0.01}),
    OptimizerCase("RMSprop", {"lr": 0.01}),
    OptimizerCase("RMSprop", {"lr": 0.01, "momentum": 0.9, "centered": True}),
)
OPTIMIZER_STEPS = 3  # more than one, so momentum and moment estimates are used

TRAIN = {"sizes": (64, 32, 10), "batch_size": 32, "lr": 0.05, "momentum": 0.9}


# --- discovery --------------------------------------------------------------------------
def _exported(module, base):
    for name in getattr(module, "__all__", dir(module)):
        cls = getattr(module, name, None)
        if (isinstance(cls, type) and issubclass(cls, base) and cls is not base
                and any(m in vars(c) for c in cls.__mro__[:-1] if c is not base
                        for m in ("forward", "_update"))):
            yield name, cls


def layer_cases():
    """(LayerCase, class) for each table entry whose class exists, then each other
    Layer exported by backendnn.layers with a default case."""
    out = [(c, getattr(_layers, c.name)) for c in LAYER_CASES if hasattr(_layers, c.name)]
    known = {c.name for c, _ in out}
    out += [(LayerCase(n, tol="layer"), cls) for n, cls in _exported(_layers, Layer)
            if n not in known]
    return out


def loss_cases():
    out = [(c, getattr(_losses, c.name)) for c in LOSS_CASES if hasattr(_losses, c.name)]
    known = {c.name for c, _ in out}
    return out + [(LossCase(n), cls) for n, cls in _exported(_losses, Loss) if n not in known]


def optimizer_cases():
    out = [(c, getattr(_optim, c.name)) for c in OPTIMIZER_CASES if hasattr(_optim, c.name)]
    known = {c.name for c, _ in out}
    return out + [(OptimizerCase(n), cls) for n, cls in _exported(_optim, Optimizer)
                  if n not in known]


# --- running and comparing ------------------------------------------------------------
class Context:
    """What every case needs: the backend, the float64 reference, the seed, caches."""

    def __init__(self, backend, seed: int = 0, epochs: int = 3):
        self.backend = backends.get(backend)
        self.ref = backends.get("numpy")
        self.hx = self.ref.xp  # host namespace for comparisons: NumPy via the registry
        self.seed, self.epochs = seed, epochs
        self.cache: dict = {}

    def rng(self, offset: int):
        """A fresh host generator for data, from seed + offset."""
        backends.seed(self.seed + offset)
        return backends.host_rng()

    def f32(self, host):
        return self.hx.astype(self.hx.asarray(host), self.hx.float32)

    def host(self, x, backend=None):
        """`x` as a float64 host copy (labels stay integer)."""
        hx = self.hx
        a = hx.asarray((backend or self.backend).to_numpy(x))
        return hx.astype(a, hx.float64) if hx.isdtype(a.dtype, "real floating") else hx.asarray(a, copy=True)


class Outcome:
    """Errors of one case: max over every array it compared."""

    def __init__(self, tol: Tolerance | None = None, status: str = PASS, note: str = ""):
        self.tol, self.status, self.note = tol, status, note
        self.max_abs = self.max_rel = None if tol is None else 0.0
        self.over: list[str] = []

    def compare(self, ctx: Context, label: str, actual, reference, tol: Tolerance | None = None,
                backend=None):
        """Compare `actual` (an array of `backend`, default ctx.backend) with
        `reference` (a float64 host array or an array of the reference backend)."""
        hx, tol = ctx.hx, tol or self.tol
        a = ctx.host(actual, backend)
        r = reference if isinstance(reference, type(a)) else ctx.host(reference, ctx.ref)
        if tuple(a.shape) != tuple(r.shape):
            err, scale = float("inf"), 0.0
            label = f"{label}: shape {tuple(a.shape)}, reference {tuple(r.shape)}"
        elif a.shape and 0 in a.shape:
            err = scale = 0.0
        else:
            a, r = hx.astype(a, hx.float64), hx.astype(r, hx.float64)
            err = float(hx.max(hx.abs(a - r)))
            scale = float(hx.max(hx.abs(r)))
            err = err if err == err else float("inf")
        rel = tol.relative(err, scale)
        self.max_abs = max(self.max_abs or 0.0, err)
        self.max_rel = max(self.max_rel or 0.0, rel)
        if not tol.allows(err, scale):
            self.over.append(label)

    def result(self, component: str, case: str, seconds: float) -> CaseResult:
        status, note = self.status, self.note
        if self.over:
            status = FAIL
            shown = "; ".join(self.over[:3]) + ("; ..." if len(self.over) > 3 else "")
            note = f"over tolerance: {shown}" + (f" ({note})" if note else "")
        rtol = None if self.tol is None else self.tol.rtol
        return CaseResult(component, case, self.max_abs, self.max_rel, rtol, status, seconds, note)


def run_case(ctx: Context, component: str, case: str, fn) -> CaseResult:
    """Time `fn()` (which returns an Outcome); an exception fails the case with its message."""
    start = time.perf_counter()
    try:
        outcome = fn()
        ctx.backend.synchronize()
    except Exception as e:  # one broken case must not hide the others
        note = f"error: {type(e).__name__}: {e}".replace("\n", " ")
        return CaseResult(component, case, None, None, None, FAIL, time.perf_counter() - start,
                          note[:300])
    return outcome.result(component, case, time.perf_counter() - start)


# --- layers ---------------------------------------------------------------------------
def _build_layer(ctx, case, cls, n, dtype="float32", backend=None):
    backends.seed(ctx.seed + n)
    return cls(*case.args(n), backend=backend or ctx.backend, dtype=dtype)


def _layer_pair(ctx, case, cls, shape_bn, make_input, k, dtype="float32"):
    """Forward and backward of the layer on the backend (in `dtype`) and of its float64
    copy on the reference: {label: (actual, reference)} for forward and for backward,
    plus the backend's input, output and gradients (for dtype and device checks)."""
    batch, n = shape_bn
    shape = case.shape(max(batch, case.min_batch), n)
    rng = ctx.rng(100 + k)
    x_host = make_input(rng, shape)
    x_host = ctx.f32(x_host) if dtype == "float32" else x_host
    layer = _build_layer(ctx, case, cls, n, dtype)
    ref = copy.deepcopy(layer).to(ctx.ref, "float64")
    tag = str(shape)
    fwd, bwd, seen = {}, {}, []
    runs = []
    for lyr, bk, dt in ((layer, ctx.backend, dtype), (ref, ctx.ref, "float64")):
        x = bk.asarray(x_host, dtype=dt)
        lyr.train(True)
        if not case.train:
            lyr.forward(x)
            lyr.eval()
        runs.append((x, lyr.forward(x)))
    (x, y), (_, y_ref) = runs
    fwd[f"{tag} output"] = (y, y_ref)
    seen.append((f"{case.title} output", y, x))
    for name in layer.buffer_names:
        if getattr(layer, name, None) is not None:
            fwd[f"{tag} {name}"] = (getattr(layer, name), getattr(ref, name))
            seen.append((f"{case.title} {name}", getattr(layer, name), x))
    g_host = rng.normal(0.0, 1.0, tuple(y.shape))
    g_host = ctx.f32(g_host) if dtype == "float32" else g_host
    g = ctx.backend.asarray(g_host, dtype=dtype)
    gx, gx_ref = layer.backward(g), ref.backward(ctx.ref.asarray(g_host, dtype="float64"))
    bwd[f"{tag} dL/dx"] = (gx, gx_ref)
    seen.append((f"{case.title} dL/dx", gx, g))
    for p, p_ref in zip(layer.parameters(), ref.parameters()):
        bwd[f"{tag} {p.grad_name}"] = (p.grad, p_ref.grad)
        seen.append((f"{case.title} {p.grad_name}", p.grad, g))
        seen.append((f"{case.title} {p.name}", p.value, x))
    return fwd, bwd, seen


def _layer_rows(ctx, case, cls):
    """Four cases per layer: forward and backward on random shapes, and on large inputs."""
    tol = tolerance(case.tol)
    try:
        _build_layer(ctx, case, cls, 5)
    except TypeError as e:
        note = (f"cannot build {cls.__name__} with arguments {case.args(5)} ({e}): add a "
                "LayerCase line to backendnn.parity.cases.LAYER_CASES")
        yield case.title, lambda: Outcome(status=SKIP, note=note)
        return
    sets = {"": [(s, _normal) for s in SHAPES], ", large": [(LARGE_SHAPE, case.large)]}
    for suffix, inputs in sets.items():
        results = {}

        def both(inputs=inputs, results=results):
            fwd, bwd = Outcome(tol), Outcome(tol)
            for k, (shape, make) in enumerate(inputs):
                f, b, _ = _layer_pair(ctx, case, cls, shape, make, k)
                for label, (a, r) in f.items():
                    fwd.compare(ctx, label, a, r)
                for label, (a, r) in b.items():
                    bwd.compare(ctx, label, a, r)
            results["backward"] = bwd
            return fwd

        yield f"{case.title} forward{suffix}", both
        yield f"{case.title} backward{suffix}", lambda results=results: results["backward"]


def layer_results(ctx):
    out = []
    for case, cls in layer_cases():
        out += [run_case(ctx, "layers", name, fn) for name, fn in _layer_rows(ctx, case, cls)]
    return out


# --- losses ---------------------------------------------------------------------------
def _loss_pair(ctx, case, cls, shape, large, k, dtype="float32"):
    rng = ctx.rng(200 + k)
    y_hat_host, y_host = case.inputs(rng, shape, large)
    if dtype == "float32":
        y_hat_host = ctx.f32(y_hat_host)
    labels = ctx.hx.isdtype(y_host.dtype, "integral")
    if not labels and dtype == "float32":
        y_host = ctx.f32(y_host)
    out = []
    for bk, dt in ((ctx.backend, dtype), (ctx.ref, "float64")):
        criterion = cls(backend=bk)
        y_hat = bk.asarray(y_hat_host, dtype=dt)
        y = bk.asarray(y_host, dtype="int64" if labels else dt)
        out.append((criterion(y_hat, y), criterion.backward(), y_hat))
    return out


def loss_results(ctx):
    out = []
    for case, cls in loss_cases():
        tol = tolerance(case.tol)
        sets = {"": [(s, False) for s in case.shapes], ", large": [(case.large_shape, True)]}
        for suffix, inputs in sets.items():
            results = {}

            def both(inputs=inputs, results=results, case=case, cls=cls, tol=tol):
                fwd, bwd = Outcome(tol), Outcome(tol)
                for k, (shape, large) in enumerate(inputs):
                    (loss, grad, _), (loss_ref, grad_ref, _) = _loss_pair(ctx, case, cls, shape, large, k)
                    fwd.compare(ctx, f"{shape} loss", loss, loss_ref)
                    bwd.compare(ctx, f"{shape} dL/dy_hat", grad, grad_ref)
                results["backward"] = bwd
                return fwd

            out.append(run_case(ctx, "losses", f"{case.name} forward{suffix}", both))
            out.append(run_case(ctx, "losses", f"{case.name} backward{suffix}",
                                lambda results=results: results["backward"]))
    return out


# --- optimisers -----------------------------------------------------------------------
def _small_model(ctx, backend, dtype="float32"):
    backends.seed(ctx.seed)
    return Sequential([Linear(6, 5, backend=backend, dtype=dtype), Tanh(backend=backend),
                       Linear(5, 3, backend=backend, dtype=dtype)],
                      MeanSquaredError(backend=backend), backend=backend)


def _optimizer_steps(ctx, case, cls, dtype="float32", steps=OPTIMIZER_STEPS):
    """`steps` updates from the same random gradients on the backend and on a float64
    copy; returns both optimisers (their params hold the results)."""
    model = _small_model(ctx, ctx.backend, dtype)
    ref = copy.deepcopy(model).to(ctx.ref, "float64")
    opt, opt_ref = cls(model, **case.kwargs), cls(ref, **case.kwargs)
    rng = ctx.rng(300)
    for _ in range(steps):
        for p, p_ref in zip(opt.params, opt_ref.params):
            g = rng.normal(0.0, 1.0, p.shape)
            g = ctx.f32(g) if dtype == "float32" else g
            setattr(p.layer, p.grad_name, ctx.backend.asarray(g, dtype=dtype))
            setattr(p_ref.layer, p_ref.grad_name, ctx.ref.asarray(g, dtype="float64"))
        opt.step()
        opt_ref.step()
    return opt, opt_ref


def optimizer_results(ctx):
    out = []
    for case, cls in optimizer_cases():
        def fn(case=case, cls=cls):
            outcome = Outcome(tolerance("optimizer"))
            opt, opt_ref = _optimizer_steps(ctx, case, cls)
            for p, p_ref in zip(opt.params, opt_ref.params):
                outcome.compare(ctx, repr(p), p.value, p_ref.value)
            return outcome

        out.append(run_case(ctx, "optimizers", f"{case.title}, {OPTIMIZER_STEPS} steps", fn))
    return out


# --- whole training runs ----------------------------------------------------------------
_DATA: dict = {}
_REFERENCE_RUNS: dict = {}


def digits(hx):
    """scikit-learn's 8×8 digits (1797 samples), standardised and rounded to float32
    on the host, with int64 labels; seeded Gaussian blobs of the same shape when
    scikit-learn is missing. Returns (X, y, name)."""
    if "digits" not in _DATA:
        try:
            from sklearn.datasets import load_digits

            X, y = load_digits(return_X_y=True)
            name = "digits"
        except ImportError:
            backends.seed(0)
            rng = backends.host_rng()
            y = rng.integers(0, 10, 1797)
            X = rng.normal(0.0, 1.0, (10, 64))[y] + rng.normal(0.0, 1.0, (1797, 64))
            name = "blobs (no scikit-learn)"
        X = hx.asarray(X, dtype=hx.float64)
        std = hx.std(X, axis=0)
        X = (X - hx.mean(X, axis=0)) / hx.where(std > 0, std, 1.0)
        _DATA["digits"] = (hx.astype(X, hx.float32), hx.astype(hx.asarray(y), hx.int64), name)
    return _DATA["digits"]


def mlp(backend, dtype="float32"):
    """The digits MLP: 64-32-10, ReLU, cross-entropy on the logits."""
    n_in, hidden, n_out = TRAIN["sizes"]
    return Sequential([Linear(n_in, hidden, backend=backend, dtype=dtype), ReLU(backend=backend),
                       Linear(hidden, n_out, backend=backend, dtype=dtype)],
                      CrossEntropy(backend=backend), backend=backend)


def train_run(ctx, backend, dtype, epochs, n_samples=None):
    """Seed, build the MLP in float32 (widened to `dtype`: the same starting values),
    train `epochs` epochs of shuffled mini-batches with SGD momentum.
    Returns (initial params, per-epoch losses, final params), all host float64."""
    X, y, _ = digits(ctx.hx)
    if n_samples is not None:
        X, y = X[:n_samples, ...], y[:n_samples]
    backends.seed(ctx.seed)
    model = mlp(backend)
    if dtype != "float32":
        model.to(backend, dtype)
    init = [ctx.host(p.value, backend) for p in model.parameters()]
    loader = DataLoader(Dataset(X, y), batch_size=TRAIN["batch_size"], shuffle=True)
    opt = SGD(model, lr=TRAIN["lr"], momentum=TRAIN["momentum"])
    history = Trainer(model, opt, loader, progress=False).train(epochs, log_level=0)
    final = [ctx.host(p.value, backend) for p in model.parameters()]
    return init, ctx.hx.asarray(history.loss, dtype=ctx.hx.float64), final, model


def _reference_run(ctx, dtype):
    key = (ctx.seed, ctx.epochs, dtype)
    if key not in _REFERENCE_RUNS:
        _REFERENCE_RUNS[key] = train_run(ctx, ctx.ref, dtype, ctx.epochs)[:3]
    return _REFERENCE_RUNS[key]


def _batches(ctx, backend):
    X, y, _ = digits(ctx.hx)
    backends.seed(ctx.seed)
    loader = DataLoader(Dataset(X, y), batch_size=TRAIN["batch_size"], shuffle=True)
    return [(ctx.host(xb, backend), ctx.host(yb, backend))
            for xb, yb in loader.batches(backend, "float32")]


def training_results(ctx):
    hx, exact = ctx.hx, tolerance("exact")
    _, _, data_name = digits(hx)
    cache = {}

    def run():
        if "run" not in cache:
            cache["run"] = train_run(ctx, ctx.backend, "float32", ctx.epochs)[:3]
        return cache["run"]

    def initial():
        outcome = Outcome(exact, note="float32, against numpy float32")
        backends.seed(ctx.seed)
        model, ref = mlp(ctx.backend), None
        backends.seed(ctx.seed)
        ref = mlp(ctx.ref)
        for p, p_ref in zip(model.parameters(), ref.parameters()):
            outcome.compare(ctx, p.name, p.value, p_ref.value)
        return outcome

    def order():
        outcome = Outcome(exact, note="one shuffled epoch, against numpy")
        mine, ref = _batches(ctx, ctx.backend), _batches(ctx, ctx.ref)
        if len(mine) != len(ref):
            outcome.over.append(f"{len(mine)} batches, reference {len(ref)}")
        for i, ((x, y), (x_ref, y_ref)) in enumerate(zip(mine, ref)):
            outcome.compare(ctx, f"batch {i} x", x, x_ref)
            outcome.compare(ctx, f"batch {i} y", y, y_ref)
        return outcome

    def against(dtype, what):
        def fn():
            init, losses, final = run()
            r_init, r_losses, r_final = _reference_run(ctx, dtype)
            tol = tolerance("train_loss" if what == "losses" else "train_weights")
            outcome = Outcome(tol)
            if what == "losses":
                outcome.compare(ctx, "epoch losses", losses, r_losses)
                shown = ", ".join(f"{v:.4f}" for v in losses.tolist())
                outcome.note = f"{ctx.backend.name}: {shown}"
            else:
                for i, (p, r) in enumerate(zip(final, r_final)):
                    outcome.compare(ctx, f"param {i}", p, r)
            return outcome
        return fn

    title = f"{data_name} MLP {ctx.epochs} epochs"
    return [
        run_case(ctx, "training", "same seed: same initial weights", initial),
        run_case(ctx, "training", "same seed: same batch order", order),
        run_case(ctx, "training", f"{title}: losses vs float64", against("float64", "losses")),
        run_case(ctx, "training", f"{title}: weights vs float64", against("float64", "weights")),
        run_case(ctx, "training", f"{title}: weights vs numpy float32",
                 against("float32", "weights")),
    ]


# --- dtype and device -----------------------------------------------------------------
def sweep(ctx, dtype):
    """Run every layer, loss and optimiser once, and one short training epoch, in
    `dtype` on the backend. Returns (seen, errors): seen lists (what, array, the input
    it came from, float64 reference or None); errors, the cases that raised."""
    key = ("sweep", dtype)
    if key in ctx.cache:
        return ctx.cache[key]
    seen, errors = [], []
    with_ref = dtype == "float64"
    for case, cls in layer_cases():
        try:
            fwd, bwd, s = _layer_pair(ctx, case, cls, (7, 5), _normal, 0, dtype)
        except Exception as e:
            errors.append(f"{case.title}: {type(e).__name__}: {e}")
            continue
        refs = {id(a): r for a, r in {**fwd, **bwd}.values()} if with_ref else {}
        seen += [("layers", what, arr, inp, refs.get(id(arr))) for what, arr, inp in s]
    for case, cls in loss_cases():
        try:
            (loss, grad, y_hat), (loss_ref, grad_ref, _) = _loss_pair(
                ctx, case, cls, case.shapes[-1], False, 0, dtype)
        except Exception as e:
            errors.append(f"{case.name}: {type(e).__name__}: {e}")
            continue
        seen.append(("losses", f"{case.name} loss", loss, y_hat, loss_ref if with_ref else None))
        seen.append(("losses", f"{case.name} dL/dy_hat", grad, y_hat, grad_ref if with_ref else None))
    for case, cls in optimizer_cases():
        try:
            opt, opt_ref = _optimizer_steps(ctx, case, cls, dtype, steps=1)
        except Exception as e:
            errors.append(f"{case.title}: {type(e).__name__}: {e}")
            continue
        for i, (p, p_ref) in enumerate(zip(opt.params, opt_ref.params)):
            seen.append(("optimizers", f"{case.title} {p!r}", p.value, p.grad,
                         p_ref.value if with_ref else None))
            for name, value in opt.state[i].items():
                if hasattr(value, "dtype") and hasattr(value, "shape"):
                    seen.append(("optimizers", f"{case.title} state {name}", value, p.grad, None))
    try:
        *_, model = train_run(ctx, ctx.backend, dtype, 1, n_samples=96)
        X, y, _ = digits(ctx.hx)
        x = ctx.backend.asarray(X[:5, ...], dtype=dtype)
        y_hat = model(x)
        seen.append(("training", "MLP prediction", y_hat, x, None))
        for p in model.parameters():
            seen.append(("training", f"MLP {p!r} after 1 epoch", p.value, x, None))
    except Exception as e:
        errors.append(f"training: {type(e).__name__}: {e}")
    ctx.cache[key] = seen, errors
    return seen, errors


def dtype_results(ctx):
    def check(dtype):
        def fn():
            seen, errors = sweep(ctx, dtype)
            want = ctx.backend.dtype(dtype)
            outcome = Outcome(tolerance("float64")) if dtype == "float64" else Outcome()
            wrong = [f"{what}: {arr.dtype}" for _, what, arr, _, _ in seen if arr.dtype != want]
            outcome.over += errors + wrong
            compared = 0
            for _, what, arr, _, ref in seen:
                if ref is not None:
                    outcome.compare(ctx, what, arr, ref)
                    compared += 1
            outcome.note = (f"{len(seen)} arrays: outputs, gradients, parameters, optimiser state"
                            + (f"; {compared} compared with numpy float64" if compared else ""))
            return outcome
        return fn

    return [run_case(ctx, "dtype", "float32 stays float32", check("float32")),
            run_case(ctx, "dtype", "float64 stays float64", check("float64"))]


def _others(ctx):
    """Every other backend that runs here (a failing plugin is left out)."""
    out = []
    for name in backends.registered():
        if name == ctx.backend.name:
            continue
        try:
            out.append(backends.get(name))
        except Exception:
            continue
    return out


def device_results(ctx):
    def outputs():
        seen, errors = sweep(ctx, "float32")
        outcome = Outcome(note=f"{len(seen)} arrays")
        outcome.over += errors
        for _, what, arr, inp, _ in seen:
            if device_of(arr) != device_of(inp):
                outcome.over.append(f"{what} on {device_of(arr)}, input on {device_of(inp)}")
        return outcome

    def model_move(other):
        def fn():
            exact = tolerance("exact")
            outcome = Outcome(exact, note=f"{ctx.backend.name} -> {other.name} -> {ctx.backend.name}")
            for dtype in ("float32", "float64"):
                backends.seed(ctx.seed)
                model = mlp(ctx.backend, dtype)
                before = [ctx.host(p.value) for p in model.parameters()]
                model.to(other)
                for p, b in zip(model.parameters(), before):
                    outcome.compare(ctx, f"{dtype} {p.name} on {other.name}", p.value, b,
                                    backend=other)
                    if device_of(p.value) != device_of(other.asarray([0.0])) or \
                            p.value.dtype != other.dtype(dtype):
                        outcome.over.append(f"{p!r} on {other.name}: {device_of(p.value)} {p.value.dtype}")
                model.to(ctx.backend)
                for p, b in zip(model.parameters(), before):
                    outcome.compare(ctx, f"{dtype} {p.name} back", p.value, b)
            return outcome
        return fn

    def batch_move(other):
        def fn():
            outcome = Outcome(tolerance("exact"),
                              note=f"float32, float64, int64; {ctx.backend.name} -> {other.name} -> back")
            rng = ctx.rng(400)
            for dtype, host in (("float32", ctx.f32(_large(rng, (33, 7)))),
                                ("float64", _large(rng, (33, 7))),
                                ("int64", rng.integers(-2**40, 2**40, (33,)))):
                mine = ctx.backend.asarray(host, dtype=dtype)
                theirs = other.asarray(mine)
                back = ctx.backend.asarray(theirs)
                for what, arr, bk in ((other.name, theirs, other), ("back", back, ctx.backend)):
                    outcome.compare(ctx, f"{dtype} on {what}", arr, host, backend=bk)
                    if arr.dtype != bk.dtype(dtype):
                        outcome.over.append(f"{dtype} on {what} became {arr.dtype}")
            return outcome
        return fn

    out = [run_case(ctx, "device", "outputs on the input's device", outputs)]
    for other in _others(ctx):
        out.append(run_case(ctx, "device", f"model <-> {other.name}", model_move(other)))
        out.append(run_case(ctx, "device", f"batch <-> {other.name}", batch_move(other)))
    return out


# --- overhead -------------------------------------------------------------------------
def _native_step(xp, inplace, params, bufs, x, y, lr, momentum):
    """The MLP's training step written directly in the namespace `xp`: the same maths as
    Linear/ReLU/CrossEntropy/SGD(momentum), without the framework."""
    w1, b1, w2, b2 = params
    n = x.shape[0]
    h = x @ w1 + b1
    a = xp.where(h > 0, h, 0.0)
    z = a @ w2 + b2
    shifted = z - xp.max(z, axis=1, keepdims=True)
    e = xp.exp(shifted)
    total = xp.sum(e, axis=1, keepdims=True)
    one_hot = xp.astype(y[:, None] == xp.arange(z.shape[1], dtype=y.dtype, device=device_of(y)),
                        z.dtype)
    loss = -xp.sum((shifted - xp.log(total)) * one_hot, axis=1)
    dz = (e / total - one_hot) * (1.0 / n)
    da = dz @ w2.T
    dh = xp.where(h > 0, da, 0.0)
    grads = (x.T @ dh, xp.sum(dh, axis=0), a.T @ dz, xp.sum(dz, axis=0))
    for i, g in enumerate(grads):
        bufs[i] = g * 1.0 if bufs[i] is None else momentum * bufs[i] + g
        if inplace:
            params[i] -= lr * bufs[i]
        else:
            params[i] = params[i] - lr * bufs[i]
    return loss


def _per_step(backend, step, n=10, repeats=3):
    for _ in range(2):
        step()
    best = float("inf")
    for _ in range(repeats):
        backend.synchronize()
        start = time.perf_counter()
        for _ in range(n):
            step()
        backend.synchronize()
        best = min(best, (time.perf_counter() - start) / n)
    return best


def overhead_results(ctx):
    def fn():
        backend, xp = ctx.backend, ctx.backend.xp
        rng = ctx.rng(500)
        X, _, _ = digits(ctx.hx)
        idx = rng.permutation(X.shape[0])[:64]
        x = backend.asarray(X[idx, ...], dtype="float32")
        y = backend.asarray(rng.integers(0, 10, 64), dtype="int64")
        backends.seed(ctx.seed)
        model = mlp(backend)
        opt = SGD(model, lr=0.01, momentum=TRAIN["momentum"])
        params = [xp.asarray(p.value, copy=True) for p in model.parameters()]
        bufs = [None] * len(params)

        def framework():
            model.criterion(model(x), y)
            model.backward()
            opt.step()

        def native():
            _native_step(xp, backend.inplace, params, bufs, x, y, 0.01, TRAIN["momentum"])

        t_fw, t_native = _per_step(backend, framework), _per_step(backend, native)
        note = (f"backendnn {t_fw * 1e6:.0f} us/step, native {backend.name} "
                f"{t_native * 1e6:.0f} us/step: {t_fw / t_native:.2f}x (batch 64, 64-32-10)")
        return Outcome(status=INFO, note=note)

    return [run_case(ctx, "overhead", "training step vs native loop", fn)]


BATTERY = {
    "layers": layer_results,
    "losses": loss_results,
    "optimizers": optimizer_results,
    "training": training_results,
    "dtype": dtype_results,
    "device": device_results,
    "overhead": overhead_results,
}
