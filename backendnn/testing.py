"""Test helpers for backend authors: run backendnn's parity battery in your own suite.

    # your package's tests, after your backend is registered (entry point or register())
    from backendnn.testing import check_backend

    def test_parity():
        check_backend("mylib")      # AssertionError listing every failed case

With pytest, the plugin in this module adds the fixture `backendnn_parity`: the same
check, but a backend that cannot run on this machine (library missing, no GPU) is
skipped with the reason instead of failing. One test per component reads well:

    # conftest.py
    pytest_plugins = ["backendnn.testing"]

    # test_parity.py
    import pytest
    from backendnn.parity import COMPONENTS

    @pytest.mark.parametrize("component", COMPONENTS)
    def test_parity(backendnn_parity, component):
        backendnn_parity("mylib", components=[component])
"""
from __future__ import annotations

from . import backends, parity

__all__ = ["check_backend"]


def check_backend(name, *, components=None, seed: int = 0, epochs: int = 3) -> parity.Report:
    """Run the parity battery on backend `name` and return its Report.

    Raises AssertionError listing each failed case (component, case, errors, tolerance,
    reason) when any fails; the registry's errors when `name` is unknown or cannot run here.
    """
    report = parity.run(name, components=components, seed=seed, epochs=epochs)
    if not report.passed:
        failed = report.failures
        msg = (f"backend {report.backend!r} failed {len(failed)} of {len(report)} parity "
               f"cases:\n{report.format(only_failures=True)}")
        raise AssertionError(msg)
    return report


try:
    import pytest
except ImportError:  # the plain helper works without pytest
    pytest = None

if pytest is not None:
    __all__ += ["backendnn_parity"]

    @pytest.fixture
    def backendnn_parity():
        """`check_backend`, skipping a backend that cannot run here with the reason."""

        def check(name, **kwargs):
            try:
                backends.get(name)
            except backends.BackendUnavailableError as e:
                pytest.skip(f"backend {name!r} unavailable here: {e}")
            return check_backend(name, **kwargs)

        return check
