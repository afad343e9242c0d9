"""Adam, AdamW, RMSprop (and SGD) step for step against torch.optim on the CPU, fed the
same starting weights and gradients; parameter groups, state_dict, clipping.

Gradients are drawn in seeded NumPy and set on the layers, so the comparison is of the
update rules alone. Tolerances: float64 to ~1e-12 relative, float32 to ~1e-5 (the
formulas are the same, the order of a few roundings differs from torch's kernels).
"""
import math

import numpy as np
import pytest
from conftest import host

import backendnn
from backendnn import SGD, Adam, AdamW, Linear, MeanSquaredError, RMSprop, Sequential, Tanh
from backendnn import backends
from backendnn.optim import clip_grad_norm

TOL = {"float32": {"rtol": 1e-5, "atol": 1e-6}, "float64": {"rtol": 1e-10, "atol": 1e-12}}
DTYPES = ["float32", "float64"]
SCALES = [1.0, 0.1, 2.0, 0.02, 1.0, 0.5]  # gradient size per step; amsgrad's max then matters

CASES = [
    (SGD, {"lr": 0.1}),
    (SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    (SGD, {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.05}),
    (Adam, {}),
    (Adam, {"lr": 0.01, "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.1}),
    (Adam, {"lr": 0.01, "amsgrad": True}),
    (AdamW, {}),
    (AdamW, {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}),
    (RMSprop, {}),
    (RMSprop, {"lr": 0.01, "momentum": 0.9}),
    (RMSprop, {"lr": 0.01, "centered": True}),
    (RMSprop, {"lr": 0.005, "alpha": 0.9, "centered": True, "momentum": 0.5,
               "weight_decay": 0.1, "eps": 1e-6}),
]


def case_id(case):
    cls, kw = case
    return cls.__name__ + "".join(f",{k}={v}" for k, v in kw.items())


@pytest.fixture
def torch():
    """The oracle; tests that need it skip where it is missing."""
    return pytest.importorskip("torch")



def small_model(backend, dtype="float32"):
    """The same starting weights on every call and backend (seed 0)."""
    backendnn.seed(0)
    with backendnn.use_backend(backend):
        return Sequential([Linear(5, 4, dtype=dtype), Tanh(), Linear(4, 3, dtype=dtype)],
                          MeanSquaredError())


def set_grads(backend, model, rng, scale=1.0, dtype="float32"):
    """Seeded gradients on every parameter; returns them as host float64 arrays."""
    grads = []
    for p in model.parameters():
        g = scale * rng.normal(size=p.shape)
        setattr(p.layer, p.grad_name, backend.asarray(g, dtype=dtype))
        grads.append(g)
    return grads


def torch_twin(torch, backend, model, cls, config, dtype):
    tdtype = getattr(torch, dtype)
    tensors = [torch.tensor(host(backend, p.value), dtype=tdtype, requires_grad=True)
               for p in model.parameters()]
    kw = {"foreach": False} if cls is not SGD else {}
    return tensors, getattr(torch.optim, cls.__name__)(tensors, **config, **kw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_torch_step_for_step(torch, backend, rng, case, dtype):
    cls, config = case
    model = small_model(backend, dtype)
    params = model.parameters()
    ours = cls(model, **config)
    tensors, theirs = torch_twin(torch, backend, model, cls, config, dtype)
    for scale in SCALES:
        grads = set_grads(backend, model, rng, scale, dtype)
        given = [p.grad for p in params]
        for t, g in zip(tensors, grads):
            t.grad = torch.tensor(g, dtype=t.dtype)
        ours.step()
        theirs.step()
        for p, t, g, arr in zip(params, tensors, grads, given):
            np.testing.assert_allclose(host(backend, p.value), t.detach().numpy(), **TOL[dtype])
            # the gradient the layer left is read, never written
            np.testing.assert_allclose(host(backend, arr), g.astype(dtype), rtol=0, atol=0)
            assert p.value.dtype == backend.dtype(dtype)
            assert backend.owns(p.value)
    for i, (p, t) in enumerate(zip(params, tensors)):
        reference = theirs.state[t]
        for key, value in ours.state[i].items():
            if key == "step":
                assert value == int(reference["step"]) == len(SCALES)
            else:
                assert value.dtype == backend.dtype(dtype)
                np.testing.assert_allclose(host(backend, value), reference[key].numpy(),
                                           **TOL[dtype])


def test_defaults_are_torchs(torch):
    model = small_model("numpy")
    for cls in (Adam, AdamW, RMSprop):
        reference = getattr(torch.optim, cls.__name__)([torch.zeros(1, requires_grad=True)])
        ours = cls(model)
        for key, value in ours.defaults.items():
            assert reference.defaults[key] == value, (cls.__name__, key)


def test_parameter_groups_match_torch(torch, backend, rng):
    model = small_model(backend)
    first, last = model.layers[0], model.layers[2]
    ours = Adam([{"params": first, "lr": 0.02}, {"params": last, "weight_decay": 0.1}], lr=0.005)
    tensors, _ = torch_twin(torch, backend, model, SGD, {"lr": 0.1}, "float32")
    theirs = torch.optim.Adam([{"params": tensors[:2], "lr": 0.02},
                               {"params": tensors[2:], "weight_decay": 0.1}],
                              lr=0.005, foreach=False)
    assert [g["lr"] for g in ours.param_groups] == [0.02, 0.005]
    assert [g["weight_decay"] for g in ours.param_groups] == [0.0, 0.1]
    for scale in SCALES[:4]:
        for t, g in zip(tensors, set_grads(backend, model, rng, scale)):
            t.grad = torch.tensor(g, dtype=torch.float32)
        ours.step()
        theirs.step()
    for p, t in zip(model.parameters(), tensors):
        np.testing.assert_allclose(host(backend, p.value), t.detach().numpy(), **TOL["float32"])


def test_options_read_from_the_first_group_and_lr_sets_all():
    model = small_model("numpy")
    opt = SGD([{"params": model.layers[0]}, {"params": model.layers[2], "lr": 0.5}], lr=0.1,
              momentum=0.9)
    assert opt.lr == 0.1 and opt.momentum == 0.9 and opt.nesterov is False
    opt.lr = 0.01
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.01]
    assert "groups=2" in repr(opt)
    with pytest.raises(AttributeError, match="no attribute 'betas'"):
        opt.betas  # noqa: B018


# --- state_dict ------------------------------------------------------------------------

def run(backend, cls, config, steps, rng, model=None, opt=None, dtype="float64"):
    model = model if model is not None else small_model(backend, dtype)
    opt = opt if opt is not None else cls(model, **config)
    for scale in steps:
        set_grads(backend, model, rng, scale, dtype)
        opt.step()
    return model, opt


@pytest.mark.parametrize("case", [CASES[1], CASES[5], CASES[7], CASES[11]], ids=case_id)
def test_state_dict_resume_across_backends_equals_a_straight_run(backend, case):
    """3 steps on NumPy, state_dict, load into a fresh optimiser on `backend`, 3 more
    steps = 6 steps straight on NumPy."""
    cls, config = case
    numpy = backends.get("numpy")
    straight, _ = run(numpy, cls, config, SCALES, np.random.default_rng(5))

    rng = np.random.default_rng(5)
    first, opt = run(numpy, cls, config, SCALES[:3], rng)
    saved = opt.state_dict()
    model = small_model(backend, "float64")
    for p, q in zip(model.parameters(), first.parameters()):
        p.value = backend.asarray(host(numpy, q.value), dtype="float64")
    resumed = cls(model, **config)
    resumed.load_state_dict(saved)
    run(backend, cls, config, SCALES[3:], rng, model, resumed)
    for p, q in zip(model.parameters(), straight.parameters()):
        np.testing.assert_allclose(host(backend, p.value), host(numpy, q.value), **TOL["float64"])
    assert resumed.step_count == len(SCALES)


def test_state_dict_layout_is_plain_and_a_snapshot(backend, rng):
    model, opt = run(backend, Adam, {"amsgrad": True}, SCALES[:2], rng)
    saved = opt.state_dict()
    assert saved["optimizer"] == "Adam" and saved["step_count"] == 2
    assert sorted(saved["state"]) == [0, 1, 2, 3]
    entry = saved["state"][0]
    assert set(entry) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert entry["step"] == 2 and type(entry["step"]) is int
    assert backend.owns(entry["exp_avg"]) and tuple(entry["exp_avg"].shape) == (5, 4)
    group = saved["param_groups"][0]
    assert group["params"] == [0, 1, 2, 3]
    assert group["betas"] == (0.9, 0.999) and group["amsgrad"] is True
    before = host(backend, entry["exp_avg"])
    run(backend, Adam, {}, SCALES[:1], rng, model, opt)
    np.testing.assert_array_equal(host(backend, entry["exp_avg"]), before)


def test_load_state_dict_accepts_numpy_arrays_str_keys_and_lists(backend, rng):
    numpy = backends.get("numpy")
    _, opt = run(numpy, Adam, {}, SCALES[:2], rng)
    saved = opt.state_dict()
    as_json = {**saved,
               "state": {str(k): dict(v) for k, v in saved["state"].items()},
               "param_groups": [{**g, "betas": list(g["betas"])} for g in saved["param_groups"]]}
    target = Adam(small_model(backend, "float64"))
    target.load_state_dict(as_json)
    assert target.param_groups[0]["betas"] == (0.9, 0.999)
    state = target.state[1]["exp_avg_sq"]
    assert backend.owns(state) and state.dtype == backend.dtype("float64")
    np.testing.assert_array_equal(host(backend, state), host(numpy, saved["state"][1]["exp_avg_sq"]))


def test_load_state_dict_names_the_parameter_and_shapes():
    _, opt = run(backends.get("numpy"), Adam, {}, SCALES[:1], np.random.default_rng(0))
    saved = opt.state_dict()
    saved["state"][2]["exp_avg"] = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"'exp_avg' of parameter 2 Param\(Linear.weights, "
                                         r"shape=\(4, 3\)\) has shape \(3, 4\), expected \(4, 3\)"):
        Adam(small_model("numpy", "float64")).load_state_dict(saved)


@pytest.mark.parametrize("change, match", [
    (lambda s: s.update(optimizer="RMSprop"), "build a RMSprop"),
    (lambda s: s["param_groups"][0]["params"].pop(), r"sizes \[3\], this optimiser \[4\]"),
    (lambda s: s["state"][0].pop("exp_avg_sq"), r"lacks \['exp_avg_sq'\]"),
    (lambda s: s["param_groups"][0].update(lr=-1.0), "`lr` must be a number >= 0"),
    (lambda s: s["param_groups"][0].update(momentum=0.9), r"unknown options \['momentum'\]"),
    (lambda s: s.pop("state"), "expected a dict with 'state' and 'param_groups'"),
])
def test_load_state_dict_refuses_what_does_not_fit(change, match):
    _, opt = run(backends.get("numpy"), Adam, {}, SCALES[:1], np.random.default_rng(0))
    saved = opt.state_dict()
    change(saved)
    target = Adam(small_model("numpy", "float64"))
    with pytest.raises(ValueError, match=match):
        target.load_state_dict(saved)
    assert target.step_count == 0 and not any(target.state)


def test_state_follows_the_model_to_another_backend(backend):
    """model.to(backend) mid-training: step() moves the state itself; the run equals
    one that stayed on NumPy."""
    numpy = backends.get("numpy")
    straight, _ = run(numpy, RMSprop, CASES[11][1], SCALES, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    model, opt = run(numpy, RMSprop, CASES[11][1], SCALES[:3], rng)
    model.to(backend)
    run(backend, RMSprop, {}, SCALES[3:], rng, model, opt)
    assert all(backend.owns(v) for s in opt.state for v in s.values() if not isinstance(v, int))
    for p, q in zip(model.parameters(), straight.parameters()):
        np.testing.assert_allclose(host(backend, p.value), host(numpy, q.value), **TOL["float64"])


def test_to_moves_the_state(backend, rng):
    _, opt = run(backends.get("numpy"), AdamW, {}, SCALES[:1], rng)
    assert opt.to(backend, "float32") is opt
    for state in opt.state:
        for key in ("exp_avg", "exp_avg_sq"):
            assert backend.owns(state[key]) and state[key].dtype == backend.dtype("float32")


# --- in place where the backend allows it ------------------------------------------------

def test_numpy_updates_parameters_and_state_in_place(rng):
    numpy = backends.get("numpy")
    for cls, config in CASES:
        model = small_model(numpy)
        opt = cls(model, **config)
        run(numpy, cls, config, SCALES[:1], rng, model, opt)
        ids = [id(p.value) for p in model.parameters()]
        state_ids = [{k: id(v) for k, v in s.items() if k != "step" and k != "max_exp_avg_sq"}
                     for s in opt.state]
        run(numpy, cls, config, SCALES[1:3], rng, model, opt)
        assert ids == [id(p.value) for p in model.parameters()], case_id((cls, config))
        assert state_ids == [{k: id(s[k]) for k in ids_} for s, ids_ in zip(opt.state, state_ids)]


def test_a_backend_without_in_place_writes_gets_new_arrays(rng):
    """backend.inplace = False: no array is written; results equal the in-place run."""
    from backendnn.backends.numpy import NumpyBackend

    class Copying(NumpyBackend):
        name = "numpy_copying"
        inplace = False

    backends.register("numpy_copying", Copying)
    try:
        copying, numpy = backends.get("numpy_copying"), backends.get("numpy")
        for cls, config in CASES:
            reference, _ = run(numpy, cls, config, SCALES[:3], np.random.default_rng(1))
            model = small_model(copying, "float64")
            opt = cls(model, **config)
            grng = np.random.default_rng(1)
            for scale in SCALES[:3]:
                grads = set_grads(copying, model, grng, scale, "float64")
                before = [p.value for p in model.parameters()]
                copies = [np.array(b, copy=True) for b in before]
                old_state = [{k: (v, np.array(v, copy=True)) for k, v in s.items() if k != "step"}
                             for s in opt.state]
                opt.step()
                for b, c in zip(before, copies):
                    np.testing.assert_array_equal(b, c)
                for s in old_state:
                    for v, c in s.values():
                        np.testing.assert_array_equal(v, c)
                for p, g in zip(model.parameters(), grads):
                    np.testing.assert_array_equal(p.grad, g)
            for p, q in zip(model.parameters(), reference.parameters()):
                np.testing.assert_allclose(p.value, q.value, rtol=1e-14, atol=1e-15)
    finally:
        backends.unregister("numpy_copying")


# --- hyperparameters ------------------------------------------------------------------

@pytest.mark.parametrize("cls, kwargs, error, match", [
    (Adam, {"lr": -1e-3}, ValueError, r"Adam: `lr` must be a number >= 0.0, got -0.001"),
    (Adam, {"betas": (1.0, 0.999)}, ValueError, r"`betas\[0\]` must be a number >= 0.0 and < 1.0"),
    (Adam, {"betas": (0.9, -0.1)}, ValueError, r"`betas\[1\]`"),
    (Adam, {"betas": 0.9}, ValueError, r"`betas` must be a pair"),
    (Adam, {"eps": -1e-8}, ValueError, "`eps`"),
    (Adam, {"amsgrad": 1}, TypeError, "`amsgrad` must be True or False"),
    (AdamW, {"weight_decay": -0.01}, ValueError, "AdamW: `weight_decay`"),
    (RMSprop, {"alpha": 1.5}, ValueError, "`alpha` must be a number >= 0.0 and <= 1.0"),
    (RMSprop, {"momentum": -0.9}, ValueError, "`momentum`"),
    (RMSprop, {"centered": "yes"}, TypeError, "`centered` must be True or False"),
    (RMSprop, {"lr": "0.01"}, ValueError, "`lr`"),
    (SGD, {"lr": 0.1, "nesterov": True}, ValueError, "nesterov=True needs momentum > 0"),
])
def test_bad_hyperparameters_are_refused_with_the_name(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(small_model("numpy"), **kwargs)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_numpy_scalar_options_do_not_make_float64(backend, rng, case):
    """lr=np.float64(...) from a NumPy grid is a Python float inside: it neither
    promotes the float32 state (NumPy) nor breaks array-api-strict."""
    cls, config = case
    config = {k: (np.float64(v) if isinstance(v, float) else v) for k, v in config.items()}
    model = small_model(backend)
    opt = cls(model, **config)
    opt.lr = np.float32(0.01)
    for group in opt.param_groups:
        for key, value in group.items():
            if key != "params":
                assert type(value) in (bool, int, float, tuple), (key, type(value))
    for scale in SCALES[:2]:
        set_grads(backend, model, rng, scale)
        opt.step()
    for p, state in zip(model.parameters(), opt.state):
        assert p.value.dtype == backend.dtype("float32")
        for key, value in state.items():
            if key != "step":
                assert value.dtype == backend.dtype("float32"), key
    norm = clip_grad_norm(model, np.float64(1e-3))
    assert norm.dtype == backend.dtype("float32")
    assert all(p.grad.dtype == backend.dtype("float32") for p in model.parameters())


def test_bad_parameter_groups_are_refused():
    model = small_model("numpy")
    first, last = model.layers[0], model.layers[2]
    with pytest.raises(ValueError, match=r"Adam \(parameter group 1\): `lr` must be"):
        Adam([{"params": first}, {"params": last, "lr": -1.0}])
    with pytest.raises(ValueError, match=r"unknown options \['lr_'\]; valid options"):
        Adam([{"params": first, "lr_": 0.1}])
    with pytest.raises(ValueError, match="no 'params' entry"):
        Adam([{"lr": 0.1}])
    with pytest.raises(ValueError, match="appears in more than one parameter group"):
        Adam([{"params": model}, {"params": last}])
    with pytest.raises(TypeError, match="holds a ndarray, not a backendnn Param"):
        Adam([first.weights])
    with pytest.raises(TypeError, match="mix of parameter-group dicts and Params"):
        Adam([{"params": first}, *last.parameters()])
    with pytest.raises(ValueError, match="no parameters to optimise"):
        RMSprop([])


def test_step_without_gradients_is_refused():
    with pytest.raises(RuntimeError, match="call model.backward"):
        Adam(small_model("numpy")).step()


# --- gradient clipping -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_clip_grad_norm_matches_torch(torch, backend, rng, dtype, max_norm, norm_type):
    model = small_model(backend, dtype)
    grads = set_grads(backend, model, rng, 1.0, dtype)
    tensors = [torch.zeros(g.shape, dtype=getattr(torch, dtype), requires_grad=True) for g in grads]
    for t, g in zip(tensors, grads):
        t.grad = torch.tensor(g, dtype=t.dtype)
    total = clip_grad_norm(model, max_norm, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(tensors, max_norm, norm_type, foreach=False)
    assert backend.owns(total) and total.ndim == 0 and total.dtype == backend.dtype(dtype)
    np.testing.assert_allclose(host(backend, total), expected.numpy(), **TOL[dtype])
    for p, t in zip(model.parameters(), tensors):
        assert p.grad.dtype == backend.dtype(dtype)
        np.testing.assert_allclose(host(backend, p.grad), t.grad.numpy(), **TOL[dtype])


def test_clip_grad_norm_skips_missing_gradients_and_checks_its_arguments(backend, rng):
    model = small_model(backend)
    zero = clip_grad_norm(model, 1.0)
    assert backend.owns(zero) and float(host(backend, zero)) == 0.0
    set_grads(backend, model, rng)
    model.layers[2].grad_w = None
    clip_grad_norm(model, 1e-3)
    norms = [np.linalg.norm(host(backend, p.grad)) for p in model.parameters() if p.grad is not None]
    assert len(norms) == 3 and math.isclose(math.hypot(*norms), 1e-3, rel_tol=1e-3)
    with pytest.raises(ValueError, match="`max_norm` must be a number > 0"):
        clip_grad_norm(model, 0.0)
    with pytest.raises(ValueError, match="`norm_type`"):
        clip_grad_norm(model, 1.0, norm_type=-2)
    with pytest.raises(TypeError, match="must be a model, a layer or backendnn Params"):
        clip_grad_norm([model.layers[0].weights], 1.0)


def test_trainer_clips_before_each_step(backend, rng):
    """max_grad_norm=1e-3 with lr=1: no step moves the weights more than 1e-3."""
    X, y = rng.normal(size=(12, 5)), rng.normal(size=(12, 3))
    model = small_model(backend)
    before = np.concatenate([host(backend, p.value).ravel() for p in model.parameters()])
    dl = backendnn.DataLoader(backendnn.Dataset(X, y), batch_size=4)
    backendnn.Trainer(model, SGD(model, lr=1.0), dl, max_grad_norm=1e-3).train(1, log_level=0)
    after = np.concatenate([host(backend, p.value).ravel() for p in model.parameters()])
    assert 0 < np.linalg.norm(after - before) <= 3 * 1e-3 * (1 + 1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fused_updates_equal_the_array_code_bit_for_bit(case, dtype, monkeypatch):
    """NumPy's one-pass SGD, Adam and RMSprop kernels (Numba) do the optimiser's
    operations in its order and dtype: the same bits as the array code, step for step."""
    from backendnn.backends import _numba
    from backendnn.backends import numpy as numpy_module

    if _numba.kernels() is None:
        pytest.skip("numba is not installed (pip install numba)")
    monkeypatch.setattr(numpy_module, "_FUSED_SGD_MIN", 0)  # plain SGD too, on small arrays
    cls, config = case
    numpy = backends.get("numpy")
    kernel = {SGD: "fused_sgd", RMSprop: "fused_rmsprop"}.get(cls, "fused_adam")
    taken, method = [], getattr(type(numpy), kernel)

    def spy(*args, **kw):
        taken.append(method(*args, **kw))
        return taken[-1]

    monkeypatch.setattr(type(numpy), kernel, spy)
    fused, fused_opt = run(numpy, cls, config, SCALES, np.random.default_rng(7), dtype=dtype)
    assert taken and all(taken)  # every update went through the kernel
    monkeypatch.setattr(_numba, "_KERNELS", False)
    plain, plain_opt = run(numpy, cls, config, SCALES, np.random.default_rng(7), dtype=dtype)
    for f, p in zip(fused.parameters(), plain.parameters()):
        np.testing.assert_array_equal(f.value, p.value)
    for f, p in zip(fused_opt.state, plain_opt.state):
        assert f.keys() == p.keys()
        for key in f:
            np.testing.assert_array_equal(f[key], p[key], err_msg=key)
