"""The parity battery's components: each builds its cases, runs them on the backend and
on the NumPy float64 reference, and returns one CaseResult per row.

Every numeric case draws its data on the seeded host generator, rounds it to the
backend's dtype, and compares with NumPy float64 computing from those same values
(parameters copied from the backend's layer and widened), so the only difference left
is the backend's arithmetic. Comparisons happen on the host, in float64.
"""
from __future__ import annotations

import copy
import time

from array_api_compat import device as device_of

from .. import backends
from ..data import DataLoader, Dataset
from ..optim import SGD
from ..train import Trainer
from . import cases
from .report import FAIL, INFO, PASS, SKIP, CaseResult
from .tolerances import Tolerance, tolerance


class Context:
    """What every case needs: the backend, the float64 reference, the seed, caches."""

    def __init__(self, backend, seed: int = 0, epochs: int = 3):
        self.backend = backends.get(backend)
        self.ref = backends.get("numpy")
        self.hx = self.ref.xp  # the host namespace, NumPy, reached through the registry
        self.seed, self.epochs = seed, epochs
        self.cache: dict = {}

    def rng(self, offset: int):
        """A fresh host generator for data, seeded with seed + offset."""
        backends.seed(self.seed + offset)
        return backends.host_rng()

    def rounded(self, host, dtype: str):
        """Host data rounded to `dtype` (then widened exactly for the reference)."""
        hx = self.hx
        return hx.astype(hx.asarray(host), getattr(hx, dtype))

    def host(self, x, backend=None):
        """`x` (an array of `backend`, default the one under test) as a host copy,
        float64 for floating arrays."""
        hx = self.hx
        a = hx.asarray((backend or self.backend).to_numpy(x))
        if hx.isdtype(a.dtype, "real floating"):
            return hx.astype(a, hx.float64)
        return hx.asarray(a, copy=True)


class Outcome:
    """The errors of one case: the max over every array it compared, and what failed."""

    def __init__(self, tol: Tolerance | None = None, status: str = PASS, note: str = ""):
        self.tol, self.status, self.note = tol, status, note
        self.max_abs = self.max_rel = None if tol is None else 0.0
        self.over: list[str] = []

    def compare(self, ctx: Context, label: str, actual, reference, backend=None):
        """Compare `actual` (an array of `backend`, default the one under test) with
        `reference` (a host NumPy array or an array of the reference backend)."""
        hx = ctx.hx
        a, r = ctx.host(actual, backend), ctx.host(reference, ctx.ref)
        if tuple(a.shape) != tuple(r.shape):
            err, scale = float("inf"), 0.0
            label = f"{label}: shape {tuple(a.shape)}, reference {tuple(r.shape)}"
        elif 0 in a.shape:
            err = scale = 0.0
        else:
            a, r = hx.astype(a, hx.float64), hx.astype(r, hx.float64)
            err = float(hx.max(hx.abs(a - r)))
            scale = float(hx.max(hx.abs(r)))
            err = err if err == err else float("inf")  # a NaN on either side fails
        self.max_abs = max(self.max_abs or 0.0, err)
        self.max_rel = max(self.max_rel or 0.0, self.tol.relative(err, scale))
        if not self.tol.allows(err, scale):
            self.over.append(label)

    def result(self, component: str, case: str, seconds: float) -> CaseResult:
        status, note = self.status, self.note
        if self.over:
            status = FAIL
            shown = "; ".join(self.over[:3]) + ("; ..." if len(self.over) > 3 else "")
            note = f"failed: {shown}" + (f" ({note})" if note else "")
        rtol = None if self.tol is None else self.tol.rtol
        return CaseResult(component, case, self.max_abs, self.max_rel, rtol, status, seconds, note)


def _error_note(e: Exception) -> str:
    return f"error: {type(e).__name__}: {e}".replace("\n", " ")[:300]


