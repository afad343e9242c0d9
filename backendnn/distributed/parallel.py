"""What a Trainer does differently on many ranks: `DataParallel`."""
from __future__ import annotations

import math
import time

from ..backends import batch_rows
from ..optim import clip_grad_norm


class DataParallel:
    """Data-parallel steps of `model` over the ranks of `comm` (the Trainer makes one
    when given `comm=`; use it directly in a hand-written loop).

    - `setup()`: refuse a model whose tensors differ in name, shape or dtype between
      ranks (naming the rank and the tensor), then broadcast parameters and buffers
      from rank 0.
    - `batches(dl)`: each rank's part of every global batch, with where it starts
      and the global batch size.
    - `step(x, y, start, n_global)`: forward, loss, backward and update. The loss
      gradient is scaled by n_local / n_global, so the summed gradients are the
      global batch's mean, uneven parts included. Gradients are copied into a few
      flat buckets per dtype (`bucket_mb` each, in backward order); a bucket's
      non-blocking allreduce starts as soon as backward has produced all of it.
      Dropout masks: each rank draws only its rows, as rows `start` .. `start + n`
      of the global batch's mask (the Philox counter of a row is its global sample
      index), so masks and the random stream match one process.
    - `reduce_losses`, `reduce_sums`: epoch losses and validation sums over ranks.
    - `sync_buffers()`: rank 0's running statistics to every rank (local BatchNorm).

    Attributes: comm_s (seconds spent in gradient communication outside compute:
    copies in and out, starting, polling and waiting), steps.
    """

    def __init__(self, model, optimizer, comm, *, bucket_mb: float = 1.0, max_grad_norm=None):
        self.model, self.optimizer, self.comm = model, optimizer, comm
        self.bucket_bytes = max(1, int(bucket_mb * 2**20))
        self.max_grad_norm = max_grad_norm
        self._plan = None
        self.comm_s, self.steps = 0.0, 0

    # --- start ---------------------------------------------------------------------
    def setup(self) -> None:
        """Check that every rank holds the same tensors, then take rank 0's values."""
        comm, model = self.comm, self.model
        state = model.state_dict()
        mine = [(k, tuple(v.shape), str(v.dtype).rsplit(".", 1)[-1]) for k, v in state.items()]
        every = comm.allgather_object(mine)
        for rank, theirs in enumerate(every):
            if theirs != every[0]:
                msg = _mismatch(every[0], theirs, rank)
                raise ValueError(msg)
        if comm.size > 1 and state:
            model.load_state_dict(self._broadcast(state), strict=True)
        self._plan = None

    def _broadcast(self, arrays: dict) -> dict:
        """`arrays` as rank 0 holds them: one broadcast per dtype of a flat buffer."""
        xp = self.model.backend.xp
        out = {}
        for dtype in {str(v.dtype) for v in arrays.values()}:
            keys = [k for k, v in arrays.items() if str(v.dtype) == dtype]
            flat = xp.concat([xp.reshape(arrays[k], (-1,)) for k in keys])
            flat = self.comm.broadcast(flat, root=0)
            at = 0
            for k in keys:
                shape = tuple(arrays[k].shape)
                size = math.prod(shape)
                out[k] = xp.reshape(flat[at:at + size], shape)
                at += size
        return out

    def sync_buffers(self) -> None:
        """Give every rank rank 0's buffers (running statistics), as DDP does."""
        if self.comm.size == 1:
            return
        buffers = dict(self.model.named_buffers())
        if buffers:
            values = self._broadcast(buffers)
            for key, value in values.items():
                _, i, name = key.split(".", 2)
                setattr(self.model.layers[int(i)], name, value)

    # --- data ------------------------------------------------------------------------
    def batches(self, trainer, dl):
        """(x, y, start, n_global) for each global batch: this rank's rows, where they
        start in the global batch and how many rows the global batch has."""
        model, comm = self.model, self.comm
        if hasattr(dl, "batches") and hasattr(dl, "batch_sizes"):
            rank, size = comm.rank, comm.size
            parts = dl.batches(model.backend, model.dtype, shard=(rank, size))
            for (x, y), n in zip(parts, dl.batch_sizes()):
                yield x, y, rank * n // size, n
            return
        # any other iterable: each rank's own batches; counts exchanged each step
        it = trainer._batches(dl)
        while True:
            batch = next(it, None)
            counts = comm.allgather_object(-1 if batch is None else int(batch[0].shape[0]))
            if all(c < 0 for c in counts):
                return
            if any(c < 0 for c in counts):
                ended = [r for r, c in enumerate(counts) if c < 0]
                msg = (f"the loaders of ranks {ended} ran out of batches before the others': "
                       "with comm=, every rank's loader must yield the same number of batches")
                raise ValueError(msg)
            yield batch[0], batch[1], sum(counts[:comm.rank]), sum(counts)

    # --- the step ----------------------------------------------------------------------
    def step(self, x, y, start: int, n_global: int):
        """One data-parallel training step; returns this rank's summed loss, 0-d."""
        model = self.model
        xp = model.backend.xp
        n = x.shape[0]
        with batch_rows(start, n):  # Dropout masks: this rank's rows of the global ones
            out = model(x)
        if n:
            loss = xp.sum(model.criterion(out, y))
            grad = model.criterion.backward()
            if n != n_global:
                grad = grad * (n / n_global)
        else:  # an empty part of a last batch smaller than the ranks: zero gradients
            loss = xp.sum(out)
            grad = xp.zeros_like(out)
        self._backward(grad)
        if self.max_grad_norm is not None:
            clip_grad_norm(model, self.max_grad_norm)
        self.optimizer.step()
        self.steps += 1
        return loss

    def _backward(self, grad) -> None:
        """Sequential.backward, last layer to first, starting each gradient bucket's
        allreduce as soon as its last gradient exists."""
        plan = self._plan or self._make_plan()
        engine = plan.engine
        handles = []
        spent = 0.0
        for i, _ in self.model._backpropagate(grad):
            t0 = time.perf_counter()
            for bucket, a, b, param in plan.puts[i]:
                g = param.grad
                if g is None:
                    engine.zero(bucket.buf, a, b)
                else:
                    engine.put(bucket.buf, a, b, g)
            for bucket in plan.starts[i]:
                handles.append(engine.start(bucket.buf))
            engine.poll(handles)
            spent += time.perf_counter() - t0
        t0 = time.perf_counter()
        engine.wait(handles)
        for bucket in plan.buckets:
            for param, a, b in bucket.params:
                setattr(param.layer, param.grad_name,
                        engine.view(bucket.buf, a, b, param.shape))
        self.comm_s += spent + time.perf_counter() - t0

    def _make_plan(self):
        backend = self.model.backend
        xp = backend.xp
        engine = self.comm._bucket_engine(backend)
        layers = self.model.layers
        plan = _Plan(engine, len(layers))
        open_ = {}
        for i in range(len(layers) - 1, -1, -1):
            for _, param in layers[i].named_parameters():
                value = param.value
                dtype, size = value.dtype, math.prod(value.shape)
                key = str(dtype)
                bucket = open_.get(key)
                if bucket is not None and bucket.n and \
                        (bucket.n + size) * xp.finfo(dtype).bits // 8 > self.bucket_bytes:
                    plan.close(bucket)
                    bucket = None
                if bucket is None:
                    bucket = open_[key] = _Bucket(dtype)
                bucket.params.append((param, bucket.n, bucket.n + size))
                plan.puts[i].append((bucket, bucket.n, bucket.n + size, param))
                bucket.n += size
                bucket.last_layer = i
        for bucket in open_.values():
            if bucket.n:
                plan.close(bucket)
        for bucket in plan.buckets:
            bucket.buf = engine.alloc(bucket.n, bucket.dtype)
        self._plan = plan
        return plan

    # --- reductions ----------------------------------------------------------------------
    def reduce_losses(self, per_batch: list, n: int) -> tuple[list, int]:
        """Per-batch summed losses and the sample count, summed over ranks."""
        total = self.comm.allreduce_host(_host_vector([*per_batch, n]))
        return [float(v) for v in total[:-1]], int(round(float(total[-1])))

    def reduce_sums(self, values: list) -> list:
        """Python numbers summed over ranks, as floats."""
        return [float(v) for v in self.comm.allreduce_host(_host_vector(values))]

    def bucket_sizes(self) -> list[tuple[str, int]]:
        """[(dtype, elements)] of the gradient buckets, in the order they start."""
        plan = self._plan or self._make_plan()
        return [(str(b.dtype), b.n) for b in plan.buckets]


