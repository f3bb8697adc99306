"""Run a script under ``torchrun`` with several CPU processes (gloo) from a test.

Used by the multi-process tests (distributed evaluation and training): each rank writes what it computed under a
folder the test then compares with a single-process run. Two ranks, one thread each, so the 2-core CI machine is not
oversubscribed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

needs_gloo = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


def torchrun(script: Path | str, *args: str, nproc: int = 2, timeout: float = 600,
             env: dict[str, str] | None = None, module: bool = False) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node=nproc script args`` on the CPU (gloo).

    ``module=True`` runs ``-m script`` (e.g. "fastat"). Raises AssertionError with the ranks' output when the job
    fails; returns the completed process otherwise."""
    run_env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "FASTAT_DIST_BACKEND": "gloo",
               **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "--tee=3"]
    cmd += ["-m", str(script)] if module else [str(script)]
    proc = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout, env=run_env)
    if proc.returncode != 0:
        raise AssertionError(f"torchrun exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n"
                             f"--- stderr\n{proc.stderr[-6000:]}")
    return proc
