"""Suite-wide policy: under `make test` (which sets DA3_SPLAT_STRICT_SKIPS=1) a skipped test is a failure.

A parity module skipped because the oracle failed to import, a browser test without Chromium or a test without
the mydesk scene would otherwise let CI go green without checking anything. The only skips allowed there are
the ones that need hardware this machine cannot have (a CUDA device): their reason starts with one of
ALLOWED_SKIP_PREFIXES. Running pytest directly (without the variable) keeps ordinary skips for development.
"""

from __future__ import annotations

import os

import pytest

STRICT_ENV = "DA3_SPLAT_STRICT_SKIPS"
ALLOWED_SKIP_PREFIXES = ("needs a CUDA device",)


def _strict() -> bool:
    return os.environ.get(STRICT_ENV, "") not in ("", "0")


def _skip_reason(report) -> str:
    # longrepr of a skip is (path, line, "Skipped: <reason>")
    if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    return str(report.longrepr)


def _forbidden(report) -> bool:
    if not (_strict() and report.skipped) or hasattr(report, "wasxfail"):
        return False
    return not _skip_reason(report).startswith(ALLOWED_SKIP_PREFIXES)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if _forbidden(report):
        reason = _skip_reason(report)
        report.outcome = "failed"
        report.longrepr = f"skipped under {STRICT_ENV}=1 (make test), which allows no skip of this kind: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if _forbidden(report):  # a module-level importorskip / skip
        reason = _skip_reason(report)
        report.outcome = "failed"
        report.longrepr = f"module skipped under {STRICT_ENV}=1 (make test): {reason}"
