"""One training step on a CUDA GPU: backendnn on CuPy against PyTorch CUDA eager.

    python benchmarks/gpu.py                                  # mlp, tiny, wide, huge
    python benchmarks/gpu.py --graph --markdown gpu.md --json gpu.json
    python benchmarks/gpu.py --cases tiny --graph --rounds 9

Cases: `mlp`, `tiny` and `wide` of benchmarks/cpu.py (imported from there), and
`huge`: 8192-8192-8192-10 at batch 8192. Float32 everywhere, TF32 off in both
libraries, enforced in every worker: CUPY_TF32 unset or 0 (else the worker refuses
to run), torch's float32 matmul precision "highest"; both recorded in the results.

Every contender runs in its own worker process, started once per case; the workers
take turns over several rounds, in an order rotated every round. In its turn a
worker runs warm-up steps, then a block of steps with a CUDA event recorded between
consecutive steps and one synchronisation at the end: a step's time is the time
between its two events on the GPU, which includes the gaps where the GPU waited for
Python to launch work (what a training loop sees). A contender's figure is the median
over all its timed steps; ratios are of medians from the same run.

Contenders (a step is forward, loss, backward and update, lr 0.01, plain SGD):
  backendnn        Sequential(Linear, ReLU, ...) + CrossEntropy, SGD, cupy backend; the
                   labels' range is known (`CrossEntropy.labels_known`, as the Trainer
                   does for a Dataset), so nothing is read back from the device
  backendnn-graph  (--graph) the same step captured once as a CUDA graph
                   (`Backend.capture_step`), replayed after copying the batch into the
                   static buffers, as `Trainer(capture=True)` does
  torch            torch.nn.Sequential + CrossEntropyLoss, torch.optim.SGD (its default
                   CUDA implementation), eager
  torch-graph      (--graph) the same, captured with torch.cuda.CUDAGraph (whole-network
                   capture as in PyTorch's CUDA-graph notes), batch copied in
  floor            the step's matrix products alone through cuBLAS, captured once as a
                   CUDA graph and replayed (one launch: no Python in the figure):
                   x @ W per layer, x.T @ g per layer, g @ W.T for every layer but
                   the first

TFLOP/s: the step's matrix-product flops (2 n k m for each of those products) over
the contender's median step time; `floor/backendnn` is the share of backendnn's step
spent in the products.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import cpu as CPU  # benchmarks/cpu.py, beside this script: the same cases and floor step

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CASES = {  # the CPU script's multilayer-perceptron cases (the step here is an MLP's)
    **{name: dict(case) for name, case in CPU.CASES.items() if "image" not in case},
    "huge": {"sizes": [8192, 8192, 8192, 10], "batch": 8192,
             "what": "8192-8192-8192-10, ReLU, cross-entropy, batch 8192"},
}
CONTENDERS = ("backendnn", "backendnn-graph", "torch", "torch-graph", "floor")
GRAPH_CONTENDERS = ("backendnn-graph", "torch-graph")
LR = 0.01
TARGETS = {  # (column, case) -> bound, all "<="
    ("backendnn/torch", "mlp"): 1.2,
    ("backendnn/torch", "wide"): 1.05,
    ("backendnn/torch", "huge"): 1.05,
    ("backendnn-graph/torch", "tiny"): 0.5,
}


def flops(sizes, batch: int) -> int:
    """Flops of the step's matrix products (the input needs no gradient)."""
    pairs = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    return 2 * batch * (2 * sum(pairs) + sum(pairs[1:]))


# --- the contenders, built inside their worker ------------------------------------
def _make_backendnn(sizes, x, y, graph: bool, stack):
    from backendnn import backends

    be = backends.get("cupy")
    gx, gy = be.asarray(x, dtype="float32"), be.asarray(y, dtype="int64")
    low, high = int(y.min()), int(y.max())

    def make():
        model, opt = CPU._backendnn_model(sizes, ROOT, backend=be)
        stack.enter_context(model.criterion.labels_known(low, high))
        criterion = model.criterion

        def step(bx=gx, by=gy):
            criterion(model(bx), by)
            model.backward()
            opt.step()

        return model, step

    model, step = make()
    info = {"backend": repr(be), "cupy": be.version()}
    if not graph:
        return step, be.synchronize, info
    for _ in range(2):
        step()
    bx, by = be.xp.asarray(gx, copy=True), be.xp.asarray(gy, copy=True)
    replay = be.capture_step(lambda: step(bx, by))

    def graph_step():
        bx[...] = gx
        by[...] = gy
        replay()

    info["graph_check"] = _graph_check(make, be, gx, gy)
    return graph_step, be.synchronize, info


