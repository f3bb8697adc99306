"""`fastat eval` / `python -m fastat.eval`: table + eval.json + eval.csv, and one-line errors for bad input."""

from __future__ import annotations

import argparse
import csv
import json

import pytest
import torch

from fastat._malloc import tune_for
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
    assert report["malloc"] == tune_for("cpu")  # a CPU evaluation sets what the trainer sets (`fastat._malloc`)


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
    (["--eps", "0"], "--eps must be > 0 and <= 1"),
    (["--eps=-8/255"], "--eps must be > 0 and <= 1"),
    (["--eps", "2"], "--eps must be > 0 and <= 1"),
    (["--eps", "256/255"], "--eps must be > 0 and <= 1"),
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


@pytest.mark.parametrize("content", [b"not a torch file", b"hello\n", bytes(range(256)) * 4])
def test_non_checkpoint_file_short_message(tmp_path, capsys, content):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(content)
    assert cli.main([str(junk), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"fastat eval: error: checkpoint {str(junk)!r} is not a "
                                                         "fastat checkpoint (")
    assert "weights_only" not in err and len(err) < 200


def test_eval_writes_csv_next_to_json(ckpt, fake_fmnist, tmp_path, capsys):
    out = tmp_path / "res" / "result.json"
    rc = cli.main([str(ckpt), "--data-root", str(fake_fmnist), "--n", "8", "--pgd-steps", "1", "--restarts", "2",
                   "--eps", "8/255", "--device", "cpu", "--out", str(out), "--no-progress"])
    assert rc == 0 and "result.csv" in capsys.readouterr().out
    report = json.loads(out.read_text())
    with open(out.with_suffix(".csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and list(rows[0]) == list(cli.CSV_COLUMNS)
    row = rows[0]
    assert int(row["n"]) == 8 and float(row["eps"]) == pytest.approx(8 / 255)
    assert float(row["alpha"]) == pytest.approx(2 / 255)
    assert float(row["clean_acc"]) == pytest.approx(report["clean_acc"])
    assert float(row["pgd_robust_acc_max_loss"]) == pytest.approx(report["pgd"]["robust_acc_max_loss"])
    assert float(row["pgd_robust_acc_any"]) == pytest.approx(report["pgd"]["robust_acc_any"])
    assert float(row["pgd_seconds"]) == pytest.approx(report["pgd"]["seconds"])
    assert row["pgd_steps"] == "1" and row["pgd_restarts"] == "2"
    assert row["autoattack_acc"] == "" and row["autoattack_seconds"] == ""


def test_csv_row_with_autoattack():
    report = {"n": 4, "eps": 0.1, "alpha": 0.025, "clean_acc": 0.75,
              "pgd": {"steps": 2, "restarts": 1, "robust_acc_max_loss": 0.5, "robust_acc_any": 0.25, "seconds": 1.5},
              "autoattack": {"robust_acc": 0.25, "seconds": 3.0}}
    row = cli.csv_row(report)
    assert row["autoattack_acc"] == 0.25 and row["autoattack_seconds"] == 3.0 and row["pgd_seconds"] == 1.5
    assert row["checkpoint"] is None and set(row) == set(cli.CSV_COLUMNS)


def test_missing_data_root(ckpt, tmp_path, capsys):
    assert cli.main([str(ckpt), "--data-root", str(tmp_path / "empty"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Fashion-MNIST not found under" in err and "empty" in err
