"""In the CPU dry run (FASTAT_CUDA_TESTS_ON_CPU=1, see _dryrun.py) the tests under tests/cuda are not skipped for
lack of a GPU: the "needs a CUDA GPU" skip that tests/conftest.py adds to every `cuda` test is taken off them again."""

from __future__ import annotations

from pathlib import Path

import pytest

from ._dryrun import ON_CPU

_HERE = Path(__file__).parent


@pytest.hookimpl(trylast=True)  # after tests/conftest.py's hook has added the skip
def pytest_collection_modifyitems(items):
    if not ON_CPU:
        return
    for item in items:
        if _HERE in Path(item.path).parents:
            item.own_markers = [m for m in item.own_markers
                                if not (m.name == "skip" and m.kwargs.get("reason") == "needs a CUDA GPU")]
