"""`fastat._checks`: the one set of argument checks and the one number parser every command line uses."""

from __future__ import annotations

import pytest

from fastat import _checks as checks
from fastat.cli import main


@pytest.mark.parametrize("text, value", [("0.2", 0.2), ("8/255", 8 / 255), ("0.5/255", 0.5 / 255), (" 1e-3 ", 1e-3),
                                         (3, 3.0)])
def test_parse_number_reads_fractions_everywhere(text, value):
    from fastat.eval.cli import number
    from fastat.train.config import parse_number

    assert checks.parse_number(text) == pytest.approx(value)
    assert parse_number(text) == pytest.approx(value)  # fastat train
    assert number(str(text)) == pytest.approx(value)   # fastat eval


@pytest.mark.parametrize("text", ["eight", "8/0", "inf", "nan", "1/2/3", ""])
def test_parse_number_refuses_one_line(text):
    with pytest.raises(ValueError, match="argument 'eps'"):
        checks.parse_number(text, "eps")


def test_checks_name_the_argument_and_pick_the_error_type():
    with pytest.raises(TypeError, match="^op: argument 'x' must be a number, got str$"):
        checks.positive("op", "x", "1")
    with pytest.raises(ValueError, match="argument 'x' must be a finite number > 0 and <= 1, got 2"):
        checks.positive("op", "x", 2, upper=1)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        checks.in_range("op", "q", float("nan"), 0, 1)
    with pytest.raises(TypeError, match="must be an int"):
        checks.integer("op", "n", True, 1)
    with pytest.raises(ValueError, match="must be one of 'a', 'b'"):
        checks.choice("op", "c", "z", ("a", "b"))


def test_eval_takes_the_fraction_train_takes(tmp_path, capsys):
    """`fastat eval --eps 0.5/255` was refused while `fastat train --eps 0.5/255` was accepted."""
    assert main(["eval", str(tmp_path / "missing.pt"), "--eps", "0.5/255"]) == 2
    assert "does not exist" in capsys.readouterr().err  # past argument parsing: the checkpoint is what is missing