def _graph_check(make, be, gx, gy, steps: int = 3) -> str:
    """Largest |difference| of the parameters after `steps` captured and uncaptured
    steps from the same seed (0 expected)."""
    import numpy as np

    results = []
    for captured in (False, True):
        model, step = make()
        run = step
        if captured:
            for _ in range(2):
                step()
            bx, by = be.xp.asarray(gx, copy=True), be.xp.asarray(gy, copy=True)
            replay = be.capture_step(lambda: step(bx, by))

            def run():
                bx[...] = gx
                by[...] = gy
                replay()
        for _ in range(steps if captured else steps + 2):
            run()
        results.append([be.to_numpy(p.value) for p in model.parameters()])
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(*results))
    return f"max |captured - uncaptured| after {steps + 2} steps: {diff:g}"


def _make_torch(sizes, x, y, graph: bool):
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    device = torch.device("cuda")
    layers = []
    for n_inp, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(n_inp, n_out), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1]).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    tx, ty = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    info = {"torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name()}

    def step():
        opt.zero_grad()
        loss_fn(model(tx), ty).backward()
        opt.step()

    if not graph:
        return step, torch.cuda.synchronize, info
    bx, by = tx.clone(), ty.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(bx), by).backward()
            opt.step()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(g):
        loss_fn(model(bx), by).backward()
        opt.step()

    def graph_step():
        bx.copy_(tx)
        by.copy_(ty)
        g.replay()

    return graph_step, torch.cuda.synchronize, info


def _make_floor(sizes, x, y):
    """The step's products (those of cpu.floor_step) captured once as a CUDA graph
    through the backend's direct cuBLAS path (`Backend.matmul` while capturing: the
    kernels `a @ b` runs): a replay is one launch, so on small cases the floor is the
    GPU's time for the products, not Python's time to launch them."""
    import cupy

    from backendnn import backends

    be = backends.get("cupy")
    gx = cupy.asarray(x)
    rng = cupy.random.default_rng(1)
    ws = [rng.standard_normal((a, b), dtype=cupy.float32) / cupy.float32(a ** 0.5)
          for a, b in zip(sizes[:-1], sizes[1:])]

    def products():
        hs = [gx]
        for w in ws:
            hs.append(be.matmul(hs[-1], w))
        g = hs[-1]
        for i in range(len(ws) - 1, -1, -1):
            be.matmul(hs[i].T, g)
            if i:
                g = be.matmul(g, ws[i].T)

    step = be.capture_step(products)
    sync = cupy.cuda.get_current_stream().synchronize
    return step, sync, {"cupy": cupy.__version__, "floor": "one captured graph"}


def _tf32_check(name: str) -> dict:
    """Refuse TF32 in this worker (both sides compare float32 products): CUPY_TF32
    must be unset or 0, torch's float32 matmul precision 'highest'. Returns what
    was recorded."""
    value = os.environ.get("CUPY_TF32", "unset")
    if value not in ("unset", "0"):
        msg = f"{name}: CUPY_TF32={value} would make CuPy's float32 products TF32; unset it"
        raise SystemExit(msg)
    out = {"CUPY_TF32": value}
    if name.startswith("torch"):
        import torch

        torch.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        out["torch_matmul_precision"] = torch.get_float32_matmul_precision()
    return out


def _make(name: str, case: str, stack):
    sizes = CASES[case]["sizes"]
    x, y = CPU._data(case, CASES)
    if name in ("backendnn", "backendnn-graph"):
        return _make_backendnn(sizes, x, y, name.endswith("graph"), stack)
    if name in ("torch", "torch-graph"):
        return _make_torch(sizes, x, y, name.endswith("graph"))
    if name == "floor":
        return _make_floor(sizes, x, y)
    msg = f"unknown contender {name!r}; choose from {CONTENDERS}"
    raise ValueError(msg)


