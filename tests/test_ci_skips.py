"""Under CI a skipped test fails the run (tests/conftest.py): pytest on a tiny test file, in
its own process, with and without CI=true."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The hooks of tests/conftest.py, and nothing else of this suite.
CONFTEST = """
from tests.conftest import (  # noqa: F401
    pytest_runtest_logreport, pytest_sessionfinish, pytest_sessionstart, pytest_terminal_summary)
"""

TESTS = """
import pytest

@pytest.fixture
def tool():
    pytest.skip("mytool is not installed")

def test_runs():
    pass

def test_needs_a_tool(tool):
    pass

@pytest.mark.skipif(True, reason="needs a GPU")
def test_marked():
    pass

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_known_bug():
    assert False
"""

ONLY_PASSING = """
def test_runs():
    pass

def test_runs_too():
    pass
"""


def _pytest(directory: Path, ci: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(directory)],
                          cwd=directory, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_tiny.py").write_text(TESTS)
    return tmp_path


def test_a_skip_fails_the_run_under_ci_naming_the_test_and_the_reason(suite):
    result = _pytest(suite, "true")
    out = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, out
    assert "1 passed, 2 skipped, 1 xfailed" in out, out
    assert "skipped tests fail the run under CI" in out
    assert "SKIPPED test_tiny.py::test_needs_a_tool: mytool is not installed" in out
    assert "SKIPPED test_tiny.py::test_marked: needs a GPU" in out
    assert "test_known_bug" not in out.split("skipped tests fail the run under CI")[1]  # an xfail is no skip
    assert "2 test(s) skipped with CI=true" in out


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_without_ci_a_skip_passes(suite, ci):
    result = _pytest(suite, ci)
    out = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.OK, out
    assert "1 passed, 2 skipped, 1 xfailed" in out and "fail the run under CI" not in out, out


def test_under_ci_a_run_without_skips_passes(tmp_path):
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_tiny.py").write_text(ONLY_PASSING)
    result = _pytest(tmp_path, "true")
    assert result.returncode == pytest.ExitCode.OK, result.stdout + result.stderr


def test_under_ci_a_failure_keeps_its_own_exit_status(suite):
    (suite / "test_failing.py").write_text("def test_fails():\n    assert False\n")
    result = _pytest(suite, "true")
    out = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, out
    assert "1 failed" in out and "SKIPPED test_tiny.py::test_needs_a_tool" in out, out
