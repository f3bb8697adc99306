"""`fastat eval` / `python -m fastat.eval`: table + eval.json, and one-line errors for bad input."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from fastat.eval import cli

from ._models import save_cli_checkpoint, write_fake_fmnist


@pytest.fixture(scope="module")
def fake_fmnist(tmp_path_factory):
    return write_fake_fmnist(tmp_path_factory.mktemp("fmnist"), n_test=24)


@pytest.fixture()
def ckpt(tmp_path):
    return save_cli_checkpoint(tmp_path / "runs" / "demo" / "checkpoint.pt", epoch=2)


def test_number_parses_fractions():
    assert cli.number("8/255") == pytest.approx(8 / 255)
    assert cli.number("0.25") == 0.25 and cli.number("1e-3") == 1e-3
    for bad in ("8/0", "abc", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.number(bad)


def test_eval_writes_table_and_json(ckpt, fake_fmnist, capsys):
    rc = cli.main([str(ckpt), "--data-root", str(fake_fmnist), "--n", "16", "--pgd-steps", "2", "--restarts", "2",
                   "--eps", "8/255", "--device", "cpu", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "PGD-2-2 robust (max-loss, official)" in out and "clean accuracy" in out
    report = json.loads((ckpt.parent / "eval.json").read_text())
    assert report["n"] == 16 and report["dataset"] == "fashion-mnist" and report["epoch"] == 2
    assert report["eps"] == pytest.approx(8 / 255) and report["alpha"] == pytest.approx(2 / 255)
    pgd = report["pgd"]
    assert pgd["steps"] == 2 and pgd["restarts"] == 2 and pgd["impl"] == "batched"
    assert 0 <= pgd["robust_acc_any"] <= pgd["robust_acc_max_loss"] <= 1
    assert report["autoattack"] is None


def test_subcommand_and_out_option(ckpt, fake_fmnist, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="fastat")
    cli.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "elsewhere" / "result.json"
    args = parser.parse_args(["eval", str(ckpt), "--data-root", str(fake_fmnist), "--n", "8", "--pgd-steps", "1",
                              "--restarts", "1", "--impl", "plain", "--out", str(out), "--no-progress"])
    assert args.func is cli.run
    assert args.func(args) == 0
    assert json.loads(out.read_text())["pgd"]["impl"] == "plain"


@pytest.mark.parametrize("extra, message", [
    (["--eps", "0"], "--eps must be > 0"),
    (["--eps=-8/255"], "--eps must be > 0"),
    (["--eps", "8/0"], "--eps"),
    (["--dataset", "cifar10"], "expects input channels 1, dataset 'cifar10' has 3"),
    (["--dataset", "imagenet"], "must be one of"),
    (["--restarts", "0"], "--restarts must be >= 1"),
])
def test_bad_input_one_line(ckpt, fake_fmnist, capsys, extra, message):
    rc = cli.main([str(ckpt), "--data-root", str(fake_fmnist), "--no-progress", *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("fastat eval: error:") and message in err


def test_missing_and_foreign_checkpoint(tmp_path, capsys):
    assert cli.main([str(tmp_path / "nope.pt"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    assert cli.main([str(foreign), "--no-progress"]) == 2
    assert "not a fastat checkpoint" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    assert cli.main([str(junk), "--no-progress"]) == 2
    assert "cannot be read" in capsys.readouterr().err


def test_missing_data_root(ckpt, tmp_path, capsys):
    assert cli.main([str(ckpt), "--data-root", str(tmp_path / "empty"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Fashion-MNIST not found under" in err and "empty" in err
