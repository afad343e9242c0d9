"""Communicators: the collectives data-parallel training needs, on MPI (mpi4py) and
NCCL (CuPy), and a size-1 one for a process no MPI launcher started.

mpi4py is imported here, lazily, and only when an MPI launcher started the process
(or `engine="mpi"`/"nccl" asks for it); CuPy only for CuPy arrays. NCCL's collectives
have run on one GPU; its gradient buckets need two (docs/distributed.md, "What is
verified on a GPU").
"""
from __future__ import annotations

import os
import sys
import time
import traceback

from .. import backends
from ..backends import _base


def _np():
    """The host array namespace (NumPy, reached through its backend: the core
    imports no array library itself), for MPI's staging buffers."""
    return backends.get("numpy").xp

# Set by the launchers we know: MPICH/Intel MPI (hydra), Open MPI, PMIx, MVAPICH.
LAUNCHER_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE",
                 "PMI_RANK")
MPI_MISSING = ("backendnn.distributed: this process was started by an MPI launcher but "
               "mpi4py is not installed: pip install 'backendnn[mpi]'")


def launched_by_mpi() -> bool:
    """Whether an MPI launcher (mpiexec, mpirun, srun --mpi) started this process."""
    return any(os.environ.get(v) not in (None, "") for v in LAUNCHER_VARS)


def _backend_of(x):
    """The backend whose library `x` is an array of."""
    backend = _base.owning_backend(x)
    if backend is None:
        msg = f"backendnn.distributed: no loaded backend owns an array of type {type(x).__name__}"
        raise TypeError(msg)
    return backend


class Communicator:
    """A group of `size` processes, this one being `rank`: the collectives on
    backend arrays that data-parallel training needs.

    This base class is the size-1 group (a process no MPI launcher started): every
    collective returns its input, so a data-parallel script runs unchanged alone.

    Attributes: rank, size, local_rank (rank among the processes of this machine),
    engine ("single", "mpi" or "nccl": what reduces device arrays).
    Collectives take and return arrays of any backend, summing with `op="sum"`:
        allreduce(x)  every rank gets the sum over ranks;
        broadcast(x, root=0)  every rank gets root's x;
        allgather(x)  every rank gets (size, *x.shape), rank r's x at index r.
    Host helpers for Python values: bcast_object, allgather_object, barrier.
    """

    engine = "single"
    rank, size, local_rank = 0, 1, 0

    @property
    def is_main(self) -> bool:
        """Whether this rank prints and writes files (rank 0)."""
        return self.rank == 0

    def allreduce(self, x, op: str = "sum"):
        _check_op(op)
        return x

    def broadcast(self, x, root: int = 0):
        return x

    def allgather(self, x):
        return _backend_of(x).xp.stack([x])

    def allreduce_host(self, values):
        """Sum a host NumPy array over ranks (losses, counts), returned on the host."""
        return _np().array(values, copy=True)

    def sum_int(self, n: int) -> int:
        """Sum a Python int over ranks (sample counts)."""
        return int(n)

    def bcast_object(self, obj, root: int = 0):
        return obj

    def allgather_object(self, obj) -> list:
        return [obj]

    def barrier(self) -> None:
        """Wait for every rank."""

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now."""
        sys.stderr.flush()
        os._exit(code)

    def fail(self, exc: BaseException) -> None:
        """Print which rank failed and why (with the traceback), then end the job."""
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        sys.stderr.write(f"{text}backendnn.distributed: rank {self.rank} of {self.size} failed "
                         f"with {type(exc).__name__}: {exc}; aborting every rank\n")
        sys.stderr.flush()
        self.abort(1)

    def _bucket_engine(self, backend):
        return None

    def __repr__(self):
        return f"{type(self).__name__}(rank={self.rank}, size={self.size}, engine={self.engine!r})"


def _check_op(op):
    if op != "sum":
        msg = f"backendnn.distributed: `op` must be 'sum', got {op!r}"
        raise ValueError(msg)


class MPICommunicator(Communicator):
    """Collectives over an MPI communicator (mpi4py). Host arrays go to MPI as they
    are; device arrays are staged through host memory unless the MPI is CUDA-aware;
    with an NCCL engine (`engine="nccl"`, or "auto" where usable) CuPy arrays are
    reduced by NCCL instead."""

    engine = "mpi"

    def __init__(self, mpi_comm=None, *, nccl: str = "auto"):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if mpi_comm is None else mpi_comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self._nccl_mode = nccl  # "auto", "on" (required), "off"
        self._nccl = None
        self.cuda_aware = _cuda_aware(MPI)

    def _start_nccl(self) -> None:
        """Make the NCCL communicator now (engine="nccl"); raise where it cannot run."""
        try:
            self._nccl = NCCLEngine(self)
        except NCCLUnavailable as e:
            msg = f"distributed.init(engine='nccl'): NCCL cannot run here: {e}"
            raise RuntimeError(msg) from None
        self.engine = "nccl"

    # --- device arrays by NCCL where chosen ------------------------------------
    def _nccl_for(self, x):
        owner = _base.owning_backend(x)
        if self._nccl_mode == "off" or owner is None or owner.name != "cupy":
            return None
        if self._nccl is None:
            try:  # every rank reaches its first CuPy collective at the same point
                self._nccl = NCCLEngine(self)
                self.engine = "nccl"
            except NCCLUnavailable:
                self._nccl_mode = "off"
                return None
        return self._nccl

    # --- array collectives ---------------------------------------------------------
    def allreduce(self, x, op: str = "sum"):
        _check_op(op)
        nccl = self._nccl_for(x)
        if nccl is not None:
            return nccl.allreduce(x)
        backend, np = _backend_of(x), _np()
        send = np.ascontiguousarray(backend.to_numpy(x))
        out = np.empty_like(send)
        self.comm.Allreduce(send, out, op=self.MPI.SUM)
        return backend.asarray(out)

    def broadcast(self, x, root: int = 0):
        nccl = self._nccl_for(x)
        if nccl is not None:
            return nccl.broadcast(x, root)
        backend, np = _backend_of(x), _np()
        buf = np.array(backend.to_numpy(x), copy=True, order="C")
        self.comm.Bcast(buf, root=root)
        return backend.asarray(buf)

    def allgather(self, x):
        nccl = self._nccl_for(x)
        if nccl is not None:
            return nccl.allgather(x)
        backend, np = _backend_of(x), _np()
        send = np.ascontiguousarray(backend.to_numpy(x))
        out = np.empty((self.size, *send.shape), dtype=send.dtype)
        self.comm.Allgather(send, out)
        return backend.asarray(out)

    def allreduce_host(self, values):
        np = _np()
        send = np.ascontiguousarray(values)
        out = np.empty_like(send)
        self.comm.Allreduce(send, out, op=self.MPI.SUM)
        return out

    def sum_int(self, n: int) -> int:
        np = _np()
        out = np.empty(1, dtype=np.int64)
        self.comm.Allreduce(np.array([n], dtype=np.int64), out, op=self.MPI.SUM)
        return int(out[0])

    def bcast_object(self, obj, root: int = 0):
        return self.comm.bcast(obj, root=root)

    def allgather_object(self, obj) -> list:
        return self.comm.allgather(obj)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(0.3)  # let the launcher forward this rank's last words before the kill
        self.MPI.COMM_WORLD.Abort(code)
        os._exit(code)  # MPICH may return from Abort before the launcher's kill arrives

    def _bucket_engine(self, backend):
        """What fills, reduces and reads the flat gradient buckets of `backend`'s arrays."""
        probe = backend.xp.zeros((1,), dtype=backend.dtype("float32"), device=backend.device)
        nccl = self._nccl_for(probe)
        if nccl is not None:
            return nccl
        return MPIBuckets(self, backend)