def run_case(ctx: Context, component: str, case: str, fn) -> CaseResult:
    """Time `fn()`, which returns an Outcome; an exception fails the case with its message."""
    start = time.perf_counter()
    try:
        outcome = fn()
        ctx.backend.synchronize()
    except Exception as e:  # one broken case must not hide the others
        return CaseResult(component, case, None, None, None, FAIL,
                          time.perf_counter() - start, _error_note(e))
    return outcome.result(component, case, time.perf_counter() - start)


def run_pair(ctx: Context, component: str, title: str, fn) -> list[CaseResult]:
    """Two rows, "<title> forward" and "<title> backward", from one computation `fn()`
    returning (forward Outcome, backward Outcome); the forward row carries the time."""
    start = time.perf_counter()
    names = [title.replace("{}", "forward"), title.replace("{}", "backward")]
    try:
        fwd, bwd = fn()
        ctx.backend.synchronize()
    except Exception as e:
        seconds = time.perf_counter() - start
        return [CaseResult(component, names[0], None, None, None, FAIL, seconds, _error_note(e)),
                CaseResult(component, names[1], None, None, None, FAIL, 0.0,
                           "not compared: the computation failed (see the forward row)")]
    seconds = time.perf_counter() - start
    return [fwd.result(component, names[0], seconds), bwd.result(component, names[1], 0.0)]


# --- layers -------------------------------------------------------------------------------
def _build_layer(ctx, case, cls, n, dtype="float32"):
    backends.seed(ctx.seed + n)
    return cls(*case.args(n), backend=ctx.backend, dtype=dtype)


def layer_pair(ctx, case, cls, batch_n, make_input, k, dtype="float32"):
    """Forward and backward of the layer on the backend (in `dtype`) and of its float64
    copy on the reference.

    Returns (forward, backward, seen): forward and backward map a label to host
    copies (actual, reference), taken as soon as each is computed (a later step may
    reuse the memory); seen lists (what, array, the input it came from, label).
    """
    batch, n = batch_n
    shape = case.shape(max(batch, case.min_batch), n)
    rng = ctx.rng(100 + k)
    x_host = ctx.rounded(make_input(rng, shape), dtype)
    layer = _build_layer(ctx, case, cls, n, dtype)
    ref = copy.deepcopy(layer).to(ctx.ref, "float64")
    runs = []
    for lyr, bk, dt in ((layer, ctx.backend, dtype), (ref, ctx.ref, "float64")):
        x = bk.asarray(x_host, dtype=dt)
        lyr.train(True)
        if not case.train:
            lyr.forward(x)
            lyr.eval()
        runs.append((x, lyr.forward(x)))
    (x, y), (_, y_ref) = runs
    tag, title = str(shape), case.title
    forward, backward, seen = {}, {}, []

    def keep(part, label, what, actual, reference, source):
        part[f"{tag} {label}"] = (ctx.host(actual), ctx.host(reference, ctx.ref))
        seen.append((f"{title} {what}", actual, source, f"{tag} {label}"))

    keep(forward, "output", "output", y, y_ref, x)
    for (name, buf), (_, buf_ref) in zip(layer.named_buffers(), ref.named_buffers()):
        keep(forward, name, name, buf, buf_ref, x)
    g_host = ctx.rounded(rng.normal(0.0, 1.0, tuple(y.shape)), dtype)
    g = ctx.backend.asarray(g_host, dtype=dtype)
    gx, gx_ref = layer.backward(g), ref.backward(ctx.ref.asarray(g_host, dtype="float64"))
    keep(backward, "dL/dx", "dL/dx", gx, gx_ref, g)
    for p, p_ref in zip(layer.parameters(), ref.parameters()):
        keep(backward, p.grad_name, p.grad_name, p.grad, p_ref.grad, g)
        seen.append((f"{title} {p.name}", p.value, x, None))
    return forward, backward, seen


