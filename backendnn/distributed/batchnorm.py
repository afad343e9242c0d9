"""Synchronised BatchNorm: batch statistics over every rank's part of the batch."""
from __future__ import annotations

import math
import types

from ..layers.batchnorm import BatchNorm1d


def convert_sync_batchnorm(model, comm):
    """Make every BatchNorm layer of `model` (BatchNorm1d and its subclasses) compute
    its training statistics over the global batch, as `torch.nn.SyncBatchNorm`: the
    per-feature sums of the forward pass and the two sums of the backward pass are
    summed over the ranks of `comm` (three small allreduces per layer and step, plus
    one of the sample count). Returns `model`.

    The layers keep their class, so checkpoints load anywhere; on one process (or a
    size-1 communicator) the result equals plain BatchNorm. Without this call every
    rank normalises by its own part of the batch (local statistics, PyTorch's
    default), and the running statistics of rank 0 are the ones kept.

    Every rank must run the same forward passes in training mode (the Trainer does).
    """
    if not hasattr(model, "layers"):
        msg = f"convert_sync_batchnorm: `model` must be a Sequential, got {type(model).__name__}"
        raise TypeError(msg)
    for layer in model.layers:
        if isinstance(layer, BatchNorm1d):
            layer._sync_comm = comm
            layer._moments = types.MethodType(_moments, layer)
            layer._sums = types.MethodType(_sums, layer)
    return model


def is_synchronised(layer) -> bool:
    return getattr(layer, "_sync_comm", None) is not None


def _moments(self, x, axes):
    """(mean, biased variance, count) per feature over every rank's batch: the
    global mean first, then the spread around it (two passes, as one process)."""
    comm, xp = self._sync_comm, self.xp
    m = comm.sum_int(math.prod(x.shape[a] for a in axes))
    if m == 0:
        return xp.sum(x, axis=axes), xp.sum(x, axis=axes), 0
    mean = comm.allreduce(xp.sum(x, axis=axes)) / m
    centred = x - self._per_feature(mean, x)
    var = comm.allreduce(xp.sum(centred * centred, axis=axes)) / m
    return mean, var, m


def _sums(self, sum_g, sum_g_xhat):
    """The backward pass's per-feature sums over every rank's batch, in one call."""
    xp = self.xp
    c = sum_g.shape[0]
    both = self._sync_comm.allreduce(xp.concat([sum_g, sum_g_xhat]))
    return both[:c], both[c:]
