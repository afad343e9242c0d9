"""The Philox-4x32-10 stream behind Dropout: the published test vectors, the same
masks and trajectories on every backend, its state in checkpoints, rows drawn on
their own (data-parallel ranks), and nothing read back from the device while drawing.
"""
import json

import numpy as np
import pytest
import safetensors.numpy
from conftest import backend_or_skip, host

import backendnn
from backendnn import (
    SGD,
    CrossEntropy,
    DataLoader,
    Dataset,
    Dropout,
    Dropout2d,
    Linear,
    ReLU,
    Sequential,
    Trainer,
)
from backendnn import backends
from backendnn.backends import _philox
from backendnn.checkpoint import CheckpointError, load, read_metadata, restore, save

CPU = ("numpy", "array_api_strict", "torch")

# Random123 v1.14.0, tests/kat_vectors, the three "philox4x32 10" lines:
# counter (4 words), key (2 words) -> output (4 words)
KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.fixture(params=CPU)
def cpu(request):
    return backend_or_skip(request.param)


# --- the generator ------------------------------------------------------------------

def test_known_answers_in_python_ints():
    for counter, key, expected in KAT:
        assert _philox.philox4x32(counter, key) == expected


@pytest.mark.parametrize("wide", [True, False], ids=["uint64", "int64"])
def test_known_answers_on_every_backend(backend, wide):
    xp = backend.xp
    if wide and not backend.philox_wide:
        pytest.skip(f"{backend.name} has no uint64 shifts: its words are int64")
    dtype = xp.uint64 if wide else xp.int64
    counters = [xp.asarray([kat[0][i] for kat in KAT], dtype=dtype, device=backend.device)
                for i in range(4)]
    for j, (_, key, expected) in enumerate(KAT):
        words = _philox.philox4x32([c[j:j + 1] for c in counters], key, wide=wide)
        assert tuple(int(host(backend, w)[0]) for w in words) == expected


