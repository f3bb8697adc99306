"""`fastat.train.records`: strict-JSON metrics (non-finite numbers as null / empty CSV cells) and `read_metrics` on
truncated or corrupt metrics.jsonl files."""

from __future__ import annotations

import csv
import json
import math

import pytest

from fastat.train.records import MetricsWriter, plot_curves, read_metrics

ROW = {"epoch": 1, "clean_acc": 0.8, "pgd_acc": 0.5, "train_seconds": 1.0}


def test_writer_writes_non_finite_as_null_and_empty_cells(tmp_path):
    w = MetricsWriter(tmp_path, plot=False)
    w.write({**ROW, "train_loss": float("nan"), "grad_norm": float("inf"), "per_step": [1.0, float("-inf")]})
    w.write({"event": "co", "epoch": 1, "value": float("nan")})
    assert math.isnan(w.rows[0]["train_loss"])  # the rows in memory keep their values
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")) for line in lines]
    assert rows[0]["train_loss"] is None and rows[0]["grad_norm"] is None and rows[0]["per_step"] == [1.0, None]
    assert rows[1] == {"event": "co", "epoch": 1, "value": None}
    with open(tmp_path / "metrics.csv", newline="") as f:
        (cells,) = list(csv.DictReader(f))
    assert cells["train_loss"] == "" and cells["grad_norm"] == "" and cells["pgd_acc"] == "0.5"
    (back,) = read_metrics(tmp_path)
    assert back["train_loss"] is None and back["pgd_acc"] == 0.5


def test_plot_curves_skips_null_and_nan_points(tmp_path):
    rows = [ROW, {**ROW, "epoch": 2, "pgd_acc": None, "clean_acc": float("nan"), "ema_pgd_acc": 0.4}]
    out = plot_curves({"run": rows}, tmp_path / "c.png")
    assert out.stat().st_size > 0


def test_read_metrics_skips_partial_last_line_with_warning(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(ROW) + "\n" + json.dumps({**ROW, "epoch": 2})[:20])
    rows = read_metrics(tmp_path)
    assert [r["epoch"] for r in rows] == [1]
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "warning" in err and str(path) in err and "line 2" in err


def test_read_metrics_corrupt_line_names_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join([json.dumps(ROW), '{"epoch": 2, "clean', json.dumps({**ROW, "epoch": 3})]) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl: line 2 is not valid JSON"):
        read_metrics(path)
    path.write_text("\n".join(["[1, 2]", json.dumps(ROW)]) + "\n")
    with pytest.raises(ValueError, match="line 1 is not a JSON object"):
        read_metrics(path)


def test_read_metrics_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        read_metrics(tmp_path)


def test_same_run_across_versions_and_placements():
    from fastat.train import TrainConfig
    from fastat.train.records import run_identity, same_run

    new = run_identity(TrainConfig(method="atas", device="cpu", method_kwargs={"state_device": "cpu", "c": 0.02}))
    assert "state_device" not in new["method_kwargs"]  # where a process keeps state is not the experiment
    old = {k: v for k, v in new.items() if k not in ("pad_mode", "drop_last", "attack_precision", "co_check")}
    old["method_kwargs"] = {"c": 0.02, "state_device": "cpu"}  # written before those fields existed
    assert same_run(old, new)
    assert not same_run({**old, "pad_mode": "reflect"}, new)
    assert same_run({**old, "final_n": 5}, new, free=("final_n",)) and not same_run({**old, "final_n": 5}, new)
    assert not same_run(None, new) and not same_run([], new)
