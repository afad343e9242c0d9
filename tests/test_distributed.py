"""Data-parallel training (backendnn.distributed): equal to one process on 2 and 3 ranks.

The MPI tests launch `mpiexec -n N python tests/mpi_checks.py ...` (the mpiexec beside
sys.executable, from the `mpich` wheel of `backendnn[mpi]`, else the one on PATH); one
launch makes many checks. The CuPy and NCCL tests need a CUDA device and skip with the
reason elsewhere.
"""
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import backendnn
from backendnn import backends, distributed
from backendnn.data import DataLoader, Dataset

from conftest import cuda

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "mpi_checks.py"
MPIEXEC = Path(sys.executable).with_name("mpiexec")
if not MPIEXEC.exists() and shutil.which("mpiexec"):
    MPIEXEC = Path(shutil.which("mpiexec"))


def _mpi_reason():
    if not MPIEXEC.exists():
        return f"no mpiexec beside {sys.executable} or on PATH: pip install 'backendnn[mpi]'"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed: pip install 'backendnn[mpi]'"
    return None


def launch(n, *args, timeout=60, script=SCRIPT, backend="numpy", engine="auto"):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_"))}
    path = os.pathsep.join(p for p in (str(HERE.parent), env.get("PYTHONPATH")) if p)
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONPATH=path,
               BACKENDNN_BACKEND=backend, MPI_CHECKS_ENGINE=engine)
    cmd = [str(MPIEXEC), "-n", str(n), sys.executable, *map(str, [*([script] if script else []), *args])]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                         cwd=HERE.parent)
    return out, time.perf_counter() - t0


@pytest.fixture(scope="module")
def ranks3(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mpi")
    out, _ = launch(3, "checks", folder)
    return folder, out


CHECKS = ["sgd_momentum_uneven_last_batch", "adam", "dropout", "sync_batchnorm",
          "local_batchnorm", "csv_rank0", "batch_smaller_than_ranks", "shape_mismatch"]


def assert_checks(out, n, extra=()):
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    for name in [*CHECKS, *extra]:
        assert f"CHECK {name} ok" in out.stdout, text[-3000:]
    # rank 0 alone prints: one log line per epoch, not one per rank
    assert out.stdout.count("epoch=  0 |") == 1, out.stdout
    assert f"DONE {n}" in out.stdout


@pytest.mark.mpi
@pytest.mark.skipif(_mpi_reason() is not None, reason=str(_mpi_reason()))
def test_three_ranks_equal_one_process(ranks3):
    """SGD with momentum (a last batch of one: empty parts), Adam (uneven parts),
    Dropout, BatchNorm synchronised and local, rank-0 logs, bad input; a checkpoint."""
    folder, out = ranks3
    assert_checks(out, 3, ["checkpoint_written"])
    assert (folder / "ckpt3.safetensors").exists()


@pytest.mark.mpi
@pytest.mark.skipif(_mpi_reason() is not None, reason=str(_mpi_reason()))
def test_two_ranks_and_resume_3_to_2_to_1(ranks3):
    """Two ranks pass every check and resume the 3-rank checkpoint; one process
    resumes it too; both equal three epochs of one process."""
    folder, _ = ranks3
    out, _ = launch(2, "checks", folder)
    assert_checks(out, 2, ["checkpoint_resumed"])
    from backendnn.checkpoint import restore

    ref_model, _ = _run_alone("adam", 103, 16, 3)
    model, trainer = _run_alone("adam", 103, 16, 0)
    restore(folder / "ckpt3.safetensors", trainer=trainer)
    assert trainer.epoch == 2 and len(trainer.history) == 2
    trainer.train(1, log_level=0)
    resumed2 = np.load(folder / "resumed2.npz")
    for key, value in ref_model.state_dict().items():
        np.testing.assert_allclose(np.asarray(model.state_dict()[key]), value, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(resumed2[key], value, rtol=2e-5, atol=2e-6)


def _run_alone(opt, n, bs, epochs):
    """mpi_checks.run(kind="plain", ...) on one process, without MPI."""
    from backendnn.layers import Linear, ReLU
    from backendnn.losses import CrossEntropy
    from backendnn.metrics import accuracy
    from backendnn.model import Sequential
    from backendnn.optim import SGD, Adam
    from backendnn.train import Trainer

    def data(m, seed):
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(m, 12)).astype(np.float32)
        return X, X[:, :3].argmax(axis=1).astype(np.int64)

    backendnn.seed(0)
    model = Sequential([Linear(12, 16), ReLU(), Linear(16, 3)], CrossEntropy())
    optimizer = SGD(model, lr=0.1, momentum=0.9) if opt == "sgd" else Adam(model, lr=0.01)
    trainer = Trainer(model, optimizer, DataLoader(Dataset(*data(n, 5)), batch_size=bs, shuffle=True),
                      DataLoader(Dataset(*data(37, 9)), batch_size=10), metric=accuracy,
                      progress=False)
    trainer.train(epochs, log_level=0)
    return model, trainer


@pytest.mark.mpi
@pytest.mark.skipif(_mpi_reason() is not None, reason=str(_mpi_reason()))
def test_fault_on_one_rank_ends_the_job_with_its_error():
    out, seconds = launch(2, "fault", timeout=30)
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert "rank 1 of 2 failed with RuntimeError: boom on rank 1" in text, text
    assert "NOT REACHED" not in text
    assert seconds < 15, f"the job took {seconds:.1f} s to end"


@pytest.mark.mpi
@pytest.mark.skipif(_mpi_reason() is not None, reason=str(_mpi_reason()))
def test_cli_under_mpiexec_equals_one_process(tmp_path):
    pytest.importorskip("safetensors")
    rng = np.random.default_rng(3)
    X = rng.normal(size=(150, 6))
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1)
    path = tmp_path / "d.csv"
    np.savetxt(path, np.column_stack([X, y]), delimiter=",", fmt="%.6f")
    flags = ["--data", path, "--epochs", "3", "--batch-size", "20", "--layers", "6,16,3",
             "--optimizer", "adam", "--lr", "0.01"]
    out, _ = launch(2, "-m", "backendnn", "train", *flags, "--save", tmp_path / "two.safetensors",
                    script="")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("final: ") == 1 and out.stdout.count("epoch=  2") == 1, out.stdout
    assert "2 ranks" in out.stdout
    from backendnn import cli
    from backendnn.checkpoint import load

    assert cli.main(["train", *map(str, flags), "--save", str(tmp_path / "one.safetensors")]) == 0
    one, two = load(tmp_path / "one.safetensors"), load(tmp_path / "two.safetensors")
    for key, value in one.state_dict().items():
        np.testing.assert_allclose(np.asarray(two.state_dict()[key]), value, rtol=1e-5, atol=1e-6)


