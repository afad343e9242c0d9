"""Data-parallel training on many processes: MPI (mpi4py), NCCL for CuPy.

A single-process script becomes data-parallel with two added lines and one
changed argument:

    from backendnn import distributed                    # added
    comm = distributed.init()                            # added
    trainer = Trainer(model, opt, train_dl, val_dl, metric=accuracy, comm=comm)

and runs as `mpiexec -n 4 python train.py` (alone, `init()` gives a size-1
communicator and the script runs unchanged). With `comm`, the Trainer broadcasts
parameters and buffers from rank 0, gives each rank its part of every global batch
(`batch_size` is the global batch), sums the gradients weighted by each rank's
sample count in a few flat buckets started during backward, reduces losses and
metrics, and lets only rank 0 print, show progress, log and write checkpoints.
An exception on one rank ends the whole job with that rank's error (MPI_Abort).

    init(engine="auto")          -> Communicator (rank, size, allreduce, broadcast, allgather)
    convert_sync_batchnorm(model, comm)   BatchNorm statistics over every rank's batch
    is_main()                    whether this process prints and writes (rank 0, or alone)

See docs/distributed.md for launching on a machine and on a cluster, the cost model
and measured figures.
"""
from __future__ import annotations

import sys

from .batchnorm import convert_sync_batchnorm
from .comm import (MPI_MISSING, Communicator, MPICommunicator, launched_by_mpi,
                   select_cuda_device)
from .parallel import DataParallel

__all__ = ["init", "current", "is_main", "Communicator", "MPICommunicator",
           "DataParallel", "convert_sync_batchnorm", "ENGINES"]

ENGINES = ("auto", "mpi", "nccl")
_STATE: dict = {"comm": None, "engine": None, "hook": None}


def init(engine: str = "auto") -> Communicator:
    """The communicator of this job; made on the first call, the same one after.

    Args:
        engine: "mpi" (mpi4py: host arrays directly, device arrays staged through
            host memory unless the MPI is CUDA-aware); "nccl" (CuPy arrays reduced by
            NCCL, its unique id broadcast over MPI; fails where NCCL cannot run);
            "auto" (NCCL for CuPy arrays where usable, else MPI).

    A process that no MPI launcher started gets a size-1 `Communicator` (without
    importing mpi4py). Under a launcher without mpi4py installed, exits with one line
    naming `pip install 'backendnn[mpi]'`. On more than one rank an uncaught
    exception on any rank prints that rank's error and aborts the whole job, so the
    others never wait for it forever.
    """
    if not isinstance(engine, str):
        msg = f"distributed.init: `engine` must be a string, one of {ENGINES}, got {engine!r}"
        raise TypeError(msg)
    if engine not in ENGINES:
        msg = f"distributed.init: `engine` must be one of {ENGINES}, got {engine!r}"
        raise ValueError(msg)
    comm = _STATE["comm"]
    if comm is not None:
        if engine != _STATE["engine"] and engine != "auto":
            msg = (f"distributed.init: already initialised with engine {_STATE['engine']!r}, "
                   f"asked for {engine!r}; call init once per process")
            raise ValueError(msg)
        return comm
    if not launched_by_mpi() and engine == "auto":
        comm = Communicator()
    else:
        try:
            import mpi4py  # noqa: F401
        except ImportError:
            raise SystemExit(MPI_MISSING) from None
        comm = MPICommunicator(nccl={"auto": "auto", "mpi": "off", "nccl": "on"}[engine])
        if engine != "mpi":
            select_cuda_device(comm.local_rank)
        if engine == "nccl":
            comm._start_nccl()
        if comm.size > 1:
            _abort_on_uncaught(comm)
    _STATE.update(comm=comm, engine=engine)
    return comm


def current() -> Communicator | None:
    """The communicator `init` made, or None before it."""
    return _STATE["comm"]


def is_main() -> bool:
    """Whether this process prints and writes files: rank 0, or a process alone."""
    comm = _STATE["comm"]
    return comm is None or comm.rank == 0


def _abort_on_uncaught(comm) -> None:
    """An uncaught exception on one rank prints it with the rank, then aborts the job."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        if issubclass(kind, SystemExit) or kind is KeyboardInterrupt:
            return previous(kind, value, tb)
        comm.fail(value.with_traceback(tb))

    sys.excepthook = hook
    _STATE["hook"] = hook
