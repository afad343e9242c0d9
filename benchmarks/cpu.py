"""One CPU training step of the same network in backendnn, PyTorch and scikit-learn.

    python benchmarks/cpu.py                       # all cases, 9 rounds, 2 threads
    python benchmarks/cpu.py --cases mlp --rounds 11 --markdown out.md --png out.png

Every contender runs in worker processes of its own (two BLAS thread pools in one
process fight over the cores), started once per case with the same thread count in
OMP/OPENBLAS/MKL_NUM_THREADS (and `torch.set_num_threads`): three per contender
(`--processes`), which take its rounds in turn, because one process can run the same
code 10-30% slower than another for all its life. Every process first runs one
untimed block (the machine is busy for a while after the workers start). The
contenders take turns: in each round every contender times one block of steps while
the others wait on a pipe, in an order rotated every round, with a pause between
blocks so the previous worker's BLAS threads stop spinning. A contender's figure is
the median over all its timed steps; ratios are of medians from the same run.

Contenders (each step is forward, loss, backward and parameter update):
  backendnn  Sequential(Linear, ReLU, ...) + CrossEntropy, SGD(lr=0.01), numpy backend
  torch      torch.nn.Sequential + CrossEntropyLoss, torch.optim.SGD(lr=0.01), eager
  sklearn    MLPClassifier(solver="sgd", batch_size=batch, momentum=0, alpha=0,
             shuffle=False): one `partial_fit(x, y)` call, which is one SGD step on a
             batch of `batch` rows (its input validation is part of the step)
  floor      the step's matrix products alone on NumPy's BLAS, into preallocated
             outputs: x @ W per layer, x.T @ g per layer, g @ W.T for every layer
             but the first (the network's input needs no gradient)

Peak memory: a fresh process per contender and case warms its library up on a small
network, resets the kernel's peak-RSS mark (/proc/self/clear_refs), builds the model
and runs a few steps; the figure is the peak RSS minus the RSS before the model was
built (parameters, gradients, activations, optimiser state, temporaries). Where the
mark cannot be reset it falls back to the ru_maxrss increase.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time


CASES = {
    "mlp": {"sizes": [784, 512, 256, 10], "batch": 256,
            "what": "784-512-256-10, ReLU, cross-entropy, batch 256"},
    "tiny": {"sizes": [64] * 10, "batch": 32,
             "what": "9 Linear layers of width 64, ReLU between, 64 classes, batch 32"},
    "wide": {"sizes": [2048, 2048, 2048, 10], "batch": 512,
             "what": "2048-2048-2048-10, ReLU, cross-entropy, batch 512"},
    # convolutions: `convs` are (in, out) 3x3 padding-1 layers, "pool" a MaxPool2d(2)
    "cnn": {"sizes": [3 * 32 * 32, 10], "image": (3, 32, 32), "batch": 64,
            "convs": [(3, 32), (32, 32), "pool", (32, 64), "pool"],
            "what": "NCHW 3x32x32, Conv2d(3,32,3,p=1)-ReLU-Conv2d(32,32,3,p=1)-ReLU-MaxPool2d(2)-"
                    "Conv2d(32,64,3,p=1)-ReLU-MaxPool2d(2)-Flatten-Linear(4096,10), batch 64"},
}
NO_SKLEARN = ("cnn",)  # cases MLPClassifier cannot run
CONTENDERS = ("backendnn", "torch", "sklearn", "floor", "baseline")
BASELINE_VAR = "BACKENDNN_BENCH_BASELINE"  # the checkout `--baseline` names
MEMORY_CONTENDERS = ("backendnn", "torch", "sklearn")
MIN_MIB = 1.0  # below this, RSS growth mostly says how much free memory the allocator held
LR = 0.01
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
TARGETS = {  # (column, case) -> (bound, "<=" or ">="); issues 12 and 16
    ("backendnn/torch", "mlp"): (0.9, "<="),
    ("backendnn/torch", "wide"): (0.95, "<="),
    ("backendnn/torch", "tiny"): (0.6, "<="),
    ("backendnn/floor", "mlp"): (1.15, "<="),
    ("backendnn/floor", "wide"): (1.2, "<="),
    ("sklearn/backendnn", "mlp"): (2.0, ">="),
    ("sklearn/backendnn", "tiny"): (2.0, ">="),
    ("sklearn/backendnn", "wide"): (2.0, ">="),
    ("memory backendnn/torch", "mlp"): (1.0, "<="),
    ("memory backendnn/torch", "tiny"): (1.0, "<="),
    ("memory backendnn/torch", "wide"): (1.0, "<="),
    ("backendnn/torch", "cnn"): (1.0, "<="),
    ("memory backendnn/torch", "cnn"): (1.5, "<="),
}


# --- the contenders, built inside their worker ------------------------------------
def _data(case: str, cases=None):
    """The same host batch for every contender: x (batch, n_in) float32, y (batch,) int64.
    `cases`: the table `case` is looked up in (default: CASES)."""
    import numpy as np

    spec = (cases or CASES)[case]
    rng = np.random.default_rng(0)
    shape = (spec["batch"], *spec.get("image", (spec["sizes"][0],)))
    x = rng.standard_normal(shape, dtype=np.float32)
    y = rng.integers(0, spec["sizes"][-1], spec["batch"])
    return x, y


def _backendnn_model(sizes, root=None, backend="numpy"):
    """The network and its SGD in backendnn from `root` (default: this file's checkout),
    not another installed copy, on `backend`."""
    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    import backendnn as bn

    if not os.path.abspath(bn.__file__).startswith(os.path.join(os.path.abspath(root), "")):
        msg = (f"this worker imported backendnn from {bn.__file__}, not from {root}: "
               "nothing may import backendnn before _backendnn_model")
        raise RuntimeError(msg)

    bn.seed(0)
    layers = []
    if isinstance(sizes, dict):  # a convolutional case
        for conv in sizes["convs"]:
            if conv == "pool":
                layers.append(bn.MaxPool2d(2, backend=backend))
            else:
                layers += [bn.Conv2d(*conv, 3, padding=1, backend=backend),
                           bn.ReLU(backend=backend)]
        layers.append(bn.Flatten(backend=backend))
        sizes = [_flat_features(sizes), sizes["sizes"][-1]]
    for n_inp, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [bn.Linear(n_inp, n_out, backend=backend), bn.ReLU(backend=backend)]
    model = bn.Sequential(layers[:-1], bn.CrossEntropy(backend=backend))
    return model, bn.SGD(model, lr=LR)


def _flat_features(spec) -> int:
    """Features after the convolutions and pools of a convolutional case."""
    c, h, w = spec["image"]
    for conv in spec["convs"]:
        if conv == "pool":
            h, w = h // 2, w // 2
        else:
            c = conv[1]
    return c * h * w


def _make_backendnn(sizes, x, y, root=None):
    model, opt = _backendnn_model(sizes, root)
    criterion = model.criterion

    def step():
        criterion(model(x), y)
        model.backward()
        opt.step()

    return step


def _make_torch(sizes, x, y, threads):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    layers = []
    if isinstance(sizes, dict):
        for conv in sizes["convs"]:
            layers += ([torch.nn.MaxPool2d(2)] if conv == "pool" else
                       [torch.nn.Conv2d(*conv, 3, padding=1), torch.nn.ReLU()])
        layers.append(torch.nn.Flatten())
        sizes = [_flat_features(sizes), sizes["sizes"][-1]]
    for n_inp, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(n_inp, n_out), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        opt.zero_grad()
        loss_fn(model(tx), ty).backward()
        opt.step()

    return step


def _make_sklearn(sizes, x, y):
    import numpy as np
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(
        hidden_layer_sizes=tuple(sizes[1:-1]), activation="relu", solver="sgd",
        batch_size=x.shape[0], learning_rate_init=LR, momentum=0.0,
        nesterovs_momentum=False, alpha=0.0, shuffle=False, random_state=0,
    )
    clf.partial_fit(x, y, classes=np.arange(sizes[-1]))
    if clf.coefs_[0].dtype != np.float32:
        msg = f"sklearn computed in {clf.coefs_[0].dtype}, expected float32"
        raise RuntimeError(msg)

    def step():
        clf.partial_fit(x, y)

    return step


def _make_floor(sizes, x, y):
    import numpy as np

    if isinstance(sizes, dict):
        return conv_floor_step(np, sizes, x)
    return floor_step(np, sizes, x)


def conv_floor_step(lib, spec, x):
    """The im2col products of a convolutional case alone, into preallocated outputs:
    per 3x3 convolution W (O, 9C) @ columns (9C, N·H·W), grad @ columns.T, and
    W.T @ grad for every convolution but the first; then the Linear's products."""
    rng = lib.random.default_rng(1)
    n = x.shape[0]
    _, h, w = spec["image"]
    products = []  # (a, b, out)
    first = True
    for conv in spec["convs"]:
        if conv == "pool":
            h, w = h // 2, w // 2
            continue
        c, o = conv
        m, k = n * h * w, 9 * c
        wt = rng.standard_normal((o, k), dtype=lib.float32)
        cols = rng.standard_normal((k, m), dtype=lib.float32)
        grad = rng.standard_normal((o, m), dtype=lib.float32)
        products += [(wt, cols, lib.empty((o, m), lib.float32)),
                     (grad, cols.T, lib.empty((o, k), lib.float32))]
        if not first:
            products.append((wt.T, grad, lib.empty((k, m), lib.float32)))
        first = False
    feats, classes = _flat_features(spec), spec["sizes"][-1]
    a = rng.standard_normal((n, feats), dtype=lib.float32)
    wl = rng.standard_normal((feats, classes), dtype=lib.float32)
    g = rng.standard_normal((n, classes), dtype=lib.float32)
    products += [(a, wl, lib.empty((n, classes), lib.float32)),
                 (a.T, g, lib.empty((feats, classes), lib.float32)),
                 (g, wl.T, lib.empty((n, feats), lib.float32))]
    matmul = lib.matmul

    def step():
        for p, q, out in products:
            matmul(p, q, out=out)

    return step


def floor_step(lib, sizes, x):
    """The step's matrix products alone, into preallocated outputs, with `lib` (NumPy,
    or CuPy for the GPU benchmark): forward x @ W, then x.T @ g for every layer and
    g @ W.T for every layer but the first."""
    rng = lib.random.default_rng(1)
    batch = x.shape[0]
    ws = [rng.standard_normal((a, b), dtype=lib.float32) / lib.float32(a ** 0.5)
          for a, b in zip(sizes[:-1], sizes[1:])]
    hs = [lib.empty((batch, w.shape[1]), lib.float32) for w in ws]
    gws = [lib.empty_like(w) for w in ws]
    gxs = [lib.empty((batch, w.shape[0]), lib.float32) for w in ws]
    inputs = [x] + hs[:-1]
    matmul = lib.matmul

    def step():
        h = x
        for w, out in zip(ws, hs):
            h = matmul(h, w, out=out)
        g = h
        for i in range(len(ws) - 1, -1, -1):
            matmul(inputs[i].T, g, out=gws[i])
            if i:
                g = matmul(g, ws[i].T, out=gxs[i])

    return step


def _make(name: str, case: str, threads: int, small: bool = False):
    """The contender's step on the case's batch; `small`: a miniature of the network
    (the same kinds of layer, width 8 or 4 channels, 8x8 images, batch 4), which warms
    each library's kernels up before peak memory is measured."""
    if small:
        spec = CASES[case]
        tiny = {**spec, "batch": 4, "sizes": [8, 8, 4]}
        if "convs" in spec:
            tiny.update(image=(spec["image"][0], 8, 8), sizes=[spec["image"][0] * 64, 4])
            chans = spec["image"][0]
            convs = []
            for c in spec["convs"]:
                convs.append(c if c == "pool" else (chans, 4))
                chans = chans if c == "pool" else 4
            tiny["convs"] = convs
        sizes = tiny if "convs" in tiny else tiny["sizes"]
        x, y = _data("small", {"small": tiny})
    else:
        sizes = CASES[case] if "convs" in CASES[case] else CASES[case]["sizes"]
        x, y = _data(case)
    if name == "backendnn":
        return _make_backendnn(sizes, x, y)
    if name == "baseline":
        return _make_backendnn(sizes, x, y, os.environ[BASELINE_VAR])
    if name == "torch":
        return _make_torch(sizes, x, y, threads)
    if name == "sklearn":
        return _make_sklearn(sizes, x, y)
    if name == "floor":
        return _make_floor(sizes, x, y)
    msg = f"unknown contender {name!r}; choose from {CONTENDERS}"
    raise ValueError(msg)


def _threads_seen() -> str:
    """The thread counts the worker's libraries report (to check they are equal)."""
    seen = []
    try:
        from threadpoolctl import threadpool_info

        seen += [f"{i['internal_api']}={i['num_threads']}" for i in threadpool_info()]
    except ImportError:
        pass
    if "torch" in sys.modules:
        seen.append(f"torch={sys.modules['torch'].get_num_threads()}")
    return ",".join(sorted(set(seen)))


# --- worker side -----------------------------------------------------------------
def _worker(name: str, case: str, threads: int) -> None:
    """Answer 'run SECONDS MIN MAX WARMUP' lines with the step times, in seconds."""
    step = _make(name, case, threads)
    for _ in range(3):
        step()
    _send({"ready": True, "threads": _threads_seen()})
    clock = time.perf_counter
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        seconds, n_min, n_max, warmup = float(words[1]), int(words[2]), int(words[3]), int(words[4])
        for _ in range(warmup):
            step()
        times, start = [], clock()
        while len(times) < n_max and (len(times) < n_min or clock() - start < seconds):
            t0 = clock()
            step()
            times.append(clock() - t0)
        _send({"times": times})


def _trim_heap() -> None:
    """Give the warm-up's freed memory back to the OS (glibc), so that the model's
    allocations raise the RSS instead of landing in it unseen."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _memory_worker(name: str, case: str, threads: int, steps: int = 5) -> None:
    """Peak RSS increase (bytes) of building the model and running `steps` steps."""
    import gc
    import resource

    _make(name, case, threads, small=True)()
    gc.collect()
    _trim_heap()
    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, else KiB
    try:
        base = _status_kib("VmRSS") * 1024
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        method = "VmHWM"
    except OSError:
        method, base = "ru_maxrss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
    step = _make(name, case, threads)
    for _ in range(steps):
        step()
    peak = (_status_kib("VmHWM") * 1024 if method == "VmHWM"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit)
    _send({"bytes": peak - base, "method": method})


def _profile_worker(case: str, steps: int) -> None:
    """Where backendnn's step goes: the median time of each call inside the step
    (every layer's forward and backward, the loss, the optimiser), in microseconds.
    Plain SGD adds the large Linear weight gradients' products into the weights
    inside its step (`ProductGrad`): those products count under "optimizer step"."""
    model, opt = _backendnn_model(CASES[case] if "convs" in CASES[case] else CASES[case]["sizes"])
    x, y = _data(case)
    clock, times, depth = time.perf_counter, {}, [0]

    def timed(obj, method, label):
        inner = getattr(obj, method)

        def call(*args):  # a timed call inside another (forward's product) counts once
            depth[0] += 1
            t0 = clock()
            try:
                out = inner(*args)
            finally:
                depth[0] -= 1
            if not depth[0]:
                times.setdefault(label, []).append(clock() - t0)
            return out

        setattr(obj, method, call)

    from backendnn.layers import Layer

    for i, layer in enumerate(model.layers):
        for method in ("forward", "backward", "backward_params"):
            if hasattr(layer, method):
                timed(layer, method, f"{i} {type(layer).__name__}.{method}")
        # the variants Sequential calls on temporaries (ReLU's in-place ones) and on
        # pairs (a Linear's product, then the ReLU's pass that adds its bias; the
        # ReLU's backward that sums the Linear's bias gradient, then the Linear's)
        for method, label in (("_forward_owned", "forward"), ("_backward_owned", "backward"),
                              ("_forward_product", "forward"),
                              ("_forward_with_bias", "forward"),
                              ("_backward_owned_sum", "backward"),
                              ("_backward_with_bias_grad", "backward")):
            if getattr(type(layer), method, None) not in (None, getattr(Layer, method, None)):
                timed(layer, method, f"{i} {type(layer).__name__}.{label}")
    timed(model.criterion, "forward", "loss forward")
    timed(model.criterion, "backward", "loss backward")
    timed(opt, "step", "optimizer step")
    whole = []
    for k in range(steps + 10):
        t0 = clock()
        model.criterion(model(x), y)
        model.backward()
        opt.step()
        whole.append(clock() - t0)
        if k == 9:
            times.clear()
            whole.clear()
    rows = {label: statistics.median(t) * 1e6 for label, t in times.items()}
    rows["sum of the above"] = sum(rows.values())
    rows["whole step (timed calls included)"] = statistics.median(whole) * 1e6
    _send(rows)


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    msg = f"/proc/self/status has no {key}"
    raise OSError(msg)


def _send(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# --- driver side -----------------------------------------------------------------
def _env(threads: int) -> dict:
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = str(threads)
    return env


class Worker:
    """A contender in its own process (`cmd`), which answers one JSON line when ready
    (`ready`) and then times a block of steps per `run` request over its pipe."""

    def __init__(self, name: str, cmd: list, env=None):
        self.name = name
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, text=True, bufsize=1)
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            msg = f"worker {self.name!r} exited with {self.proc.wait()} (see its stderr above)"
            raise RuntimeError(msg)
        return json.loads(line)

    def run(self, seconds: float, n_min: int, n_max: int, warmup: int) -> list[float]:
        self.proc.stdin.write(f"run {seconds} {n_min} {n_max} {warmup}\n")
        return self._read()["times"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait()


def time_case(case: str, contenders, rounds: int, threads: int, seconds: float,
              pause: float, log, processes: int = 1) -> dict:
    """Per contender: all step times (s) over `rounds` alternated blocks, and its threads.

    Each contender runs in `processes` worker processes, round r in process r mod
    `processes`: one process can run the same code 10-30% slower than another for all
    its life (where its memory landed, how its threads were placed), so a contender's
    median pools several."""
    pools = {}
    try:
        for _ in range(processes):
            for name in contenders:
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--case",
                       case, "--threads", str(threads)]
                pools.setdefault(name, []).append(Worker(name, cmd, env=_env(threads)))
        times = {name: [] for name in pools}
        n_min, n_max = (2, 2000) if case not in ("wide", "cnn") else (2, 50)
        names = list(pools)
        # one untimed block per process first: right after the workers start (their
        # imports and allocations), the machine is busy for a while, and whichever
        # contender was timed first paid for it (its first block up to 1.5x its later)
        for pool in zip(*pools.values()):
            for w in pool:
                time.sleep(pause)
                w.run(seconds, n_min, n_max, warmup=2)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                time.sleep(pause)
                times[name] += pools[name][r % processes].run(seconds, n_min, n_max, warmup=2)
            log(f"  {case} round {r + 1}/{rounds}: " + ", ".join(
                f"{n} {statistics.median(t) * 1e3:.3f} ms" for n, t in times.items()))
        return {name: {"times": times[name], "threads": pool[0].ready["threads"]}
                for name, pool in pools.items()}
    finally:
        for pool in pools.values():
            for w in pool:
                w.close()


def measure_memory(case: str, name: str, threads: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--case", case,
           "--threads", str(threads), "--memory"]
    out = subprocess.run(cmd, env=_env(threads), capture_output=True, text=True, check=False)
    if out.returncode:
        msg = f"memory worker {name!r} for {case!r} failed:\n{out.stderr}"
        raise RuntimeError(msg)
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(results: dict) -> list[dict]:
    """One row per case: medians (ms) with the steps' interquartile range, ratios, memory (MiB)."""
    rows = []
    for case, res in results.items():
        row = {"case": case}
        for name, r in res["time"].items():
            row[name] = statistics.median(r["times"]) * 1e3
            q = statistics.quantiles(r["times"], n=4) if len(r["times"]) > 1 else [0, 0, 0]
            row[name + " iqr"] = (q[2] - q[0]) * 1e3
            row[name + " n"] = len(r["times"])
        for name, m in res.get("memory", {}).items():
            row["memory " + name] = m["bytes"] / 2 ** 20
            row["memory method"] = m["method"]
        if "backendnn" in row:
            b = row["backendnn"]
            if "torch" in row:
                row["backendnn/torch"] = b / row["torch"]
            if "floor" in row:
                row["backendnn/floor"] = b / row["floor"]
            if "sklearn" in row:
                row["sklearn/backendnn"] = row["sklearn"] / b
            if "baseline" in row:
                row["backendnn/baseline"] = b / row["baseline"]
            if min(row.get("memory backendnn", 0), row.get("memory torch", 0)) >= MIN_MIB:
                row["memory backendnn/torch"] = row["memory backendnn"] / row["memory torch"]
        for name in ("torch", "sklearn"):
            if name in row and "floor" in row:
                row[name + "/floor"] = row[name] / row["floor"]
        rows.append(row)
    return rows


RATIOS = ("backendnn/torch", "backendnn/floor", "torch/floor", "sklearn/backendnn",
          "sklearn/floor", "backendnn/baseline", "memory backendnn/torch")


def _mark(col: str, case: str, value: float) -> str:
    target = TARGETS.get((col, case))
    if target is None:
        return ""
    bound, op = target
    ok = value <= bound if op == "<=" else value >= bound
    return f" {'ok' if ok else 'MISS'} ({op} {bound:g})"


def table(rows: list[dict], markdown: bool = False) -> str:
    """The results as a plain-text or Markdown table; ratios carry their target's verdict."""
    header = ["case"] + [f"{c} ms" for c in CONTENDERS] + list(RATIOS) + [
        "memory backendnn MiB", "memory torch MiB", "memory sklearn MiB"]
    cells = []
    for row in rows:
        line = [row["case"]]
        for c in CONTENDERS:
            line.append(f"{row[c]:.3f}" if c in row else "-")
        for col in RATIOS:
            line.append(f"{row[col]:.2f}{_mark(col, row['case'], row[col])}" if col in row else "-")
        for c in MEMORY_CONTENDERS:
            key = "memory " + c
            line.append(f"{row[key]:.1f}" if key in row else "-")
        cells.append(line)
    keep = [i for i in range(len(header)) if i == 0 or any(line[i] != "-" for line in cells)]
    header = [header[i] for i in keep]
    cells = [[line[i] for i in keep] for line in cells]
    return render(header, cells, markdown)


def render(header: list, cells: list, markdown: bool) -> str:
    """A table of strings as Markdown, or as right-aligned text columns."""
    from backendnn._table import render  # here: a worker must import its own checkout

    return render([header, *cells], align="right", markdown=markdown)


def machine(threads: int) -> dict:
    """What ran the benchmark: CPU, cores, library versions and the threads each worker saw."""
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for mod in ("numpy", "torch", "sklearn"):
        try:
            versions[mod] = subprocess.run(
                [sys.executable, "-c", f"import {mod}; print({mod}.__version__)"],
                capture_output=True, text=True, check=True).stdout.strip()
        except subprocess.CalledProcessError:
            versions[mod] = "not installed"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "-C", root, "describe", "--always", "--dirty"],
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "threads": threads, "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M %Z"), **versions}