def layer_results(ctx) -> list[CaseResult]:
    """Per layer: forward and backward on SHAPES (batch 1, odd sizes), and on large inputs."""
    out = []
    for case, cls in cases.layer_cases():
        try:
            _build_layer(ctx, case, cls, 5)
        except TypeError as e:
            note = (f"cannot build {cls.__name__}{case.args(5)} ({e}): add a LayerCase line "
                    "to backendnn.parity.cases.LAYER_CASES")
            out.append(CaseResult("layers", case.title, None, None, None, SKIP, 0.0, note))
            continue
        tol = tolerance(case.tol)
        sets = {"": [(s, cases.normal_inputs) for s in cases.SHAPES],
                f", {case.large_label}": [(cases.LARGE_SHAPE, case.large)]}
        for suffix, inputs in sets.items():
            def fn(case=case, cls=cls, inputs=inputs, tol=tol):
                fwd, bwd = Outcome(tol), Outcome(tol)
                for k, (shape, make) in enumerate(inputs):
                    f, b, _ = layer_pair(ctx, case, cls, shape, make, k)
                    for label, (a, r) in f.items():
                        fwd.compare(ctx, label, a, r, backend=ctx.ref)
                    for label, (a, r) in b.items():
                        bwd.compare(ctx, label, a, r, backend=ctx.ref)
                return fwd, bwd

            out += run_pair(ctx, "layers", f"{case.title} {{}}{suffix}", fn)
    return out


# --- losses -------------------------------------------------------------------------------
def loss_pair(ctx, case, cls, shape, big, k, dtype="float32"):
    """On the backend in `dtype`, then on the reference: (loss, grad, y_hat, loss_host,
    grad_host), the per-sample loss and dL/dy_hat as arrays and as host copies taken as
    soon as each is computed."""
    rng = ctx.rng(200 + k)
    y_hat_host, y_host = case.inputs(rng, shape, big)
    y_hat_host = ctx.rounded(y_hat_host, dtype)
    labels = ctx.hx.isdtype(y_host.dtype, "integral")
    if not labels:
        y_host = ctx.rounded(y_host, dtype)
    out = []
    for bk, dt in ((ctx.backend, dtype), (ctx.ref, "float64")):
        criterion = cls(backend=bk)
        y_hat = bk.asarray(y_hat_host, dtype=dt)
        y = bk.asarray(y_host, dtype="int64" if labels else dt)
        loss = criterion(y_hat, y)
        loss_host = ctx.host(loss, bk)
        grad = criterion.backward()
        out.append((loss, grad, y_hat, loss_host, ctx.host(grad, bk)))
    return out


def loss_results(ctx) -> list[CaseResult]:
    """Per loss: forward and backward on its shapes (batch 1, odd sizes) and large inputs."""
    out = []
    for case, cls in cases.loss_cases():
        tol = tolerance(case.tol)
        sets = {"": [(s, False) for s in case.shapes],
                f", {case.large_label}": [(case.large_shape, True)]}
        for suffix, inputs in sets.items():
            def fn(case=case, cls=cls, inputs=inputs, tol=tol):
                fwd, bwd = Outcome(tol), Outcome(tol)
                for k, (shape, big) in enumerate(inputs):
                    mine, ref = loss_pair(ctx, case, cls, shape, big, k)
                    fwd.compare(ctx, f"{shape} loss", mine[3], ref[3], backend=ctx.ref)
                    bwd.compare(ctx, f"{shape} dL/dy_hat", mine[4], ref[4], backend=ctx.ref)
                return fwd, bwd

            out += run_pair(ctx, "losses", f"{case.name} {{}}{suffix}", fn)
    return out


