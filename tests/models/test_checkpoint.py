"""fastat.checkpoint: format, round trip, extras, clear errors."""

from __future__ import annotations

import pytest
import torch

from fastat.checkpoint import (FORMAT, CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint)
from fastat.models import build_model

CONFIG = dict(name="small-cnn", in_channels=1, num_classes=10, input_size=(28, 28), mean=[0.286], std=[0.353],
              width=4, hidden=8)


def _model():
    torch.manual_seed(0)
    return build_model(**CONFIG).eval()


def test_round_trip_with_extras(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(2, 1, 28, 28)).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path / "run" / "checkpoint.pt", model=model, model_config=CONFIG,
                           dataset="fashion-mnist", eps=0.1, epoch=3, optimizer=opt.state_dict(),
                           rng={"torch": torch.get_rng_state()}, method={"q": 0.35})
    # no temporary file left; the checksum record beside it
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt", "checkpoint.pt.sha256"]
    (digest, size), = [line.split()[1:] for line in (path.parent / "checkpoint.pt.sha256").read_text().splitlines()]
    assert int(size) == path.stat().st_size and len(digest) == 64
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == FORMAT and ckpt["dataset"] == "fashion-mnist" and ckpt["eps"] == 0.1
    assert ckpt["epoch"] == 3 and ckpt["method"] == {"q": 0.35} and ckpt["model_config"]["name"] == "small-cnn"
    assert torch.equal(ckpt["rng"]["torch"], torch.get_rng_state())
    assert ckpt["optimizer"]["param_groups"][0]["momentum"] == 0.9
    rebuilt = model_from_checkpoint(ckpt).eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="is a directory"):
        load_checkpoint(tmp_path)
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a fastat checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    for i, junk in enumerate([b"\x00junk", b"hello\n"]):  # the second made the unpickler raise a KeyError
        (tmp_path / f"junk{i}.pt").write_bytes(junk)
        with pytest.raises(CheckpointError, match=r"not a fastat checkpoint \(\w+: ") as info:
            load_checkpoint(tmp_path / f"junk{i}.pt")
        assert "\n" not in str(info.value) and "weights_only" not in str(info.value)
    model = _model()
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "c.pt", model=model, model_config=CONFIG, dataset="d", eps=0.1, epoch=1, eps_=1,
                        format="x")
    with pytest.raises(ValueError, match="name"):
        save_checkpoint(tmp_path / "c.pt", model=model, model_config={"in_channels": 1}, dataset="d", eps=0.1,
                        epoch=1)
    path = save_checkpoint(tmp_path / "user.pt", model=model, model_config=None, dataset="d", eps=0.1, epoch=1)
    with pytest.raises(CheckpointError, match="no model_config"):
        model_from_checkpoint(load_checkpoint(path))
    wrong = dict(CONFIG, width=8)
    path = save_checkpoint(tmp_path / "wrong.pt", model=model, model_config=wrong, dataset="d", eps=0.1, epoch=1)
    with pytest.raises(CheckpointError, match="do not match"):
        model_from_checkpoint(load_checkpoint(path))
