"""One schema per op: the `fastat::` definition, the reference's inferred schema and `_schemas.SCHEMAS` agree."""

from __future__ import annotations

import pytest
import torch

import fastat
from fastat.ops import reference
from fastat.ops._schemas import MUTATES, RANDOM_OPS, SCHEMAS


def _normalize(schema: str) -> str:
    return schema.replace("SymInt", "int")


@pytest.mark.parametrize("op", list(SCHEMAS))
def test_fastat_op_is_defined_from_the_schema(op):
    assert str(getattr(torch.ops.fastat, op).default._schema) == f"fastat::{SCHEMAS[op]}"


@pytest.mark.parametrize("op", [op for op in SCHEMAS if op not in RANDOM_OPS])
def test_reference_signature_matches_the_schema(op):
    inferred = torch.library.infer_schema(getattr(reference, op), mutates_args=MUTATES[op])
    assert f"{op}{_normalize(inferred)}" == SCHEMAS[op]


@pytest.mark.parametrize("op,params", [("uniform_init", ["x", "eps", "generator"]),
                                       ("sora_step", ["delta", "grad", "x", "alpha", "generator"])])
def test_random_op_schema_by_hand(op, params):
    # Generator? cannot be inferred from an annotation: the reference without its generator must infer the schema
    # without it, and the generator must be the keyword-only last parameter of both.
    import inspect
    import typing

    assert op in RANDOM_OPS
    fn = getattr(reference, op)
    sig = inspect.signature(fn)
    assert list(sig.parameters) == params and sig.parameters["generator"].kind is inspect.Parameter.KEYWORD_ONLY
    hints = typing.get_type_hints(fn)
    rest = [p.replace(annotation=hints[p.name]) for p in sig.parameters.values() if p.name != "generator"]

    def without_generator(*args):
        pass

    without_generator.__signature__ = sig.replace(parameters=rest, return_annotation=hints["return"])
    inferred = _normalize(torch.library.infer_schema(without_generator, mutates_args=()))
    head, tail = inferred.split(") -> ")
    assert SCHEMAS[op] == f"{op}{head}, *, Generator? generator=None) -> {tail}"


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