RESULTS_BEGIN, RESULTS_END = "<!-- results: written by benchmarks/cpu.py -->", "<!-- /results -->"


def write_markdown(path: str, rows, meta: dict, command: str) -> None:
    """The results as Markdown. If `path` exists and holds the RESULTS_BEGIN/END
    markers, only the text between them is replaced (the prose around stays)."""
    lines = [
        f"Command: `{command}`", "",
        f"Machine: {meta['cpu']}, {meta['cores']} cores, {meta['platform']}; Python "
        f"{meta['python']}, NumPy {meta['numpy']}, PyTorch {meta['torch']}, scikit-learn "
        f"{meta['sklearn']}; {meta['threads']} threads per worker; {meta['rounds']} rounds in "
        f"{meta['processes']} processes per contender; "
        f"backendnn at {meta['commit']}, run {meta['date']}.", "",
        "Median step time in ms (forward, loss, backward, update); ratios of medians from "
        "this run; peak memory increase in MiB.", "",
        table(rows, markdown=True), "",
    ]
    for case in (r["case"] for r in rows):
        lines.append(f"- `{case}`: {CASES[case]['what']}")
    lines += ["", "Threads seen by each worker: " + "; ".join(
        f"{c}/{n}: {t}" for c, ts in meta["threads_seen"].items() for n, t in ts.items())]
    block = "\n".join([RESULTS_BEGIN, *lines, RESULTS_END])
    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        old = ""
    start, end = old.find(RESULTS_BEGIN), old.find(RESULTS_END)
    if 0 <= start < end:
        text = old[:start] + block + old[end + len(RESULTS_END):]
    else:
        text = "# CPU training-step benchmark\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)


