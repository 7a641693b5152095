"""Run the real fla and mamba-ssm Triton kernels on CPU tensors under the Triton interpreter.

``activate()`` must run before anything imports triton (the interpreter is chosen at import time), so the
kernel tests call it in a fresh subprocess. Every patch below reaches into a library's internals, which is
why ``PINNED`` fixes the versions they were written against; ``activate()`` refuses other versions.
(mamba-ssm's package ``__init__``, which needs its CUDA extension, is lmsleep's own concern: see
``lmsleep.ops.backend._import_module``.)
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import sys
import types

PINNED = {"triton": "3.8.0", "fla-core": "0.6.0", "mamba-ssm": "2.3.2.post1"}


def missing() -> str | None:
    """Why the kernel tests cannot run here (a package missing or at another version), or None."""
    for dist, want in PINNED.items():
        try:
            have = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return f"{dist}=={want} is not installed (`make test-kernels` installs it)"
        if have != want:
            return f"{dist} {have} is installed, the interpreter patches need {want} (`make test-kernels`)"
    return None


def activate() -> None:
    """Select the interpreter and apply the patches; call before triton is imported."""
    if "triton" in sys.modules:
        raise RuntimeError("interpreter_patches.activate() must run before triton is imported")
    reason = missing()
    if reason:
        raise RuntimeError(reason)
    os.environ["TRITON_INTERPRET"] = "1"
    _one_autotune_config()
    _no_overflow_checks()
    _tensor_range_loop_variables()
    _cuda_device_shims()


def _one_autotune_config() -> None:
    """The autotuner times every config with the GPU driver's benchmarker, and the interpreter has no driver.
    All configs compute the same function, so keep the first one and skip the benchmark."""
    from triton.runtime.autotuner import Autotuner

    prune = Autotuner.prune_configs
    Autotuner.prune_configs = lambda self, kwargs: prune(self, kwargs)[:1]


def _no_overflow_checks() -> None:
    """The interpreter checks every int32 add/sub/mul for overflow by redoing it in int64, which takes about
    half its time on these kernels. A compiled kernel only does that with ``debug=True`` (the check is a
    device assert, stripped otherwise), so switch it off to run what the GPU runs, twice as fast."""
    import dataclasses

    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    builder.options = dataclasses.replace(builder.options, sanitize_overflow=False)


def _tensor_range_loop_variables() -> None:
    """Compiled Triton makes the variable of a plain ``for i in range(n)`` loop in a kernel a tensor; the
    interpreter runs the loop in Python, so it is an int, and fla's ``chunk_delta_h`` calls ``i_t.to(...)``
    on it. Kernels are executed from source by ``FunctionRewriter``: give them, in a copy of their module's
    globals, a ``range`` that yields int32 scalar tensors (host code in the module keeps the builtin)."""
    import builtins

    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    def tensor_range(*args):
        ints = [int(a.handle.data.item()) if isinstance(a, tl.tensor) else int(a) for a in args]
        for i in builtins.range(*ints):
            yield tl.tensor(interpreter.TensorHandle(np.array([i], dtype=np.int32), tl.int32), tl.int32)

    def compile_and_exec(self, transformed_ast):
        code = compile(transformed_ast, filename=self.filename, mode="exec")
        namespace = dict(self.kwargs)
        fn_globals = self.fn.__globals__
        for key, value in vars(interpreter).items():  # what the original adds to the module's globals
            fn_globals.setdefault(key, value)
        exec(code, {**fn_globals, "range": tensor_range}, namespace)
        return namespace[self.fn.__name__]

    interpreter.FunctionRewriter._compile_and_exec = compile_and_exec


def _cuda_device_shims() -> None:
    """mamba-ssm enters ``torch.cuda.device(t.device.index)`` around its launches and sizes some grids by
    ``torch.cuda.get_device_properties(...).multi_processor_count``; without CUDA both raise. Make the first
    a no-op and have the second report a small GPU."""
    import torch

    if torch.cuda.is_available():
        return
    torch.cuda.device = lambda *_a, **_k: contextlib.nullcontext()
    torch.cuda.get_device_properties = lambda *_a, **_k: types.SimpleNamespace(
        multi_processor_count=4, name="Triton interpreter"
    )
