"""The test harness's guard against a broken CUDA context (conftest.py): a test after which the
context is lost stops its process, by name, instead of every later test failing on its error."""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch

import conftest

CONFTEST = pathlib.Path(conftest.__file__).resolve()
FAULT = "CUDA error: an illegal memory access was encountered"


def _synchronize_failing(times):
    """A torch.cuda.synchronize that raises FAULT on its first `times` calls."""
    calls = []

    def synchronize():
        calls.append(None)
        if len(calls) <= times:
            raise RuntimeError(FAULT + "\nCUDA kernel errors might be asynchronously reported")
    return synchronize


@pytest.mark.parametrize("failures, lost", [(0, None), (1, None), (2, FAULT)])
def test_a_context_is_lost_where_the_error_stays(monkeypatch, failures, lost):
    monkeypatch.setattr(conftest, "CUDA_READY", True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", _synchronize_failing(failures))
    assert conftest.cuda_context_lost() == lost


def test_no_context_is_lost_before_cuda_starts(monkeypatch):
    monkeypatch.setattr(conftest, "CUDA_READY", True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "synchronize", _synchronize_failing(2))
    assert conftest.cuda_context_lost() is None


@pytest.mark.parametrize("worker", [None, "gw0"])
def test_the_process_stops_after_the_test_that_broke_the_context(tmp_path, worker):
    """A run whose second test breaks the context (a stand-in for a kernel's fault): the first
    and second tests pass, the third does not run, the exit status is 3 and the message names
    the second; as a pytest-xdist worker (PYTEST_XDIST_WORKER) the process exits the same way."""
    (tmp_path / "conftest.py").write_text(textwrap.dedent(f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("fused_rnn_conftest", {str(CONFTEST)!r})
        ours = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ours)
        BROKEN = []
        ours.cuda_context_lost = lambda: {FAULT!r} if BROKEN else None
        pytest_runtest_teardown = ours.pytest_runtest_teardown
    """))
    (tmp_path / "test_inner.py").write_text(textwrap.dedent("""
        import conftest
        def test_first():
            pass
        def test_breaks():
            conftest.BROKEN.append(True)
        def test_after():
            pass
    """))
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_XDIST_WORKER"}
    env["PYTHONPATH"] = os.pathsep.join([str(CONFTEST.parent.parent), env.get("PYTHONPATH", "")])
    if worker:
        env["PYTEST_XDIST_WORKER"] = worker
    done = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider",
                           "-p", "no:xdist", str(tmp_path / "test_inner.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 3, output
    assert "test_first PASSED" in output and "test_breaks PASSED" in output, output
    assert "test_after" not in output.split("test_breaks PASSED", 1)[1], output
    assert f"test_inner.py::test_breaks left the CUDA context broken ({FAULT})" in output, output
