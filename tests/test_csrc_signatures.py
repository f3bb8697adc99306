"""The CPU and CUDA kernels of each `fastat::` op must have the same C++ signature: the dispatcher refuses a
mismatch when `fastat._C` loads (an abort at import, seen with a CUDA build of torch), and CI builds only the CPU
half against torch, so this compares the two source definitions instead."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fastat.ops._schemas import SCHEMAS

CSRC = Path(__file__).resolve().parents[1] / "csrc"


def _signature(text: str, name: str) -> list[str]:
    """Parameter types (whitespace-normalised, names dropped) of the definition of ``name`` in ``text``."""
    m = re.search(rf"^at::Tensor\s+{name}\s*\(([^)]*)\)\s*\{{", text, re.MULTILINE)
    assert m, f"no definition of {name}"
    params = [" ".join(p.split()) for p in m.group(1).split(",")]
    return [re.sub(r"\s*\w+$", "", p).replace(" &", "&") for p in params]


@pytest.mark.parametrize("op", sorted(SCHEMAS))
def test_cpu_and_cuda_kernels_have_the_same_signature(op):
    cpu = _signature((CSRC / "cpu" / f"{op}.cpp").read_text(), f"{op}_cpu")
    cuda = _signature((CSRC / "cuda" / "bindings.cpp").read_text(), f"{op}_cuda")
    assert cpu == cuda, f"{op}: CPU {cpu} vs CUDA {cuda}"
    # a mutated argument (Tensor(a!)) is a non-const reference in both
    mutated = re.findall(r"Tensor\(\w+!\) (\w+)", SCHEMAS[op])
    assert sum(t == "at::Tensor&" for t in cpu) == len(mutated), (op, cpu, mutated)