class _Events:
    """CUDA events of the contender's library: record(), then elapsed ms between two."""

    def __init__(self, name: str):
        if name.startswith("torch"):
            import torch

            self.new = lambda: torch.cuda.Event(enable_timing=True)
            self.ms = lambda a, b: a.elapsed_time(b)
        else:
            import cupy

            self.new = cupy.cuda.Event
            self.ms = cupy.cuda.get_elapsed_time

    def block(self, step, n: int) -> list[float]:
        """Per-step times (ms) of `n` consecutive steps, one sync at the end."""
        events = [self.new() for _ in range(n + 1)]
        events[0].record()
        for event in events[1:]:
            step()
            event.record()
        events[-1].synchronize()
        return [self.ms(a, b) for a, b in zip(events[:-1], events[1:])]


# --- worker side -----------------------------------------------------------------
def _worker(name: str, case: str) -> None:
    """Answer 'run SECONDS N_MIN N_MAX WARMUP' lines with per-step times in ms."""
    with contextlib.ExitStack() as stack:
        tf32 = _tf32_check(name)
        step, sync, info = _make(name, case, stack)
        info = {**info, **tf32}
        events = _Events(name)
        for _ in range(3):
            step()
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        estimate = max(time.perf_counter() - t0, 1e-6)
        _send({"ready": True, "info": info, "estimate_s": estimate})
        for line in sys.stdin:
            words = line.split()
            if not words or words[0] == "quit":
                break
            seconds, n_min, n_max, warmup = float(words[1]), int(words[2]), int(words[3]), int(words[4])
            for _ in range(warmup):
                step()
            n = int(min(max(seconds / estimate, n_min), n_max))
            times = events.block(step, n)
            estimate = max(statistics.median(times) / 1e3, 1e-6)
            _send({"times": times})


def _send(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# --- driver side -----------------------------------------------------------------
def time_case(case: str, contenders, rounds: int, seconds: float, log) -> dict:
    """Per contender: every step time (ms) over `rounds` alternated blocks, and its info."""
    workers = []
    try:
        for name in contenders:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--case", case]
            workers.append(CPU.Worker(name, cmd))
        times = {w.name: [] for w in workers}
        n_max = 20 if case == "huge" else 5000
        for r in range(rounds):
            order = workers[r % len(workers):] + workers[:r % len(workers)]
            for w in order:
                times[w.name] += w.run(seconds, 3, n_max, warmup=2 if case == "huge" else 10)
            log(f"  {case} round {r + 1}/{rounds}: " + ", ".join(
                f"{n} {statistics.median(t):.3f} ms" for n, t in times.items()))
        return {w.name: {"times": times[w.name], "info": w.ready["info"]} for w in workers}
    finally:
        for w in workers:
            w.close()


def summarise(results: dict) -> list[dict]:
    """One row per case: medians and spreads (ms), ratios, TFLOP/s."""
    rows = []
    for case, res in results.items():
        spec = CASES[case]
        work = flops(spec["sizes"], spec["batch"])
        row = {"case": case, "gflop": work / 1e9}
        for name, r in res.items():
            t = r["times"]
            row[name] = statistics.median(t)
            q = statistics.quantiles(t, n=4) if len(t) > 1 else [t[0], t[0], t[0]]
            row[name + " iqr"] = q[2] - q[0]
            row[name + " n"] = len(t)
            row[name + " TFLOP/s"] = work / (row[name] * 1e-3) / 1e12
        for a in ("backendnn", "backendnn-graph", "torch-graph"):
            if a in row and "torch" in row:
                row[f"{a}/torch"] = row[a] / row["torch"]
        if "floor" in row:
            for a in ("backendnn", "torch"):
                if a in row:
                    row[f"floor/{a}"] = row["floor"] / row[a]
        rows.append(row)
    return rows


RATIOS = ("backendnn/torch", "backendnn-graph/torch", "torch-graph/torch",
          "floor/backendnn", "floor/torch")


def _mark(col: str, case: str, value: float) -> str:
    bound = TARGETS.get((col, case))
    if bound is None:
        return ""
    return f" {'ok' if value <= bound else 'MISS'} (<= {bound:g})"


def table(rows: list[dict], contenders, markdown: bool = False) -> str:
    """Medians (ms), ratios with their targets' verdicts, and TFLOP/s."""
    header = (["case"] + [f"{c} ms" for c in contenders] + list(RATIOS)
              + [f"{c} TFLOP/s" for c in contenders])
    cells = []
    for row in rows:
        line = [row["case"]]
        line += [f"{row[c]:.3f}" if c in row else "-" for c in contenders]
        line += [f"{row[c]:.2f}{_mark(c, row['case'], row[c])}" if c in row else "-" for c in RATIOS]
        line += [f"{row[c + ' TFLOP/s']:.3g}" if c in row else "-" for c in contenders]
        cells.append(line)
    return CPU.render(header, cells, markdown)


def machine(results: dict) -> dict:
    """The GPU, driver and library versions the workers reported, and the host."""
    meta = {"python": platform.python_version(), "platform": platform.platform(),
            "CUPY_TF32": os.environ.get("CUPY_TF32", "unset")}
    for res in results.values():
        for name, r in res.items():
            meta.update({k: v for k, v in r["info"].items() if k != "graph_check"})
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, check=True)
        meta["nvidia-smi"] = out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        meta["nvidia-smi"] = "unavailable"
    return meta