# --- optimisers ---------------------------------------------------------------------------
def optimizer_steps(ctx, case, cls, dtype="float32", steps=cases.OPTIMIZER_STEPS):
    """`steps` updates from the same random gradients on the backend (in `dtype`) and on
    a float64 copy. Returns the two optimisers (their params hold the results)."""
    backends.seed(ctx.seed)
    model = cases.small_model(ctx.backend, dtype)
    ref = copy.deepcopy(model).to(ctx.ref, "float64")
    opt, opt_ref = cls(model, **case.kwargs), cls(ref, **case.kwargs)
    rng = ctx.rng(300)
    for _ in range(steps):
        for p, p_ref in zip(opt.params, opt_ref.params):
            g = ctx.rounded(rng.normal(0.0, 1.0, p.shape), dtype)
            setattr(p.layer, p.grad_name, ctx.backend.asarray(g, dtype=dtype))
            setattr(p_ref.layer, p_ref.grad_name, ctx.ref.asarray(g, dtype="float64"))
        opt.step()
        opt_ref.step()
    return opt, opt_ref


def optimizer_results(ctx) -> list[CaseResult]:
    out = []
    for case, cls in cases.optimizer_cases():
        def fn(case=case, cls=cls):
            outcome = Outcome(tolerance("optimizer"))
            opt, opt_ref = optimizer_steps(ctx, case, cls)
            for p, p_ref in zip(opt.params, opt_ref.params):
                outcome.compare(ctx, repr(p), p.value, p_ref.value)
            return outcome

        out.append(run_case(ctx, "optimizers", f"{case.title}, {cases.OPTIMIZER_STEPS} steps", fn))
    return out


# --- whole training runs --------------------------------------------------------------------
_REFERENCE_RUNS: dict = {}


def train_run(ctx, backend, dtype, epochs, n_samples=None):
    """Seed; build the digits MLP in float32 (widened to `dtype`, so every dtype starts
    from the same values); train `epochs` epochs of shuffled batches with SGD momentum.
    Returns (per-epoch losses, final params as host float64 arrays, the model)."""
    X, y, _ = cases.digits(ctx.hx)
    if n_samples is not None:
        X, y = X[:n_samples, ...], y[:n_samples]
    backends.seed(ctx.seed)
    model = cases.mlp(backend)
    if dtype != "float32":
        model.to(backend, dtype)
    loader = DataLoader(Dataset(X, y), batch_size=cases.TRAIN["batch_size"], shuffle=True)
    opt = SGD(model, lr=cases.TRAIN["lr"], momentum=cases.TRAIN["momentum"])
    history = Trainer(model, opt, loader, progress=False).train(epochs, log_level=0)
    final = [ctx.host(p.value, backend) for p in model.parameters()]
    return ctx.hx.asarray(history.loss, dtype=ctx.hx.float64), final, model


def _reference_run(ctx, dtype):
    """NumPy's run in `dtype`, computed once per process for a seed and epoch count."""
    key = (ctx.seed, ctx.epochs, dtype)
    if key not in _REFERENCE_RUNS:
        _REFERENCE_RUNS[key] = train_run(ctx, ctx.ref, dtype, ctx.epochs)[:2]
    return _REFERENCE_RUNS[key]


def _batches(ctx, backend):
    X, y, _ = cases.digits(ctx.hx)
    backends.seed(ctx.seed)
    loader = DataLoader(Dataset(X, y), batch_size=cases.TRAIN["batch_size"], shuffle=True)
    return [(ctx.host(xb, backend), ctx.host(yb, backend))
            for xb, yb in loader.batches(backend, "float32")]


