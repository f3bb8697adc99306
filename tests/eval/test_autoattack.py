"""run_autoattack through pyautoattack: a reduced APGD-CE run on a tiny CPU model."""

from __future__ import annotations

import pytest
import torch

from fastat.eval.autoattack import autoattack_available, run_autoattack

from ._models import tiny_cnn, tiny_data

needs_aa = pytest.mark.skipif(not autoattack_available(), reason="pyautoattack is not installed")


@needs_aa
def test_reduced_autoattack_on_tiny_model():
    model = tiny_cnn()
    x, y = tiny_data(32, model=model)
    y[::8] = (y[::8] + 1) % 5
    model.train()
    with pytest.warns(UserWarning, match="not the standard evaluation"):
        res = run_autoattack(model, x, y, eps=0.1, version="custom", attacks=["apgd-ce"], n_iter=5, batch_size=32,
                             device="cpu")
    assert model.training  # mode restored
    assert res.clean_acc == pytest.approx(28 / 32)
    assert 0.0 <= res.robust_acc <= res.clean_acc
    assert res.robust.shape == (32,) and res.robust.dtype == torch.bool
    assert not res.robust[::8].any()  # clean-wrong samples are never robust
    assert res.settings["attacks"] == ["apgd-ce"] and res.settings["n_iter"] == 5
    assert set(res.per_attack) == {"apgd-ce"}
    assert res.per_attack["apgd-ce"] == pytest.approx(res.robust_acc, abs=1e-4)


@needs_aa
def test_autoattack_argument_errors():
    model = tiny_cnn()
    x, y = tiny_data(4, model=model)
    with pytest.raises(ValueError, match="attacks"):
        run_autoattack(model, x, y, eps=0.1, attacks=["apgd-ce"])  # attacks need version="custom"
    with pytest.raises(ValueError, match="attacks"):
        run_autoattack(model, x, y, eps=0.1, version="custom", attacks=["pgd"])
    with pytest.raises(ValueError, match="n_iter"):
        run_autoattack(model, x, y, eps=0.1, n_iter=5)
    with pytest.raises(ValueError, match="eps"):
        run_autoattack(model, x, y, eps=0.0)
