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
    # `Generator?` cannot be inferred from a Python annotation, so this one is checked by hand in the tests.
    "uniform_init": "uniform_init(Tensor x, float eps, *, Generator? generator=None) -> Tensor",
}

# Arguments each op writes in place (the `Tensor(aN!)` ones above).
MUTATES: dict[str, tuple[str, ...]] = {name: () for name in SCHEMAS}
MUTATES["atas_step"] = ("delta_buf", "v_buf")
MUTATES["pgi_step"] = ("delta_buf", "mom_buf")

# The hot paths, each with a Triton kernel (benchmarked by `fastat bench ops`); uniform_init is a random draw plus a
# box projection.
HOT_PATHS = ("zerograd_step", "multigrad_step", "atas_gather", "atas_step", "pgi_step", "pgd_step")
