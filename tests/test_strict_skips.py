"""The skip policy of tests/conftest.py: under `make test` a missing oracle, browser or scene fails the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import STRICT_ENV

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = """
import pytest


def test_runs():
    assert True


@pytest.mark.skipif(True, reason="needs a CUDA device (hardware)")
def test_cuda_only():
    pass


def test_missing_oracle():
    pytest.skip("official depth-anything-3 package not installed")
"""
CONFTEST = "from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401\n"
MODULE_SKIP = """
import pytest
pytest.importorskip("a_module_that_is_not_installed_anywhere")


def test_never_collected():
    pass
"""


def _run(tmp_path: Path, source: str, strict: bool) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    path = tmp_path / "test_sample.py"
    path.write_text(source)
    env = {k: v for k, v in os.environ.items() if k != STRICT_ENV}
    if strict:
        env[STRICT_ENV] = "1"
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(path)]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_skips_allowed_outside_make_test(tmp_path):
    res = _run(tmp_path, SAMPLE, strict=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 passed, 2 skipped" in res.stdout


def test_a_missing_dependency_fails_under_make_test(tmp_path):
    res = _run(tmp_path, SAMPLE, strict=True)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "1 failed, 1 passed, 1 skipped" in res.stdout
    assert "official depth-anything-3 package not installed" in res.stdout


def test_a_module_skip_fails_under_make_test(tmp_path):
    relaxed = _run(tmp_path, MODULE_SKIP, strict=False)
    assert relaxed.returncode == 5 and "1 skipped" in relaxed.stdout  # 5: nothing else was collected
    res = _run(tmp_path, MODULE_SKIP, strict=True)
    assert res.returncode != 0, res.stdout + res.stderr
    assert "a_module_that_is_not_installed_anywhere" in res.stdout
