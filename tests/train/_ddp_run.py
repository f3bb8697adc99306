"""Train a tiny run as one process (``python _ddp_run.py ...``) or as several (``torchrun ... _ddp_run.py ...``) and
save what each rank ends with (weights, per-example state, history) to OUT/result_rank{R}.pt for the tests."""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn

from fastat.train import TrainConfig, Trainer


def tiny_model(bn: bool) -> nn.Module:
    """A conv net for 28×28 grey images; without BatchNorm the per-sample gradients do not depend on how a batch is
    split over ranks, so several processes must match one."""
    torch.manual_seed(123)
    layers = [nn.Conv2d(1, 8, 3, padding=1)] + ([nn.BatchNorm2d(8)] if bn else []) + [
        nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(), nn.Linear(8 * 7 * 7, 10)]
    return nn.Sequential(*layers)


def _fixed_noise_gradalign(method):
    """GradAlign whose noise η = ε·sin(997·x) depends on the sample, not on the RNG stream or the batch split, so a
    sharded run can be compared with one process through the double-backprop regulariser."""
    from fastat.methods import GradAlign
    from fastat.methods.base import attack_mode, input_grad, leaf
    from fastat.methods.gradalign import gradient_alignment

    class FixedNoise(GradAlign):
        def extra_loss(self, model, x, y, x_adv, batch=None):
            xf = x.detach().float()
            eta = self.eps * torch.sin(997.0 * xf + 1.0)
            with attack_mode(model, self.attack_bn_mode), torch.enable_grad():
                grad2 = input_grad(model, leaf(xf + eta), y, create_graph=True)
                return self.lam * (1.0 - gradient_alignment(self._grad1, grad2))

    return FixedNoise(eps=method.eps, alpha=method.alpha, lam=method.lam)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--method", default="fgsm")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--subset", type=int, default=250)
    p.add_argument("--batch-size", type=int, default=63)
    p.add_argument("--bn", action="store_true")
    p.add_argument("--built", action="store_true",
                   help="the Trainer builds a small CNN without BatchNorm (its init draws from the global RNG)")
    p.add_argument("--kill-in-epoch", type=int, default=0, help="raise KeyboardInterrupt at the start of this epoch")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--fixed-noise", action="store_true",
                   help="GradAlign: the regulariser's noise as a function of each sample's pixels (not the RNG)")
    p.add_argument("--co-in-epoch", type=int, default=0, help="the CO check fails in this epoch (on rank 0 only)")
    p.add_argument("--hp", default="{}", help="method kwargs as JSON")
    p.add_argument("--cfg", default="{}", help="more TrainConfig fields as JSON")
    a = p.parse_args()
    cfg = TrainConfig(method=a.method, dataset="fashion-mnist", eps=0.2, epochs=a.epochs, subset=a.subset,
                      batch_size=a.batch_size, device="cpu", eval_n=40, eval_steps=2, co_batch=20, co_steps=1,
                      progress=False, plot=False, lr_max=0.05, on_diverge="log", out=f"{a.out}/run",
                      method_kwargs=json.loads(a.hp), **json.loads(a.cfg))
    if a.built:
        cfg.model, cfg.model_kwargs = "small-cnn", {"batch_norm": False, "width": 4, "hidden": 16}
    t = Trainer(cfg, model=None if a.built else tiny_model(a.bn))
    if a.fixed_noise:
        t.method = _fixed_noise_gradalign(t.method)
    if a.resume:
        assert t.resume()
    if a.co_in_epoch:
        real_check, calls = t.monitor.check, []

        def check(model, precision, **kw):
            acc, co = real_check(model, precision, **kw)
            calls.append(1)
            return (0.0, True) if len(calls) == a.co_in_epoch and t.dist.rank == 0 else (acc, co)

        t.monitor.check = check
    if a.kill_in_epoch:
        real = t.train_epoch

        def killed(epoch):
            if epoch == a.kill_in_epoch:
                raise KeyboardInterrupt
            return real(epoch)

        t.train_epoch = killed
        try:
            t.fit()
        except KeyboardInterrupt:
            pass
    else:
        t.fit()
    result = {"model": t.model.state_dict(), "buffers": [b.clone() for b in t.method.example_buffers()],
              "history": t.history, "params": [p.detach().clone() for p in t.method.parameters()],
              "rank": t.dist.rank, "world_size": t.dist.world_size, "steps": t.eager_steps,
              "final": t.final}
    torch.save(result, f"{a.out}/result_rank{t.dist.rank}.pt")


if __name__ == "__main__":
    main()
