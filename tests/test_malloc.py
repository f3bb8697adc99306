"""`fastat._malloc`: the glibc thresholds the trainer and `fastat eval` set on the CPU — when they are set, when
the process is left alone, and that they do what they are for (page faults of a step-sized allocation, in a process
of its own)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from fastat import _malloc

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
_ENV = ("FASTAT_MALLOC", "LD_PRELOAD", *_malloc._USER_KNOBS)  # every variable `_malloc` reads

# 20 FGSM-RS-shaped training steps of the small CNN at batch 64 (after 3 warm-up steps); minor page faults counted
_LOOP = """
import json, resource, sys, torch
import torch.nn.functional as F
from fastat import _malloc
from fastat.models import build_model
torch.set_num_threads(1)
done = _malloc.tune_for_cpu() if sys.argv[1] == "tuned" else "default"
torch.manual_seed(0)
model = build_model("small-cnn", in_channels=1, num_classes=10, input_size=28)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
def step():
    d = torch.zeros_like(x).uniform_(-0.1, 0.1).requires_grad_()
    g, = torch.autograd.grad(F.cross_entropy(model(x + d), y), d)
    loss = F.cross_entropy(model((x + 0.1 * g.sign()).clamp(0, 1)), y)
    opt.zero_grad(); loss.backward(); opt.step()
for _ in range(3):
    step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(json.dumps({"done": done, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0}))
"""


def _faults(mode: str, env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", _LOOP, mode], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _clean_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in _ENV}, **extra}


@pytest.fixture
def clean(monkeypatch):
    """This process's environment without the variables `_malloc` reads."""
    for var in _ENV:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
def test_thresholds_stop_the_per_step_page_faults():
    default, tuned = _faults("default", _clean_env()), _faults("tuned", _clean_env())
    assert tuned["done"].startswith("glibc mmap threshold 64 MiB")
    # default: each step's freed activations go back to the system and are faulted in again (measured: 120,000 to
    # 290,000 faults in 20 steps); tuned: the heap keeps them (measured: 2 to 3,200, a few pages of bookkeeping)
    assert default["faults"] > 20 * 2000
    assert tuned["faults"] < default["faults"] / 20


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
def test_opt_out_leaves_the_default():
    out = _faults("tuned", _clean_env(FASTAT_MALLOC="default"))
    assert out["done"] == "default (FASTAT_MALLOC=default)" and out["faults"] > 20 * 2000


@pytest.mark.parametrize("var", _malloc._USER_KNOBS)
def test_the_users_own_setting_wins(clean, var):
    clean.setenv(var, "1")
    assert _malloc._tune() == f"default + the environment's {var}"


def test_another_allocator_is_left_alone(clean):
    clean.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert _malloc._tune() == "jemalloc (LD_PRELOAD)"


def test_not_glibc_is_left_alone(clean):
    clean.setattr(platform, "libc_ver", lambda: ("musl", "1.2"))
    assert _malloc._tune() == "the platform's (not glibc)"
