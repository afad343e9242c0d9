"""Strong scaling of data-parallel training: 1 process vs 2 ranks, backendnn vs torch DDP.

    python benchmarks/distributed.py [--repeats 3] [--steps 30] [--batches 256 1024]

The 784-512-256-10 ReLU MLP, cross-entropy, SGD with momentum, float32, on synthetic
data, one BLAS thread per process. For each global batch it runs, alternated and
each in its own processes (`mpiexec -n 2` for 2 ranks):
    bnn-1     backendnn, one process (NumPy)
    bnn-2     backendnn, 2 ranks (Trainer's DataParallel over MPI)
    torch-1   PyTorch, one process
    ddp-2     PyTorch DistributedDataParallel, gloo, 2 ranks
and prints samples/s (median over repeats), the ratios of medians, and for backendnn
on 2 ranks the communication time per step: the cost of the bucket allreduces alone
(blocking, measured apart), the time the step spends on them (copies, starting,
polling, waiting) and the share of the cost hidden behind backward.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZES = (784, 512, 256, 10)
CONFIGS = ("bnn-1", "bnn-2", "torch-1", "ddp-2")


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_"))}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(ROOT), BACKENDNN_BACKEND="numpy")
    return env


def _launch(config: str, batch: int, steps: int) -> dict:
    ranks = int(config[-1])
    kind = config.split("-")[0]
    cmd = [sys.executable, __file__, "--worker", kind, "--batch", str(batch), "--steps", str(steps)]
    if ranks > 1:
        cmd = [str(Path(sys.executable).with_name("mpiexec")), "-n", str(ranks), *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=600)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode or not lines:
        raise RuntimeError(f"{config} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(lines[-1])


def _data(batch: int):
    import numpy as np

    rng = np.random.default_rng(0)
    return (rng.normal(size=(batch, SIZES[0])).astype(np.float32),
            rng.integers(0, SIZES[-1], size=batch).astype(np.int64))


def _time(step, steps: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - t0


def worker_bnn(batch: int, steps: int) -> dict | None:
    import backendnn
    from backendnn import distributed
    from backendnn.model import MLP
    from backendnn.optim import SGD

    comm = distributed.init()
    backendnn.seed(0)
    model = MLP(list(SIZES), "relu", "cross_entropy", output_activation=None)
    opt = SGD(model, lr=0.01, momentum=0.9)
    X, y = _data(batch)
    lo, hi = comm.rank * batch // comm.size, (comm.rank + 1) * batch // comm.size
    x, t = model.backend.asarray(X[lo:hi]), model.backend.asarray(y[lo:hi])
    result = {"ranks": comm.size, "batch": batch}
    if comm.size == 1:
        def step():
            model.criterion(model(x), t)
            model.backward()
            opt.step()
        seconds = _time(step, steps)
    else:
        dp = distributed.DataParallel(model, opt, comm)
        dp.setup()

        def step():
            dp.step(x, t, lo, batch)
        comm.barrier()
        _time(step, 0)
        dp.comm_s, dp.steps = 0.0, 0
        seconds = _time(step, steps, warmup=0)
        # the same buckets reduced alone, blocking: the communication cost itself
        bufs = [b.buf for b in dp._plan.buckets]
        comm.barrier()
        t0 = time.perf_counter()
        for _ in range(steps):
            for buf in bufs:
                comm.comm.Allreduce(comm.MPI.IN_PLACE, buf, op=comm.MPI.SUM)
        cost = (time.perf_counter() - t0) / steps
        spent = dp.comm_s / dp.steps
        result.update(comm_cost_ms=cost * 1e3, comm_spent_ms=spent * 1e3,
                      buckets=dp.bucket_sizes(),
                      hidden=max(0.0, 1.0 - spent / cost) if cost > 0 else None)
        seconds = comm.allreduce_host([seconds])[0] / comm.size
    result["samples_s"] = batch * steps / seconds
    result["step_ms"] = seconds / steps * 1e3
    return result if comm.rank == 0 else None


def worker_torch(batch: int, steps: int, ddp: bool) -> dict | None:
    import torch

    torch.set_num_threads(1)
    rank, size = int(os.environ.get("PMI_RANK", 0)), int(os.environ.get("PMI_SIZE", 1))
    if ddp:
        import torch.distributed as dist

        port = 29500 + (os.getppid() % 1000)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=size)
    torch.manual_seed(0)
    layers = []
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(SIZES) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    X, y = _data(batch)
    lo, hi = rank * batch // size, (rank + 1) * batch // size
    x, t = torch.from_numpy(X[lo:hi]), torch.from_numpy(y[lo:hi])
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), t).backward()
        opt.step()
    seconds = _time(step, steps)
    if ddp:
        s = torch.tensor([seconds], dtype=torch.float64)
        dist.all_reduce(s)
        seconds = float(s) / size
        dist.destroy_process_group()
    out = {"ranks": size, "batch": batch, "samples_s": batch * steps / seconds,
           "step_ms": seconds / steps * 1e3}
    return out if rank == 0 else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batches", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--worker", choices=("bnn", "torch", "ddp"), help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        result = (worker_bnn(args.batch, args.steps) if args.worker == "bnn"
                  else worker_torch(args.batch, args.steps, args.worker == "ddp"))
        if result is not None:
            print(json.dumps(result), flush=True)
        return 0
    raw: dict = {}
    for batch in args.batches:
        for r in range(args.repeats):
            order = args.configs if r % 2 == 0 else args.configs[::-1]  # alternated
            for config in order:
                raw.setdefault((batch, config), []).append(_launch(config, batch, args.steps))
    print(render(raw, args.batches, args.configs))
    if args.json:
        Path(args.json).write_text(json.dumps({f"{b}/{c}": v for (b, c), v in raw.items()}, indent=1))
    return 0


def render(raw: dict, batches, configs) -> str:
    med = {k: statistics.median(r["samples_s"] for r in v) for k, v in raw.items()}
    lines = [f"{'global batch':>12}  " + "  ".join(f"{c:>9}" for c in configs)
             + "   bnn-2/bnn-1  bnn-2/ddp-2  ddp-2/torch-1   comm cost  comm in step  hidden"]
    for b in batches:
        row = f"{b:>12}  " + "  ".join(f"{med.get((b, c), float('nan')):>9.0f}" for c in configs)

        def ratio(a, c):
            return med[(b, a)] / med[(b, c)] if (b, a) in med and (b, c) in med else float("nan")
        two = raw.get((b, "bnn-2"), [])
        cost = statistics.median(r["comm_cost_ms"] for r in two) if two else float("nan")
        spent = statistics.median(r["comm_spent_ms"] for r in two) if two else float("nan")
        hidden = statistics.median(r["hidden"] for r in two) if two else float("nan")
        row += (f"   {ratio('bnn-2', 'bnn-1'):>10.2f}x  {ratio('bnn-2', 'ddp-2'):>10.2f}x  "
                f"{ratio('ddp-2', 'torch-1'):>12.2f}x  {cost:>7.2f} ms  {spent:>9.2f} ms  "
                f"{hidden:>5.0%}")
        lines.append(row)
    lines.append("samples/s, median of the repeats; comm: per step on 2 ranks (cost: the "
                 "bucket allreduces alone; in step: copies, starts, polls and waits; hidden: "
                 "1 - in step / cost)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