def test_mask_entries_are_the_halves_of_the_words():
    """Entry j of row i: half j % 2 of word (j % 8) // 2 of block (j // 8, i, draw, 0)."""
    seed, draw, p_keep = 0x0123456789ABCDEF, 5, 0.6
    mask = _philox.bernoulli_mask(np, seed, draw, p_keep, (3, 20), np.float32, first_row=4)
    threshold = _philox.keep_threshold(p_keep)
    for i in range(3):
        for j in range(20):
            words = _philox.philox4x32((j // 8, 4 + i, draw, 0), (seed & 0xFFFFFFFF, seed >> 32))
            half = words[(j % 8) // 2] >> (16 * (j % 2)) & 0xFFFF
            assert mask[i, j] == (half < threshold)


def test_thresholds():
    assert _philox.keep_threshold(0.0) == 0 and _philox.keep_threshold(1.0) == 65536
    assert _philox.keep_threshold(0.5) == 32768 and _philox.keep_threshold(0.7) == 45876
    assert _philox.keep_threshold(2**-20) == 1  # never rounded down to 'never kept'


@pytest.mark.parametrize("shape", [(256, 512), (7, 13), (5,), (), (3, 4, 5, 6), (0, 4), (2, 0)])
def test_numpy_fast_path_gives_the_portable_bits(shape):
    for first_row in (0, 9):
        for p_keep in (0.0, 0.3, 0.9, 1.0):
            want = _philox.bernoulli_mask(np, 2**40 + 3, 11, p_keep, shape, np.float32,
                                          first_row=first_row)
            for got in (
                _philox.bernoulli_mask_numpy(np, 2**40 + 3, 11, p_keep, shape, np.float32,
                                             first_row=first_row),
                _philox.bernoulli_mask(np, 2**40 + 3, np.asarray(11), p_keep, shape,
                                       np.float32, first_row=first_row, wide=False),
            ):
                assert got.shape == shape and got.dtype == np.float32
                np.testing.assert_array_equal(got, want)


def test_kept_fraction_and_independence():
    mask = _philox.bernoulli_mask_numpy(np, 1, 0, 0.3, (400, 500), np.float64)
    assert abs(mask.mean() - 0.3) < 0.005
    rows, cols = mask.mean(axis=1), mask.mean(axis=0)
    assert rows.std() < 0.04 and cols.std() < 0.04
    assert abs(np.corrcoef(mask[:, :-1].ravel(), mask[:, 1:].ravel())[0, 1]) < 0.01


# --- masks on every backend ------------------------------------------------------------

@pytest.mark.parametrize("shape", [(64, 30), (5,), (3, 4, 5, 5), (1,), ()])
def test_one_seed_gives_the_same_masks_on_every_backend(cpu, shape):
    def draws(backend):
        backendnn.seed(7)
        return [host(backend, backend.device_bernoulli(p, shape, dt))
                for p, dt in ((0.3, "float32"), (0.5, "float64"), (0.3, "float32"))]

    reference = draws(backends.get("numpy"))
    got = draws(cpu)
    for a, b in zip(got, reference):
        np.testing.assert_array_equal(a, b)
    if shape and shape[0] * int(np.prod(shape[1:])) > 16:
        assert not np.array_equal(got[0], got[2]), "the counter did not advance"
    assert cpu.device_rng_state() == {"generator": "philox4x32-10", "seed": 7, "counter": 3}


def test_rows_of_a_tall_mask_are_drawn_on_their_own(cpu):
    """What a data-parallel rank draws: rows [a, b) with first_row=a."""
    backendnn.seed(2)
    tall = host(cpu, cpu.device_bernoulli(0.4, (10, 3, 7)))
    for a, b in ((0, 4), (4, 7), (7, 10), (5, 5)):
        backendnn.seed(2)
        part = host(cpu, cpu.device_bernoulli(0.4, (b - a, 3, 7), first_row=a))
        np.testing.assert_array_equal(part, tall[a:b])


def test_drawing_reads_nothing_back_from_the_device(monkeypatch):
    """The portable path (torch, CuPy) keeps the counter on the device: no int(),
    bool() or float() of an array while drawing, so a CUDA graph can record it."""
    b = backends.get("array_api_strict")
    b.device_bernoulli(0.5, (4, 4))  # the stream exists
    Array = type(b.xp.asarray(0))

    def refuse(self, *args):
        raise AssertionError("device_bernoulli read a value back from the device")

    for name in ("__int__", "__index__", "__bool__", "__float__"):
        monkeypatch.setattr(Array, name, refuse)
    b.device_bernoulli(0.5, (8, 9))
    Dropout2d(0.5, backend=b)(b.asarray(np.ones((2, 3, 4, 4), np.float32)))
    monkeypatch.undo()
    assert b.device_rng_state()["counter"] == 3


def digits_like(seed=0, n=96, d=12, classes=4):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, (X[:, :classes] + 0.3 * rng.normal(size=(n, classes))).argmax(axis=1)


def dropout_trajectory(backend, epochs=3):
    """(per-epoch losses, every Dropout mask drawn, final weights) from seed 5."""
    backendnn.seed(5)
    model = Sequential([Linear(12, 32, backend=backend), ReLU(backend=backend),
                        Dropout(0.3, backend=backend), Linear(32, 4, backend=backend)],
                       CrossEntropy(backend=backend))
    masks = []
    layer = model.layers[2]
    forward = layer.forward

    def recording(x):
        out = forward(x)
        masks.append(host(backend, layer.mask))
        return out

    layer.forward = recording
    dl = DataLoader(Dataset(*digits_like()), batch_size=16, shuffle=True)
    history = Trainer(model, SGD(model, lr=0.1, momentum=0.9), dl).train(epochs, log_level=0)
    return history.loss, masks, [host(backend, p.value) for p in model.parameters()]


def test_dropout_training_follows_one_trajectory_on_every_backend(cpu):
    losses, masks, params = dropout_trajectory(backends.get("numpy"))
    got_losses, got_masks, got_params = dropout_trajectory(cpu)
    assert len(got_masks) == len(masks) == 18
    for a, b in zip(got_masks, masks):
        np.testing.assert_array_equal(a, b)
    # the same masks; the floats differ by the backends' kernels' rounding only
    np.testing.assert_allclose(got_losses, losses, rtol=1e-5)
    for a, b in zip(got_params, params):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# --- the stream's state ------------------------------------------------------------------

def test_state_round_trips_through_json_and_across_backends(cpu):
    numpy_b = backends.get("numpy")
    backendnn.seed(5)
    numpy_b.device_bernoulli(0.5, (8, 8))
    state = json.loads(json.dumps(numpy_b.device_rng_state()))
    assert state == {"generator": "philox4x32-10", "seed": 5, "counter": 1}
    want = [host(numpy_b, numpy_b.device_bernoulli(0.5, (8, 8))) for _ in range(2)]
    backendnn.seed(6)
    cpu.device_bernoulli(0.5, (3, 3))
    assert cpu.set_device_rng_state(state) is True
    for expected in want:
        np.testing.assert_array_equal(host(cpu, cpu.device_bernoulli(0.5, (8, 8))), expected)
    assert cpu.device_rng_state() == {**state, "counter": 3}
    backendnn.seed(6)  # a seed() call starts that seed's stream again
    assert cpu.device_rng_state() == {**state, "seed": 6, "counter": 0}


def test_setting_the_state_keeps_the_counter_array():
    """A captured step keeps reading the counter array it was recorded with."""
    b = backends.get("numpy")
    _, counter = b.random_stream()
    b.set_device_rng_state({"generator": "philox4x32-10", "seed": 9, "counter": 41})
    backendnn.seed(1)
    assert b.random_stream()[1] is counter and int(counter) == 0


def test_bad_states_are_refused_and_old_device_states_skipped(cpu):
    backendnn.seed(4)
    cpu.device_bernoulli(0.5, (2, 2))
    state = cpu.device_rng_state()
    old = {"backend": "torch", "device": "cpu", "seed": 3, "state": "AAAA"}
    assert cpu.set_device_rng_state(None) is False
    assert cpu.set_device_rng_state(old) is False
    with pytest.raises(TypeError, match="expects a dict"):
        cpu.set_device_rng_state("state")
    with pytest.raises(ValueError, match="generator 'xorwow'"):
        cpu.set_device_rng_state({**state, "generator": "xorwow"})
    for key, value in (("seed", -1), ("seed", 2**64), ("counter", 1.5), ("counter", True)):
        with pytest.raises(ValueError, match=f"'{key}' must be a non-negative int"):
            cpu.set_device_rng_state({**state, key: value})
    assert cpu.device_rng_state() == state, "a refused state changed the stream"


# --- checkpoints ----------------------------------------------------------------------------

def dropout_model(backend):
    return Sequential([Linear(12, 16, backend=backend), ReLU(backend=backend),
                       Dropout(0.3, backend=backend), Linear(16, 4, backend=backend)],
                      CrossEntropy(backend=backend))


def trainer_for(model):
    dl = DataLoader(Dataset(*digits_like(n=48)), batch_size=16, shuffle=True)
    return Trainer(model, SGD(model, lr=0.1, momentum=0.9), dl)


@pytest.mark.parametrize("dst", ["array_api_strict", "torch"])
def test_a_dropout_checkpoint_resumes_its_masks_on_another_backend(dst, tmp_path):
    src, dst = backends.get("numpy"), backend_or_skip(dst)
    path = tmp_path / "run.safetensors"
    backendnn.seed(3)
    straight = trainer_for(dropout_model(src))
    straight.train(3, log_level=0)
    backendnn.seed(3)
    first = trainer_for(dropout_model(src))
    first.train(2, log_level=0)
    save(first.model, path, trainer=first)
    assert read_metadata(path)["device_rng"] == {"generator": "philox4x32-10", "seed": 3,
                                                 "counter": 6}
    backendnn.seed(99)
    dst.device_bernoulli(0.5, (3, 3))
    resumed = trainer_for(load(path, backend=dst))
    restore(path, trainer=resumed)
    resumed.train(1, log_level=0)
    np.testing.assert_allclose(resumed.history.loss, straight.history.loss, rtol=1e-5)


def test_a_checkpoint_with_an_old_device_generator_state_still_loads(tmp_path):
    """Files saved before the Philox stream hold torch's (or CuPy's) generator."""
    b = backends.get("numpy")
    path = tmp_path / "old.safetensors"
    backendnn.seed(3)
    first = trainer_for(dropout_model(b))
    first.train(1, log_level=0)
    save(first.model, path, trainer=first)
    with safetensors.safe_open(str(path), framework="np") as f:
        meta = dict(f.metadata())
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    meta["device_rng"] = json.dumps({"backend": "torch", "device": "cpu", "seed": 3,
                                     "state": "AAAAAA=="})
    safetensors.numpy.save_file(arrays, str(path), metadata=meta)
    backendnn.seed(8)
    resumed = trainer_for(load(path, backend=b))
    restore(path, trainer=resumed)
    assert b.device_rng_state() == {"generator": "philox4x32-10", "seed": 8, "counter": 0}
    resumed.train(1, log_level=0)
    assert np.isfinite(resumed.history[-1]["loss"])


def test_a_malformed_stream_state_is_a_checkpoint_error(tmp_path):
    b = backends.get("numpy")
    path = tmp_path / "m.safetensors"
    save(dropout_model(b), path)
    with safetensors.safe_open(str(path), framework="np") as f:
        meta = dict(f.metadata())
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    meta["device_rng"] = json.dumps({"generator": "philox4x32-10", "seed": 3, "counter": -2})
    safetensors.numpy.save_file(arrays, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="device RNG state does not fit"):
        restore(path, model=load(path, backend=b))
