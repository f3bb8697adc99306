"""The CUDA tests (marker `cuda`). The folder is not named `cuda`: pytest imports it as a top-level package, which
would shadow the `cuda` namespace package of cuda-bindings (a dependency of torch's CUDA wheels, imported by torch)."""
