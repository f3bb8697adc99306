"""fastat: fused kernels and a trainer for fast (FGSM-based) adversarial training and robustness evaluation.

`import fastat` is cheap: it initializes no CUDA context, imports no triton and does not need the compiled extension
(it is loaded inside try/except, and a failure only disables the "native" backend; see `fastat.ops.available_backends()` and `python -m fastat.info`).
"""

from __future__ import annotations

from . import ops

__version__ = "0.1.0"
__all__ = ["ops", "__version__"]
