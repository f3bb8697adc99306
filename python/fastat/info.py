"""`python -m fastat.info`: which backend can run which op on this machine, and why not, plus build facts."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

from .ops import _dispatch, _native
from .ops._schemas import SCHEMAS
from .ops.reference import QUANTILE_RANK_FP64


def _git_sha() -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def environment() -> dict[str, str]:
    """Versions and devices, as recorded next to benchmark and evaluation results."""
    import fastat

    info = {
        "fastat": fastat.__version__,
        "git": _git_sha(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": str(torch.version.cuda),
        "cuda_available": str(torch.cuda.is_available()),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "extension": "loaded" if _native.load_error() is None else f"unavailable ({_native.load_error()})",
        "extension_cuda": str(_native.built_with_cuda()),
        "quantile_rank": "fp64 (torch >= 2.14)" if QUANTILE_RANK_FP64 else "fp32 (torch < 2.14)",
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as exc:  # noqa: BLE001 - report, never fail
        info["triton"] = f"unavailable ({type(exc).__name__})"
    return info


def table(devices: list[str] | None = None) -> list[tuple[str, str, str, str]]:
    """Rows (op, device, backend, "ok" or the reasons it cannot run)."""
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for op in SCHEMAS:
        for device in devices:
            for backend in _dispatch.BACKENDS:
                reasons = _dispatch.not_supported_reasons(backend, op, device)
                rows.append((op, device, backend, "ok" if not reasons else "; ".join(reasons)))
    return rows


def main() -> int:
    for key, value in environment().items():
        print(f"{key:>15}: {value}")
    print(f"{'backend choice':>15}: {_dispatch.get_backend()}")
    print()
    width = max(len(op) for op in SCHEMAS)
    print(f"{'op':<{width}}  device  {'backend':<7}  status")
    for op, device, backend, status in table():
        print(f"{op:<{width}}  {device:<6}  {backend:<7}  {status}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
