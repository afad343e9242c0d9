"""The parity battery (backendnn.parity): every backend passes it, a broken backend is
caught, new layers join it, and backend authors can run it (backendnn.testing, CLI)."""
import types

import numpy as np
import pytest

from backendnn import backends, cli, layers, parity
from backendnn.layers import Layer
from backendnn.parity import COMPONENTS, TOLERANCES, cases
from backendnn.testing import backendnn_parity, check_backend  # noqa: F401 (fixture)


def test_every_backend_passes_the_battery(backend):
    report = parity.run(backend.name)
    assert report.passed, report.format(only_failures=True)
    assert [c for c in COMPONENTS if c not in {r.component for r in report}] == []
    overhead = [r for r in report if r.component == "overhead"]
    assert [r.status for r in overhead] == ["info"] and "us/step" in overhead[0].note


class WrappedNumpy(backends.Backend):
    """The README's dummy backend: NumPy behind a namespace object of its own."""

    name = "wrapped_numpy"
    library = "numpy"

    def _load(self):
        public = {k: getattr(np, k) for k in dir(np) if not k.startswith("_")}
        return types.SimpleNamespace(**public)

    def owns(self, x):
        return isinstance(x, np.ndarray)


class OffExp(WrappedNumpy):
    """exp 1e-3 too large: a sigmoid off by up to 2.5e-4."""

    name = "off_exp"

    def _load(self):
        xp = super()._load()
        xp.exp = lambda x, /: np.exp(x) * np.asarray(1 + 1e-3, dtype=x.dtype)
        return xp


class Float64Exp(WrappedNumpy):
    """exp computed in float64 and returned in float64: float32 models creep to float64."""

    name = "float64_exp"

    def _load(self):
        xp = super()._load()
        xp.exp = lambda x, /: np.exp(x.astype(np.float64))
        return xp


@pytest.fixture
def register():
    """register(BackendClass) for the test's duration."""
    names = []

    def add(cls):
        backends.register(cls.name, cls)
        names.append(cls.name)
        return cls.name

    yield add
    for name in names:
        backends.unregister(name)


def test_a_wrapped_numpy_backend_passes_through_the_testing_helper(register, backendnn_parity):
    name = register(WrappedNumpy)
    report = check_backend(name, components=["layers", "training", "device"])
    assert report.passed and report.backend == name
    assert any(r.case == "model <-> numpy" for r in report)
    backendnn_parity(name, components=["optimizers"])


@pytest.mark.parametrize(
    "broken, expected",
    [
        (OffExp, {"Sigmoid forward", "Sigmoid backward", "CrossEntropy forward",
                  "digits MLP, 3 epochs: losses vs float64"}),
        (Float64Exp, {"float32 stays float32"}),
    ],
    ids=["exp off by 1e-3", "exp returns float64"],
)
def test_the_battery_catches_a_broken_backend(register, broken, expected):
    name = register(broken)
    report = parity.run(name, components=["layers", "losses", "training", "dtype"])
    failed = {r.case for r in report.failures}
    assert not report.passed
    assert expected <= failed, report.format(only_failures=True)
    if broken is OffExp:  # cases that never call exp still pass
        assert not any(case.startswith(("Linear", "ReLU", "Tanh")) for case in failed)
    with pytest.raises(AssertionError, match="failed .* parity cases"):
        check_backend(name, components=["dtype"] if broken is Float64Exp else ["layers"])


def test_the_fixture_skips_a_backend_that_cannot_run_here(backendnn_parity):
    def missing():
        raise backends.BackendNotInstalledError("needs the imaginary library mylib")

    backends.register("imaginary", missing)
    try:
        with pytest.raises(pytest.skip.Exception, match="imaginary library"):
            backendnn_parity("imaginary")
    finally:
        backends.unregister("imaginary")


class Square(Layer):
    """x², a layer the case table does not know."""

    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, grad):
        return 2.0 * self.x * grad


class NeedsWidth(Square):
    def __init__(self, width, **kw):
        super().__init__(**kw)


def test_new_layers_join_the_battery(monkeypatch):
    monkeypatch.setattr(layers, "Square", Square, raising=False)
    monkeypatch.setattr(layers, "NeedsWidth", NeedsWidth, raising=False)
    monkeypatch.setattr(layers, "__all__", [*layers.__all__, "Square", "NeedsWidth"])
    report = parity.run("numpy", components=["layers"])
    rows = {r.case: r for r in report}
    assert rows["Square forward"].status == "pass" and rows["Square backward"].status == "pass"
    assert rows["NeedsWidth"].status == "skip" and "LAYER_CASES" in rows["NeedsWidth"].note


def test_every_table_line_names_an_existing_class_and_a_known_tolerance():
    from backendnn import losses, optim

    for table, module in ((cases.LAYER_CASES, layers), (cases.LOSS_CASES, losses),
                          (cases.OPTIMIZER_CASES, optim)):
        assert [c.name for c in table if not hasattr(module, c.name)] == []
    keys = {c.tol for c in cases.LAYER_CASES + cases.LOSS_CASES} | {"layer"}
    assert keys <= set(TOLERANCES)


def test_run_restores_the_host_generator_and_checks_its_arguments():
    backends.seed(5)
    expected = backends.host_rng().random(3)
    backends.seed(5)
    parity.run("numpy", components=["optimizers"])
    assert (backends.host_rng().random(3) == expected).all()
    with pytest.raises(ValueError, match="unknown components"):
        parity.run("numpy", components=["layer"])
    with pytest.raises(backends.UnknownBackendError):
        parity.run("no_such_backend")


def test_the_cli_prints_a_table_and_exits_nonzero_on_failure(register, capsys):
    assert cli.main(["parity", "--backend", "numpy", "--component", "optimizers"]) == 0
    out = capsys.readouterr().out
    assert "SGD(lr=0.1, momentum=0.9), 3 steps" in out and "parity: numpy passed" in out
    name = register(OffExp)
    assert cli.main(["parity", "--backend", name, "--component", "layers", "--failures-only"]) == 1
    out = capsys.readouterr().out
    assert "Sigmoid forward" in out and "Linear forward" not in out
    assert cli.main(["parity", "--backend", "no_such_backend"]) == 1
    assert "no_such_backend FAILED to load" in capsys.readouterr().out
