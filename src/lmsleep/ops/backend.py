"""Backend selection shared by the fast-weight ops.

Every op has two torch backends that run anywhere (``recurrent``: the token loop, the reference;
``chunked``: the blocked parallel form, the CPU default) and one optional GPU kernel backend from an
extra package (``fla`` for the gated delta rule, ``mamba_ssm`` for SSD). Kernel packages are imported
lazily, on first use, never at ``import lmsleep.ops`` time: mamba-ssm does not even import without CUDA,
and both pull in triton, which is slow to import.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = [
    "INSTALL_HINT",
    "KernelSpec",
    "BackendUnavailableError",
    "load_kernel",
    "resolve_backend",
]

TORCH_BACKENDS = ("recurrent", "chunked")
INSTALL_HINT = 'install the kernels with `pip install -e ".[cuda]"` on a CUDA machine'


class BackendUnavailableError(RuntimeError):
    """A kernel backend was asked for but cannot run here (CPU tensors, or the package is missing)."""


@dataclass(frozen=True)
class KernelSpec:
    """Where an op's GPU kernel lives: ``backend`` is the user-facing name, ``module.attr`` the function."""

    backend: str
    module: str
    attr: str
    package: str


KERNELS: dict[str, KernelSpec] = {
    "gated_delta_rule": KernelSpec(
        "fla", "fla.ops.gated_delta_rule", "chunk_gated_delta_rule", "flash-linear-attention"
    ),
    "ssd": KernelSpec(
        "mamba_ssm", "mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined", "mamba-ssm"
    ),
}

# (module, attr) -> function or the import error, so a failed import is not retried on every call.
_KERNEL_CACHE: dict[tuple[str, str], Callable | BaseException] = {}
# Ops that already warned about a CUDA fallback: a training loop calls them thousands of times.
_WARNED_FALLBACK: set[str] = set()


def _import_kernel(spec: KernelSpec) -> Callable | BaseException:
    key = (spec.module, spec.attr)
    if key not in _KERNEL_CACHE:
        try:
            _KERNEL_CACHE[key] = getattr(importlib.import_module(spec.module), spec.attr)
        # mamba-ssm raises more than ImportError when CUDA extensions are missing or mismatched.
        except Exception as err:  # noqa: BLE001
            _KERNEL_CACHE[key] = err
    return _KERNEL_CACHE[key]


def load_kernel(op: str) -> Callable:
    """Return ``op``'s kernel function, or raise :class:`BackendUnavailableError` saying how to install it."""
    spec = KERNELS[op]
    fn = _import_kernel(spec)
    if isinstance(fn, BaseException):
        raise BackendUnavailableError(
            f"{op}: backend {spec.backend!r} needs `{spec.module}.{spec.attr}` from the {spec.package} "
            f"package, which failed to import ({type(fn).__name__}: {fn}); {INSTALL_HINT}, "
            f"or use backend='chunked'."
        ) from fn
    return fn


def kernel_available(op: str) -> bool:
    """Whether ``op``'s GPU kernel can run here: CUDA is present and the kernel package imports."""
    return torch.cuda.is_available() and not isinstance(_import_kernel(KERNELS[op]), BaseException)


def resolve_backend(op: str, backend: str, device: torch.device) -> str:
    """Turn ``backend`` (``"auto"``, a torch backend or ``op``'s kernel name) into the one to run.

    ``auto`` takes the kernel when the tensors are on CUDA and the kernel package imports, otherwise
    ``chunked``; a CUDA fallback warns once per op because it is usually a broken install, not a choice.
    An explicit kernel backend on non-CUDA tensors, or an unknown name, raises.
    """
    spec = KERNELS[op]
    valid = ("auto", *TORCH_BACKENDS, spec.backend)
    if backend not in valid:
        raise ValueError(
            f"{op}: unknown backend {backend!r}; expected one of {', '.join(map(repr, valid))} "
            f"(the {spec.backend!r} kernel needs CUDA tensors; {INSTALL_HINT})."
        )
    if backend in TORCH_BACKENDS:
        return backend
    on_cuda = device.type == "cuda"
    if backend == spec.backend:
        if not on_cuda:
            raise BackendUnavailableError(
                f"{op}: backend {spec.backend!r} is a GPU kernel ({spec.package}) and needs CUDA tensors, "
                f"got tensors on {device}; use backend='chunked' (or 'auto') on CPU. For the kernels, "
                f"{INSTALL_HINT}."
            )
        load_kernel(op)
        return backend
    # auto
    if not on_cuda:
        return "chunked"
    if isinstance(_import_kernel(spec), BaseException):
        if op not in _WARNED_FALLBACK:
            _WARNED_FALLBACK.add(op)
            warnings.warn(
                f"{op}: CUDA tensors but the {spec.backend!r} kernel ({spec.package}) is not importable; "
                f"falling back to the slower torch 'chunked' backend. To get the kernel, {INSTALL_HINT}.",
                RuntimeWarning,
                stacklevel=3,
            )
        return "chunked"
    return spec.backend
