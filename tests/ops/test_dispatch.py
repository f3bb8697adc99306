"""The dispatch point: backend choice, reasons, explicit-backend errors, env variable, info command."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import fastat
from fastat.ops import _dispatch


def test_use_backend_is_a_setter_and_a_context_manager():
    fastat.ops.use_backend("torch")
    assert fastat.ops.get_backend() == "torch"
    with fastat.ops.use_backend("native"):
        assert fastat.ops.get_backend() == "native"
    assert fastat.ops.get_backend() == "torch"


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="backend must be one of"):
        fastat.ops.use_backend("cudnn")


def test_torch_is_always_available():
    assert "torch" in fastat.ops.available_backends("cpu")
    assert fastat.ops.not_supported_reasons("torch", "zerograd_step", "cpu") == []


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="triton runs on CPU under the interpreter")
def test_explicit_backend_that_cannot_run_raises_with_reasons():
    x = torch.rand(2, 3)
    with fastat.ops.use_backend("triton"), pytest.raises(NotImplementedError, match="TRITON_INTERPRET"):
        fastat.ops.pgd_step(x, x, x, 0.1, 0.1)


def test_auto_on_cpu_prefers_native_when_built():
    impl = _dispatch.resolve("pgd_step", torch.zeros(1))
    if fastat.ops.not_supported_reasons("native", "pgd_step", "cpu"):
        assert impl is fastat.ops.reference.pgd_step
    else:
        assert impl is torch.ops.fastat.pgd_step.default


def test_auto_never_picks_triton_on_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # even when Triton could run on CPU tensors
    for op in fastat.ops.SCHEMAS:
        assert _dispatch.resolve(op, torch.zeros(1)) in (
            _dispatch.implementation("native", op), _dispatch.implementation("torch", op))


def test_fastat_backend_env_is_read_and_checked():
    env = dict(os.environ, FASTAT_BACKEND="torch")
    out = subprocess.run([sys.executable, "-c", "import fastat; print(fastat.ops.get_backend())"], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "torch"
    env["FASTAT_BACKEND"] = "bogus"
    bad = subprocess.run([sys.executable, "-c", "import fastat"], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "FASTAT_BACKEND must be one of" in bad.stderr


def test_info_command_prints_the_table():
    out = subprocess.run([sys.executable, "-m", "fastat.info"], capture_output=True, text=True, check=True)
    for name in ("zerograd_step", "native", "triton", "torch"):
        assert name in out.stdout


def test_compiled_call_follows_the_backend_choice():
    x = torch.rand(3, 8)
    g = torch.randn(3, 8)

    def step(d):
        return fastat.ops.pgd_step(d, g, x, 0.1, 0.05)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    with fastat.ops.use_backend("torch"):
        assert torch.equal(compiled(torch.zeros_like(x)), step(torch.zeros_like(x)))
    if not fastat.ops.not_supported_reasons("native", "pgd_step", "cpu"):
        with fastat.ops.use_backend("native"):
            assert torch.equal(compiled(torch.zeros_like(x)), step(torch.zeros_like(x)))
