#!/usr/bin/env bash
# One-shot check of backendnn on a CUDA machine without internet access, in under
# 8 minutes: versions, a smoke test, the CUDA tests, the parity battery on CuPy and
# a short GPU benchmark. Logs and the benchmark table go into LOGDIR.
#
#   bash benchmarks/gpu_check.sh LOGDIR
#
# Needs: run from the project root or with the project on PYTHONPATH; CuPy for the
# node's CUDA, array-api-compat, safetensors and pytest installed (from a wheel
# folder: see benchmarks/README.md); PyTorch built for CUDA for the torch column.
# PYTHON picks the interpreter (default python3). Exit status: the number of
# failed steps (0: all passed).
set -u
LOGS=${1:?usage: gpu_check.sh LOGDIR}
PY=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
mkdir -p "$LOGS"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
unset CUPY_TF32  # float32 products stay float32 on both sides
failed=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to LOGDIR/NAME.log
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  if timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1; then
    echo "ok     $name ($((SECONDS - start)) s)" | tee -a "$LOGS/summary.txt"
  else
    echo "FAILED $name ($((SECONDS - start)) s, status $?): see $LOGS/$name.log" | tee -a "$LOGS/summary.txt"
    failed=$((failed + 1))
  fi
}

: >"$LOGS/summary.txt"
step versions 60 bash -c "nvidia-smi; $PY -c '
import sys, platform, numpy, cupy, backendnn
print(sys.version); print(platform.platform())
print(\"numpy\", numpy.__version__, \"cupy\", cupy.__version__, \"backendnn\", backendnn.__version__)
print(\"CUDA runtime\", cupy.cuda.runtime.runtimeGetVersion(), \"driver\", cupy.cuda.runtime.driverGetVersion())
print(\"device\", cupy.cuda.Device().compute_capability, cupy.cuda.runtime.getDeviceProperties(0)[\"name\"])
try:
    import torch; print(\"torch\", torch.__version__, \"cuda\", torch.cuda.is_available())
except ImportError:
    print(\"torch: not installed\")
'; $PY -m backendnn backends"

step smoke 120 "$PY" - <<'PY'
import numpy as np
import backendnn
from backendnn import backends
be = backends.get("cupy")
rng = np.random.default_rng(0)
a = be.asarray(rng.normal(size=(256, 784)), dtype="float32")
b = be.asarray(rng.normal(size=(784, 512)), dtype="float32")
eager = be.to_numpy(a @ b)
captured = be.to_numpy(be.capture_step(lambda: be.matmul(a, b))())
assert np.array_equal(eager, captured), "a captured product differs from a @ b"
print("captured product bit-equal to eager: ok")
masks = {}
for name in ("numpy", "cupy"):
    backendnn.seed(7)
    b_ = backends.get(name)
    masks[name] = [b_.to_numpy(b_.device_bernoulli(0.3, (256, 512))) for _ in range(3)]
for m, n in zip(masks["numpy"], masks["cupy"]):
    assert np.array_equal(m, n), "CuPy's Philox masks differ from NumPy's"
print("Philox masks on CuPy bit-equal to NumPy: ok;", be.device_rng_state())
PY

step pytest-cuda 240 "$PY" -m pytest "$ROOT/tests" -q -m cuda -p no:cacheprovider
step parity-cupy 150 "$PY" -m backendnn parity --backend cupy
step benchmark 200 "$PY" "$HERE/gpu.py" --graph --rounds 3 \
  --markdown "$LOGS/gpu.md" --json "$LOGS/gpu.json"
[ -f "$LOGS/gpu.md" ] && cat "$LOGS/gpu.md"
echo "$failed failed step(s); logs in $LOGS" | tee -a "$LOGS/summary.txt"
exit "$failed"