def _cuda_aware(MPI) -> bool:
    query = getattr(MPI, "Query_cuda_support", None)
    try:
        return bool(query()) if query is not None else False
    except Exception:
        return False


class MPIBuckets:
    """Flat gradient buckets in host memory, summed over ranks by MPI.

    `alloc` gives a buffer, `put` copies a gradient in, `start` begins the sum,
    `poll` lets MPI progress (called between layers), `wait` ends the sums, `view`
    gives a gradient back as an array of the backend (a view of the buffer for
    NumPy, no copy).

    The sums are MPI_Iallreduce calls, polled between layers: MPI progresses them
    only inside MPI calls, so a bucket moves while backward runs only as far as the
    polls push it (a background thread doing blocking allreduces was measured
    slower on 2 ranks: see docs/distributed.md)."""

    def __init__(self, comm: MPICommunicator, backend):
        self.comm, self.backend, self.MPI = comm, backend, comm.MPI

    def alloc(self, n: int, dtype):
        np = _np()
        return np.empty(n, dtype=np.dtype(str(dtype).rsplit(".", 1)[-1]))

    def put(self, buf, a: int, b: int, grad):
        buf[a:b] = self.backend.to_numpy(grad).reshape(-1)

    def zero(self, buf, a: int, b: int):
        buf[a:b] = 0

    def start(self, buf):
        return self.comm.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def poll(self, handles) -> None:
        if handles:
            self.MPI.Request.Testall(handles)

    def wait(self, handles) -> None:
        self.MPI.Request.Waitall(handles)

    def view(self, buf, a: int, b: int, shape):
        return self.backend.asarray(buf[a:b].reshape(shape))


class NCCLUnavailable(RuntimeError):
    """NCCL cannot run on every rank of this job (raised on all of them together)."""


