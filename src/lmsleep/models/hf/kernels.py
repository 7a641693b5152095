"""Keep transformers' linear-layer ops on their torch path for tensors on the CPU.

transformers binds some ops of its linear layers at import time to an installed kernel package when it can
import one (``chunk_gated_delta_rule`` from flash-linear-attention, ``mamba_chunk_scan_combined`` from
mamba-ssm, ``causal_conv1d_fn`` from causal-conv1d), whatever the device. Those kernels are Triton/CUDA
only, so with lmsleep's ``dev`` extra installed (it holds flash-linear-attention's ``fla-core`` as a CPU test
oracle) a Qwen3.5 forward on the CPU fails ("0 active drivers"). :func:`torch_ops_on_cpu` rebinds, for the
duration of a call on CPU tensors, each such op of the given modules to the torch function it wraps; on CUDA
the kernels stay.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Iterable, Iterator
from types import ModuleType

from torch import nn

_WRAPPER_FILE = (
    "hub_kernels.py"  # transformers.integrations.hub_kernels: use_kernel_func_from_hub_with_fallback
)


_FOUND: dict[str, dict[str, object]] = {}


def _fallback_ops(module: ModuleType) -> dict[str, object]:
    """``{name: torch function}`` for every op of ``module`` bound through transformers' kernel fallback
    (scanned once per module, at the first call: outside :func:`torch_ops_on_cpu`, which rebinds them)."""
    if module.__name__ not in _FOUND:
        found = {}
        for name, fn in vars(module).items():
            code = getattr(fn, "__code__", None)
            if (
                callable(fn)
                and hasattr(fn, "__wrapped__")
                and code
                and code.co_filename.endswith(_WRAPPER_FILE)
            ):
                found[name] = inspect.unwrap(fn)
        _FOUND[module.__name__] = found
    return _FOUND[module.__name__]


def modeling_modules(model: nn.Module) -> list[ModuleType]:
    """The Python modules that define ``model``'s submodules (e.g. ``modeling_qwen3_5``)."""
    names = {type(m).__module__ for m in model.modules()}
    return [sys.modules[n] for n in sorted(names) if n.startswith("transformers.")]


@contextlib.contextmanager
def torch_ops_on_cpu(modules: Iterable[ModuleType], on_cpu: bool) -> Iterator[None]:
    """While active (and ``on_cpu``), the kernel-bound ops of ``modules`` are their torch functions."""
    if not on_cpu:
        yield
        return
    saved = []
    for module in modules:
        for name, torch_fn in _fallback_ops(module).items():
            if getattr(module, name) is not torch_fn:  # not already rebound by an enclosing call
                saved.append((module, name, getattr(module, name)))
                setattr(module, name, torch_fn)
    try:
        yield
    finally:
        for module, name, fn in reversed(saved):
            setattr(module, name, fn)
