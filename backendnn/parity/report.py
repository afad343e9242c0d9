"""What the parity battery returns: one `CaseResult` per case, gathered in a `Report`."""
from __future__ import annotations

from .._table import render

import math
from dataclasses import asdict, dataclass

PASS, FAIL, SKIP, INFO = "pass", "FAIL", "skip", "info"


@dataclass
class CaseResult:
    """One case of the battery.

    max_abs: max |actual - reference| over every compared array; max_rel: that error
    over max |reference| (normwise); tol: the relative tolerance it was held to.
    The three are None where a case compares no numbers (skipped, informational).
    status: "pass", "FAIL", "skip" (cannot run here, with the reason in `note`) or
    "info" (reported, never fails: timings). seconds: wall time of the case, reference
    and comparison included; a backward row computed with its forward shows 0, the
    forward row holding the time of both.
    """

    component: str
    case: str
    max_abs: float | None
    max_rel: float | None
    tol: float | None
    status: str
    seconds: float
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.status != FAIL


class Report:
    """The battery's results for one backend; `str(report)` is the table the CLI prints.

    Attributes: backend (name), description (version, device), results (list of
    CaseResult), passed (no case failed), failures (the failed CaseResults).
    """

    def __init__(self, backend: str, description: str = "", results=None):
        self.backend, self.description = backend, description
        self.results: list[CaseResult] = list(results or [])

    def __iter__(self):
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[CaseResult]:
        return [r for r in self.results if not r.passed]

    def to_dicts(self) -> list[dict]:
        """The results as plain dicts (for JSON or a DataFrame)."""
        return [dict(asdict(r), backend=self.backend) for r in self.results]

    def summary(self) -> str:
        counts = {s: sum(r.status == s for r in self.results) for s in (PASS, FAIL, SKIP, INFO)}
        verdict = "passed" if self.passed else "FAILED"
        return (f"{self.backend}: {verdict} — {counts[PASS]} pass, {counts[FAIL]} fail, "
                f"{counts[SKIP]} skip, {counts[INFO]} info")

    def format(self, only_failures: bool = False) -> str:
        """The results as an aligned text table (only the failed rows if asked)."""
        rows = [("component", "case", "max abs", "max rel", "tol", "result", "time", "note")]
        for r in self.results:
            if only_failures and r.passed:
                continue
            rows.append((r.component, r.case, _num(r.max_abs), _num(r.max_rel), _num(r.tol),
                         r.status, _time(r.seconds), r.note))
        title = f"parity of backend {self.backend!r} ({self.description}) against numpy float64"
        return "\n".join([title, render(rows), self.summary()])

    def __str__(self):
        return self.format()

    def __repr__(self):
        return f"<Report {self.summary()}>"


def _num(value) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if math.isinf(value) or math.isnan(value):
        return str(value)
    return f"{value:.1e}"


def _time(seconds: float) -> str:
    return f"{seconds * 1e3:.0f}ms" if seconds < 10 else f"{seconds:.1f}s"
