"""The independent yardstick with the official box projections: ../shared/reference/fmnist_co_sweep.py patched at run
time, seven lines, each anchored to one exact line of the script (a changed script fails loudly instead of running
half-patched).

Why: the yardstick feeds clamp(x + δ, 0, 1) to its model but never projects δ itself onto the pixel box. Wherever
x + δ leaves [0, 1] the gradient is zero, sign(0) = 0, and that coordinate never moves again. On Fashion-MNIST, where
about half of every image is background at exactly 0, this weakens its attacks: its random starts (training and
evaluation) leave half the background where the draw put it, and its PGD iterates, once pushed below 0, stay there.
The official codes project the start and every iterate: δ ← clip(x + δ, 0, 1) − x (WONG `utils.py` attack_pgd and
`train_fgsm.py:107-112`, NF `train.py:216-243`, ZG; methods.md §0, §8), as fastat does. The patched copy does the
same and nothing else: every random draw is taken in the same order, so a seed means the same data order,
initialisation and starts as in the script as written. The measured effect of each part is in
docs/results/yardstick.md. ATAS (the script's "simplified" one) is left as written: it is a different method.

    python bench/yardstick_box.py OUT.py [--yardstick PATH]     # write the patched copy (the atlas does this)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# (the exact line of the script, what replaces it); each must occur exactly once
_PROJECT = "torch.clamp(x + d, 0, 1) - x"
PATCHES: tuple[tuple[str, str], ...] = (
    # evaluation (pgd_acc): the start, then every iterate
    ("        d = (torch.rand_like(x) * 2 - 1) * eps",
     f"        d = (torch.rand_like(x) * 2 - 1) * eps\n        d = {_PROJECT}"),
    ("            d = torch.clamp(d.detach() + alpha * g.sign(), -eps, eps)",
     f"            d = torch.clamp(d.detach() + alpha * g.sign(), -eps, eps)\n            d = {_PROJECT}"),
    # training: FGSM(-RS) and ZeroGrad's start (FGSM's zero start is already inside the box)
    ('                d = torch.zeros_like(x) if method == "fgsm" else (torch.rand_like(x) * 2 - 1) * eps',
     '                d = torch.zeros_like(x) if method == "fgsm" else (torch.rand_like(x) * 2 - 1) * eps\n'
     f"                d = {_PROJECT}"),
    # N-FGSM's noise (NF projects η onto the box, then takes its gradient at x + η)
    ("                d = ((torch.rand_like(x) * 2 - 1) * k * eps).requires_grad_(True)",
     "                d = (torch.clamp(x + (torch.rand_like(x) * 2 - 1) * k * eps, 0, 1) - x).requires_grad_(True)"),
    # PGD-k training: the start, then every iterate
    ("                d = (torch.rand_like(x) * 2 - 1) * eps",
     f"                d = (torch.rand_like(x) * 2 - 1) * eps\n                d = {_PROJECT}"),
    ("                    d = torch.clamp(d.detach() + alpha * g.sign(), -eps, eps)",
     "                    d = torch.clamp(d.detach() + alpha * g.sign(), -eps, eps)\n"
     f"                    d = {_PROJECT}"),
    # MultiGrad's S starts
    ("                d0 = ((torch.rand_like(xs) * 2 - 1) * eps).requires_grad_(True)",
     "                d0 = (torch.clamp(xs + (torch.rand_like(xs) * 2 - 1) * eps, 0, 1) - xs).requires_grad_(True)"),
)
MARK = "# patched by fastat's bench/yardstick_box.py: the official box projections (see its docstring)\n"


class PatchError(RuntimeError):
    pass


def patch(source: str) -> str:
    """``source`` (the yardstick's text) with every line of `PATCHES` replaced; `PatchError` names the first anchor
    that is missing or not unique."""
    lines = source.split("\n")
    for old, new in PATCHES:
        where = [i for i, line in enumerate(lines) if line == old]
        if len(where) != 1:
            raise PatchError(f"the yardstick has {len(where)} lines {old.strip()!r} (expected exactly 1): it changed "
                             "since bench/yardstick_box.py was written; update PATCHES")
        lines[where[0]] = new
    return MARK + "\n".join(lines)


def write_patched(yardstick: Path, out: Path) -> Path:
    """Write the patched copy of ``yardstick`` to ``out`` (unless it is there with the same text)."""
    text = patch(Path(yardstick).read_text())
    if not (out.is_file() and out.read_text() == text):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="where the patched copy goes")
    p.add_argument("--yardstick", default=str(Path(__file__).resolve().parents[2] / "shared" / "reference" /
                                               "fmnist_co_sweep.py"))
    args = p.parse_args(argv)
    try:
        print(write_patched(Path(args.yardstick), Path(args.out)))
    except (OSError, PatchError) as exc:
        print(f"yardstick_box: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
