"""Learning-rate schedules against torch.optim.lr_scheduler's lr sequences, with any
optimiser, chained, resumed, and stepped by the Trainer once per epoch."""
import math

import numpy as np
import pytest

import backendnn
from backendnn import SGD, Adam, Linear, MeanSquaredError, RMSprop, Sequential
from backendnn.optim import (
    ChainedScheduler,
    CosineAnnealingLR,
    ExponentialLR,
    LinearLR,
    LinearWarmup,
    StepLR,
)

EPOCHS = 25
LRS = (0.1, 0.02)  # two parameter groups

CASES = [
    (StepLR, {"step_size": 3, "gamma": 0.5}, "StepLR", {"step_size": 3, "gamma": 0.5}),
    (StepLR, {"step_size": 1}, "StepLR", {"step_size": 1}),
    (ExponentialLR, {"gamma": 0.9}, "ExponentialLR", {"gamma": 0.9}),
    (CosineAnnealingLR, {"T_max": 10}, "CosineAnnealingLR", {"T_max": 10}),
    (CosineAnnealingLR, {"T_max": 7, "eta_min": 0.001},
     "CosineAnnealingLR", {"T_max": 7, "eta_min": 0.001}),
    (LinearLR, {"start_factor": 0.25, "end_factor": 0.9, "total_iters": 4},
     "LinearLR", {"start_factor": 0.25, "end_factor": 0.9, "total_iters": 4}),
    (LinearLR, {}, "LinearLR", {}),
    (LinearWarmup, {"warmup_epochs": 6, "start_factor": 0.1},
     "LinearLR", {"start_factor": 0.1, "end_factor": 1.0, "total_iters": 6}),
]


@pytest.fixture
def torch():
    """The oracle; tests that need it skip where it is missing."""
    return pytest.importorskip("torch")


def case_id(case):
    return case[0].__name__ + "".join(f",{k}={v}" for k, v in case[1].items())


def model_on(backend="numpy"):
    backendnn.seed(0)
    with backendnn.use_backend(backend):
        return Sequential([Linear(3, 2), Linear(2, 1)], MeanSquaredError())


def our_optimizer(cls=SGD, backend="numpy"):
    model = model_on(backend)
    groups = [{"params": model.layers[0], "lr": LRS[0]}, {"params": model.layers[1], "lr": LRS[1]}]
    return cls(groups, lr=LRS[0]) if cls is SGD else cls(groups)


def torch_optimizer(torch):
    groups = [{"params": [torch.zeros(2, requires_grad=True)], "lr": lr} for lr in LRS]
    return torch.optim.SGD(groups, lr=LRS[0])


def lrs(opt):
    return [g["lr"] for g in opt.param_groups]


def assert_close(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15), (ours, theirs)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_lr_sequence_matches_torch(torch, case):
    cls, kw, torch_name, torch_kw = case
    opt, topt = our_optimizer(), torch_optimizer(torch)
    sched = cls(opt, **kw)
    tsched = getattr(torch.optim.lr_scheduler, torch_name)(topt, **torch_kw)
    for _ in range(EPOCHS):
        assert_close(lrs(opt), lrs(topt))
        assert_close(sched.get_last_lr(), tsched.get_last_lr())
        assert_close(sched.get_lr(), tsched.get_last_lr())  # closed form, alone on the optimiser
        topt.step()
        sched.step()
        tsched.step()
    assert sched.last_epoch == tsched.last_epoch == EPOCHS


