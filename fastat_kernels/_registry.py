"""Importing this module imports every op module named in `KERNEL_MODULES`, which registers all `fastat_triton::` ops.

`fastat_kernels.get` reaches it through an `import` statement rather than `importlib.import_module`: torch.compile
runs an import statement at trace time, but refuses to trace importlib (so `fullgraph=True` would fail).
"""

from __future__ import annotations

import importlib

from . import KERNEL_MODULES

for _module in sorted(set(KERNEL_MODULES.values())):
    importlib.import_module(f"{__package__}.{_module}")
