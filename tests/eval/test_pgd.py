"""pgd_robustness: batched == plain, analytic robustness of a linear model, both accountings, side effects."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastat.eval import aggregate_restarts, pgd_robustness
from fastat.eval import _starts
from fastat.eval._pgd_batched import bucket
from fastat.eval._starts import StartBank

from ._models import Linear2, Switch, tiny_cnn, tiny_data


@pytest.fixture(scope="module")
def cnn_case():
    model = tiny_cnn()
    x, y = tiny_data(48, model=model)
    y[::7] = (y[::7] + 1) % 5  # a few clean-wrong samples
    return model, x, y


def _same(a, b):
    assert torch.equal(a.robust_max_loss, b.robust_max_loss)
    assert torch.equal(a.robust_any, b.robust_any)
    assert torch.equal(a.clean, b.clean)
    assert torch.equal(a.restart_correct, b.restart_correct)
    assert torch.equal(a.restart_loss, b.restart_loss)


@pytest.mark.parametrize("early_stop", [True, False])
def test_batched_equals_plain(cnn_case, early_stop):
    model, x, y = cnn_case
    kw = dict(eps=0.1, alpha=0.025, steps=5, restarts=3, early_stop=early_stop, seed=3)
    plain = pgd_robustness(model, x, y, impl="plain", batch_size=48, **kw)
    assert 0 < plain.robust_acc_max_loss < plain.clean_acc < 1  # a non-trivial case
    for rows, every in [(24, 2), (144, 1), (16, 3)]:  # pool smaller than, equal to and much smaller than the work
        batched = pgd_robustness(model, x, y, impl="batched", batch_size=rows, compact_every=every, **kw)
        _same(plain, batched)
    if early_stop:  # compaction drops finished runs, so the batched engine forwards fewer rows
        assert batched.forward_rows < plain.forward_rows


def test_results_do_not_depend_on_chunking_or_blocks(cnn_case, monkeypatch):
    model, x, y = cnn_case
    monkeypatch.setattr(_starts, "BLOCK", 16)  # several start blocks, chunks that straddle them
    kw = dict(eps=0.1, alpha=0.025, steps=4, restarts=2, seed=5)
    ref = pgd_robustness(model, x, y, impl="plain", batch_size=20, **kw)
    _same(ref, pgd_robustness(model, x, y, impl="plain", batch_size=48, **kw))
    _same(ref, pgd_robustness(model, x, y, impl="batched", batch_size=40, **kw))


def test_seed_changes_starts_and_is_reproducible(cnn_case):
    model, x, y = cnn_case
    a = StartBank(x, y, 0.1, 0, torch.device("cpu")).starts(0, 0, 48)
    b = StartBank(x, y, 0.1, 0, torch.device("cpu")).starts(0, 0, 48)
    c = StartBank(x, y, 0.1, 1, torch.device("cpu")).starts(0, 0, 48)
    d = StartBank(x, y, 0.1, 0, torch.device("cpu")).starts(1, 0, 48)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)
    assert a.abs().max() <= 0.1 and ((x + a) >= 0).all() and ((x + a) <= 1).all()


@pytest.mark.parametrize("impl", ["batched", "plain"])
def test_linear_model_matches_closed_form(impl):
    # Binary linear model, inputs inside [eps, 1 - eps]: the worst case is δ = −ε·sign(w_y − w_o), so the sample is
    # robust iff margin − ε·‖w_y − w_o‖₁ > 0. With α = ε/4, PGD reaches that corner within 8 steps.
    gen = torch.Generator().manual_seed(0)
    d, n, eps = 16, 64, 0.1
    w, b = torch.randn(2, d, generator=gen) * 0.5, torch.randn(2, generator=gen) * 0.1
    x = 0.2 + 0.6 * torch.rand(n, 1, 4, 4, generator=gen)
    y = torch.randint(0, 2, (n,), generator=gen)
    dw = w[y] - w[1 - y]
    margin = (x.flatten(1) * dw).sum(1) + b[y] - b[1 - y]
    worst = margin - eps * dw.abs().sum(1)
    keep = (worst.abs() > 1e-3) & (margin.abs() > 1e-3)  # no float near-ties
    x, y, margin, worst = x[keep], y[keep], margin[keep], worst[keep]
    expected = worst > 0
    assert 0 < expected.float().mean() < (margin > 0).float().mean()  # some robust, some broken, some clean-wrong
    res = pgd_robustness(Linear2(w, b), x, y, eps, eps / 4, steps=10, restarts=2, impl=impl, batch_size=32)
    assert torch.equal(res.clean, margin > 0)
    assert torch.equal(res.robust_max_loss, expected)
    assert torch.equal(res.robust_any, expected)
    assert res.robust_acc == pytest.approx(float(expected.float().mean()))


def test_accountings_differ_on_constructed_case():
    # Class 0 is true. First pixel > 0.5: misclassified with a *low* CE (≈ 0.70); otherwise correct with a *higher*
    # CE (≈ 1.09). The input gradient is zero, so each restart stays at its random start. A sample with restarts on
    # both sides is robust under max-loss (the highest-loss restart is correct) and broken under "any".
    model = Switch(high=[1.0, 1.01, -10.0], low=[0.01, 0.0, 0.0])
    n, r, eps = 40, 3, 0.1
    x, y = torch.full((n, 1, 2, 2), 0.5), torch.zeros(n, dtype=torch.int64)
    res = pgd_robustness(model, x, y, eps, 0.01, steps=2, restarts=r, seed=11)
    bank = StartBank(x, y, eps, 11, torch.device("cpu"))
    fooled = torch.stack([(x + bank.starts(k, 0, n)).flatten(1)[:, 0] > 0.5 for k in range(r)], dim=1)
    assert torch.equal(res.restart_correct, ~fooled)
    assert torch.equal(res.robust_max_loss, (~fooled).any(1))
    assert torch.equal(res.robust_any, (~fooled).all(1))
    assert (res.robust_max_loss != res.robust_any).any()
    low_ce = F.cross_entropy(torch.tensor([[1.0, 1.01, -10.0]]), torch.tensor([0]))
    assert torch.allclose(res.restart_loss[fooled], low_ce.expand(int(fooled.sum())))
    assert res.accounting == "max_loss" and torch.equal(res.robust, res.robust_max_loss)
    other = pgd_robustness(model, x, y, eps, 0.01, steps=2, restarts=r, seed=11, accounting="any", impl="plain")
    assert torch.equal(other.robust, res.robust_any) and other.robust_acc == res.robust_acc_any


def test_aggregate_ties_go_to_later_restart():
    loss = torch.tensor([[1.0, 1.0], [2.0, 1.0], [1.0, 3.0]])
    correct = torch.tensor([[True, False], [True, False], [False, True]])
    max_loss, any_ = aggregate_restarts(loss, correct)
    assert max_loss.tolist() == [False, True, True]
    assert any_.tolist() == [False, False, False]


def test_zero_steps_evaluates_random_starts(cnn_case):
    model, x, y = cnn_case
    res = pgd_robustness(model, x, y, 0.1, 0.025, steps=0, restarts=2, seed=2)
    bank = StartBank(x, y, 0.1, 2, torch.device("cpu"))
    with torch.no_grad():
        for r in range(2):
            assert torch.equal(res.restart_correct[:, r], model(x + bank.starts(r, 0, 48)).argmax(1) == y)


def test_modes_restored_and_no_weight_gradients(cnn_case):
    model, x, y = cnn_case
    model.train()
    model[1].eval()  # a mixed-mode model keeps its per-module modes
    stats = model[1].running_mean.clone()
    pgd_robustness(model, x[:16], y[:16], 0.1, 0.025, steps=2, restarts=1)
    assert model.training and model[0].training and not model[1].training
    assert torch.equal(model[1].running_mean, stats)
    assert all(p.grad is None for p in model.parameters())
    model.eval()


def test_bf16_runs(cnn_case):
    model, x, y = cnn_case
    res = pgd_robustness(model, x[:16], y[:16], 0.1, 0.025, steps=2, restarts=2, precision="bf16")
    assert res.robust.dtype == torch.bool and res.robust.shape == (16,)
    assert 0.0 <= res.robust_acc <= 1.0 and res.settings["precision"] == "bf16"


def test_bucket_sizes():
    assert [bucket(n, 10_000) for n in (1, 8, 9, 13, 17, 25, 33, 49, 100)] == [8, 8, 12, 16, 24, 32, 48, 64, 128]
    assert bucket(500, 300) == 300


@pytest.mark.parametrize("kw, match", [
    (dict(eps=0.0), "eps"), (dict(alpha=-1.0), "alpha"), (dict(steps=-1), "steps"), (dict(restarts=0), "restarts"),
    (dict(accounting="mean"), "accounting"), (dict(precision="fp16"), "precision"), (dict(impl="fast"), "impl"),
    (dict(batch_size=0), "batch_size"),
])
def test_argument_errors(cnn_case, kw, match):
    model, x, y = cnn_case
    args = dict(eps=0.1, alpha=0.025, steps=1, restarts=1) | kw
    with pytest.raises(ValueError, match=match):
        pgd_robustness(model, x[:4], y[:4], **args)


def test_input_errors(cnn_case):
    model, x, y = cnn_case
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pgd_robustness(model, x[:4] * 2 - 0.5, y[:4], 0.1, 0.025, steps=1, restarts=1)
    with pytest.raises(ValueError, match="'y'"):
        pgd_robustness(model, x[:4], y[:3], 0.1, 0.025, steps=1, restarts=1)