def write_markdown(path: str, rows, contenders, meta: dict, checks: dict, command: str,
                   rounds: int) -> None:
    lines = [
        "## GPU training-step benchmark", "",
        f"Command: `{command}`", "",
        f"GPU: {meta.get('nvidia-smi', meta.get('gpu', '?'))}; PyTorch {meta.get('torch', '?')} "
        f"(CUDA {meta.get('cuda', '?')}), CuPy {meta.get('cupy', '?')}, Python {meta['python']}; "
        f"float32, TF32 off (CUPY_TF32={meta['CUPY_TF32']}); {rounds} rounds.", "",
        "Median step time in ms (forward, loss, backward, update) between CUDA events; "
        "ratios of medians from this run; TFLOP/s of the step's matrix products.", "",
        table(rows, contenders, markdown=True), "",
    ]
    for case in (r["case"] for r in rows):
        lines.append(f"- `{case}`: {CASES[case]['what']}")
    if checks:
        lines += ["", "Captured step against the uncaptured one: " + "; ".join(
            f"{case}: {text}" for case, text in checks.items())]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--cases", default="mlp,tiny,wide,huge", help="comma-separated: " + ",".join(CASES))
    p.add_argument("--contenders", default=None,
                   help="comma-separated (default: backendnn,torch,floor, plus the graph ones with --graph)")
    p.add_argument("--graph", action="store_true", help="add the CUDA-graph contenders")
    p.add_argument("--rounds", type=int, default=5, help="alternated blocks per contender")
    p.add_argument("--seconds", type=float, default=0.3, help="GPU time per block")
    p.add_argument("--markdown", metavar="PATH", help="also write the table as Markdown")
    p.add_argument("--json", metavar="PATH", help="also write every step time as JSON")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    sys.path.insert(0, ROOT)  # workers and tables use this checkout's backendnn
    if args.worker:
        _worker(args.worker, args.case)
        return

    cases = [c for c in args.cases.split(",") if c]
    if args.contenders:
        contenders = [c for c in args.contenders.split(",") if c]
    else:
        contenders = [c for c in CONTENDERS if args.graph or c not in GRAPH_CONTENDERS]
    for c in cases:
        if c not in CASES:
            p.error(f"unknown case {c!r}; choose from {', '.join(CASES)}")
    for c in contenders:
        if c not in CONTENDERS:
            p.error(f"unknown contender {c!r}; choose from {', '.join(CONTENDERS)}")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    results, checks = {}, {}
    for case in cases:
        log(f"{case}: {CASES[case]['what']} ({flops(CASES[case]['sizes'], CASES[case]['batch']) / 1e9:.2f} GFLOP a step)")
        results[case] = time_case(case, contenders, args.rounds, args.seconds, log)
        check = results[case].get("backendnn-graph", {}).get("info", {}).get("graph_check")
        if check:
            checks[case] = check
            log(f"  {case} backendnn-graph: {check}")
    rows = summarise(results)
    shown = [c for c in CONTENDERS if c in contenders]
    print(table(rows, shown))
    for case, text in checks.items():
        print(f"{case}: captured vs uncaptured backendnn: {text}")
    command = "python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:])
    meta = machine(results)
    if args.markdown:
        write_markdown(args.markdown, rows, shown, meta, checks, command, args.rounds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows, "results": results}, f)


if __name__ == "__main__":
    main()
