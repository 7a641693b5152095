"""Backend selection shared by the fast-weight ops.

Every op has two torch backends that run anywhere (``recurrent``: the token loop, the reference;
``chunked``: the blocked parallel form, the CPU default) and one optional GPU kernel backend from an
extra package (``fla`` for the gated delta rule, ``mamba_ssm`` for SSD). Kernel packages are imported
lazily, on first use, never at ``import lmsleep.ops`` time: mamba-ssm does not even import without CUDA,
and both pull in triton, which is slow to import.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = [
    "INSTALL_HINT",
    "KernelSpec",
    "BackendUnavailableError",
    "kernel_import_error",
    "load_kernel",
    "resolve_backend",
]

TORCH_BACKENDS = ("recurrent", "chunked")
# mamba-ssm without its CUDA extension: lmsleep uses only its Triton SSD kernels (docs/gpu.md).
INSTALL_HINT = (
    "install the kernels on a CUDA machine with `make install-cuda`, i.e. "
    '`MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE pip install -e ".[cuda]" --no-build-isolation`'
)


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
            _KERNEL_CACHE[key] = getattr(_import_module(spec.module), spec.attr)
        # mamba-ssm raises more than ImportError when CUDA extensions are missing or mismatched.
        except Exception as err:  # noqa: BLE001
            _KERNEL_CACHE[key] = err
    return _KERNEL_CACHE[key]


def _import_module(name: str) -> types.ModuleType:
    """``importlib.import_module(name)``, and for a submodule whose package ``__init__`` fails, the submodule
    without that ``__init__``: ``mamba_ssm/__init__.py`` imports the compiled CUDA extension of Mamba-1's
    selective scan, which a ``MAMBA_SKIP_CUDA_BUILD`` install (seconds instead of a long nvcc build) lacks,
    while the Triton SSD kernels lmsleep calls need none of it. The package is then registered as a bare
    module (its ``__init__`` names, e.g. ``mamba_ssm.Mamba2``, are absent in this process)."""
    try:
        return importlib.import_module(name)
    except Exception:
        top = name.split(".")[0]
        if top == name or top in sys.modules or (spec := importlib.util.find_spec(top)) is None:
            raise
        package = types.ModuleType(top)
        package.__path__ = list(spec.submodule_search_locations or [])
        sys.modules[top] = package
        try:
            return importlib.import_module(name)
        except Exception:
            del sys.modules[top]
            raise


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


def kernel_import_error(op: str) -> BaseException | None:
    """Why ``op``'s kernel package does not import here, or None when it does (CUDA or not)."""
    fn = _import_kernel(KERNELS[op])
    return fn if isinstance(fn, BaseException) else None


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
