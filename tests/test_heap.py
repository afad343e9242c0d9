"""The NumPy backend keeps freed memory in the process (glibc's malloc thresholds)."""
import json
import platform
import subprocess
import sys

import pytest

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Four 8 MiB arrays made, written and freed, as a step's activations are: the minor
# page faults of the later rounds, after the NumPy backend is loaded
_PROBE = """
import json, resource, sys
import numpy as np
from backendnn.backends import _heap, get_backend
get_backend("numpy")
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def round_():
    arrays = [np.ones(2 << 20, dtype=np.float32) for _ in range(4)]
    del arrays
round_()
before = faults()
for _ in range(5):
    round_()
print(json.dumps({"kept": _heap.keep_freed_memory(), "faults": (faults() - before) / 5}))
"""


def _probe(**env):
    import os

    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         env={**os.environ, **env}, check=True, timeout=120)
    return json.loads(out.stdout)


def test_switched_off_by_the_environment():
    off = _probe(BACKENDNN_MALLOPT="0")
    assert off["kept"] is False


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt: Linux with glibc only")
def test_no_page_faults_for_a_repeated_step():
    on, off = _probe(BACKENDNN_MALLOPT="1"), _probe(BACKENDNN_MALLOPT="0")
    assert on["kept"] is True
    if off["faults"] < 100:
        pytest.skip(f"this kernel faulted only {off['faults']:.0f} pages a round without "
                    "the thresholds: nothing to compare")
    assert on["faults"] * 10 < off["faults"], (on, off)


def test_set_once_per_process():
    from backendnn.backends import _heap

    first = _heap.keep_freed_memory()
    assert _heap.keep_freed_memory() is first
