"""Checkpoints: safetensors files any reader can open, exact resume on any backend,
atomic writes, and errors that name the tensor and the shapes."""
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import safetensors.numpy
from conftest import BUILTIN, backend_or_skip

import backendnn
from backendnn import (
    MLP,
    Adam,
    BatchNorm1d,
    Dropout,
    SGD,
    CrossEntropy,
    DataLoader,
    Dataset,
    Layer,
    Linear,
    ReLU,
    Sequential,
    Tanh,
    Trainer,
    accuracy,
    backends,
    checkpoint,
)
from backendnn.checkpoint import CheckpointError, load, read_metadata, restore, save

N_IN, N_CLASSES = 6, 3


def data(n=60, seed=7):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_IN))
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1).astype(np.int64)
    return X, y


def make_model(backend, width=8):
    layers = [Linear(N_IN, width, backend=backend), ReLU(backend=backend),
              Linear(width, N_CLASSES, backend=backend)]
    return Sequential(layers, CrossEntropy(backend=backend))


OPTIMIZERS = {
    "sgd_momentum": lambda model: SGD(model, lr=0.1, momentum=0.9),
    "adam": lambda model: backendnn.optim.Adam(model, lr=0.01),
}


def make_trainer(model, optimizer):
    X, y = data()
    train_dl = DataLoader(Dataset(X[:48], y[:48]), batch_size=16, shuffle=True)
    val_dl = DataLoader(Dataset(X[48:], y[48:]), batch_size=16)
    return Trainer(model, OPTIMIZERS[optimizer](model), train_dl, val_dl, metric=accuracy,
                   progress=False)


def weights(model):
    return [model.backend.to_numpy(p.value) for p in model.parameters()]


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dst", BUILTIN)
def test_resume_on_any_backend_equals_training_straight(backend, dst, optimizer, tmp_path):
    """4 epochs, save, load on `dst`, 1 more == 5 epochs straight on `backend`."""
    dst = backend_or_skip(dst)
    if optimizer == "adam" and not hasattr(backendnn.optim, "Adam"):
        pytest.skip("backendnn.optim.Adam is not there yet")
    backendnn.seed(3)
    straight = make_trainer(make_model(backend), optimizer)
    straight.train(5, log_level=0)

    backendnn.seed(3)
    first = make_trainer(make_model(backend), optimizer)
    first.train(4, log_level=0)
    path = tmp_path / "run.safetensors"
    save(first.model, path, trainer=first)

    backendnn.seed(99)   # a fresh process: another RNG state, new objects
    backends.host_rng().random(5)
    model = load(path, backend=dst)
    assert model.backend is dst
    resumed = make_trainer(model, optimizer)
    restore(path, trainer=resumed)
    assert resumed.epoch == 4 and resumed.history == first.history
    resumed.train(1, log_level=0)

    assert [r["epoch"] for r in resumed.history] == [0, 1, 2, 3, 4]
    if dst is backend:
        assert resumed.history == straight.history
        for got, want in zip(weights(resumed.model), weights(straight.model)):
            np.testing.assert_array_equal(got, want)
    else:
        for key in ("loss", "val_loss", "val_metric"):
            np.testing.assert_allclose(resumed.history.column(key),
                                       straight.history.column(key), rtol=1e-5, atol=1e-6)
        for got, want in zip(weights(resumed.model), weights(straight.model)):
            assert got.dtype == want.dtype == np.float32
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dst", ["numpy", "torch"])
def test_resume_with_a_schedule(dst, tmp_path):
    dst = backend_or_skip(dst)

    def trainer(model):
        t = make_trainer(model, "sgd_momentum")
        t.scheduler = backendnn.optim.StepLR(t.optimizer, step_size=2, gamma=0.5)
        return t

    backendnn.seed(3)
    straight = trainer(make_model("numpy"))
    straight.train(5, log_level=0)
    backendnn.seed(3)
    first = trainer(make_model("numpy"))
    first.train(4, log_level=0)
    save(first.model, tmp_path / "run.safetensors", trainer=first)
    backendnn.seed(99)
    resumed = trainer(load(tmp_path / "run.safetensors", backend=dst))
    restore(tmp_path / "run.safetensors", trainer=resumed)
    resumed.train(1, log_level=0)
    assert resumed.history.column("lr") == straight.history.column("lr") == [0.1, 0.1, 0.05, 0.05, 0.025]
    np.testing.assert_allclose(resumed.history.loss, straight.history.loss, rtol=1e-5)
    if dst.name == "numpy":
        assert resumed.history == straight.history


