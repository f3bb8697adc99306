"""`fastat bench ops`: one-line errors before anything runs, a line for each requested backend that cannot run here,
and the files it writes (CSV, JSON, Markdown and the speed-up PNG)."""

from __future__ import annotations

import json

import pytest

from fastat import benchmark
from fastat.cli import main
from fastat.ops import _dispatch

TINY = ["bench", "ops", "--device", "cpu", "--op", "pgd_step", "--shape", "4x8", "--grad-dtype", "fp32"]


@pytest.fixture()
def no_run(monkeypatch):
    monkeypatch.setattr(benchmark, "run", lambda *a, **k: pytest.fail("benchmark ran despite bad input"))


@pytest.mark.parametrize("extra, message", [
    (["--backend", "nope"], "--backend: unknown backend 'nope'"),
    (["--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
    (["--device", "meta"], "--device must be cpu, cuda or cuda:N"),
    (["--shape", "0x10"], "--shape must have rows and columns >= 1"),
    (["--shape", "5x"], "--shape must look like 512x3072"),
    (["--reps", "0"], "--reps must be >= 1"),
    (["--op", "nope"], "--op: unknown op 'nope'"),
])
def test_bad_input_one_line(capsys, no_run, extra, message):
    assert main([*TINY, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fastat bench ops: error: ") and message in err


def test_cuda_without_gpu_is_one_line(capsys, no_run, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main([*TINY, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA device is available" in err


def _triton_unavailable(monkeypatch, ops=None):
    real = _dispatch.not_supported_reasons

    def reasons(backend, op, device, dtypes=()):
        """triton cannot run ``ops`` (all when None) and can run the others; the other backends as they are."""
        if backend == "triton":
            return ["tensors are on cpu and TRITON_INTERPRET=1 is not set"] if ops is None or op in ops else []
        return real(backend, op, device, dtypes)

    monkeypatch.setattr(_dispatch, "not_supported_reasons", reasons)


def test_unavailable_backend_says_skipped(tmp_path, capsys, monkeypatch):
    _triton_unavailable(monkeypatch)
    assert main([*TINY, "--backend", "triton", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if "skipping" in line]
    assert skipped == ["fastat bench ops: skipping backend 'triton' on cpu: tensors are on cpu and TRITON_INTERPRET=1 "
                       "is not set"]
    (folder,) = tmp_path.iterdir()
    rows = json.loads((folder / "ops.json").read_text())["rows"]
    assert {r["backend"] for r in rows} == {"torch"}


def test_skipped_backends_names_the_ops(monkeypatch):
    _triton_unavailable(monkeypatch, ops={"atas_step"})
    assert benchmark.skipped_backends(["torch", "triton"], ("pgd_step", "atas_step"), "cpu") == {
        "triton": "for atas_step on cpu: tensors are on cpu and TRITON_INTERPRET=1 is not set"}

    def missing(*a, **k):
        raise ModuleNotFoundError("No module named 'fastat_kernels'", name="fastat_kernels")

    monkeypatch.setattr(_dispatch, "not_supported_reasons", missing)
    assert benchmark.skipped_backends(["triton"], ("pgd_step",), "cpu") == {
        "triton": "on cpu: fastat_kernels is not installed"}


def test_writes_csv_json_md_png(tmp_path, capsys):
    assert main([*TINY, "--backend", "torch", "--out", str(tmp_path)]) == 0
    (folder,) = tmp_path.iterdir()
    for name in ("ops.csv", "ops.json", "ops.md", "ops.png"):
        assert (folder / name).stat().st_size > 0
    assert (folder / "ops.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"results written to {folder}" in capsys.readouterr().out


def test_plot_speedups_grouped_bars(tmp_path):
    def row(op, backend, speedup, dt="fp32"):
        return benchmark.Row(op, backend, 4, 8, dt, 1.0 / speedup, 0.0, 0.0, 1.0, speedup, 1.0, 1.0)

    rows = [row(op, b, s, dt) for op in ("pgd_step", "atas_step") for dt in ("fp32", "bf16")
            for b, s in (("torch", 1.0), ("native", 3.0), ("triton", 0.001))]
    out = benchmark.plot_speedups(rows, tmp_path / "ops.png", {"device": "cpu", "date": "2025-01-01"})
    assert out.stat().st_size > 0
    only_torch = benchmark.plot_speedups(rows[:1], tmp_path / "torch.png", {"device": "cpu", "date": "2025-01-01"})
    assert only_torch.stat().st_size > 0


def test_compile_baseline_column(tmp_path, capsys):
    """`--backend compile` times torch.compile(reference) beside the others; every row gets its speed-up over it."""
    assert main([*TINY, "--backend", "native", "--backend", "compile", "--out", str(tmp_path)]) == 0
    assert "| vs compile |" in capsys.readouterr().out
    (folder,) = tmp_path.iterdir()
    rows = json.loads((folder / "ops.json").read_text())["rows"]
    assert {r["backend"] for r in rows} == {"torch", "native", "compile"}
    by = {r["backend"]: r for r in rows}
    assert by["compile"]["speedup_vs_compile"] == 1.0
    assert by["native"]["speedup_vs_compile"] == pytest.approx(by["compile"]["median_ms"] / by["native"]["median_ms"])


def test_compare_flags_regressions(tmp_path, capsys):
    assert main([*TINY, "--backend", "torch", "--out", str(tmp_path / "old")]) == 0
    (old,) = (tmp_path / "old").iterdir()
    data = json.loads((old / "ops.json").read_text())
    assert main([*TINY, "--backend", "torch", "--out", "", "--compare", str(old / "ops.csv")]) in (0, 1)  # noise
    for r in data["rows"]:
        r["median_ms"] /= 10  # the earlier run was 10x faster: a regression now
    (tmp_path / "fast.json").write_text(json.dumps(data))
    capsys.readouterr()
    assert main([*TINY, "--backend", "torch", "--out", "", "--compare", str(tmp_path / "fast.json")]) == 1
    out = capsys.readouterr().out
    assert "1 common cases, 1 more than 10% slower" in out and "REGRESSION pgd_step [torch] 4x8 fp32" in out
    for r in data["rows"]:
        r["median_ms"] *= 1000
    (tmp_path / "slow.json").write_text(json.dumps(data))
    assert main([*TINY, "--backend", "torch", "--out", "", "--compare", str(tmp_path / "slow.json")]) == 0
    assert main([*TINY, "--compare", str(tmp_path / "missing")]) == 2
    assert "no benchmark results" in capsys.readouterr().err


@pytest.mark.parametrize("op", benchmark.HOT_PATHS)
def test_copy_floor_clones_the_per_batch_tensor(op):
    """The copy floor is a clone of the batch's gradient (or x), never of ATAS's or PGI's whole-data-set buffer."""
    import torch

    from fastat.ops._specs import SPECS

    sample = SPECS[op].make(4, 12, "random", torch.Generator().manual_seed(0), torch.device("cpu"))
    floor = sample.args[benchmark._grad_position(op)]
    batch = 3 * 4 * 12 if op == "multigrad_step" else 4 * 12  # MultiGrad's grads: S = 3 starts of the batch
    assert floor.is_floating_point() and floor.numel() == batch
