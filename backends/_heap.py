"""Keep freed memory in the process for the next training step (glibc's malloc).

A training step allocates and frees the same large arrays every time: activations,
their gradients, the convolutions' outputs. glibc serves an array above its mmap
threshold with fresh pages from the kernel, and gives the heap's free top back to the
kernel once it exceeds the trim threshold. The next step then faults every page in
again: 2,500 page faults a step on the CIFAR-sized CNN of `benchmarks/cpu.py`, about
a sixth of its time. PyTorch's CUDA allocator keeps freed blocks for the same reason.

`keep_freed_memory` raises both thresholds once, when the NumPy backend loads: arrays
up to 32 MiB (glibc's largest mmap threshold) come from the heap, and up to 1 GiB of
freed heap stays in the process. The process's peak memory is unchanged; between
steps it keeps what the step used. Elsewhere than glibc, or with the environment
variable BACKENDNN_MALLOPT=0, nothing changes.
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30
_DONE = None  # the first call's answer


def keep_freed_memory() -> bool:
    """Set glibc's thresholds once per process; True where they are set."""
    global _DONE
    if _DONE is None:
        _DONE = _set_thresholds()
    return _DONE


def _set_thresholds() -> bool:
    if os.environ.get("BACKENDNN_MALLOPT", "1") == "0":
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; the mmap threshold first, as glibc fixes the
    # trim threshold's dynamic value once either is set
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
