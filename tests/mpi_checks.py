"""Data-parallel checks run under `mpiexec -n N python tests/mpi_checks.py MODE [DIR]`
by tests/test_distributed.py: one launch makes many checks, so the cost stays low.

Each check compares N ranks with one process computed here too (same seed, no
communicator), and prints "CHECK <name> ok" on rank 0; any failure raises, which
aborts the job with the failing rank's error.

Modes:
    checks DIR   every equality check; with 3 ranks also writes DIR/ckpt3.safetensors
                 (2 epochs); with 2 ranks resumes it for a third epoch and writes
                 DIR/resumed2.npz
    fault        rank 1 raises in its second epoch: the job must end at once
"""
import os
import sys

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

import backendnn  # noqa: E402
from backendnn import distributed  # noqa: E402
from backendnn.callbacks import Callback, CSVLogger, ModelCheckpoint  # noqa: E402
from backendnn.checkpoint import restore  # noqa: E402
from backendnn.data import DataLoader, Dataset  # noqa: E402
from backendnn.layers import BatchNorm1d, Dropout, Linear, ReLU  # noqa: E402
from backendnn.losses import CrossEntropy  # noqa: E402
from backendnn.metrics import accuracy  # noqa: E402
from backendnn.model import Sequential  # noqa: E402
from backendnn.optim import SGD, Adam  # noqa: E402
from backendnn.train import Trainer  # noqa: E402

comm = distributed.init(os.environ.get("MPI_CHECKS_ENGINE", "auto"))
RANK, SIZE = comm.rank, comm.size


def say(text):
    if RANK == 0:
        print(text, flush=True)


def data(n, d=12, k=3, seed=5):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (X[:, :k].argmax(axis=1)).astype(np.int64)
    return X, y


def mlp(kind="plain"):
    layers = [Linear(12, 16)]
    if kind == "bn":
        layers.append(BatchNorm1d(16))
    layers.append(ReLU())
    if kind == "dropout":
        layers.append(Dropout(0.3))
    layers += [Linear(16, 3)]
    return Sequential(layers, CrossEntropy())


def run(kind, opt, n, bs, epochs, *, use_comm, sync_bn=False, callbacks=(), val=True):
    backendnn.seed(0)
    model = mlp(kind)
    if sync_bn and use_comm:
        distributed.convert_sync_batchnorm(model, comm)
    optimizer = (SGD(model, lr=0.1, momentum=0.9) if opt == "sgd"
                 else Adam(model, lr=0.01))
    X, y = data(n)
    train = DataLoader(Dataset(X, y), batch_size=bs, shuffle=True)
    val_dl = DataLoader(Dataset(*data(37, seed=9)), batch_size=10) if val else None
    trainer = Trainer(model, optimizer, train, val_dl, metric=accuracy, progress=False,
                      callbacks=list(callbacks), comm=comm if use_comm else None)
    trainer.train(epochs, log_level=0)
    return model, trainer


def state(model):
    return {k: model.backend.to_numpy(v).copy() for k, v in model.state_dict().items()}


def close(a, b, what, rtol=2e-5, atol=2e-6):
    for k in a:
        if not np.allclose(a[k], b[k], rtol=rtol, atol=atol):
            err = np.max(np.abs(a[k] - b[k]))
            raise AssertionError(f"{what}: {k} differs from one process by {err:.3g}")


def same_everywhere(obj, what):
    every = comm.allgather_object(obj)
    if any(o != every[0] for o in every):
        raise AssertionError(f"{what}: not the same on every rank")


def history_close(h1, h2, what):
    for r1, r2 in zip(h1, h2):
        for key in r1:
            if not np.isclose(r1[key], r2[key], rtol=1e-5, atol=1e-6):
                raise AssertionError(f"{what}: history {key} {r1[key]} != one process {r2[key]}")


def equality(kind, opt, n, bs, epochs=2, sync_bn=False):
    one, t1 = run(kind, opt, n, bs, epochs, use_comm=False)
    par, tp = run(kind, opt, n, bs, epochs, use_comm=True, sync_bn=sync_bn)
    close(state(par), state(one), f"{kind}/{opt}")
    history_close(tp.history, t1.history, f"{kind}/{opt}")
    same_everywhere([sorted((k, v.tobytes()) for k, v in state(par).items())], "parameters")
    same_everywhere(list(tp.history), "history")
    return par, tp