def training_results(ctx) -> list[CaseResult]:
    """Same seed -> same initial weights and batch order, bit for bit against NumPy.

    The backend's float32 run is held to NumPy's float64 run from the same float32
    starting weights (the one reference every backend shares: two backends that pass
    agree with each other within twice the tolerance). Its distance to NumPy's own
    float32 run is checked too, under the same tolerance, not bit for bit: float32
    libraries sum in different orders, and that row shows how far two float32 runs drift.
    """
    exact = tolerance("exact")
    run = {}

    def mine():
        if "run" not in run:
            run["run"] = train_run(ctx, ctx.backend, "float32", ctx.epochs)[:2]
        return run["run"]

    def initial():
        outcome = Outcome(exact, note="float32, against numpy float32")
        backends.seed(ctx.seed)
        model = cases.mlp(ctx.backend)
        backends.seed(ctx.seed)
        ref = cases.mlp(ctx.ref)
        for p, p_ref in zip(model.parameters(), ref.parameters()):
            outcome.compare(ctx, repr(p), p.value, p_ref.value)
        return outcome

    def order():
        outcome = Outcome(exact, note="one shuffled epoch, against numpy")
        batches, ref = _batches(ctx, ctx.backend), _batches(ctx, ctx.ref)
        if len(batches) != len(ref):
            outcome.over.append(f"{len(batches)} batches, reference {len(ref)}")
        for i, ((x, y), (x_ref, y_ref)) in enumerate(zip(batches, ref)):
            outcome.compare(ctx, f"batch {i} x", x, x_ref)
            outcome.compare(ctx, f"batch {i} y", y, y_ref)
        return outcome

    def losses():
        values, _ = mine()
        shown = ", ".join(f"{v:.4f}" for v in values.tolist())
        outcome = Outcome(tolerance("train_loss"), note=f"{ctx.backend.name}: {shown}")
        outcome.compare(ctx, "epoch losses", values, _reference_run(ctx, "float64")[0])
        return outcome

    def weights(dtype):
        def fn():
            outcome = Outcome(tolerance("train_weights"))
            for i, (p, r) in enumerate(zip(mine()[1], _reference_run(ctx, dtype)[1])):
                outcome.compare(ctx, f"param {i}", p, r)
            return outcome
        return fn

    _, _, data = cases.digits(ctx.hx)
    title = f"{data} MLP, {ctx.epochs} epochs"
    return [
        run_case(ctx, "training", "same seed: same initial weights", initial),
        run_case(ctx, "training", "same seed: same batch order", order),
        run_case(ctx, "training", f"{title}: losses vs float64", losses),
        run_case(ctx, "training", f"{title}: weights vs float64", weights("float64")),
        run_case(ctx, "training", f"{title}: weights vs numpy float32", weights("float32")),
    ]


# --- dtype and device -----------------------------------------------------------------------
def sweep(ctx, dtype):
    """Every layer, loss and optimiser once, and one short training epoch, in `dtype` on
    the backend. Returns (seen, errors): seen lists (what, array, the input it came
    from, pair), pair being host copies (actual, float64 reference) to compare, or None;
    errors, the parts that raised."""
    key = ("sweep", dtype)
    if key in ctx.cache:
        return ctx.cache[key]
    seen, errors = [], []
    check = dtype == "float64"  # float64 results are also compared with the reference
    for case, cls in cases.layer_cases():
        try:
            fwd, bwd, s = layer_pair(ctx, case, cls, (7, 5), cases.normal_inputs, 0, dtype)
        except Exception as e:
            errors.append(f"{case.title}: {type(e).__name__}: {e}")
            continue
        pairs = {**fwd, **bwd} if check else {}
        seen += [(what, arr, inp, pairs.get(label)) for what, arr, inp, label in s]
    for case, cls in cases.loss_cases():
        try:
            mine, ref = loss_pair(ctx, case, cls, case.shapes[-1], False, 0, dtype)
        except Exception as e:
            errors.append(f"{case.name}: {type(e).__name__}: {e}")
            continue
        loss, grad, y_hat = mine[:3]
        seen += [(f"{case.name} loss", loss, y_hat, (mine[3], ref[3]) if check else None),
                 (f"{case.name} dL/dy_hat", grad, y_hat, (mine[4], ref[4]) if check else None)]
    for case, cls in cases.optimizer_cases():
        try:
            opt, opt_ref = optimizer_steps(ctx, case, cls, dtype, steps=1)
        except Exception as e:
            errors.append(f"{case.title}: {type(e).__name__}: {e}")
            continue
        for i, (p, p_ref) in enumerate(zip(opt.params, opt_ref.params)):
            pair = (ctx.host(p.value), ctx.host(p_ref.value, ctx.ref)) if check else None
            seen.append((f"{case.title} {p!r}", p.value, p.grad, pair))
            seen += [(f"{case.title} state {name}", value, p.grad, None)
                     for name, value in opt.state[i].items() if hasattr(value, "dtype")]
    try:
        *_, model = train_run(ctx, ctx.backend, dtype, 1, n_samples=96)
        X, _, _ = cases.digits(ctx.hx)
        x = ctx.backend.asarray(X[:5, ...], dtype=dtype)
        seen.append(("MLP prediction after 1 epoch", model(x), x, None))
        seen += [(f"MLP {p!r} after 1 epoch", p.value, x, None) for p in model.parameters()]
    except Exception as e:
        errors.append(f"training: {type(e).__name__}: {e}")
    ctx.cache[key] = seen, errors
    return seen, errors