@pytest.mark.parametrize("cls", [SGD, Adam, RMSprop])
def test_warmup_then_cosine_chain_matches_torch_with_any_optimiser(torch, cls):
    lr_scheduler = torch.optim.lr_scheduler
    opt, topt = our_optimizer(cls), torch_optimizer(torch)
    chain = ChainedScheduler([LinearWarmup(opt, warmup_epochs=4, start_factor=0.2),
                              CosineAnnealingLR(opt, T_max=12, eta_min=1e-4)])
    tchain = lr_scheduler.ChainedScheduler([
        lr_scheduler.LinearLR(topt, start_factor=0.2, total_iters=4),
        lr_scheduler.CosineAnnealingLR(topt, T_max=12, eta_min=1e-4)])
    for _ in range(EPOCHS):
        assert_close(lrs(opt), lrs(topt))
        assert_close(chain.get_last_lr(), tchain.get_last_lr())
        topt.step()
        chain.step()
        tchain.step()


def test_adam_takes_the_scheduled_rate_as_torch_does(torch, rng):
    """Adam + StepLR over 3 epochs of 2 steps: weights as torch's."""
    model = model_on()
    opt = Adam(model, lr=0.05)
    sched = StepLR(opt, step_size=1, gamma=0.5)
    params = model.parameters()
    tensors = [torch.tensor(np.array(p.value), requires_grad=True) for p in params]
    topt = torch.optim.Adam(tensors, lr=0.05, foreach=False)
    tsched = torch.optim.lr_scheduler.StepLR(topt, step_size=1, gamma=0.5)
    for _ in range(3):
        for _ in range(2):
            for p, t in zip(params, tensors):
                g = rng.normal(size=p.shape)
                setattr(p.layer, p.grad_name, np.asarray(g, dtype=np.float32))
                t.grad = torch.tensor(g, dtype=torch.float32)
            opt.step()
            topt.step()
        sched.step()
        tsched.step()
    for p, t in zip(params, tensors):
        np.testing.assert_allclose(p.value, t.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_resume_from_state_dicts_equals_a_straight_run():
    straight = our_optimizer()
    sched = CosineAnnealingLR(straight, T_max=6)
    for _ in range(10):
        sched.step()

    first = our_optimizer()
    first_sched = CosineAnnealingLR(first, T_max=6)
    for _ in range(4):
        first_sched.step()
    opt_state, sched_state = first.state_dict(), first_sched.state_dict()
    assert all(isinstance(v, (int, float, bool, list)) for v in sched_state.values())

    resumed = our_optimizer()
    resumed_sched = CosineAnnealingLR(resumed, T_max=6)  # before load_state_dict, as torch
    resumed.load_state_dict(opt_state)
    resumed_sched.load_state_dict(sched_state)
    for _ in range(6):
        resumed_sched.step()
    assert_close(lrs(resumed), lrs(straight))
    assert resumed_sched.last_epoch == 10
    with pytest.raises(ValueError, match=r"expected the entries .* got \['gamma'\]"):
        resumed_sched.load_state_dict({"gamma": 0.5})


def test_state_dict_of_backendnn_0_1_still_loads():
    """Version 0.1 saved the schedule's attributes, private ones included."""
    opt = our_optimizer()
    sched = StepLR(opt, step_size=2, gamma=0.5)
    old = {"base_lrs": [0.1, 0.2], "last_epoch": 3, "_initial": False,
           "_last_lr": [0.05, 0.1], "step_size": 2, "gamma": 0.5}
    sched.load_state_dict(old)
    assert sched.last_epoch == 3 and sched.get_last_lr() == [0.05, 0.1]
    assert sched.state_dict() == {"last_epoch": 3, "base_lrs": [0.1, 0.2], "last_lr": [0.05, 0.1],
                                  "step_size": 2, "gamma": 0.5}


def test_chained_state_dict_round_trip():
    opt = our_optimizer()
    chain = ChainedScheduler([LinearWarmup(opt, 3), ExponentialLR(opt, gamma=0.8)])
    chain.step()
    state = chain.state_dict()
    other = ChainedScheduler([LinearWarmup(our_optimizer(), 3)])
    with pytest.raises(ValueError, match="holds 2 schedules, this chain 1"):
        other.load_state_dict(state)
    again = our_optimizer()
    resumed = ChainedScheduler([LinearWarmup(again, 3), ExponentialLR(again, gamma=0.8)])
    again.load_state_dict(opt.state_dict())
    resumed.load_state_dict(state)
    chain.step()
    resumed.step()
    assert_close(lrs(again), lrs(opt))


@pytest.mark.parametrize("make, error, match", [
    (lambda o: StepLR(o, step_size=0), ValueError, "StepLR: `step_size` must be a positive int, got 0"),
    (lambda o: StepLR(o, step_size=2.5), TypeError, "`step_size` must be a positive int"),
    (lambda o: StepLR(o, step_size=2, gamma=-0.1), ValueError, r"`gamma` must be a number in \(0, inf\]"),
    (lambda o: ExponentialLR(o, gamma="0.9"), TypeError, "ExponentialLR: `gamma`"),
    (lambda o: CosineAnnealingLR(o, T_max=0), ValueError, "`T_max` must be a positive int"),
    (lambda o: CosineAnnealingLR(o, T_max=5, eta_min=-1.0), ValueError, "`eta_min`"),
    (lambda o: LinearLR(o, start_factor=0.0), ValueError, r"`start_factor` must be a number in \(0, 1\]"),
    (lambda o: LinearLR(o, end_factor=1.5), ValueError, "`end_factor`"),
    (lambda o: LinearWarmup(o, warmup_epochs=0), ValueError, "LinearWarmup: `warmup_epochs`"),
    (lambda o: StepLR(object(), step_size=1), TypeError, "expected an optimiser with `param_groups`"),
    (lambda o: ChainedScheduler([]), TypeError, "non-empty list of schedules"),
    (lambda o: ChainedScheduler([StepLR(o, 1), StepLR(our_optimizer(), 1)]), ValueError,
     "the same optimiser"),
])
def test_bad_options_are_refused(make, error, match):
    opt = our_optimizer()
    with pytest.raises(error, match=match):
        make(opt)


def test_trainer_steps_the_schedule_once_per_epoch(backend, rng):
    X, y = rng.normal(size=(8, 3)), rng.normal(size=(8, 1))
    model = model_on(backend)
    opt = SGD(model, lr=0.1)
    dl = backendnn.DataLoader(backendnn.Dataset(X, y), batch_size=4)
    trainer = backendnn.Trainer(model, opt, dl, scheduler=StepLR(opt, step_size=1, gamma=0.5))
    history = trainer.train(3, log_level=0)
    assert_close(history.column("lr"), [0.1, 0.05, 0.025])
    assert_close([opt.lr], [0.0125])

    opt = SGD(model, lr=0.1)
    chained = [LinearWarmup(opt, 2, start_factor=0.5), ExponentialLR(opt, gamma=0.5)]
    trainer = backendnn.Trainer(model, opt, dl, scheduler=chained)
    assert isinstance(trainer.scheduler, ChainedScheduler)
    assert_close(trainer.train(3, log_level=0).column("lr"), [0.05, 0.0375, 0.025])
    with pytest.raises(TypeError, match="`scheduler` must be a schedule"):
        backendnn.Trainer(model, opt, dl, scheduler="cosine")


def test_numpy_gamma_keeps_the_rate_a_python_float(backend, rng):
    """A NumPy float64 factor must not turn the rate into np.float64, which would make
    SGD's step float64 on NumPy and fail on array-api-strict."""
    model = model_on(backend)
    opt = SGD(model, lr=0.1)
    sched = ExponentialLR(opt, gamma=np.float64(0.5))
    sched.step()
    assert type(opt.lr) is float and all(type(lr) is float for lr in sched.get_last_lr())
    for p in model.parameters():
        setattr(p.layer, p.grad_name, model.backend.asarray(rng.normal(size=p.shape), dtype="float32"))
    opt.step()
    assert all(p.value.dtype == model.backend.dtype("float32") for p in model.parameters())