def local_bn_reference(n, bs, epochs):
    """One process computing what N ranks with local BatchNorm statistics do: each
    part of a global batch normalised by its own statistics, the gradients summed
    with weights n_part / n_global, rank 0's running statistics kept."""
    backendnn.seed(0)
    model = mlp("bn")
    opt = SGD(model, lr=0.1, momentum=0.9)
    X, y = data(n)
    dl = DataLoader(Dataset(X, y), batch_size=bs, shuffle=True)
    xp = model.backend.xp
    for _ in range(epochs):
        for x, yy in dl:
            m = x.shape[0]
            total, kept = None, None
            for r in range(SIZE):
                lo, hi = r * m // SIZE, (r + 1) * m // SIZE
                model.criterion(model(x[lo:hi]), yy[lo:hi])
                model.backward()
                grads = [xp.asarray(p.grad * ((hi - lo) / m)) for p in model.parameters()]
                total = grads if total is None else [a + b for a, b in zip(total, grads)]
                if r == 0:  # rank 0's running statistics are the ones kept
                    kept = {k: xp.asarray(v, copy=True) for k, v in model.named_buffers()}
            for p, g in zip(model.parameters(), total):
                setattr(p.layer, p.grad_name, g)
            for key, v in kept.items():
                _, i, name = key.split(".", 2)
                setattr(model.layers[int(i)], name, v)
            opt.step()
    return model


def local_bn(n, bs, epochs=2):
    reference = local_bn_reference(n, bs, epochs)
    par, _ = run("bn", "sgd", n, bs, epochs, use_comm=True, val=False)
    close(state(par), state(reference), "local BatchNorm")


def checks(folder):
    # SGD with momentum; 65 = 4 * 16 + 1: a last batch of one leaves ranks empty
    equality("plain", "sgd", 65, 16)
    say("CHECK sgd_momentum_uneven_last_batch ok")
    equality("plain", "adam", 103, 16)  # last batch of 7, parts of 2-4 rows
    say("CHECK adam ok")
    equality("dropout", "sgd", 90, 18)
    say("CHECK dropout ok")
    equality("bn", "sgd", 96, 24, sync_bn=True)
    say("CHECK sync_batchnorm ok")
    local_bn(96, 24)
    say("CHECK local_batchnorm ok")

    # rank-0 writing: the CSV log is written once, by rank 0 only
    csv_path = os.path.join(folder, f"log{SIZE}.csv")
    run("plain", "sgd", 40, 10, 2, use_comm=True, callbacks=[CSVLogger(csv_path)])
    comm.barrier()
    lines = open(csv_path).read().splitlines()
    assert len(lines) == 3, lines
    say("CHECK csv_rank0 ok")

    # bad input: a global batch smaller than the ranks, refused on every rank
    try:
        run("plain", "sgd", 40, SIZE - 1, 1, use_comm=True)
    except ValueError as e:
        assert f"global batch size {SIZE - 1}" in str(e) and f"ranks {SIZE}" in str(e), e
    else:
        raise AssertionError("a batch smaller than the ranks was accepted")
    say("CHECK batch_smaller_than_ranks ok")

    # a model whose shapes differ between ranks is refused, naming rank and tensor
    backendnn.seed(0)
    model = Sequential([Linear(12, 16 + (RANK == SIZE - 1)), ReLU()], CrossEntropy())
    try:
        distributed.DataParallel(model, SGD(model, lr=0.1), comm).setup()
    except ValueError as e:
        assert f"rank {SIZE - 1}" in str(e) and "'layers.0.weights'" in str(e), e
    else:
        raise AssertionError("different shapes were accepted")
    say("CHECK shape_mismatch ok")

    # checkpoints: 3 ranks write, 2 ranks (and one process, in pytest) resume
    ckpt = os.path.join(folder, "ckpt3.safetensors")
    if SIZE == 3:
        run("plain", "adam", 103, 16, 2, use_comm=True,
            callbacks=[ModelCheckpoint(ckpt, monitor="loss", save_best_only=False)])
        say("CHECK checkpoint_written ok")
    elif SIZE == 2 and os.path.exists(ckpt):
        model, trainer = run("plain", "adam", 103, 16, 0, use_comm=True)
        restore(ckpt, trainer=trainer)
        trainer.train(1, log_level=0)
        if RANK == 0:
            np.savez(os.path.join(folder, "resumed2.npz"), **state(model))
        say("CHECK checkpoint_resumed ok")
    # the log: rank 0 alone prints, one line per epoch
    run("plain", "sgd", 40, 10, 0, use_comm=True)[1].train(2, log_level=1)


class Boom(Callback):
    def on_epoch_begin(self, trainer, epoch):
        if epoch == 1 and RANK == 1:
            raise RuntimeError("boom on rank 1")


def fault():
    run("plain", "sgd", 64, 16, 5, use_comm=True, callbacks=[Boom()])
    say("NOT REACHED")


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "checks":
        checks(sys.argv[2])
    elif mode == "fault":
        fault()
    say(f"DONE {SIZE}")