def test_the_rng_state_is_what_makes_the_resume_exact(tmp_path):
    """Without the saved RNG state, the fifth epoch shuffles differently."""
    backendnn.seed(3)
    straight = make_trainer(make_model("numpy"), "sgd_momentum")
    straight.train(5, log_level=0)
    backendnn.seed(3)
    first = make_trainer(make_model("numpy"), "sgd_momentum")
    first.train(4, log_level=0)
    save(first.model, tmp_path / "run.safetensors", trainer=first)
    backendnn.seed(99)
    resumed = make_trainer(load(tmp_path / "run.safetensors"), "sgd_momentum")
    restore(tmp_path / "run.safetensors", trainer=resumed, rng=False)
    resumed.train(1, log_level=0)
    assert resumed.history[-1]["loss"] != straight.history[-1]["loss"]


def test_weights_are_plain_safetensors(backend, tmp_path):
    model = make_model(backend)
    path = tmp_path / "model.safetensors"
    save(model, path)
    tensors = safetensors.numpy.load_file(path)
    assert sorted(tensors) == ["layers.0.bias", "layers.0.weights", "layers.2.bias",
                               "layers.2.weights"]
    for i in (0, 2):
        layer = model.layers[i]
        np.testing.assert_array_equal(tensors[f"layers.{i}.weights"],
                                      backend.to_numpy(layer.weights))
        assert tensors[f"layers.{i}.weights"].dtype == np.float32
    meta = read_metadata(path)
    assert meta["format"] == "backendnn"
    assert [entry["class"] for entry in meta["model"]["layers"]] == ["Linear", "ReLU", "Linear"]
    assert meta["model"]["layers"][0]["config"]["n_inp"] == N_IN


def test_load_rebuilds_the_model_on_each_backend(backend, tmp_path):
    source = make_model("numpy")
    save(source, tmp_path / "m.safetensors")
    state = backends.host_rng().bit_generator.state
    model = load(tmp_path / "m.safetensors", backend=backend)
    assert backends.host_rng().bit_generator.state == state, "load must not draw random numbers"
    assert repr(model).replace(backend.name, "numpy") == repr(source)
    assert all(backend.owns(p.value) for p in model.parameters())
    X, _ = data(5)
    want = source(source.backend.asarray(X, dtype="float32"))
    got = model(backend.asarray(X, dtype="float32"))
    np.testing.assert_allclose(backend.to_numpy(got), want, rtol=1e-5, atol=1e-6)


def test_loaded_weights_are_fresh_writable_arrays(tmp_path):
    model = make_model("numpy")
    save(model, tmp_path / "m.safetensors")
    loaded = load(tmp_path / "m.safetensors", backend="numpy")
    loaded.layers[0].weights -= 1.0
    again = load(tmp_path / "m.safetensors", backend="numpy")
    np.testing.assert_array_equal(again.layers[0].weights, model.layers[0].weights)


def test_float64_model_stays_float64(tmp_path):
    model = MLP([N_IN, 5, 2], "tanh", "mse", dtype="float64")
    save(model, tmp_path / "m.safetensors")
    loaded = load(tmp_path / "m.safetensors")
    assert type(loaded) is MLP and loaded.sizes == [N_IN, 5, 2]
    assert loaded.dtype == "float64"
    assert safetensors.numpy.load_file(tmp_path / "m.safetensors")["layers.0.weights"].dtype == np.float64
    np.testing.assert_array_equal(loaded.layers[0].weights, model.layers[0].weights)
    assert isinstance(loaded.layers[1], Tanh)


