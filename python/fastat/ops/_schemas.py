"""The one copy of each op's schema.

`fastat::<op>` (C++ kernels) and `fastat_triton::<op>` (Triton kernels) are both defined from these strings, and a test
checks that `torch.library.infer_schema(reference.<op>)` reproduces them (up to `SymInt` -> `int`), so the three
implementations cannot drift. Mutated arguments are marked `Tensor(aN!)`; no op returns an alias of an input.
"""

from __future__ import annotations

SCHEMAS: dict[str, str] = {
    "zerograd_step": "zerograd_step(Tensor delta, Tensor grad, Tensor x, float eps, float alpha, float q) -> Tensor",
    "multigrad_step": "multigrad_step(Tensor grads, Tensor x, float eps, float alpha, int? threshold=None) -> Tensor",
    "atas_gather": "atas_gather(Tensor delta_buf, Tensor index, Tensor offsets, Tensor flips, Tensor x) -> Tensor",
    "atas_step": (
        "atas_step(Tensor(a0!) delta_buf, Tensor(a1!) v_buf, Tensor index, Tensor offsets, Tensor flips, Tensor grad, "
        "Tensor x_adv, Tensor x, *, float eps, float c, float beta, float gamma_over_c, float step_min, "
        "float step_max, bool warmup) -> Tensor"
    ),
    "pgi_step": (
        "pgi_step(Tensor(a0!) delta_buf, Tensor(a1!) mom_buf, Tensor index, Tensor offsets, Tensor flips, Tensor grad, "
        "Tensor grad_l1, Tensor x_adv, Tensor x, *, float eps, float decay) -> Tensor"
    ),
    "pgd_step": "pgd_step(Tensor delta, Tensor grad, Tensor x, float eps, float alpha, Tensor? active=None) -> Tensor",
    # `Generator?` cannot be inferred from a Python annotation, so these two are checked by hand in the tests.
    "uniform_init": "uniform_init(Tensor x, float eps, *, Generator? generator=None) -> Tensor",
    "sora_step": "sora_step(Tensor delta, Tensor grad, Tensor x, Tensor alpha, *, Generator? generator=None) -> Tensor",
}

# Arguments each op writes in place (the `Tensor(aN!)` ones above).
MUTATES: dict[str, tuple[str, ...]] = {name: () for name in SCHEMAS}
MUTATES["atas_step"] = ("delta_buf", "v_buf")
MUTATES["pgi_step"] = ("delta_buf", "mom_buf")

# The ops that draw random numbers from a torch generator. They have no Triton kernel by design: the draw must come
# from the generator's own protocol (on CPU torch's stream itself; on CUDA a Philox offset reserved under the
# generator's lock, read on the device under graph capture), which the C++ kernels follow, and each is one elementwise
# pass that the CUDA kernel already does in one launch. Under the "triton" backend they follow the auto order.
RANDOM_OPS = ("uniform_init", "sora_step")

# The hot paths, each with a Triton kernel (benchmarked by `fastat bench ops`); the random ops are a draw plus a few
# elementwise operations.
HOT_PATHS = ("zerograd_step", "multigrad_step", "atas_gather", "atas_step", "pgi_step", "pgd_step")