def dtype_results(ctx) -> list[CaseResult]:
    def check(dtype):
        def fn():
            seen, errors = sweep(ctx, dtype)
            want = ctx.backend.dtype(dtype)
            outcome = Outcome(tolerance("float64")) if dtype == "float64" else Outcome()
            outcome.over += errors + [f"{what} became {arr.dtype}"
                                      for what, arr, _, _ in seen if arr.dtype != want]
            compared = [(what, pair) for what, _, _, pair in seen if pair is not None]
            for what, (actual, reference) in compared:
                outcome.compare(ctx, what, actual, reference, backend=ctx.ref)
            outcome.note = f"{len(seen)} arrays: outputs, gradients, parameters, optimiser state"
            if compared:
                outcome.note += f"; {len(compared)} compared with numpy float64"
            return outcome
        return fn

    return [run_case(ctx, "dtype", "float32 stays float32", check("float32")),
            run_case(ctx, "dtype", "float64 stays float64", check("float64"))]


def _others(ctx):
    """Every other registered backend that runs here (a plugin that fails to load is left out)."""
    out = []
    for name in backends.registered():
        if name == ctx.backend.name:
            continue
        try:
            out.append(backends.get(name))
        except Exception:
            continue
    return out


def device_results(ctx) -> list[CaseResult]:
    """Outputs on their input's device; model and batch moves to each other backend and
    back, bit for bit, keeping dtype and landing on the target's device."""

    def outputs():
        seen, errors = sweep(ctx, "float32")
        outcome = Outcome(note=f"{len(seen)} arrays")
        outcome.over += errors + [f"{what} on {device_of(arr)}, input on {device_of(inp)}"
                                  for what, arr, inp, _ in seen if device_of(arr) != device_of(inp)]
        return outcome

    def check_landing(outcome, what, arr, backend, dtype):
        where = device_of(backend.asarray([0], dtype=dtype))
        if device_of(arr) != where or arr.dtype != backend.dtype(dtype):
            outcome.over.append(
                f"{what}: {arr.dtype} on {device_of(arr)}, expected {dtype} on {where}")

    def model_move(other):
        def fn():
            me = ctx.backend.name
            outcome = Outcome(tolerance("exact"),
                              note=f"float32, float64: {me} -> {other.name} -> {me}")
            for dtype in ("float32", "float64"):
                backends.seed(ctx.seed)
                model = cases.mlp(ctx.backend, dtype)
                before = [ctx.host(p.value) for p in model.parameters()]
                for target in (other, ctx.backend):
                    model.to(target)
                    for p, b in zip(model.parameters(), before):
                        what = f"{dtype} {p!r} on {target.name}"
                        outcome.compare(ctx, what, p.value, b, backend=target)
                        check_landing(outcome, what, p.value, target, dtype)
            return outcome
        return fn

    def batch_move(other):
        def fn():
            me = ctx.backend.name
            outcome = Outcome(tolerance("exact"),
                              note=f"float32, float64, int64: {me} -> {other.name} -> {me}")
            rng = ctx.rng(400)
            for dtype, host in (("float32", ctx.rounded(cases.large_inputs(rng, (33, 7)),
                                                        "float32")),
                                ("float64", cases.large_inputs(rng, (33, 7))),
                                ("int64", rng.integers(-2**40, 2**40, (33,)))):
                arr = ctx.backend.asarray(host, dtype=dtype)
                for target in (other, ctx.backend):
                    arr = target.asarray(arr)
                    what = f"{dtype} batch on {target.name}"
                    outcome.compare(ctx, what, arr, host, backend=target)
                    check_landing(outcome, what, arr, target, dtype)
            return outcome
        return fn

    out = [run_case(ctx, "device", "outputs on the input's device", outputs)]
    for other in _others(ctx):
        out.append(run_case(ctx, "device", f"model <-> {other.name}", model_move(other)))
        out.append(run_case(ctx, "device", f"batch <-> {other.name}", batch_move(other)))
    return out