def test_linear_initialiser_name_is_kept(tmp_path):
    model = Sequential([Linear(N_IN, 4, init="he_normal"), ReLU(), Linear(4, 2)], CrossEntropy())
    save(model, tmp_path / "m.safetensors")
    loaded = load(tmp_path / "m.safetensors")
    assert loaded.layers[0].init == "he_normal" and loaded.layers[2].init == "default"
    np.testing.assert_array_equal(loaded.layers[0].weights, model.layers[0].weights)


def _layer_cases():
    cases = [("LeakyReLU", lambda b: backendnn.LeakyReLU(0.2, backend=b), 5)]
    optional = {
        "Dropout": lambda b: backendnn.Dropout(0.3, backend=b),
        "BatchNorm1d": lambda b: backendnn.BatchNorm1d(5, eps=1e-3, momentum=0.2, backend=b),
        "LayerNorm": lambda b: backendnn.LayerNorm(5, eps=1e-4, backend=b),
        "Identity": lambda b: backendnn.Identity(backend=b),
    }
    cases += [(name, make, 5) for name, make in optional.items() if hasattr(backendnn, name)]
    return cases


@pytest.mark.parametrize("name, make, width", _layer_cases(), ids=lambda c: c if isinstance(c, str) else "")
def test_every_layer_kind_round_trips_with_its_arguments_and_buffers(name, make, width, tmp_path):
    b = backends.get("numpy")
    layer = make(b)
    model = Sequential([Linear(N_IN, width, backend=b), layer, Linear(width, 2, backend=b)],
                       CrossEntropy(backend=b))
    X, y = data(16)
    x = b.asarray(X, dtype="float32")
    model.criterion(model(x), b.asarray(y % 2))   # moves BatchNorm's running statistics
    save(model, tmp_path / "m.safetensors")
    loaded = load(tmp_path / "m.safetensors", backend=b)
    assert repr(loaded.layers[1]) == repr(layer)
    for key in layer.param_names + layer.buffer_names:
        np.testing.assert_array_equal(getattr(loaded.layers[1], key), getattr(layer, key))
    model.eval()
    loaded.eval()
    np.testing.assert_array_equal(loaded(x), model(x))


class Scale(Layer):
    """y = factor * x (a custom layer that writes its own config())."""

    def __init__(self, factor, **kw):
        super().__init__(**kw)
        self.factor = factor

    def config(self):
        return {"factor": self.factor}

    def forward(self, x):
        return self.factor * x

    def backward(self, grad):
        return self.factor * grad

    def extra_repr(self):
        return f"factor={self.factor}"


class Forgetful(Layer):
    def __init__(self, factor, **kw):
        super().__init__(**kw)
        self.k = factor


class Legacy(Layer):
    """A layer written before config(): its argument is read from self.factor."""

    def __init__(self, factor, **kw):
        super().__init__(**kw)
        self.factor = factor

    def forward(self, x):
        return x

    def backward(self, grad):
        return grad


def test_custom_layer_round_trips(tmp_path):
    model = Sequential([Linear(N_IN, 2), Scale(2.5)], CrossEntropy())
    save(model, tmp_path / "m.safetensors")
    loaded = load(tmp_path / "m.safetensors")
    assert isinstance(loaded.layers[1], Scale) and loaded.layers[1].factor == 2.5


def test_layer_whose_arguments_cannot_be_recorded_is_refused_at_save(tmp_path):
    model = Sequential([Linear(N_IN, 2), Forgetful(2.0)], CrossEntropy())
    with pytest.warns(DeprecationWarning), \
            pytest.raises(TypeError, match=r"`factor` of Forgetful.*define Forgetful\.config\(\)"):
        save(model, tmp_path / "m.safetensors")
    assert not os.listdir(tmp_path)


def test_layer_without_config_still_saves_with_a_deprecation_warning(tmp_path):
    model = Sequential([Linear(N_IN, 2), Legacy(3.0)], CrossEntropy())
    with pytest.warns(DeprecationWarning, match=r"Legacy.*config\(\)"):
        save(model, tmp_path / "m.safetensors")
    assert load(tmp_path / "m.safetensors").layers[1].factor == 3.0


# --- untrusted files ----------------------------------------------------------------------