class _Bucket:
    __slots__ = ("dtype", "params", "n", "last_layer", "buf")

    def __init__(self, dtype):
        self.dtype, self.params, self.n, self.last_layer, self.buf = dtype, [], 0, None, None


class _Plan:
    """Which gradients go where (puts[i]: after layer i's backward) and which buckets
    are complete after layer i (starts[i])."""

    def __init__(self, engine, n_layers: int):
        self.engine = engine
        self.buckets = []
        self.puts = [[] for _ in range(n_layers)]
        self.starts = [[] for _ in range(n_layers)]

    def close(self, bucket):
        self.buckets.append(bucket)
        self.starts[bucket.last_layer].append(bucket)


def _mismatch(ref: list, theirs: list, rank: int) -> str:
    ref_d, their_d = {k: (s, d) for k, s, d in ref}, {k: (s, d) for k, s, d in theirs}
    for key in list(ref_d) + list(their_d):
        a, b = ref_d.get(key), their_d.get(key)
        if a != b:
            def show(v):
                return "no such tensor" if v is None else f"shape {v[0]} {v[1]}"
            return (f"DataParallel: rank {rank} holds a different model than rank 0: tensor "
                    f"{key!r} has {show(b)} on rank {rank} but {show(a)} on rank 0; build the "
                    "same model on every rank")
    return f"DataParallel: rank {rank} lists its tensors in another order than rank 0"


def _host_vector(values):
    from .comm import _np

    return _np().asarray(values, dtype="float64")