class NCCLEngine:
    """NCCL (cupy.cuda.nccl) collectives on CuPy arrays, the unique id broadcast over
    MPI. Reductions of gradient buckets run on a stream of their own, ordered after
    the compute stream by events, so they overlap the rest of backward; the compute
    stream waits for them in `wait`. Other collectives run on the current stream.

    Every rank needs a GPU of its own: where ranks would share one, or a rank lacks
    CuPy or NCCL, every rank raises `NCCLUnavailable` together.
    """

    def __init__(self, comm: MPICommunicator):
        try:
            backend = backends.get("cupy")  # the backend owns the imports
            cupy, nccl = backend.module, backend.nccl()
            gpus = cupy.cuda.runtime.getDeviceCount()
            if not getattr(nccl, "available", True):
                reason = "CuPy was built without NCCL"
            elif comm.local_size > gpus:
                reason = (f"NCCL needs a GPU of its own for each rank, and {comm.local_size} "
                          f"ranks share {gpus} GPU(s) on one machine: launch at most {gpus} "
                          "ranks per machine, or use engine='mpi'")
            else:
                reason = ""
        except (ImportError, AttributeError, backends.BackendError) as e:
            reason = f"{type(e).__name__}: {e}"
        # one decision for every rank: none may go on to NCCL's set-up while another stops
        refused = [(rank, why) for rank, why in enumerate(comm.comm.allgather(reason)) if why]
        if refused:
            rank, why = refused[0]
            raise NCCLUnavailable(f"rank {rank}: {why}")

        self.cupy, self.nccl, self.mpi = cupy, nccl, comm
        uid = nccl.get_unique_id() if comm.rank == 0 else None
        uid = comm.comm.bcast(uid, root=0)
        self.comm = nccl.NcclCommunicator(comm.size, uid, comm.rank)
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.types = {"float16": nccl.NCCL_FLOAT16, "float32": nccl.NCCL_FLOAT32,
                      "float64": nccl.NCCL_FLOAT64, "int32": nccl.NCCL_INT32,
                      "int64": nccl.NCCL_INT64}
        if hasattr(nccl, "NCCL_BFLOAT16"):
            self.types["bfloat16"] = nccl.NCCL_BFLOAT16
        self.backend = None

    def _type(self, x):
        name = str(x.dtype)
        if name not in self.types:
            msg = f"backendnn.distributed (nccl): dtype {name} cannot be reduced; use float32"
            raise TypeError(msg)
        return self.types[name]

    def _current(self):
        return self.cupy.cuda.get_current_stream()

    # --- blocking-looking collectives, queued on the current stream ------------
    def allreduce(self, x):
        x = self.cupy.ascontiguousarray(x)
        out = self.cupy.empty_like(x)
        self.comm.allReduce(x.data.ptr, out.data.ptr, x.size, self._type(x),
                            self.nccl.NCCL_SUM, self._current().ptr)
        return out

    def broadcast(self, x, root: int = 0):
        out = self.cupy.array(x, copy=True, order="C")
        self.comm.bcast(out.data.ptr, out.size, self._type(out), root, self._current().ptr)
        return out

    def allgather(self, x):
        x = self.cupy.ascontiguousarray(x)
        out = self.cupy.empty((self.mpi.size, *x.shape), dtype=x.dtype)
        self.comm.allGather(x.data.ptr, out.data.ptr, x.size, self._type(x), self._current().ptr)
        return out

    # --- gradient buckets --------------------------------------------------------
    def alloc(self, n: int, dtype):
        return self.cupy.empty(n, dtype=dtype)

    def put(self, buf, a: int, b: int, grad):
        buf[a:b] = grad.reshape(-1)

    def zero(self, buf, a: int, b: int):
        buf[a:b] = 0

    def start(self, buf):
        ready = self.cupy.cuda.Event(disable_timing=True)
        ready.record(self._current())
        self.stream.wait_event(ready)
        self.comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self._type(buf),
                            self.nccl.NCCL_SUM, self.stream.ptr)
        return buf

    def poll(self, handles) -> None:
        """NCCL progresses on its own stream."""

    def wait(self, handles) -> None:
        done = self.cupy.cuda.Event(disable_timing=True)
        done.record(self.stream)
        self._current().wait_event(done)

    def view(self, buf, a: int, b: int, shape):
        return buf[a:b].reshape(shape)


def select_cuda_device(local_rank: int) -> None:
    """Make GPU `local_rank` (mod the device count) the CuPy backend's device, so the
    ranks of one machine use different GPUs; nothing where CuPy cannot run."""
    try:
        backend = backends.get("cupy")
    except backends.BackendError:
        return
    cupy = backend.module
    device = cupy.cuda.Device(local_rank % cupy.cuda.runtime.getDeviceCount())
    device.use()
    backend.device = device
