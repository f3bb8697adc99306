"""`fastat plot`: one-line errors for bad output paths and corrupt metrics, distinct labels for same-named runs."""

from __future__ import annotations

import json

import pytest

from fastat.cli import main
from fastat.plot import run_labels


def _run(folder, epochs=2, pgd=0.5):
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"epoch": e, "clean_acc": 0.8, "pgd_acc": pgd, "train_seconds": 1.0} for e in range(1, epochs + 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _one_line_error(capsys, *parts):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fastat plot: error: ")
    for part in parts:
        assert part in err


@pytest.mark.parametrize("name, message", [
    ("missing/x.png", "does not exist"),
    ("out.txtx", "the suffix must be one of"),
    ("out", "the suffix must be one of"),
])
def test_bad_output_is_one_line(tmp_path, capsys, name, message):
    run = _run(tmp_path / "r1")
    assert main(["plot", str(run), "-o", str(tmp_path / name)]) == 2
    _one_line_error(capsys, message)
    assert not (tmp_path / name).exists()


def test_output_under_a_file_or_a_folder(tmp_path, capsys):
    run = _run(tmp_path / "r1")
    (tmp_path / "file.txt").write_text("x")
    assert main(["plot", str(run), "-o", str(tmp_path / "file.txt" / "x.png")]) == 2
    _one_line_error(capsys, "does not exist")
    (tmp_path / "dir.png").mkdir()
    assert main(["plot", str(run), "-o", str(tmp_path / "dir.png")]) == 2
    _one_line_error(capsys, "is a folder")


def test_same_named_runs_get_distinct_rows(tmp_path, capsys):
    a, b = _run(tmp_path / "sw6" / "fgsm-s0", pgd=0.41), _run(tmp_path / "sw7" / "fgsm-s0", pgd=0.42)
    out = tmp_path / "both.pdf"
    assert main(["plot", str(a), str(b), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "sw6/fgsm-s0" in text and "sw7/fgsm-s0" in text and "41.0" in text and "42.0" in text
    assert out.stat().st_size > 0


def test_run_labels():
    assert run_labels(["/x/a", "/x/b"]) == ["a", "b"]
    assert run_labels(["/p/sw6/r", "/p/sw7/r", "/q/other"]) == ["sw6/r", "sw7/r", "other"]
    assert run_labels(["/a/x/r", "/b/x/r", "/c/y/r"]) == ["a/x/r", "b/x/r", "y/r"]
    assert run_labels(["/x/a", "/x/a/"]) == ["a", "a (2)"]  # the same folder twice


def test_truncated_metrics_warns_and_plots(tmp_path, capsys):
    run = _run(tmp_path / "r1")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "clean_acc": 0.')
    assert main(["plot", str(run), "-o", str(tmp_path / "c.png")]) == 0
    captured = capsys.readouterr()
    assert "warning" in captured.err and str(run / "metrics.jsonl") in captured.err
    assert (tmp_path / "c.png").stat().st_size > 0


def test_corrupt_metrics_names_file_and_line(tmp_path, capsys):
    run = _run(tmp_path / "r1")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], "{oops", lines[1]]) + "\n")
    assert main(["plot", str(run), "-o", str(tmp_path / "c.png")]) == 2
    _one_line_error(capsys, str(run / "metrics.jsonl"), "line 2")


def test_null_metrics_plot_and_table(tmp_path, capsys):
    run = _run(tmp_path / "r1")
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 3, "clean_acc": None, "pgd_acc": None, "train_seconds": 1.0}) + "\n")
    assert main(["plot", str(run), "-o", str(tmp_path / "c.png")]) == 0
    assert "50.0 (1)" in capsys.readouterr().out


def test_table_names_the_co_epoch_from_flags_and_roll_backs(tmp_path, capsys):
    """"CO at epoch": the first epoch the monitor flagged, or a roll-back's epoch (its epoch row is not kept)."""
    flagged, rolled = _run(tmp_path / "flagged", epochs=4), _run(tmp_path / "rolled", epochs=4)
    lines = (flagged / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    rows[2]["co"] = rows[3]["co"] = True
    (flagged / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with open(rolled / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"event": "rollback", "at_epoch": 2, "to_epoch": 1, "change": "q 0.35 -> 0.45"}) + "\n")
    assert main(["plot", str(flagged), str(rolled), str(_run(tmp_path / "clean")), "-o", str(tmp_path / "c.png")]) == 0
    table = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:5]}
    assert table["flagged"][-2] == "3" and table["rolled"][-2] == "2" and table["clean"][-2] == "-"
