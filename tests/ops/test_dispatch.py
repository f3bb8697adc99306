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


def test_auto_order_follows_the_measured_preference(monkeypatch):
    assert _dispatch.auto_order("zerograd_step", "cpu") == ("native", "torch")
    monkeypatch.setitem(_dispatch.AUTO_PREFERENCE, "cuda", {"zerograd_step": "triton"})
    assert _dispatch.auto_order("zerograd_step", "cuda") == ("triton", "native", "torch")
    assert _dispatch.auto_order("pgd_step", "cuda") == ("native", "triton", "torch")
    monkeypatch.setitem(_dispatch.AUTO_PREFERENCE, "cpu", {"zerograd_step": "triton"})  # not an option on CPU
    assert _dispatch.auto_order("zerograd_step", "cpu") == ("native", "torch")


def test_auto_preference_file(tmp_path):
    good = tmp_path / "auto.json"
    good.write_text('{"choice": {"zerograd_step": "triton", "pgd_step": "native", "atas_step": "cudnn"}}')
    assert _dispatch._load_auto_preference(str(good)) == {"zerograd_step": "triton", "pgd_step": "native"}
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert _dispatch._load_auto_preference(str(bad)) == {}
    assert _dispatch._load_auto_preference(str(tmp_path / "missing.json")) == {}


def test_bench_results_choose_and_install_auto(tmp_path, monkeypatch):
    import importlib.util
    import json

    from fastat.benchmark import Row, auto_choice, write_results

    def row(op, backend, ms, cols=3072):
        return Row(op, backend, 512, cols, "fp32", ms, ms, ms, 1.0, 1.0, 0.01, 1.0)

    rows = [row("zerograd_step", "torch", 1.0), row("zerograd_step", "native", 0.02),
            row("zerograd_step", "triton", 0.01), row("zerograd_step", "native", 0.2, 150528),
            row("zerograd_step", "triton", 0.5, 150528), row("pgd_step", "native", 0.01),
            row("pgd_step", "triton", 0.02), row("multigrad_step", "native", 0.01)]
    choice = auto_choice(rows)
    assert choice["zerograd_step"]["backend"] == "native"  # geomean: native 0.063 ms, triton 0.071 ms
    assert choice["pgd_step"]["backend"] == "native" and "multigrad_step" not in choice
    env = {"date": "2026-11-23", "device": "NVIDIA H100", "torch": "2.11", "triton": "3.6", "git": "abc"}
    folder = write_results(rows, tmp_path, env)
    assert json.loads((folder / "auto.json").read_text())["choice"] == {"zerograd_step": "native",
                                                                        "pgd_step": "native"}
    spec = importlib.util.spec_from_file_location("make_table", os.path.join(os.path.dirname(__file__), "..", "..",
                                                                             "bench", "make_table.py"))
    make_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_table)
    target = tmp_path / "auto_cuda.json"
    monkeypatch.setattr(make_table, "AUTO_TARGET", target)
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- bench:ops:start -->\nold\n<!-- bench:ops:end -->\ny\n")
    assert make_table.main(str(folder), str(readme)) == 0
    text = readme.read_text()
    assert "old" not in text and "| zerograd_step | native |" in text and "NVIDIA H100" in text
    assert _dispatch._load_auto_preference(str(target)) == {"zerograd_step": "native", "pgd_step": "native"}


@pytest.mark.parametrize("op", ["uniform_init", "sora_step"])
def test_forced_triton_runs_the_random_ops_through_auto(op):
    """The random ops have no Triton kernel by design: forcing triton must not break every random-start method."""
    with fastat.ops.use_backend("triton"):
        impl = _dispatch.resolve(op, torch.zeros(1))
    assert impl in (_dispatch.implementation("native", op), _dispatch.implementation("torch", op))
