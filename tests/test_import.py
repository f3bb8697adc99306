"""`import fastat` is lean: no CUDA initialization, no triton import, no compiled-extension load."""

from __future__ import annotations

import subprocess
import sys

LEAN = """
import sys, torch
def _boom(*a, **k):
    raise AssertionError("import fastat initialized CUDA")
torch.cuda.current_device = _boom
torch.cuda.init = _boom
import fastat
assert "triton" not in sys.modules, "import fastat imported triton"
# fastat._C may be loaded (guarded; it registers kernels and initializes no CUDA context)
import fastat_kernels
assert "triton" not in sys.modules, "import fastat_kernels imported triton"
print(fastat.ops.available_backends("cpu"))
"""


def test_import_is_lean():
    out = subprocess.run([sys.executable, "-c", LEAN], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "torch" in out.stdout


def test_works_without_the_extension():
    code = (
        "import sys; sys.modules['fastat._C'] = None\n"  # makes `import fastat._C` raise ImportError
        "import torch, fastat\n"
        "assert 'native' not in fastat.ops.available_backends('cpu')\n"
        "x = torch.rand(2, 5)\n"
        "print(fastat.ops.pgd_step(x, torch.randn(2, 5), x, 0.1, 0.1).shape)\n"
        "print(fastat.ops.not_supported_reasons('native', 'pgd_step', 'cpu'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "not built or failed to load" in out.stdout
