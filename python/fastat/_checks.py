"""Argument checks shared by ops, methods, eval and train: one implementation and one wording for each kind of
mistake. Every message is one line, ``"<owner>: argument '<name>' must be ..., got <value>"`` — TypeError for a
wrong type, ValueError for a wrong value. `parse_number` reads every command line's numbers, fractions included
("0.2", "1e-3", "8/255", "0.5/255").
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from fractions import Fraction
from typing import Any, NoReturn

__all__ = ["choice", "fail", "integer", "in_range", "number", "parse_number", "positive"]


def fail(owner: str, exc: type[Exception], msg: str) -> NoReturn:
    raise exc(f"{owner}: {msg}")


def number(owner: str, name: str, value: Any, *, what: str = "a number") -> float:
    """``value`` as a float; TypeError unless it is an int or a float (not a bool, a string or a tensor)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(owner, TypeError, f"argument '{name}' must be {what}, got {type(value).__name__}")
    return float(value)


def positive(owner: str, name: str, value: Any, *, upper: float = math.inf, unit: str = "") -> float:
    """A finite number > 0 (and <= ``upper``)."""
    v = number(owner, name, value)
    if not (0 < v <= upper and math.isfinite(v)):
        bound = "" if upper == math.inf else f" and <= {upper:g}"
        fail(owner, ValueError, f"argument '{name}' must be a finite number > 0{bound}{unit}, got {value!r}")
    return v


def in_range(owner: str, name: str, value: Any, lo: float, hi: float) -> float:
    """A number in [lo, hi] (NaN is not)."""
    v = number(owner, name, value)
    if not lo <= v <= hi:
        fail(owner, ValueError, f"argument '{name}' must be in [{lo}, {hi}], got {value!r}")
    return v


def integer(owner: str, name: str, value: Any, lo: int) -> int:
    """An int (not a bool) >= ``lo``."""
    if isinstance(value, bool) or not isinstance(value, int):
        fail(owner, TypeError, f"argument '{name}' must be an int, got {type(value).__name__}")
    if value < lo:
        fail(owner, ValueError, f"argument '{name}' must be an int >= {lo}, got {value!r}")
    return value


def choice(owner: str, name: str, value: Any, choices: Iterable[str]) -> Any:
    choices = tuple(choices)
    if value not in choices:
        fail(owner, ValueError, f"argument '{name}' must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def parse_number(text: Any, name: str = "value") -> float:
    """A finite float from a number or a string: "0.2", "1e-3", or a fraction "8/255" / "0.5/255"; ValueError naming
    ``name`` otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        try:
            s = str(text).strip()
            if "/" in s:
                num, den = (part.strip() for part in s.split("/"))
                value = float(Fraction(num) / Fraction(den))
            else:
                value = float(s)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"argument '{name}' must be a number or a fraction like 8/255, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"argument '{name}' must be a finite number, got {text!r}")
    return value