def write_png(path: str, rows) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 3.6), squeeze=False)
    colors = {"backendnn": "tab:blue", "torch": "tab:orange", "sklearn": "tab:green",
              "floor": "tab:gray", "baseline": "tab:purple"}
    for ax, row in zip(axes[0], rows):
        names = [c for c in CONTENDERS if c in row]
        values = [row[c] for c in names]
        bars = ax.bar(names, values, color=[colors[n] for n in names])
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
        ax.set_title(f"{row['case']}: {CASES[row['case']]['what'].split(',')[0]}", fontsize=9)
        ax.set_ylabel("ms per training step (median)")
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--cases", default="mlp,tiny,wide,cnn",
                   help="comma-separated: mlp,tiny,wide,cnn")
    p.add_argument("--contenders", default=",".join(CONTENDERS[:4]),
                   help="comma-separated: backendnn,torch,sklearn,floor")
    p.add_argument("--baseline", metavar="DIR",
                   help="also time backendnn from another checkout (e.g. `git archive` of an "
                        "older commit), as contender 'baseline'")
    p.add_argument("--rounds", type=int, default=9, help="alternated blocks per contender")
    p.add_argument("--processes", type=int, default=3,
                   help="worker processes per contender, taking the rounds in turn")
    p.add_argument("--threads", type=int, default=2, help="threads of every worker")
    p.add_argument("--seconds", type=float, default=0.4, help="time per block")
    p.add_argument("--pause", type=float, default=0.3,
                   help="idle seconds before each block (BLAS threads stop spinning)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument("--markdown", metavar="PATH", help="also write the table as Markdown")
    p.add_argument("--png", metavar="PATH", help="also write a bar chart")
    p.add_argument("--json", metavar="PATH", help="also write every step time as JSON")
    p.add_argument("--profile", action="store_true",
                   help="instead: the median time of each call inside backendnn's step")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        if args.profile:
            _profile_worker(args.case, steps=300 if args.case not in ("wide", "cnn") else 20)
        elif args.memory:
            _memory_worker(args.worker, args.case, args.threads)
        else:
            _worker(args.worker, args.case, args.threads)
        return

    cases = [c for c in args.cases.split(",") if c]
    contenders = [c for c in args.contenders.split(",") if c]
    for c in cases:
        if c not in CASES:
            p.error(f"unknown case {c!r}; choose from {', '.join(CASES)}")
    if args.processes < 1 or args.rounds < 1:
        p.error("--rounds and --processes must be at least 1")
    for c in contenders:
        if c not in CONTENDERS[:4]:
            p.error(f"unknown contender {c!r}; choose from {', '.join(CONTENDERS[:4])} "
                    "(and --baseline DIR)")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    if args.profile:
        for case in cases:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", "backendnn", "--case",
                   case, "--threads", str(args.threads), "--profile"]
            out = subprocess.run(cmd, env=_env(args.threads), capture_output=True, text=True,
                                 check=True)
            print(f"{case}: median us per call inside backendnn's step, {args.threads} threads")
            for label, us in json.loads(out.stdout).items():
                print(f"  {label:36s} {us:10.1f}")
        return

    for c, module in (("torch", "torch"), ("sklearn", "sklearn")):
        if c in contenders and importlib.util.find_spec(module) is None:
            log(f"skipping {c}: {module} is not installed")
            contenders.remove(c)
    if args.baseline:
        os.environ[BASELINE_VAR] = os.path.abspath(args.baseline)
        contenders.append("baseline")
    results, threads_seen = {}, {}
    for case in cases:
        log(f"{case}: {CASES[case]['what']}")
        here = [c for c in contenders if not (c == "sklearn" and case in NO_SKLEARN)]
        timed = time_case(case, here, args.rounds, args.threads, args.seconds,
                          args.pause, log, args.processes)
        results[case] = {"time": timed}
        threads_seen[case] = {n: r["threads"] for n, r in timed.items()}
        if not args.no_memory:
            results[case]["memory"] = {
                n: measure_memory(case, n, args.threads) for n in here
                if n in MEMORY_CONTENDERS}
    rows = summarise(results)
    print(table(rows))
    given = sys.argv[1:] if argv is None else list(argv)
    command = "python " + " ".join([os.path.relpath(__file__)] + given)
    meta = machine(args.threads) | {"rounds": args.rounds, "processes": args.processes,
                                    "threads_seen": threads_seen}
    if args.markdown:
        write_markdown(args.markdown, rows, meta, command)
    if args.png:
        write_png(args.png, rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows, "results": results}, f)


if __name__ == "__main__":
    main()
