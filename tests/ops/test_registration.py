"""One schema per op: the `fastat::` definition, the reference's inferred schema and `_schemas.SCHEMAS` agree."""

from __future__ import annotations

import pytest
import torch

import fastat
from fastat.ops import reference
from fastat.ops._schemas import MUTATES, SCHEMAS


def _normalize(schema: str) -> str:
    return schema.replace("SymInt", "int")


@pytest.mark.parametrize("op", list(SCHEMAS))
def test_fastat_op_is_defined_from_the_schema(op):
    assert str(getattr(torch.ops.fastat, op).default._schema) == f"fastat::{SCHEMAS[op]}"


@pytest.mark.parametrize("op", [op for op in SCHEMAS if op != "uniform_init"])
def test_reference_signature_matches_the_schema(op):
    inferred = torch.library.infer_schema(getattr(reference, op), mutates_args=MUTATES[op])
    assert f"{op}{_normalize(inferred)}" == SCHEMAS[op]


def test_uniform_init_schema_by_hand():
    # Generator? cannot be inferred from an annotation; check the reference's parameters by name instead.
    import inspect

    params = inspect.signature(reference.uniform_init).parameters
    assert list(params) == ["x", "eps", "generator"] and params["generator"].kind is inspect.Parameter.KEYWORD_ONLY
    assert "Generator? generator=None" in SCHEMAS["uniform_init"]


@pytest.mark.parametrize("op", list(SCHEMAS))
def test_public_api_has_the_reference_signature(op):
    import inspect

    public = inspect.signature(getattr(fastat.ops, op))
    spec = inspect.signature(getattr(reference, op))
    assert list(public.parameters) == list(spec.parameters)


def test_fakes_run_the_metadata_checks():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.rand(2, 3)
        out = torch.ops.fastat.pgd_step(x, x, x, 0.1, 0.1)
        assert out.shape == x.shape
        with pytest.raises(ValueError, match="'alpha'"):
            torch.ops.fastat.pgd_step(x, x, x, 0.1, -1.0)