def _saved(tmp_path, name="m.safetensors"):
    path = tmp_path / name
    save(make_model("numpy"), path)
    return path


def test_a_huge_claimed_layer_is_refused_before_allocating(tmp_path):
    """A 1 KB file claiming Linear(200000, 200000) (160 GB) is refused in milliseconds."""
    path = _saved(tmp_path)
    _rewrite(path, lambda meta: meta.replace('"n_inp":6', '"n_inp":200000')
             .replace('"n_out":8', '"n_out":200000'))
    with pytest.raises(CheckpointError, match=r"layers\.0\.weights.*\(6, 8\).*\(200000, 200000\)"):
        load(path)


@pytest.mark.parametrize("model_json, match", [
    ("[]", "not a dict"),
    ('{"layers": 3}', "'layers' is int"),
    ('{"layers": [7]}', "layer entry is int"),
    ('{"layers": [{"class": "Linear", "config": []}]}', "malformed 'module' or 'config'"),
    ('{"layers": [], "dtype": "int8"}', "'dtype'"),
    ("[" * 5000 + "]" * 5000, "JSON|nested"),
    ("[" * 40 + "]" * 40, "nested deeper"),
])
def test_malformed_model_descriptions_raise_checkpoint_error(tmp_path, model_json, match):
    path = _saved(tmp_path)
    _rewrite(path, lambda meta: model_json)
    with pytest.raises(CheckpointError, match=match):
        load(path)


def test_a_killed_save_leaves_a_tmp_file_the_next_save_removes(tmp_path):
    path = _saved(tmp_path)
    stale = tmp_path / ".m.safetensors.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".other.safetensors.x.tmp"
    other.write_bytes(b"not ours")
    save(make_model("numpy"), path)
    assert not stale.exists() and other.exists()


def _fuzz_inputs():
    """(header length, header JSON, tensor bytes) of a real checkpoint."""
    import struct
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "m.safetensors")
        model = Sequential([Linear(N_IN, 4), BatchNorm1d(4), ReLU(), Dropout(0.1), Linear(4, N_CLASSES)],
                           CrossEntropy())
        save(model, path, optimizer=Adam(model, lr=0.01))
        raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


_HEADER, _BODY = _fuzz_inputs()
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)


def _mutate(data, value):
    """Replace one leaf (or subtree) of decoded JSON, chosen by `data`, with `value`."""
    if not isinstance(value, (dict, list)) or not value or data.draw(st.booleans()):
        return data.draw(_JSON_VALUES)
    key = data.draw(st.sampled_from(sorted(value) if isinstance(value, dict) else range(len(value))))
    value = dict(value) if isinstance(value, dict) else list(value)
    value[key] = _mutate(data, value[key])
    return value


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzzed_headers_and_metadata_raise_only_checkpoint_error(tmp_path_factory, data):
    """Mutated tensor entries (shapes, dtypes, offsets) and metadata (model
    description, optimiser, trainer, RNG): loading and restoring raise nothing but
    CheckpointError."""
    import struct

    header = json.loads(json.dumps(_HEADER))
    target = data.draw(st.sampled_from(["tensor", "metadata", "metadata"]))
    if target == "tensor":
        name = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
        header[name] = _mutate(data, header[name])
    else:
        meta = header["__metadata__"]
        key = data.draw(st.sampled_from(sorted(meta)))
        try:
            decoded = json.loads(meta[key])
        except ValueError:
            decoded = meta[key]
        mutated = _mutate(data, decoded)
        meta[key] = json.dumps(mutated) if data.draw(st.booleans()) else str(mutated)[:200]
    blob = json.dumps(header).encode()
    path = tmp_path_factory.mktemp("fuzz") / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + _BODY)
    model = make_fuzz_model()
    for attempt in (lambda: load(path), lambda: read_metadata(path),
                    lambda: restore(path, model=model, optimizer=Adam(model, lr=0.01))):
        try:
            attempt()
        except CheckpointError:
            pass
    backendnn.seed(0)  # a restore that succeeded moved the host generator