# --- overhead ---------------------------------------------------------------------------------
def native_step(xp, inplace, params, bufs, x, y, lr, momentum):
    """The digits MLP's training step written directly in the namespace `xp`: the maths of
    Linear, ReLU, CrossEntropy and SGD(momentum), without the framework. Updates
    `params` and `bufs` (lists) and returns the per-sample losses."""
    w1, b1, w2, b2 = params
    h = x @ w1 + b1
    a = xp.where(h > 0, h, 0.0)
    z = a @ w2 + b2
    shifted = z - xp.max(z, axis=1, keepdims=True)
    e = xp.exp(shifted)
    total = xp.sum(e, axis=1, keepdims=True)
    one_hot = xp.astype(y[:, None] == xp.arange(z.shape[1], dtype=y.dtype, device=device_of(y)),
                        z.dtype)
    loss = -xp.sum((shifted - xp.log(total)) * one_hot, axis=1)
    dz = (e / total - one_hot) * (1.0 / x.shape[0])
    dh = xp.where(h > 0, dz @ w2.T, 0.0)
    grads = (x.T @ dh, xp.sum(dh, axis=0), a.T @ dz, xp.sum(dz, axis=0))
    for i, g in enumerate(grads):
        bufs[i] = g * 1.0 if bufs[i] is None else momentum * bufs[i] + g
        if inplace:
            params[i] -= lr * bufs[i]
        else:
            params[i] = params[i] - lr * bufs[i]
    return loss


def _per_step(backend, steps, n=10, blocks=9):
    """Median seconds per call of each of `steps`, timed in alternating blocks of `n`
    calls after a warm-up, so a busy machine slows them alike."""
    for step in steps:
        for _ in range(2):
            step()
    times = [[] for _ in steps]
    for _ in range(blocks):
        for step, out in zip(steps, times):
            backend.synchronize()
            start = time.perf_counter()
            for _ in range(n):
                step()
            backend.synchronize()
            out.append((time.perf_counter() - start) / n)
    return [sorted(t)[len(t) // 2] for t in times]


def overhead_results(ctx) -> list[CaseResult]:
    """backendnn's training step against `native_step` on the same backend (information)."""

    def fn():
        backend, xp = ctx.backend, ctx.backend.xp
        rng = ctx.rng(500)
        X, _, _ = cases.digits(ctx.hx)
        x = backend.asarray(X[rng.permutation(X.shape[0])[:64], ...], dtype="float32")
        y = backend.asarray(rng.integers(0, 10, 64), dtype="int64")
        backends.seed(ctx.seed)
        model = cases.mlp(backend)
        lr, momentum = 0.01, cases.TRAIN["momentum"]
        opt = SGD(model, lr=lr, momentum=momentum)
        params = [xp.asarray(p.value, copy=True) for p in model.parameters()]
        bufs = [None] * len(params)

        def framework():
            model.criterion(model(x), y)
            model.backward()
            opt.step()

        def native():
            native_step(xp, backend.inplace, params, bufs, x, y, lr, momentum)

        # the labels' range is known on the host, as the Trainer knows a Dataset's:
        # no read-back of the label range from the device in the timed steps
        with model.criterion.labels_known(0, 9):
            t_fw, t_native = _per_step(backend, (framework, native))
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
