"""Nothing lost, nobody in: run folders and checkpoints under typos, kills, damaged and hostile files (issue 19)."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from fastat.checkpoint import CheckpointError, copy_checkpoint, load_checkpoint, save_checkpoint
from fastat.cli import main

ARGS = ["train", "--method", "fgsm_rs", "--eps", "0.2", "--subset", "128", "--batch-size", "64", "--device", "cpu",
        "--model", "small-cnn", "--eval-n", "32", "--eval-steps", "1", "--co-batch", "16", "--co-steps", "1",
        "--lr-max", "0.05", "--on-diverge", "log", "--no-progress", "--no-plot"]


def _train(out, *extra, epochs=1):
    return main([*ARGS, "--epochs", str(epochs), "--out", str(out), *extra])


def _one_line(capsys, *parts):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for part in parts:
        assert part in err[0]
    return err[0]


@pytest.mark.parametrize("typo", [["--method", "fgsm_rss"], ["--batch-size", "4096"], ["--data-root", "/nope"],
                                  ["--eps", "0"]])
def test_a_typo_with_overwrite_deletes_nothing(tmp_path, capsys, typo):
    run = tmp_path / "run"
    assert _train(run) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    assert _train(run, "--overwrite", *typo) == 2
    _one_line(capsys, "fastat train: error:")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_overwrite_moves_the_whole_old_run_aside(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run) == 0
    (run / "eval.json").write_text("{}")  # written by `fastat eval` next to the old model
    assert _train(run, "--overwrite") == 0
    (aside,) = tmp_path.glob("run.replaced-*")
    assert (aside / "eval.json").exists() and (aside / "checkpoint.pt").exists()
    assert not (run / "eval.json").exists() and (run / "checkpoint.pt").exists()
    assert str(aside) in capsys.readouterr().err


def test_resume_without_out_is_one_line(capsys):
    assert main([*ARGS, "--epochs", "1", "--resume"]) == 2
    _one_line(capsys, "--resume needs --out")


class _Exploit:
    def __reduce__(self):
        return os.system, ("touch PWNED",)


def test_a_planted_checkpoint_does_not_run_code(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert _train(run) == 0
    for name in ("checkpoint.pt", "last_good.pt"):
        (run / name).with_name(name + ".sha256").unlink()  # a hostile file comes without our checksum
        with open(run / name, "wb") as f:
            pickle.dump({"format": "fastat-checkpoint/1", "x": _Exploit()}, f)
    capsys.readouterr()
    assert _train(run, "--resume", epochs=2) == 2
    _one_line(capsys, "checkpoint.pt")
    assert not (tmp_path / "PWNED").exists()
    assert main(["eval", str(run / "checkpoint.pt"), "--n", "8"]) == 2
    assert not (tmp_path / "PWNED").exists()


def _flip_a_byte(path, at=0.5):
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_bit_flip_is_caught_and_resume_falls_back_to_last_good(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run, epochs=2) == 0
    _flip_a_byte(run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="checkpoint.pt.*corrupted"):
        load_checkpoint(run / "checkpoint.pt")
    capsys.readouterr()
    assert _train(run, "--resume", epochs=2) == 0
    out = capsys.readouterr().out
    assert "corrupted" in out and "resuming from last_good.pt (epoch " in out
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 2  # the epochs after last_good were trained again


def test_a_truncated_checkpoint_is_named_and_eval_says_so(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run) == 0
    data = (run / "best.pt").read_bytes()
    (run / "best.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"best\.pt.*truncated"):
        load_checkpoint(run / "best.pt")
    capsys.readouterr()
    assert main(["eval", str(run / "best.pt"), "--n", "8"]) == 2
    _one_line(capsys, "best.pt", "truncated")


def test_a_kill_while_copying_best_keeps_the_previous_file(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    src, dst = tmp_path / "checkpoint.pt", tmp_path / "best.pt"
    save_checkpoint(src, model=model, model_config=None, dataset="x", eps=0.1, epoch=1)
    copy_checkpoint(src, dst)
    save_checkpoint(src, model=torch.nn.Linear(3, 2), model_config=None, dataset="x", eps=0.1, epoch=2)

    def killed(f_src, f_dst, length=0):
        f_dst.write(f_src.read(100))
        raise KeyboardInterrupt  # the process dies in the middle of the copy

    monkeypatch.setattr("shutil.copyfileobj", killed)
    with pytest.raises(KeyboardInterrupt):
        copy_checkpoint(src, dst)
    assert load_checkpoint(dst)["epoch"] == 1  # whole, and still matching its checksum
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "best.pt.sha256", "checkpoint.pt",
                                                          "checkpoint.pt.sha256"]


def _resave(path, ck):
    """Write an edited checkpoint dict back the way fastat writes one (with a valid checksum)."""
    from types import SimpleNamespace

    model = SimpleNamespace(state_dict=lambda: ck["model"])
    save_checkpoint(path, model=model, **{k: v for k, v in ck.items() if k not in ("format", "model")})


def test_a_checkpoint_that_does_not_fit_names_the_tensor(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run) == 0
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    ck["model"]["features.0.weight"] = ck["model"]["features.0.weight"][:4]
    _resave(run / "checkpoint.pt", ck)
    (run / "last_good.pt").unlink()
    capsys.readouterr()
    assert _train(run, "--resume") == 2
    _one_line(capsys, "features.0.weight", "shape")
    assert main(["eval", str(run / "checkpoint.pt"), "--n", "8"]) == 2
    _one_line(capsys, "features.0.weight")
    del ck["optimizer"]
    _resave(run / "checkpoint.pt", ck)
    assert _train(run, "--resume") == 2
    _one_line(capsys, "lacks optimizer")


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root writes anywhere")
def test_a_read_only_run_folder_is_refused_before_training(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o500)
    try:
        assert _train(run) == 2
        _one_line(capsys, "cannot be used as the run folder")
    finally:
        run.chmod(0o700)


# ---------------------------------------------------------------------------------------------- the smaller items
def test_q_given_twice_is_refused(tmp_path, capsys):
    assert main([*ARGS, "--epochs", "1", "--method", "zerograd", "--q", "0.3", "--hp", "q=0.7"]) == 2
    _one_line(capsys, "'q' is given twice")


def test_no_prefix_matching_of_flags(capsys):
    with pytest.raises(SystemExit) as info:
        main(["sweep", "--method", "zerograd", "--seeds", "0"])
    assert info.value.code == 2 and "--method" in capsys.readouterr().err


def test_ctrl_c_exits_130_with_one_line_and_the_resume_command(tmp_path, capsys, monkeypatch):
    from fastat.train.trainer import Trainer

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "fit", interrupted)
    argv = [*ARGS, "--epochs", "1", "--out", str(tmp_path / "run"), "--overwrite"]
    assert main(argv) == 130
    line = _one_line(capsys, "fastat train: interrupted; continue with: fastat train")
    assert line.endswith("--resume") and "--overwrite" not in line


def test_a_sweep_into_a_file_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    argv = ["sweep", "--methods", "fgsm", "--seeds", "0", "--out", str(tmp_path / "file"), *ARGS[3:], "--epochs", "1"]
    assert main(argv) == 2
    _one_line(capsys, "is a file")


def test_eval_checks_its_output_and_steps_before_evaluating(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run) == 0
    capsys.readouterr()
    assert main(["eval", str(run / "checkpoint.pt"), "--n", "8", "--pgd-steps", "0"]) == 2
    _one_line(capsys, "--pgd-steps must be >= 1")
    (tmp_path / "a_file").write_text("x")
    assert main(["eval", str(run / "checkpoint.pt"), "--n", "8", "--out", str(tmp_path / "a_file" / "e.json")]) == 2
    _one_line(capsys, "cannot write the results")


def test_plot_names_an_undecodable_metrics_file(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    assert main(["plot", str(run), "-o", str(tmp_path / "c.png")]) == 2
    _one_line(capsys, "metrics.jsonl", "not UTF-8")


def test_bench_refuses_a_shape_that_cannot_fit(capsys):
    assert main(["bench", "ops", "--device", "cpu", "--shape", "100000000x100000000", "--op", "pgd_step",
                 "--out", ""]) == 2
    _one_line(capsys, "--shape 100000000x100000000 needs about")


def test_labels_outside_the_classes_fail_at_load(tmp_path):
    import gzip
    import shutil

    from fastat.data import load_dataset
    from fastat.data.datasets import default_fashion_mnist_root

    root = tmp_path / "fm"
    root.mkdir()
    for f in default_fashion_mnist_root().glob("t10k-*"):
        shutil.copy(f, root / f.name)
    labels = bytearray(gzip.open(root / "t10k-labels-idx1-ubyte.gz").read())
    labels[8 + 5] = 12  # a label past the 10 classes
    with gzip.open(root / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes(labels))
    with pytest.raises(ValueError, match=r"labels in \[0, 12\], outside the 10 classes"):
        load_dataset("fashion-mnist", root, "test")


def test_a_run_folder_that_is_a_file_is_refused_before_training(tmp_path, capsys):
    """The run folder is probed with a file before training (root can write into read-only folders, so a file in
    the way stands in for an unwritable folder here)."""
    (tmp_path / "run").write_text("not a folder")
    assert _train(tmp_path / "run") == 2
    _one_line(capsys, "cannot be used as the run folder")
    assert (tmp_path / "run").read_text() == "not a folder"