def make_fuzz_model():
    return Sequential([Linear(N_IN, 4), BatchNorm1d(4), ReLU(), Dropout(0.1), Linear(4, N_CLASSES)],
                      CrossEntropy())


def test_unknown_layer_class_names_the_class(tmp_path):
    model = make_model("numpy")
    path = tmp_path / "m.safetensors"
    save(model, path)
    _rewrite(path, lambda meta: meta.replace('"class":"ReLU"', '"class":"Nowhere"'))
    with pytest.raises(CheckpointError, match="'Nowhere'.*import the module"):
        load(path)


# --- atomic writes -----------------------------------------------------------------

def _crash_midway(f, data):
    f.write(data[: len(data) // 2])
    raise OSError("disk full (simulated)")


def test_a_crash_mid_write_keeps_the_previous_checkpoint(monkeypatch, tmp_path):
    path = tmp_path / "run.safetensors"
    good = make_model("numpy")
    save(good, path)
    before = path.read_bytes()
    other = make_model("numpy")
    monkeypatch.setattr(checkpoint, "_write_all", _crash_midway)
    with pytest.raises(OSError, match="simulated"):
        save(other, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["run.safetensors"], "the temporary file is removed"
    monkeypatch.undo()
    np.testing.assert_array_equal(load(path).layers[0].weights, good.layers[0].weights)


def test_a_crash_on_the_first_write_leaves_no_file(monkeypatch, tmp_path):
    monkeypatch.setattr(checkpoint, "_write_all", _crash_midway)
    with pytest.raises(OSError):
        save(make_model("numpy"), tmp_path / "run.safetensors")
    assert os.listdir(tmp_path) == []


def test_an_interrupt_mid_write_keeps_the_previous_checkpoint(monkeypatch, tmp_path):
    path = tmp_path / "run.safetensors"
    save(make_model("numpy"), path)
    before = path.read_bytes()

    def interrupted(f, data):
        f.write(data[:10])
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "_write_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save(make_model("numpy"), path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["run.safetensors"]


def test_overwriting_keeps_the_file_mode(tmp_path):
    path = tmp_path / "run.safetensors"
    save(make_model("numpy"), path)
    os.chmod(path, 0o640)
    save(make_model("numpy"), path)
    assert os.stat(path).st_mode & 0o777 == 0o640


# --- corrupt and mismatched files --------------------------------------------------

@pytest.mark.parametrize("cut", [0.1, 0.5, 0.99])
def test_truncated_file_is_reported_as_corrupt(tmp_path, cut):
    path = tmp_path / "run.safetensors"
    save(make_model("numpy"), path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(CheckpointError, match=r"run\.safetensors.*(corrupt|truncated)"):
        load(path)


def test_garbage_file_is_reported_as_corrupt(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load(path)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "nothing.safetensors")


def _rewrite(path, edit_model_json=None, tensors=None):
    """Rewrite a checkpoint with edited model metadata and/or replaced tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        meta = dict(f.metadata())
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    if edit_model_json is not None:
        meta["model"] = edit_model_json(meta["model"])
    if tensors is not None:
        arrays = tensors(arrays)
    safetensors.numpy.save_file(arrays, str(path), metadata=meta)


def test_tensor_of_the_wrong_shape_names_the_tensor_and_shapes(tmp_path):
    path = tmp_path / "m.safetensors"
    save(make_model("numpy"), path)

    def wrong(arrays):
        arrays["layers.2.weights"] = np.zeros((8, 4), np.float32)
        return arrays

    _rewrite(path, tensors=wrong)
    with pytest.raises(CheckpointError,
                       match=r"'layers\.2\.weights' has shape \(8, 4\).*layer 2 \(Linear\).*\(8, 3\)"):
        load(path)


def test_restore_into_a_model_of_other_width_names_the_tensor_and_shapes(tmp_path):
    path = tmp_path / "m.safetensors"
    save(make_model("numpy", width=8), path)
    other = make_model("numpy", width=5)
    with pytest.raises(CheckpointError,
                       match=r"'layers\.0\.weights' has shape \(6, 8\).*expects weights of shape \(6, 5\)"):
        restore(path, model=other)


def test_restore_into_other_layers_lists_both(tmp_path):
    path = tmp_path / "m.safetensors"
    save(make_model("numpy"), path)
    other = Sequential([Linear(N_IN, 8), Tanh(), Linear(8, N_CLASSES)], CrossEntropy())
    match = r"\['Linear', 'ReLU', 'Linear'\].*\['Linear', 'Tanh', 'Linear'\]"
    with pytest.raises(CheckpointError, match=match):
        restore(path, model=other)


def test_missing_tensor_is_named(tmp_path):
    path = tmp_path / "m.safetensors"
    save(make_model("numpy"), path)

    def drop(arrays):
        del arrays["layers.0.bias"]
        return arrays

    _rewrite(path, tensors=drop)
    match = r"lacks the tensor 'layers\.0\.bias' \(Linear\.bias, shape \(8,\)\)"
    with pytest.raises(CheckpointError, match=match):
        load(path)


def test_broken_metadata_json_is_reported(tmp_path):
    path = tmp_path / "m.safetensors"
    save(make_model("numpy"), path)
    _rewrite(path, lambda meta: meta[:-3])
    with pytest.raises(CheckpointError, match="metadata 'model' is not valid JSON"):
        load(path)


def test_plain_safetensors_weights_load_into_a_model_built_by_hand(tmp_path):
    model = make_model("numpy")
    path = tmp_path / "foreign.safetensors"
    safetensors.numpy.save_file({f"layers.{i}.{n}": getattr(model.layers[i], n) + 1.0
                                 for i in (0, 2) for n in ("weights", "bias")}, str(path))
    match = r"no backendnn model description.*restore\(path, model=model\)"
    with pytest.raises(CheckpointError, match=match):
        load(path)
    fresh = make_model("numpy")
    restore(path, model=fresh)
    np.testing.assert_array_equal(fresh.layers[0].weights, model.layers[0].weights + 1.0)


def test_optimizer_state_goes_only_into_the_same_optimizer_class(tmp_path):
    class OtherSGD(SGD):
        pass

    path = tmp_path / "m.safetensors"
    trainer = make_trainer(make_model("numpy"), "sgd_momentum")
    trainer.train(1, log_level=0)
    save(trainer.model, path, trainer=trainer)
    model = load(path)
    with pytest.raises(CheckpointError, match="state of a SGD optimiser, not of OtherSGD"):
        restore(path, optimizer=OtherSGD(model, lr=0.1, momentum=0.9))
    save(model, path)
    with pytest.raises(CheckpointError, match="holds no optimiser state"):
        restore(path, optimizer=SGD(model, lr=0.1))


def test_a_refused_restore_changes_nothing(backend, tmp_path):
    """Another optimiser or schedule class is refused before any weight or epoch is set."""
    path = tmp_path / "m.safetensors"
    trainer = make_trainer(make_model(backend), "sgd_momentum")
    trainer.scheduler = backendnn.optim.StepLR(trainer.optimizer, step_size=1)
    trainer.train(1, log_level=0)
    save(trainer.model, path, trainer=trainer)
    with_adam = make_trainer(make_model(backend), "adam")
    with_exp = make_trainer(make_model(backend), "sgd_momentum")
    with_exp.scheduler = backendnn.optim.ExponentialLR(with_exp.optimizer, gamma=0.5)
    for other, match in ((with_adam, "state of a SGD optimiser"),
                         (with_exp, "state of a StepLR schedule")):
        before = weights(other.model)
        with pytest.raises(CheckpointError, match=match):
            restore(path, trainer=other)
        assert other.epoch == 0 and other.history == []
        for got, want in zip(weights(other.model), before):
            np.testing.assert_array_equal(got, want)


def test_optimizer_state_is_saved_as_tensors(tmp_path):
    trainer = make_trainer(make_model("numpy"), "sgd_momentum")
    trainer.train(1, log_level=0)
    path = tmp_path / "m.safetensors"
    save(trainer.model, path, trainer=trainer)
    tensors = safetensors.numpy.load_file(path)
    buffers = sorted(k for k in tensors if k.startswith("optimizer."))
    assert len(buffers) == 4
    meta = read_metadata(path)
    assert meta["optimizer"]["class"] == "SGD"
    assert meta["trainer"]["epoch"] == 1 and len(meta["trainer"]["history"]) == 1


def test_extra_metadata_round_trips(tmp_path):
    save(make_model("numpy"), tmp_path / "m.safetensors", extra={"classes": ["a", "b"]})
    assert read_metadata(tmp_path / "m.safetensors")["extra"] == {"classes": ["a", "b"]}


def test_missing_safetensors_says_what_to_install(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "safetensors", None)
    with pytest.raises(ImportError, match=r"pip install 'backendnn\[io\]'"):
        save(make_model("numpy"), tmp_path / "m.safetensors")


# --- the Dropout mask stream (Philox: tests/test_random.py has the rest) -------------

def make_dropout_model(backend):
    layers = [Linear(N_IN, 8, backend=backend), ReLU(backend=backend),
              backendnn.Dropout(0.3, backend=backend), Linear(8, N_CLASSES, backend=backend)]
    return Sequential(layers, CrossEntropy(backend=backend))


def dropout_runs(backend, path):
    """(5 epochs straight, 4 epochs saved to `path`) with Dropout, both from seed 3."""
    backendnn.seed(3)
    straight = make_trainer(make_dropout_model(backend), "sgd_momentum")
    straight.train(5, log_level=0)
    backendnn.seed(3)
    first = make_trainer(make_dropout_model(backend), "sgd_momentum")
    first.train(4, log_level=0)
    save(first.model, path, trainer=first)
    return straight, first


def resume(path, backend):
    backendnn.seed(99)   # a fresh process: other host and device generators
    backends.host_rng().random(5)
    backend.device_bernoulli(0.5, (3, 3))
    resumed = make_trainer(load(path, backend=backend), "sgd_momentum")
    restore(path, trainer=resumed)
    resumed.train(1, log_level=0)
    return resumed


@pytest.fixture(params=BUILTIN)
def device_backend(request):
    """Every backend: each draws its Dropout masks from the Philox stream
    (its state, the cross-backend resume and old files: tests/test_random.py)."""
    return backend_or_skip(request.param)


def test_resume_with_dropout_equals_training_straight(backend, tmp_path):
    """Dropout's masks resume too: from the host generator (NumPy, array-api-strict)
    or from the device generator saved in the file (torch, CuPy)."""
    path = tmp_path / "run.safetensors"
    straight, _ = dropout_runs(backend, path)
    resumed = resume(path, backend)
    assert resumed.history == straight.history
    for got, want in zip(weights(resumed.model), weights(straight.model)):
        np.testing.assert_array_equal(got, want)










# --- device_rng_state / set_device_rng_state round trips ----------------------------

def masks(backend, n=3):
    return [backend.to_numpy(backend.device_bernoulli(0.5, (8, 8))) for _ in range(n)]


def test_device_state_round_trips_through_json(device_backend):
    backend = device_backend
    backendnn.seed(5)
    masks(backend, 2)
    state = json.loads(json.dumps(backend.device_rng_state()))
    want = masks(backend)
    backendnn.seed(6)
    masks(backend, 1)
    assert backend.set_device_rng_state(state) is True
    for got, expected in zip(masks(backend), want):
        np.testing.assert_array_equal(got, expected)




def test_seed_after_a_restore_starts_the_seed_stream_again(device_backend):
    backend = device_backend
    backendnn.seed(5)
    masks(backend, 2)
    state = backend.device_rng_state()
    backendnn.seed(7)
    want = masks(backend)
    backendnn.seed(5)
    backend.set_device_rng_state(state)
    backendnn.seed(7)
    for got, expected in zip(masks(backend), want):
        np.testing.assert_array_equal(got, expected)


def test_restored_seed_is_kept_in_the_next_state(device_backend):
    backend = device_backend
    backendnn.seed(5)
    masks(backend, 1)
    state = backend.device_rng_state()
    backendnn.seed(9)
    backend.set_device_rng_state(state)
    assert backend.device_rng_state()["seed"] == 5