def test_alone_init_is_size_one_and_runs_unchanged(monkeypatch):
    for var in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setitem(distributed._STATE, "comm", None)
    comm = distributed.init()
    assert (comm.rank, comm.size, comm.engine) == (0, 1, "single")
    assert distributed.init() is comm and distributed.is_main()
    x = np.arange(3.0)
    assert comm.allreduce(x) is x and comm.broadcast(x) is x
    assert comm.allgather(x).shape == (1, 3)
    with pytest.raises(ValueError, match="engine"):
        distributed.init("gloo")
    with pytest.raises(TypeError, match="engine"):
        distributed.init(3)


def test_under_a_launcher_without_mpi4py_one_line():
    code = textwrap.dedent("""
        import sys
        sys.modules["mpi4py"] = None
        from backendnn import distributed
        distributed.init()
    """)
    env = {**os.environ, "PMI_SIZE": "2", "PMI_RANK": "0", "PYTHONPATH": str(HERE.parent)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'backendnn[mpi]'" in lines[0], out.stderr


def test_sharded_loader_parts_make_the_global_batches():
    X = np.arange(23.0).reshape(23, 1)
    dl = DataLoader(Dataset(X, np.zeros(23)), batch_size=7, shuffle=True)
    for size in (1, 2, 3):
        backendnn.seed(4)
        whole = [x[:, 0].tolist() for x, _ in dl.batches("numpy")]
        parts = []
        for rank in range(size):
            backendnn.seed(4)
            parts.append([x[:, 0].tolist() for x, _ in dl.batches("numpy", shard=(rank, size))])
        joined = [sum((p[i] for p in parts), []) for i in range(len(whole))]
        assert joined == whole and dl.batch_sizes() == [7, 7, 7, 2]
    with pytest.raises(ValueError, match="smaller than the number of ranks 8"):
        next(dl.batches("numpy", shard=(0, 8)))


def _gpus() -> int:
    return backends.get("cupy").module.cuda.runtime.getDeviceCount()


_NCCL_CHECK = """
import numpy as np
from backendnn import distributed, backends
c = distributed.init("nccl")
assert c.engine == "nccl", c.engine
xp, n, r = backends.get("cupy").module, c.size, c.rank
for dtype in ("float32", "float64", "int64"):
    x = xp.full((5,), r + 1, dtype=dtype)
    assert (xp.asnumpy(c.allreduce(x)) == n * (n + 1) // 2).all(), dtype
    assert (xp.asnumpy(c.broadcast(x, root=n - 1)) == n).all(), dtype
    assert xp.asnumpy(c.allgather(x))[:, 0].tolist() == list(range(1, n + 1)), dtype
print("NCCL ok", r, flush=True)
"""


@pytest.mark.mpi
@cuda
@pytest.mark.skipif(_mpi_reason() is not None, reason=str(_mpi_reason()))
def test_nccl_collectives_with_a_rank_per_gpu():
    """allreduce, broadcast and allgather through NCCL on one rank per GPU (up to 3)."""
    n = min(_gpus(), 3)
    out, _ = launch(n, "-c", _NCCL_CHECK, script=None, backend="cupy", timeout=120)
    assert out.returncode == 0 and out.stdout.count("NCCL ok") == n, out.stdout + out.stderr


@pytest.mark.mpi
@cuda
@pytest.mark.skipif(_mpi_reason() is not None, reason=str(_mpi_reason()))
def test_nccl_refuses_ranks_that_share_a_gpu():
    """More ranks than GPUs on a machine: engine="nccl" stops on every rank and says why."""
    if _gpus() > 2:
        pytest.skip(f"{_gpus()} GPUs here: sharing one would take more than 3 ranks")
    n = _gpus() + 1
    out, _ = launch(n, "-c", "from backendnn import distributed; distributed.init('nccl')",
                    script=None, backend="cupy", timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert f"NCCL needs a GPU of its own for each rank, and {n} ranks share" in text, text


@pytest.mark.mpi
@cuda
@pytest.mark.skipif(_mpi_reason() is not None, reason=str(_mpi_reason()))
def test_two_ranks_on_cupy_equal_one_process(tmp_path):
    """Every equality check on CuPy arrays: through NCCL where each rank has a GPU of its
    own, else through MPI with the arrays staged in host memory ("auto")."""
    out, _ = launch(2, "checks", tmp_path, backend="cupy", timeout=300)
    assert_checks(out, 2)
